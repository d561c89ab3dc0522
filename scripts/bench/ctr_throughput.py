#!/usr/bin/python3
"""The Python side of the CTR throughput comparison (scripts/bench/ctr_throughput.sh).

Trains the same DCN as `userip ctr train --kind dcn` on the same examples, with PyTorch in Python,
and prints one JSON line with the training samples/s. The C++ run's features.json is the encoder:
this script does not fit vocabularies of its own, so both sides see exactly the same indices.

Run with Debian's /usr/bin/python3 (python3-torch 1.13, the same libtorch the C++ build links):
a `python3` found first on PATH may be another interpreter without torch.

  /usr/bin/python3 scripts/bench/ctr_throughput.py --dataset DIR --features RUN/features.json \
      --threads 2 --epochs 3 [--verify-userip build/bin/userip --verify-model RUN]

--verify-* scores a sample of training pairs twice, with `userip ctr predict` on the C++ model and
with this script's encoding and model carrying the C++ weights: equal scores show that the encoding
(every field's index) and the model's computation are the C++ ones.
"""
import argparse
import bisect
import csv
import ctypes
import json
import os
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F


# --- the dataset directory (docs/DATASET_FORMAT.md) ----------------------------------------------

def read_strings(path):
    with open(path, "rb") as f:
        data = f.read()
    (count,) = struct.unpack_from("<Q", data, 0)
    ends = np.frombuffer(data, dtype="<u8", count=count, offset=8)
    base = 8 + 8 * count
    out, start = [], 0
    for end in ends.tolist():
        out.append(data[base + start:base + end].decode("utf-8"))
        start = end
    return out


def load_dataset(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    split_path = os.path.join(directory, "split.u8")
    if not os.path.exists(split_path):
        sys.exit(f"error: {directory} has no split (run `userip data split --dataset {directory}`)")
    with open(os.path.join(directory, "split.json")) as f:
        split_config = json.load(f)["config"]
    column = lambda name, dtype: np.fromfile(os.path.join(directory, name), dtype=dtype)
    return {
        "manifest": manifest,
        "threshold": float(split_config["label_threshold"]),
        "user": column("interactions.user.u32", "<u4"),
        "item": column("interactions.item.u32", "<u4"),
        "rating": column("interactions.rating.f32", "<f4"),
        "split": column("split.u8", "u1"),
        "user_ids": read_strings(os.path.join(directory, "users.strings")),
        "item_ids": read_strings(os.path.join(directory, "items.strings")),
        "fields": {f["name"]: read_strings(os.path.join(directory, f["file"])) for f in manifest["item_fields"]},
    }


# --- the encoder, as src/ctr/features.cpp does it ------------------------------------------------

_SPACE = " \t\r\n"  # util::trim strips exactly these, not Python's wider notion of whitespace
# std::from_chars(double) in its general format: no sign but '-', no hex, no inf/nan (rejected as
# non-finite anyway), no digit separators; float() alone would accept more than the C++ encoder.
_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def parse_double(text):
    text = text.strip(_SPACE)
    if text.startswith("+"):
        text = text[1:]
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if np.isfinite(value) else None


def list_values(raw):
    return [p.strip(_SPACE) for p in raw.split("|") if p.strip(_SPACE)]


class Encoder:
    def __init__(self, features):
        if features.get("format") != "userip-ctr-features" or features.get("version") != 1:
            sys.exit("error: not a userip features.json (format userip-ctr-features, version 1)")
        if features["config"]["profile"] != "none" or features["dense_dim"] != 0:
            sys.exit("error: the benchmark model reads no profile input (train without --bank/--profiles)")
        self.config = features["config"]
        self.layout = features["layout"]
        self.users = {v: i + 1 for i, v in enumerate(features["users"])}
        self.items = {v: i + 1 for i, v in enumerate(features["items"])}
        self.item_fields = features["item_fields"]
        self.catalogue_ids = features["catalogue"]["ids"]
        self.catalogue_values = features["catalogue"]["values"]
        self.width = self.layout["max_values"]
        self.categorical_names = [f["name"] for f in self.layout["categorical"]]
        self.multi_names = [f["name"] for f in self.layout["multi_hot"]]
        self._encode_catalogue()

    def _encode_catalogue(self):
        # Per catalogue row: item_id local, each categorical item field's local, and the multi-hot
        # locals and weights, so that encoding the examples is one gather by catalogue row.
        rows = len(self.catalogue_ids)
        item_cat = [f for f in self.item_fields if f["kind"] != "category_list"]
        multi = [f for f in self.item_fields if f["kind"] == "category_list"]
        vocab = {f["name"]: {v: i + 1 for i, v in enumerate(f.get("values", []))} for f in self.item_fields}
        position = {f["name"]: i for i, f in enumerate(self.item_fields)}
        self.cat_item_local = np.zeros((rows, 1 + len(item_cat)), dtype=np.int32)
        self.multi_local = np.zeros((rows, len(multi), self.width), dtype=np.int32)
        self.multi_weight = np.zeros((rows, len(multi), self.width), dtype=np.float32)
        for r in range(rows):
            values = self.catalogue_values[r]
            self.cat_item_local[r, 0] = self.items.get(self.catalogue_ids[r], 0)
            for c, f in enumerate(item_cat, start=1):
                raw = values[position[f["name"]]]
                if f["kind"] == "number":
                    v = parse_double(raw)
                    # lower_bound: bucket b (1-based) holds (boundaries[b-2], boundaries[b-1]].
                    self.cat_item_local[r, c] = 0 if v is None else bisect.bisect_left(f["boundaries"], v) + 1
                else:
                    self.cat_item_local[r, c] = vocab[f["name"]].get(raw, 0)
            for m, f in enumerate(multi):
                locals_ = [vocab[f["name"]].get(v, 0) for v in list_values(values[position[f["name"]]])[:self.width]]
                if not locals_:
                    locals_ = [0]  # a missing list is the field's OOV value
                self.multi_local[r, m, :len(locals_)] = locals_
                self.multi_weight[r, m, :len(locals_)] = 1.0 / len(locals_)

    def encode(self, user_ids, item_ids):
        """Examples for (user id, item id) pairs given as arrays of strings' indices: returns
        categorical [N, F] int32, multi_index [N, M, W] int32, multi_weight [N, M, W] float32 (global
        indices, as Examples holds them) and the per-field OOV counts."""
        catalogue_row = {v: i for i, v in enumerate(self.catalogue_ids)}
        user_local = np.array([self.users.get(u, 0) for u in user_ids[0]], dtype=np.int32)[user_ids[1]]
        row = np.array([catalogue_row.get(i, -1) for i in item_ids[0]], dtype=np.int64)[item_ids[1]]
        if (row < 0).any():
            sys.exit("error: items outside the features.json catalogue; the benchmark expects the same dataset")
        columns = []
        if self.config["user_id"]:
            columns.append(user_local[:, None])
        item_part = self.cat_item_local[row]
        columns.append(item_part if self.config["item_id"] else item_part[:, 1:])
        local = np.concatenate(columns, axis=1)
        offsets = np.array([f["offset"] for f in self.layout["categorical"]], dtype=np.int32)
        assert local.shape[1] == len(offsets), "categorical fields differ from the layout"
        multi_local = self.multi_local[row]
        multi_offsets = np.array([f["offset"] for f in self.layout["multi_hot"]], dtype=np.int32)
        oov = {name: int((local[:, c] == 0).sum()) for c, name in enumerate(self.categorical_names)}
        for m, name in enumerate(self.multi_names):
            oov[name] = int((multi_local[:, m, 0] == 0).sum())  # examples whose first value is OOV
        categorical = local + offsets[None, :]
        multi_index = multi_local + multi_offsets[None, :, None]
        return categorical, multi_index, self.multi_weight[row], oov


# --- the model (docs/CTR.md "Models", src/ctr/models.cpp DcnModel) -------------------------------

class Cross(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d) * (2.0 / (d + 1)) ** 0.5)
        self.bias = torch.nn.Parameter(torch.zeros(d))

    def forward(self, x0, x):
        return x0 * x.matmul(self.weight).unsqueeze(1) + self.bias + x


class Dcn(torch.nn.Module):
    # Parameter names follow the C++ model (embedding.weight, cross.<l>.*, mlp.<i>.*, output.*), so
    # the C++ checkpoint loads with strict=True for the verification.
    def __init__(self, vocabulary, fields, has_multi, k=8, mlp=(16, 16), cross_layers=3, dropout=0.2,
                 sparse=False):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocabulary, k, sparse=sparse)
        torch.nn.init.normal_(self.embedding.weight, 0.0, 0.01)
        d = fields * k
        self.cross = torch.nn.ModuleList([Cross(d) for _ in range(cross_layers)])
        sizes = [d, *mlp]
        self.mlp = torch.nn.ModuleList([torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])])
        self.output = torch.nn.Linear(d + (mlp[-1] if mlp else 0), 1)
        self.dropout = dropout
        self.has_multi = has_multi
        self.sparse = sparse

    def forward(self, categorical, multi_index, multi_weight):
        parts = [self.embedding(categorical)]
        if self.has_multi:
            # One summed bag per example and field, weighted by multi_weight: as the C++ model does.
            b, m, width = multi_index.shape
            pooled = F.embedding_bag(multi_index.reshape(b * m, width), self.embedding.weight, mode="sum",
                                     sparse=self.sparse, per_sample_weights=multi_weight.reshape(b * m, width))
            parts.append(pooled.view(b, m, -1))
        x0 = (parts[0] if len(parts) == 1 else torch.cat(parts, 1)).flatten(1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.mlp:
            h = x0
            for layer in self.mlp:
                h = F.dropout(F.relu(layer(h)), self.dropout, self.training)
            x = torch.cat([x, h], 1)
        return self.output(x).squeeze(1)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + size])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: dtype {info['dtype']}"
        begin, end = info["data_offsets"]
        array = np.frombuffer(data, dtype="<f4", count=(end - begin) // 4, offset=8 + size + begin)
        tensors[name] = torch.from_numpy(array.copy()).reshape(info["shape"])
    return tensors


# --- threads ---------------------------------------------------------------------------------------

def configure_threads(threads):
    # As util::configure_threads in the C++ CLI: ATen's pool at T, one inter-op thread, and
    # OpenBLAS at T too (torch links Debian's OpenBLAS; its own pool is separate from ATen's).
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    # torch loads OpenBLAS privately (not into the global namespace), so ask for it by soname:
    # dlopen of an already loaded library returns that same instance.
    for name in ("libopenblas.so.0", "libblas.so.3"):
        try:
            getattr(ctypes.CDLL(name), "openblas_set_num_threads")(ctypes.c_int(threads))
            return threads
        except (AttributeError, OSError):
            continue
    return "not set (no openblas_set_num_threads: BLAS is not OpenBLAS)"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="dataset directory (with a split)")
    p.add_argument("--features", required=True, help="features.json of the C++ run on the same dataset")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--optimizer", choices=["adam", "sparse_adam"], default="sparse_adam",
                   help="sparse_adam: sparse embedding gradients with torch.optim.SparseAdam on the table and Adam on "
                        "the rest (SparseAdam has no weight decay); adam: dense gradients and one Adam, weight decay "
                        "1e-6 on the table (the C++ side's --embedding-optimizer adam)")
    p.add_argument("--verify-userip", help="userip binary: compare scores with `userip ctr predict`")
    p.add_argument("--verify-model", help="the C++ run's model directory (with --verify-userip)")
    p.add_argument("--verify-pairs", type=int, default=2000)
    args = p.parse_args()
    blas_threads = configure_threads(args.threads)
    torch.manual_seed(args.seed)

    load_start = time.perf_counter()
    ds = load_dataset(args.dataset)
    with open(args.features) as f:
        features = json.load(f)
    encoder = Encoder(features)
    # The catalogue in features.json was copied from this dataset's item fields; if they differ,
    # this is not the dataset the C++ run was fitted on.
    for f in encoder.item_fields:
        column = features["item_fields"].index(f)
        if [v[column] for v in encoder.catalogue_values] != ds["fields"][f["name"]]:
            sys.exit(f"error: item field {f['name']} differs from features.json's catalogue: not the same dataset")
    train_rows = np.nonzero(ds["split"] == 0)[0]
    if ds["manifest"]["label_kind"] == "click":
        label = ds["rating"][train_rows] > 0.5
    else:
        label = ds["rating"][train_rows] >= ds["threshold"]
    cat, mi, mw, oov = encoder.encode((ds["user_ids"], ds["user"][train_rows]), (ds["item_ids"], ds["item"][train_rows]))
    # Compact on the CPU and widened per batch, as Examples / Examples::batch do in C++.
    categorical = torch.from_numpy(np.ascontiguousarray(cat))
    multi_index = torch.from_numpy(np.ascontiguousarray(mi))
    multi_weight = torch.from_numpy(np.ascontiguousarray(mw))
    labels = torch.from_numpy(label.astype(np.float32))
    n = labels.numel()
    load_seconds = time.perf_counter() - load_start

    layout = encoder.layout
    vocabulary = sum(f["size"] for f in layout["categorical"] + layout["multi_hot"])
    fields = len(layout["categorical"]) + len(layout["multi_hot"])
    sparse = args.optimizer == "sparse_adam"
    model = Dcn(vocabulary, fields, bool(layout["multi_hot"]), sparse=sparse)
    embeddings = [model.embedding.weight]
    others = [p for name, p in model.named_parameters() if name != "embedding.weight"]
    if sparse:
        optimizers = [torch.optim.SparseAdam(embeddings, lr=1e-3), torch.optim.Adam(others, lr=1e-3)]
    else:
        optimizers = [torch.optim.Adam([{"params": embeddings, "weight_decay": 1e-6}, {"params": others}], lr=1e-3)]

    batches = (n + args.batch_size - 1) // args.batch_size
    epochs, train_seconds = [], 0.0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n)
        loss_sum = 0.0
        for b in range(batches):
            begin, end = b * args.batch_size, min(n, (b + 1) * args.batch_size)
            rows = order[begin:end]
            # The gather of the batch's rows is inside the timing, as in the C++ loop.
            batch_cat = categorical.index_select(0, rows).long()
            batch_mi = multi_index.index_select(0, rows).long()
            batch_mw = multi_weight.index_select(0, rows)
            batch_label = labels.index_select(0, rows)
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(batch_cat, batch_mi, batch_mw), batch_label)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            value = loss.item()
            if not np.isfinite(value):
                sys.exit(f"error: the loss became {value} at epoch {epoch}, batch {b + 1}")
            loss_sum += value * (end - begin)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        epochs.append({"epoch": epoch, "seconds": seconds, "samples_per_second": n / seconds,
                       "train_loss": loss_sum / n})
        print(f"python epoch {epoch}: train loss {loss_sum / n:.4f}, {n / seconds:.0f} samples/s",
              file=sys.stderr, flush=True)

    result = {
        "command": "ctr_throughput.py",
        "dataset": os.path.abspath(args.dataset),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "blas_threads": blas_threads,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "train_rows": n,
        "epochs": epochs,
        "load_and_encode_seconds": load_seconds,
        "oov_per_field": oov,
        "samples_per_second": n * len(epochs) / train_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.verify_userip:
        result["verify"] = verify(args, ds, encoder, train_rows, vocabulary, fields, layout)
    print(json.dumps(result), flush=True)
    if args.verify_userip and not result["verify"]["equal"]:
        sys.exit(1)


def verify(args, ds, encoder, train_rows, vocabulary, fields, layout):
    """Scores sampled training pairs with this encoding + the C++ weights, and with `userip ctr
    predict` on the C++ model; any index that differed would change the score."""
    if not args.verify_model:
        sys.exit("error: --verify-userip needs --verify-model (the C++ run's --out directory)")
    model = Dcn(vocabulary, fields, bool(layout["multi_hot"]))
    model.load_state_dict(read_safetensors(os.path.join(args.verify_model, "weights.safetensors")), strict=True)
    model.eval()
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(train_rows, size=min(args.verify_pairs, len(train_rows)), replace=False))
    users = [ds["user_ids"][u] for u in ds["user"][sample]]
    items = [ds["item_ids"][i] for i in ds["item"][sample]]
    cat, mi, mw, _ = encoder.encode((ds["user_ids"], ds["user"][sample]), (ds["item_ids"], ds["item"][sample]))
    with torch.no_grad():
        ours = torch.sigmoid(model(torch.from_numpy(cat).long(), torch.from_numpy(mi).long(),
                                   torch.from_numpy(mw))).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        pairs, scores = os.path.join(tmp, "pairs.csv"), os.path.join(tmp, "scores.csv")
        with open(pairs, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user", "item"])
            w.writerows(zip(users, items))
        subprocess.run([args.verify_userip, "--threads", str(args.threads), "--log-level", "warn", "ctr", "predict",
                        "--model", args.verify_model, "--input", pairs, "--out", scores], check=True)
        with open(scores, newline="") as f:
            theirs = np.array([float(r["score"]) for r in csv.DictReader(f)], dtype=np.float64)
    diff = float(np.abs(ours.astype(np.float64) - theirs).max())
    # Identical indices give float32 scores equal to rounding; one wrong index moves a score by
    # orders of magnitude more (the trained rows differ), so the tolerance separates the two.
    return {"pairs": len(sample), "max_abs_diff": diff, "equal": diff < 1e-5,
            "distinct_scores": int(len(np.unique(theirs.round(6))))}


if __name__ == "__main__":
    main()
