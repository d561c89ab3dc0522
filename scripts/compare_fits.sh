#!/usr/bin/env bash
# Are two builds' profile fits the same? Fits a small synthetic world with each `userip` binary in
# three modes (alternating; alternating with refinement and split-and-merge; joint), the second one
# also stopped after a few batches and resumed, and compares every output file: tensors and CSVs
# byte for byte, JSON and JSON lines with the timing fields (seconds, resumed) left out. For
# refactorings that must not change a result.
#
#   scripts/compare_fits.sh OLD_USERIP NEW_USERIP WORK_DIR
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,8p' "$0"; exit 2; }
old=("$1" --threads 1 --log-level warn)
new=("$2" --threads 1 --log-level warn)
mkdir -p "$3" && cd "$3"
[ -d world ] || "${new[@]}" data synth --users 240 --items 200 --out world > /dev/null
[ -d lm ] || "${new[@]}" lm pretrain --dataset world --out lm --steps 80 --probe-cases 0 > /dev/null 2>&1
common=(--dataset world --model lm --no-bank --rounds 2 --max-tokens 48 --samples-per-user 4)
status=0
for mode in alternating refine joint; do
  case $mode in
    alternating) extra=() ;;
    refine) extra=(--refine-rounds 3 --merge-margin-ratio 0.5) ;;
    joint) extra=(--mode joint) ;;
  esac
  "${old[@]}" profile fit "${common[@]}" "${extra[@]}" --out "old-$mode" > /dev/null 2>&1
  "${new[@]}" profile fit "${common[@]}" "${extra[@]}" --out "new-$mode" > /dev/null 2>&1
  "${new[@]}" profile fit "${common[@]}" "${extra[@]}" --out "resumed-$mode" --stop-after-batches 7 > /dev/null 2>&1
  "${new[@]}" profile fit "${common[@]}" "${extra[@]}" --out "resumed-$mode" > /dev/null 2>&1
  for file in $(ls "old-$mode"); do
    for other in "new-$mode" "resumed-$mode"; do
      case $file in
        *.json|*.jsonl) same=$(python3 - "old-$mode/$file" "$other/$file" <<'PY'
import json, sys
def strip(x):
    if isinstance(x, dict): return {k: strip(v) for k, v in x.items() if k not in ("seconds", "resumed")}
    if isinstance(x, list): return [strip(v) for v in x]
    return x
def load(path):
    text = open(path).read()
    try: return strip(json.loads(text))
    except ValueError: return [strip(json.loads(line)) for line in text.splitlines() if line.strip()]
print("yes" if load(sys.argv[1]) == load(sys.argv[2]) else "no")
PY
) ;;
        *) cmp -s "old-$mode/$file" "$other/$file" && same=yes || same=no ;;
      esac
      if [ "$same" = yes ]; then echo "same     $other/$file"; else echo "DIFFERS  $other/$file"; status=1; fi
    done
  done
done
exit $status
