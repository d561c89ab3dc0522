#!/usr/bin/env bash
# The frozen-LM soft-prompt step, GPT-2-small shape: build/bench/lm_bench's rows (float32 and bfloat16,
# each beside its GEMM peak) and the Python peer (PyTorch eager, Debian's python3-torch), back to
# back in one invocation so that both see the same machine state. Results: docs/BENCHMARKS.md.
#
#   scripts/bench/lm_step.sh [--threads T] [--repeats R] [--peer PATH]
#
# --peer (default ../shared/bench/peer_step.py beside the checkout) is the Python step; its tokens/s
# is 8 × 68 tokens over its median step time. PYTHON (default /usr/bin/python3, where python3-torch
# lives) runs it. Each repeat runs C++ then Python.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
threads=2 repeats=1 peer="$root/../shared/bench/peer_step.py"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --peer) peer="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
bench="$root/build/bench/lm_bench"
[[ -x "$bench" ]] || { echo "error: $bench not built (scripts/setup.sh builds the benchmarks)" >&2; exit 1; }
[[ -f "$peer" ]] || { echo "error: $peer: no Python peer there (--peer PATH)" >&2; exit 1; }
"$PYTHON" -c "import torch" 2>/dev/null || { echo "error: $PYTHON has no torch (apt-get install python3-torch)" >&2; exit 1; }

for ((r = 1; r <= repeats; r++)); do
  echo "== repeat $r: C++ (lm_bench, --threads $threads)"
  USERIP_BENCH_THREADS="$threads" "$bench" \
    --benchmark_filter='GemmPeak(_bf16)?/2048|gpt2_small(_bf16)?/aten1:1' 2>&1 | grep -E '^BM_'
  echo "== repeat $r: Python peer ($peer, $threads threads)"
  line="$("$PYTHON" "$peer" "$threads")"
  echo "$line"
  median="$(sed -n 's/.*median(after warmup)=\([0-9.]*\).*/\1/p' <<<"$line")"
  [[ -n "$median" ]] && awk -v m="$median" 'BEGIN { printf "peer tokens/s=%.1f\n", 8 * 68 / m }'
done
