#!/usr/bin/env python3
"""Copies the tokenizer test fixtures out of the shared reference folder (../shared/reference).

Run from the repository root: python3 tests/data/tokenizer/make_fixtures.py [REFERENCE_DIR]
The fixtures are committed so the tests also run where the reference folder is absent.
  tiny-llama/, tiny-gpt2/       tokenizer files of the reference checkpoints (free test data)
  reference-tokens.json         llama.cpp's token ids for each reference prompt
  tiny-llama-gguf-tokenizer.json  the tokenizer.* keys of tiny-llama.gguf, as llama.cpp's
                                converter wrote them (read with a minimal GGUF parser below)
"""
import json
import shutil
import struct
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
ref = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parents[2] / ".." / "shared" / "reference"

for model, files in {
    "tiny-llama": ["tokenizer.model", "tokenizer_config.json", "config.json"],
    "tiny-gpt2": ["vocab.json", "merges.txt", "tokenizer_config.json", "config.json"],
}.items():
    (here / model).mkdir(exist_ok=True)
    for name in files:
        shutil.copyfile(ref / f"{model}-hf" / name, here / model / name)

tokens = {}
for model in ["tiny-llama", "tiny-gpt2"]:
    entries = json.loads((ref / "logits" / f"{model}.json").read_text(encoding="utf-8"))
    tokens[model] = [{"text": e["text"], "tokens": e["tokens"]} for e in entries]
lines = []
for model, entries in tokens.items():
    body = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in entries)
    lines.append(f" {json.dumps(model)}: [\n{body}\n ]")
(here / "reference-tokens.json").write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def read_gguf_metadata(path):
    data = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        value = struct.unpack_from("<" + fmt, data, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return value

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(kind):
        if kind == 8:
            return string()
        if kind == 9:
            inner, n = take("I"), take("Q")
            return [value(inner) for _ in range(n)]
        return take(scalar[kind])

    assert data[:4] == b"GGUF", path
    pos = 4
    take("I")  # version
    take("Q")  # tensor count
    meta = {}
    for _ in range(take("Q")):
        key = string()
        meta[key] = value(take("I"))
    return meta


meta = read_gguf_metadata(ref / "tiny-llama.gguf")
subset = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
(here / "tiny-llama-gguf-tokenizer.json").write_text(json.dumps(subset, ensure_ascii=False) + "\n", encoding="utf-8")
print("fixtures written to", here)
