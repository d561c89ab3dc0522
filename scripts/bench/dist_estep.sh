#!/usr/bin/env bash
# The profile fit's E-step at world sizes 1 and 2 on this host, back to back in one invocation:
#   one process, --threads 1;  one process, --threads 2 (two batches side by side);
#   `userip launch --nproc-per-node 2` with one thread per rank.
# Each runs `profile fit --rounds R --codes-by distance --no-bank` on DATASET with MODEL and reports
# wall time, label tokens through the LM (log.jsonl) and, for the launched run, the seconds its
# ranks spent in the collectives that share the E-step's results. Results: docs/BENCHMARKS.md.
#
#   scripts/bench/dist_estep.sh [--rounds R] [--out DIR] [--userip PATH] DATASET MODEL
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
USERIP="${USERIP:-$root/build/bin/userip}"
rounds=2 out=/tmp/userip-dist-bench
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --userip) USERIP="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ ${#args[@]} -eq 2 ]] || { echo "usage: $0 [--rounds R] [--out DIR] [--userip PATH] DATASET MODEL" >&2; exit 2; }
dataset="${args[0]}" model="${args[1]}"
rm -rf "$out" && mkdir -p "$out"
fit=(profile fit --dataset "$dataset" --model "$model" --rounds "$rounds" --codes-by distance --no-bank)

run() {  # name, command...
  local name="$1"; shift
  local start end
  start=$(date +%s.%N)
  "$@" --out "$out/$name" > "$out/$name.log" 2>&1
  end=$(date +%s.%N)
  local tokens
  tokens=$(python3 -c "import json,sys; print(sum(json.loads(l)['tokens'] for l in open(sys.argv[1])))" "$out/$name/log.jsonl")
  local sharing
  sharing=$( (grep -o '[0-9.]* s of the E-step in the collectives' "$out/$name.log" || true) | awk '{s+=$1} END {if (NR) printf "%.1f s", s; else print "-"}')
  python3 -c "import sys; n, w, t, s = sys.argv[1], float(sys.argv[3]) - float(sys.argv[2]), int(sys.argv[4]), sys.argv[5]
print(f'{n:<22} wall {w:7.1f} s  label tokens {t:9d}  {t / w:8.0f} tokens/s  in collectives {s}')" \
    "$name" "$start" "$end" "$tokens" "$sharing"
}

run one-process-1-thread "$USERIP" --threads 1 --log-level info "${fit[@]}"
run one-process-2-threads "$USERIP" --threads 2 --log-level info "${fit[@]}"
run launch-2-ranks "$USERIP" launch --nproc-per-node 2 --threads-per-rank 1 -- "$USERIP" --log-level info "${fit[@]}"
for name in one-process-2-threads launch-2-ranks; do
  if cmp -s "$out/one-process-1-thread/codes.csv" "$out/$name/codes.csv"; then
    echo "$name: codes identical to one-process-1-thread"
  else
    echo "$name: codes differ from one-process-1-thread (expected only where the thread counts differ)"
  fi
done
