#!/usr/bin/env python3
"""The Python half of scripts/gpu_check.sh: transformers as the independent implementation.

  compare  per-token log-probabilities of userip (`lm score`, CUDA, f32) versus transformers
  bench    forward + backward-to-inputs throughput in PyTorch for the shapes bench/lm_bench runs
  summary  a Markdown table of both, for docs/BENCHMARKS.md
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

TOLERANCE = 1e-4


def compare(args):
    import torch
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False  # userip's libtorch leaves TF32 off too
    torch.backends.cudnn.allow_tf32 = False
    if len(args.model) != len(args.prompts):
        sys.exit("compare: give one --prompts per --model")
    results = []
    for model_dir, prompts in zip(args.model, args.prompts):
        run = subprocess.run([args.userip, "lm", "score", "--model", model_dir, "--text-file", prompts,
                              "--device", "cuda", "--dtype", "f32"], check=True, capture_output=True, text=True)
        lines = [json.loads(l) for l in run.stdout.splitlines() if l.strip()]
        lines = [l for l in lines if not l.get("summary") and len(l["tokens"]) >= 2]
        # No dtype argument: its name changed between transformers 4 and 5; .float() says it for both.
        model = AutoModelForCausalLM.from_pretrained(model_dir).float().cuda().eval()
        worst, compared = 0.0, 0
        with torch.no_grad():
            for line in lines:
                ids = torch.tensor([line["tokens"]], device="cuda")
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
                theirs = logp[:-1].gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1).cpu()
                ours = torch.tensor(line["logprobs"], dtype=torch.float64)
                worst = max(worst, (theirs - ours).abs().max().item())
                compared += len(line["logprobs"])
        results.append({"model": model_dir, "prompts": prompts, "lines": len(lines), "tokens": compared,
                        "max_abs_logprob_diff": worst, "pass": worst <= TOLERANCE})
        print(f"{model_dir}: {compared} tokens, max |diff| {worst:.3g} ({'pass' if worst <= TOLERANCE else 'FAIL'})")
    Path(args.out, "compare.json").write_text(json.dumps(results, indent=2))
    if not all(r["pass"] for r in results):
        sys.exit(1)


# The shapes and batches of bench/lm_bench.cpp (keep in step with it).
SHAPES = {
    "default": dict(kind="llama", hidden=96, layers=2, heads=4, kv_heads=4, ffn=256, vocab=2000,
                    sequences=256, max_tokens=4096),
    "gpt2_small": dict(kind="gpt2", hidden=768, layers=12, heads=12, kv_heads=12, ffn=3072, vocab=50257,
                       sequences=64, max_tokens=1024),
    "llama_1b": dict(kind="llama", hidden=2048, layers=22, heads=32, kv_heads=4, ffn=5632, vocab=32000,
                     sequences=4, max_tokens=512),
}


def buckets(lengths, max_tokens, max_sequences=64):
    """lm::bucket_by_length: sort by length, cut when rows x longest would pass max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for i in order:
        longest = max([lengths[j] for j in current] + [lengths[i]])
        if current and (len(current) + 1 > max_sequences or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def bench(args):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    results = {}
    for name, s in SHAPES.items():
        if s["kind"] == "llama":
            config = LlamaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                                 num_key_value_heads=s["kv_heads"], intermediate_size=s["ffn"], vocab_size=s["vocab"],
                                 max_position_embeddings=2048)
            model = LlamaForCausalLM(config)
        else:
            config = GPT2Config(n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"], n_inner=s["ffn"],
                                vocab_size=s["vocab"], n_positions=1024)
            model = GPT2LMHeadModel(config)
        model = model.cuda().float().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        rng = random.Random(7)
        lengths = [rng.randint(40, 96) for _ in range(s["sequences"])]
        batches = buckets(lengths, s["max_tokens"])
        embed = model.get_input_embeddings()

        def epoch():
            for batch in batches:
                rows, longest = len(batch), max(lengths[i] for i in batch)
                mask = torch.zeros(rows, longest, dtype=torch.long, device="cuda")
                for r, i in enumerate(batch):
                    mask[r, :lengths[i]] = 1
                ids = torch.randint(s["vocab"], (rows, longest), device="cuda")
                targets = torch.full((rows, longest), -100, dtype=torch.long, device="cuda")
                for r, i in enumerate(batch):  # the last 16 real positions are labels, as in lm_bench
                    targets[r, lengths[i] - 17:lengths[i] - 1] = ids[r, lengths[i] - 16:lengths[i]]
                embeds = embed(ids).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, attention_mask=mask).logits
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                                                         targets.reshape(-1), ignore_index=-100, reduction="sum")
                loss.backward()
                embeds.grad.sum().item()

        epoch()  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        runs, start = 0, time.perf_counter()
        while runs < 2 or (time.perf_counter() - start < 5 and name != "llama_1b"):
            epoch()
            runs += 1
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / runs
        results[name] = {"tokens_per_s": sum(lengths) / seconds, "seconds_per_epoch": seconds, "epochs": runs}
        print(f"{name}: {results[name]['tokens_per_s']:.0f} tokens/s (PyTorch {torch.__version__})")
        del model
        torch.cuda.empty_cache()
    Path(args.out, "torch_bench.json").write_text(json.dumps(results, indent=2))


def summary(args):
    out = Path(args.out)
    lines = ["| check | userip | transformers / PyTorch | ratio |", "|---|---|---|---|"]
    for r in json.loads((out / "compare.json").read_text()):
        lines.append(f"| log-probs {Path(r['model']).name} ({r['tokens']} tokens) | max abs diff "
                     f"{r['max_abs_logprob_diff']:.2e} | | {'pass' if r['pass'] else 'FAIL'} (<= {TOLERANCE}) |")
    ours = {}
    for b in json.loads((out / "lm_bench.json").read_text())["benchmarks"]:
        for name in SHAPES:
            if f"BM_ForwardBackward_{name}/aten1:0" in b["name"]:
                ours[name] = b.get("tokens/s")
    theirs = json.loads((out / "torch_bench.json").read_text())
    for name in SHAPES:
        if name in ours and name in theirs:
            t = theirs[name]["tokens_per_s"]
            lines.append(f"| fwd+bwd {name} tokens/s | {ours[name]:.0f} | {t:.0f} | {ours[name] / t:.2f} |")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--userip", required=True)
    c.add_argument("--model", action="append", required=True)
    c.add_argument("--prompts", action="append", required=True)
    c.add_argument("--out", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--out", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--out", required=True)
    args = parser.parse_args()
    {"compare": compare, "bench": bench, "summary": summary}[args.command](args)


if __name__ == "__main__":
    main()
