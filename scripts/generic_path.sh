#!/usr/bin/env bash
# The check of docs/RESULTS.md, "A dataset the project was not tuned on, through the generic
# path": a synthetic world of another shape than the main job's, exported to CSV with every
# column renamed and reordered, imported through `userip data import`, then pretrained, fitted,
# folded in and compared with every default and no template, as a user with their own CSV would.
# Prints the codes' recovery of the world's latent classes and the CTR table. Stages whose
# outputs exist are reused (delete the run directory to start over).
#
#   scripts/generic_path.sh [--threads N] [--out DIR] [--config CTR_JSON] [--variants "V ..."]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
threads=2
out="$here/runs/generic-path"
config="$here/configs/ctr.json"
variants="base codes dense control-genres control-cf control-history"
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift ;;
    --out) out="$2"; shift ;;
    --config) config="$2"; shift ;;
    --variants) variants="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "generic_path.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
userip=("${USERIP:-$here/build/bin/userip}" --threads "$threads" --log-level warn)
mkdir -p "$out"
cd "$out"

if [ ! -f world/manifest.json ]; then
  "${userip[@]}" data synth --out world --users 1200 --items 800 --taste-classes 4 \
    --background-classes 2 --categories 10 --mean-interactions 30 --synth-seed 11 --seed 11
fi
if [ ! -f csv/events.csv ]; then
  "${userip[@]}" data export --dataset world --out export
  mkdir -p csv
  # New names and a new column order, so that nothing downstream can know the generator's names.
  python3 - <<'EOF'
import csv
def rewrite(src, dst, rename, order):
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(dst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(order)
        inverse = {v: k for k, v in rename.items()}
        for r in rows:
            w.writerow([r[inverse[c]] for c in order])
items = open("export/items.csv").readline().strip().split(",")
events = open("export/interactions.csv").readline().strip().split(",")
item_names = {"item": "sku", "year": "released", "price": "tier", "categories": "labels", "title": "name"}
event_names = {"timestamp": "when", "user": "customer", "item": "sku", "rating": "stars"}
assert set(items) == set(item_names), items
assert set(events) - {"split"} == set(event_names), events  # the import cuts its own split
rewrite("export/items.csv", "csv/products.csv", item_names, ["sku", "released", "tier", "labels", "name"])
rewrite("export/interactions.csv", "csv/events.csv", event_names, ["when", "customer", "sku", "stars"])
EOF
fi
if [ ! -f ds/manifest.json ]; then
  "${userip[@]}" data import --interactions csv/events.csv --items csv/products.csv --out ds \
    --user-column customer --item-column sku --rating-column stars --timestamp-column when \
    --item-id-column sku --seed 11
  cp world/ground_truth.csv ds/
fi
[ -f lm/model.safetensors ] || "${userip[@]}" lm pretrain --dataset ds --out lm
[ -f fit/codes.csv ] || "${userip[@]}" profile fit --dataset ds --model lm --out fit --bank fit-bank.sqlite
[ -f fit-cold/codes.csv ] || "${userip[@]}" profile infer --profile fit --out fit-cold --bank bank-cold.sqlite
"${userip[@]}" profile recovery --profile fit
# shellcheck disable=SC2086
"${userip[@]}" experiment --dataset ds --config "$config" --bank fit-bank.sqlite --bank bank-cold.sqlite \
  --profiles fit --profiles fit-cold --out "exp-$(basename "$config" .json)" --variants $variants
cat "exp-$(basename "$config" .json)/results.md"
