#!/usr/bin/env bash
# Row-sharded CTR tables (`ctr train --shard-tables`): peak memory and throughput of one epoch of an
# FM whose tables dominate (a synthetic world with U users, so U + items rows, of width D), trained
#   1. in one process with whole tables,
#   2. in one process with sharded tables (the exchange's cost alone),
#   3. by W ranks with sharded tables (each rank's peak; rank 0 also assembles and saves the model).
# The three runs use --shards W, so runs 2 and 3 must save the same bytes (checked). A baseline run
# with D = 8 gives the memory that is not the tables (dataset, encoded examples, libraries).
# Results: docs/BENCHMARKS.md, "Row-sharded tables".
#
#   scripts/bench/sharded_tables.sh [--users 500000] [--dim 256] [--ranks 2]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
users=500000 dim=256 ranks=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --users) users="$2"; shift 2 ;;
    --dim) dim="$2"; shift 2 ;;
    --ranks) ranks="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x "$root/build/bin/userip" ]] || { echo "error: build/bin/userip is not built (scripts/setup.sh)" >&2; exit 1; }
export PATH="$root/build/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
userip data synth --out "$work/world" --users "$users" --items 5000 --mean-interactions 8 >/dev/null
config() {  # embedding width
  echo "{\"base\": {\"model\": {\"kind\": \"fm\", \"embedding_dim\": $1},
         \"train\": {\"max_epochs\": 1, \"batch_size\": 2048, \"learning_rate\": 0.003}}}" >"$work/fm$1.json"
}
config 8
config "$dim"
train() {  # label, embedding width, output, extra arguments...
  local label="$1" width="$2" out="$3"
  shift 3
  /usr/bin/time -f "$label: %M kB peak RSS, %e s" userip --threads 1 ctr train --dataset "$work/world" \
    --config "$work/fm$width.json" --shards "$ranks" --out "$work/$out" "$@" >"$work/$out.log" 2>&1
  tail -1 "$work/$out.log"
  grep -o '[0-9]* samples/s' "$work/$out.log" | head -1
}
train "baseline, whole tables, D=8" 8 base
train "one process, whole tables, D=$dim" "$dim" whole
train "one process, sharded tables, D=$dim" "$dim" one --shard-tables
userip launch --nproc-per-node "$ranks" --threads-per-rank 1 -- /usr/bin/time -f "one of $ranks ranks, sharded tables, D=$dim: %M kB peak RSS, %e s" \
  userip ctr train --dataset "$work/world" --config "$work/fm$dim.json" --shards "$ranks" --shard-tables \
  --out "$work/ranks" >"$work/ranks.log" 2>&1
grep "peak RSS" "$work/ranks.log"
grep -o '[0-9]* samples/s' "$work/ranks.log" | head -1
cmp -s "$work/one/weights.safetensors" "$work/ranks/weights.safetensors" &&
  echo "sharded weights: the same bytes in one process and across $ranks ranks" ||
  { echo "error: the sharded weights differ between one process and $ranks ranks" >&2; exit 1; }
