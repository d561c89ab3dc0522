#!/usr/bin/env bash
# CTR training throughput: `userip ctr train --kind dcn` against the same DCN in PyTorch Python
# (scripts/bench/ctr_throughput.py), on the same examples, batch size and thread count, measured
# back to back in one invocation so that both see the same machine state. Results: docs/BENCHMARKS.md.
#
#   scripts/bench/ctr_throughput.sh [--threads T] [--epochs E] [--repeats R] [--out DIR] [--userip PATH]
#                                   [--optimizer sparse|dense] [--no-verify] DATASET...
#
# --optimizer sparse (default): C++ `--embedding-optimizer lazy_adam` against Python's sparse embedding
# with torch.optim.SparseAdam on it and Adam on the rest; dense: Adam over every row on both sides.
#
# USERIP or --userip (default build/bin/userip) is the CLI to measure; PYTHON (default /usr/bin/python3, Debian's
# interpreter where python3-torch lives; a pyenv `python3` on PATH has no torch) runs the Python side.
# Each repeat runs C++ then Python; with R > 1 the medians are printed too, since on a shared machine a
# single pair can be skewed by whatever else runs. The first repeat of each dataset also checks that
# the Python encoding and model reproduce the C++ scores (ctr_throughput.py --verify-*).
# Outputs (models, logs, results.jsonl) go to --out (default /tmp/userip-ctr-bench): they are derived
# from the datasets, which must not end up in the repository.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
USERIP="${USERIP:-$root/build/bin/userip}"
PYTHON="${PYTHON:-/usr/bin/python3}"
threads=2 epochs=1 repeats=1 out=/tmp/userip-ctr-bench verify=1 optimizer=sparse
datasets=()

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --userip) USERIP="$2"; shift 2 ;;
    --optimizer) optimizer="$2"; shift 2 ;;
    --no-verify) verify=0; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) datasets+=("$1"); shift ;;
  esac
done
[[ ${#datasets[@]} -gt 0 ]] || { usage >&2; exit 2; }
case "$optimizer" in
  sparse) cpp_optimizer=lazy_adam py_optimizer=sparse_adam ;;
  dense) cpp_optimizer=adam py_optimizer=adam ;;
  *) echo "error: --optimizer must be sparse or dense, got $optimizer" >&2; exit 2 ;;
esac
[[ -x "$USERIP" ]] || { echo "error: $USERIP is not built (ninja -C build userip_cli, or set USERIP)" >&2; exit 1; }
"$PYTHON" -c 'import torch' 2>/dev/null || { echo "error: $PYTHON has no torch (apt-get install python3-torch)" >&2; exit 1; }
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"

load1() { cut -d' ' -f1 /proc/loadavg; }
# A JSON field of a file's last line; the value of a missing key is an error, not an empty cell.
field() { "$PYTHON" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])[sys.argv[2]])' "$1" "$2"; }

echo "userip: $USERIP   python: $PYTHON (torch $("$PYTHON" -c 'import torch;print(torch.__version__)'))"
echo "threads $threads, epochs $epochs, batch 512, repeats $repeats, $(nproc) cores, embedding optimizer: C++ $cpp_optimizer, Python $py_optimizer"
for dataset in "${datasets[@]}"; do
  [[ -f "$dataset/split.json" ]] || { echo "error: $dataset has no split (userip data split --dataset $dataset)" >&2; exit 1; }
  tag="$(basename "$(dirname "$(realpath "$dataset")")")-$(basename "$(realpath "$dataset")")"
  for ((r = 1; r <= repeats; ++r)); do
    run="$out/$tag/$r"
    rm -rf "$run" && mkdir -p "$run"
    load_before=$(load1)
    /usr/bin/time -f %M -o "$run/cpp.maxrss_kib" \
      "$USERIP" --threads "$threads" ctr train --dataset "$dataset" --out "$run/model" --kind dcn --epochs "$epochs" \
      --embedding-optimizer "$cpp_optimizer" \
      > "$run/cpp.json" 2> "$run/cpp.log"
    cpp_sps=$(field "$run/cpp.json" samples_per_second)
    # Early stopping may end the C++ run before --epochs; Python then runs as many epochs.
    cpp_epochs=$(grep -c . "$run/model/log.jsonl")
    load_mid=$(load1)
    verify_args=()
    if [[ $verify -eq 1 && $r -eq 1 ]]; then verify_args=(--verify-userip "$USERIP" --verify-model "$run/model"); fi
    OPENBLAS_NUM_THREADS="$threads" /usr/bin/time -f %M -o "$run/py.maxrss_kib" \
      "$PYTHON" "$here/ctr_throughput.py" --dataset "$dataset" --features "$run/model/features.json" \
      --threads "$threads" --epochs "$cpp_epochs" --optimizer "$py_optimizer" "${verify_args[@]}" > "$run/py.json" 2> "$run/py.log"
    py_sps=$(field "$run/py.json" samples_per_second)
    rows=$(field "$run/py.json" train_rows)
    load_after=$(load1)
    "$PYTHON" - "$results" <<EOF
import json, sys
py = json.loads(open("$run/py.json").read().strip().splitlines()[-1])
row = {"dataset": "$dataset", "repeat": $r, "optimizer": "$optimizer", "threads": $threads, "epochs": $cpp_epochs, "train_rows": $rows,
       "cpp_samples_per_second": $cpp_sps, "python_samples_per_second": $py_sps,
       "ratio_cpp_over_python": $cpp_sps / $py_sps,
       "cpp_epoch_samples_per_second": [json.loads(l)["samples_per_second"] for l in open("$run/model/log.jsonl")],
       "python_epoch_samples_per_second": [e["samples_per_second"] for e in py["epochs"]],
       "cpp_peak_rss_mib": int(open("$run/cpp.maxrss_kib").read().split()[-1]) / 1024,
       "python_peak_rss_mib": int(open("$run/py.maxrss_kib").read().split()[-1]) / 1024,
       "load_average_1min": [$load_before, $load_mid, $load_after], "verify": py.get("verify")}
open(sys.argv[1], "a").write(json.dumps(row) + "\n")
EOF
    if [[ $verify -eq 1 && $r -eq 1 ]]; then
      "$PYTHON" - "$run/py.json" "$dataset" <<'EOF'
import json, sys
v = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["verify"]
verdict = "same" if v["equal"] else "DIFFERENT"
print(f"verify {sys.argv[2]}: {v['pairs']} training pairs scored by `userip ctr predict` and by the Python "
      f"encoding + model with the C++ weights: max |diff| {v['max_abs_diff']:.1e} -> {verdict}")
EOF
    fi
  done
done

"$PYTHON" - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print("| dataset | training rows | epochs | C++ samples/s | Python samples/s | C++ / Python | load avg (before, between, after) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    load = ", ".join(f"{x:.2f}" for x in r["load_average_1min"])
    print(f"| {r['dataset']} (#{r['repeat']}) | {r['train_rows']:,} | {r['epochs']} | {r['cpp_samples_per_second']:,.0f} | "
          f"{r['python_samples_per_second']:,.0f} | {r['ratio_cpp_over_python']:.2f} | {load} |")
by_dataset = {}
for r in rows:
    by_dataset.setdefault(r["dataset"], []).append(r)
if any(len(v) > 1 for v in by_dataset.values()):
    print()
    print("| dataset | repeats | median C++ samples/s | median Python samples/s | median of per-pair ratios |")
    print("|---|---|---|---|---|")
    for name, v in by_dataset.items():
        med = lambda key: statistics.median(x[key] for x in v)
        print(f"| {name} | {len(v)} | {med('cpp_samples_per_second'):,.0f} | {med('python_samples_per_second'):,.0f} | "
              f"{med('ratio_cpp_over_python'):.2f} |")
print(f"\nper-run details (per-epoch samples/s, peak RSS, verification): {sys.argv[1]}")
EOF
