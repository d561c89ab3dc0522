#!/usr/bin/env python3
"""Reference numbers for tests/ctr/reference_test.cpp, computed by PyTorch (Python) code written
apart from the C++ models: plain tensor algebra in float64, the FM pairwise term as an explicit
double sum over field pairs, and autograd for the gradients.

Writes ctr_reference.json beside this file: the field layout and a batch of 4 examples (shared by
every case) and, for each model (lr, fm, deepfm, dcn, dcnv2), its config, every parameter under the
C++ model's name, the expected logits, the mean BCE-with-logits loss and the gradient of that loss
with respect to every parameter.

Parameters and inputs are fixed: drawn from a seeded generator, rounded to 4 decimals and stored
as those decimals, so that the C++ side reads exactly the float32 values used here. The forward
and backward passes run in float64 on those float32 values; the C++ test (float32) compares
within 1e-5 relative + 1e-6 absolute.

Usage (Debian's python3-torch): /usr/bin/python3 tests/ctr/reference/ctr_reference.py
"""
import json
import math
import os

import torch
import torch.nn.functional as F

K = 3            # embedding_dim
MLP = [4, 3]     # hidden sizes
CROSS = 2        # cross layers

# Two categorical fields, one multi-hot field (up to 3 values), a 2-wide dense input.
LAYOUT = {
    "categorical": [
        {"name": "user", "kind": "categorical", "offset": 0, "size": 3},
        {"name": "item", "kind": "categorical", "offset": 3, "size": 2},
    ],
    "multi_hot": [{"name": "genres", "kind": "multi_hot", "offset": 5, "size": 4}],
    "max_values": 3,
    "dense_dim": 2,
    "dense_name": "profile",
}
VOCAB = 9
FIELDS = 4       # 2 categorical + 1 multi-hot + 1 dense
THIRD = 1.0 / 3.0
BATCH = {
    # global indices: user 0..2, item 3..4, genres 5..8 (5 is the genres OOV bucket, also padding)
    "categorical": [[0, 3], [1, 4], [2, 3], [1, 4]],
    "multi_index": [[[6, 7, 5]], [[6, 7, 8]], [[5, 5, 5]], [[8, 5, 5]]],
    "multi_weight": [[[0.5, 0.5, 0.0]], [[THIRD, THIRD, THIRD]], [[1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]],
    "dense": [[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0], [0.0, -0.5]],
    "label": [1.0, 0.0, 0.0, 1.0],
}


def as_input(values, dtype=torch.float64):
    """A float input as the C++ side sees it: rounded to float32, then widened for the reference."""
    return torch.tensor(values, dtype=torch.float32).to(dtype)


class Parameters:
    """Named parameters with fixed values: N(mean, scale^2) draws rounded to 4 decimals."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)
        self.values = {}    # name -> float64 tensor (requires grad)
        self.decimals = {}  # name -> the stored decimals, flattened

    def add(self, name, shape, scale, mean=0.0):
        drawn = mean + torch.randn(shape, generator=self.generator, dtype=torch.float64) * scale
        rounded = [round(v, 4) for v in drawn.flatten().tolist()]
        tensor = as_input(rounded).reshape(shape).requires_grad_(True)
        self.values[name] = tensor
        self.decimals[name] = rounded
        return tensor

    def __getitem__(self, name):
        return self.values[name]


def add_field_embedding(p):
    p.add("embedding.weight", [VOCAB, K], 0.5)
    p.add("dense_projection.weight", [K, LAYOUT["dense_dim"]], 0.5)
    p.add("dense_projection.bias", [K], 0.1)


def add_first_order(p):
    p.add("linear.weight", [VOCAB, 1], 0.3)
    p.add("linear_dense.weight", [1, LAYOUT["dense_dim"]], 0.3)
    p.add("bias", [1], 0.2)


def add_mlp(p, input_size):
    for i, size in enumerate(MLP):
        p.add(f"mlp.{i}.weight", [size, input_size], 1.0 / math.sqrt(input_size))
        p.add(f"mlp.{i}.bias", [size], 0.1, mean=0.3)  # mostly active units: more of the ReLU path is checked
        input_size = size
    return input_size


def pooled(table, batch):
    """Rows of `table` per categorical field [B, F, w] and weighted sums per multi-hot field [B, M, w]."""
    categorical = table[batch["categorical"]]
    multi = (table[batch["multi_index"]] * batch["multi_weight"].unsqueeze(-1)).sum(dim=2)
    return categorical, multi


def field_embeddings(p, batch):
    categorical, multi = pooled(p["embedding.weight"], batch)
    dense = batch["dense"] @ p["dense_projection.weight"].t() + p["dense_projection.bias"]
    return torch.cat([categorical, multi, dense.unsqueeze(1)], dim=1)  # [B, n, k]


def first_order(p, batch):
    categorical, multi = pooled(p["linear.weight"], batch)
    dense = (batch["dense"] @ p["linear_dense.weight"].t()).squeeze(1)
    return p["bias"][0] + categorical.sum(dim=(1, 2)) + multi.sum(dim=(1, 2)) + dense


def fm_pairs(v):
    """sum over field pairs i < j of <v_i, v_j>, written out."""
    total = torch.zeros(v.shape[0], dtype=v.dtype)
    for i in range(v.shape[1]):
        for j in range(i + 1, v.shape[1]):
            total = total + (v[:, i, :] * v[:, j, :]).sum(dim=1)
    return total


def mlp(p, x):
    for i in range(len(MLP)):
        pre = x @ p[f"mlp.{i}.weight"].t() + p[f"mlp.{i}.bias"]
        # Far from the ReLU's kink, so float32 rounding on the C++ side cannot flip a unit.
        assert pre.abs().min().item() > 1e-3, "a hidden unit sits at the ReLU kink: change the seed"
        x = torch.relu(pre)
    return x


def build(kind, p):
    """Registers the parameters of `kind` and returns its forward function."""
    d = FIELDS * K
    if kind == "lr":
        add_first_order(p)
        return lambda b: first_order(p, b)
    if kind == "fm":
        add_field_embedding(p)
        add_first_order(p)
        return lambda b: first_order(p, b) + fm_pairs(field_embeddings(p, b))
    if kind == "deepfm":
        add_field_embedding(p)
        add_first_order(p)
        hidden = add_mlp(p, d)
        p.add("output.weight", [1, hidden], 0.5)

        def deepfm(b):
            v = field_embeddings(p, b)
            deep = (mlp(p, v.reshape(v.shape[0], -1)) @ p["output.weight"].t()).squeeze(1)
            return first_order(p, b) + fm_pairs(v) + deep

        return deepfm
    if kind in ("dcn", "dcnv2"):
        add_field_embedding(p)
        for layer in range(CROSS):
            if kind == "dcn":
                p.add(f"cross.{layer}.weight", [d], 0.3)
            else:
                p.add(f"cross.{layer}.weight", [d, d], 0.3)
            p.add(f"cross.{layer}.bias", [d], 0.1)
        hidden = add_mlp(p, d)
        p.add("output.weight", [1, d + hidden], 0.3)
        p.add("output.bias", [1], 0.1)

        def dcn(b):
            x0 = field_embeddings(p, b).reshape(len(BATCH["label"]), -1)
            x = x0
            for layer in range(CROSS):
                w, bias = p[f"cross.{layer}.weight"], p[f"cross.{layer}.bias"]
                if kind == "dcn":  # x_{l+1} = x0 * (x_l . w) + b + x_l
                    x = x0 * (x @ w).unsqueeze(1) + bias + x
                else:  # x_{l+1} = x0 * (W x_l + b) + x_l
                    x = x0 * (x @ w.t() + bias) + x
            combined = torch.cat([x, mlp(p, x0)], dim=1)
            return (combined @ p["output.weight"].t()).squeeze(1) + p["output.bias"][0]

        return dcn
    raise ValueError(kind)


def flat(tensor):
    return {"shape": list(tensor.shape), "values": [float(f"{v:.10g}") for v in tensor.detach().flatten().tolist()]}


def run_case(kind, seed):
    batch = {
        "categorical": torch.tensor(BATCH["categorical"], dtype=torch.int64),
        "multi_index": torch.tensor(BATCH["multi_index"], dtype=torch.int64),
        "multi_weight": as_input(BATCH["multi_weight"]),
        "dense": as_input(BATCH["dense"]),
        "label": as_input(BATCH["label"]),
    }
    p = Parameters(seed)
    forward = build(kind, p)
    logits = forward(batch)
    loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
    loss.backward()
    # The decimals themselves, not their float32 images: both sides round the same decimal to float32.
    parameters = {name: {"shape": list(t.shape), "values": p.decimals[name]} for name, t in p.values.items()}
    return {
        "name": kind,
        "config": {"kind": kind, "embedding_dim": K, "mlp": MLP, "dropout": 0.0, "cross_layers": CROSS},
        "parameters": parameters,
        "logits": flat(logits)["values"],
        "loss": float(f"{loss.item():.10g}"),
        "gradients": {name: flat(tensor.grad) for name, tensor in p.values.items()},
    }


def dump(value, indent=0):
    """JSON with one line per leaf list or scalar: small and still readable in a diff."""
    pad = " " * indent
    if isinstance(value, dict) and not (set(value) == {"shape", "values"}):
        items = [f'{pad} {json.dumps(k)}: {dump(v, indent + 1)}' for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        items = [f"{pad} {dump(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, separators=(",", ":"))


def main():
    document = {
        "generated_by": "python3 tests/ctr/reference/ctr_reference.py (PyTorch " + torch.__version__ + ", float64)",
        "layout": LAYOUT,
        "batch": BATCH,
        "cases": [run_case(kind, seed) for seed, kind in enumerate(["lr", "fm", "deepfm", "dcn", "dcnv2"], start=1)],
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ctr_reference.json")
    with open(out, "w") as f:
        f.write(dump(document) + "\n")
    json.load(open(out))  # the hand-rolled layout must still be JSON
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
