#!/usr/bin/env bash
# The main job on the embedded defaults, from a fresh Debian 12 machine: installs and builds
# what is missing, exports MovieLens ml-latest-small from Debian's r-cran-dslabs into the
# project's dataset format with the default split, prints its statistics, pretrains the
# default LM on the training split (or reuses it, or uses the checkpoint given with --model),
# fits every training user's profile with the default template made from the dataset's fields,
# publishes the codes as a SQLite feature bank, folds in the cold users, explains the codes, runs
# the CTR experiment (DCN and DeepFM, 5 seeds, configs/ctr.json), writes the HTML report and trains the DCN with
# profile codes that `userip serve` serves (printing the command). Every stage reuses its
# outputs when its inputs and options are unchanged. Outputs go to runs/movielens/ (override with
# USERIP_RUN_DIR).
#
#   scripts/run_pipeline.sh [--threads N] [--seed S] [--model HF_DIR_OR_GGUF]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
threads=0
seed=42
model=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift ;;
    --seed) seed="$2"; shift ;;
    --model) model="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run_pipeline.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done

bash "$here/scripts/setup.sh" --build-dir "$here/build" --target userip_cli
userip=("$here/build/bin/userip" --threads "$threads")
run_dir="${USERIP_RUN_DIR:-$here/runs/movielens}"
mkdir -p "$run_dir"

dataset="$run_dir/dataset"
if [ -f "$dataset/manifest.json" ] && [ -f "$dataset/split.json" ] &&
   grep -q "\"seed\": $seed," "$dataset/split.json"; then
  echo "== dataset: $dataset exists with split seed $seed, reusing it"
else
  echo "== dataset: exporting MovieLens ml-latest-small from r-cran-dslabs"
  "${userip[@]}" data movielens --out "$dataset" --seed "$seed"
fi

echo "== dataset statistics"
"${userip[@]}" data stats --dataset "$dataset" | tee "$run_dir/dataset_stats.txt"
"${userip[@]}" data stats --dataset "$dataset" --json > "$run_dir/dataset_stats.json"

if [ -z "$model" ]; then
  model="$run_dir/lm"
  echo "== default LM: pretraining on the training split (reused when corpus and options are unchanged)"
  "${userip[@]}" lm pretrain --dataset "$dataset" --out "$model" --seed "$seed"
fi
echo "== language model"
"${userip[@]}" lm info --model "$model"

echo "== profiles: EM over the frozen LM, codebooks, feature bank (reused when nothing changed)"
"${userip[@]}" profile fit --dataset "$dataset" --model "$model" --out "$run_dir/profiles" \
  --bank "$run_dir/bank.sqlite" --seed "$seed"
"${userip[@]}" bank info "$run_dir/bank.sqlite"

echo "== cold users: fold-in (codes by likelihood over their cold history; LM and codebooks frozen)"
"${userip[@]}" profile infer --profile "$run_dir/profiles" --out "$run_dir/profiles-cold" \
  --bank "$run_dir/bank-cold.sqlite"

echo "== what the codes mean"
"${userip[@]}" profile explain --profile "$run_dir/profiles" | tee "$run_dir/profiles/explanations.txt"
"${userip[@]}" --log-level warn profile explain --profile "$run_dir/profiles" --json \
  > "$run_dir/profiles/explanations.jsonl"

echo "== CTR experiment: base, UserIP codes, UserIP dense profiles and three no-LM controls (unchanged runs are reused)"
mkdir -p "$run_dir/experiment"
"${userip[@]}" experiment --dataset "$dataset" --config "$here/configs/ctr.json" \
  --bank "$run_dir/bank.sqlite" --bank "$run_dir/bank-cold.sqlite" \
  --profiles "$run_dir/profiles" --profiles "$run_dir/profiles-cold" \
  --out "$run_dir/experiment" | tee "$run_dir/experiment/table.txt"

echo "== report"
"${userip[@]}" report --experiment "$run_dir/experiment" --lm "$model" --profiles "$run_dir/profiles" \
  --explanations "$run_dir/profiles/explanations.jsonl" --out "$run_dir/report.html"

echo "== the model to serve: DCN with the profile codes (retrained when the dataset or a bank changed)"
serving="$run_dir/serving/dcn-codes"
if [[ -f "$serving/ctr_model.json" && "$serving/ctr_model.json" -nt "$run_dir/bank.sqlite" &&
      "$serving/ctr_model.json" -nt "$run_dir/bank-cold.sqlite" && "$serving/ctr_model.json" -nt "$dataset/manifest.json" ]]; then
  echo "$serving: up to date; reusing it"
else
  "${userip[@]}" --log-level warn ctr train --dataset "$dataset" --config "$here/configs/ctr.json" --kind dcn \
    --seed "$seed" --bank "$run_dir/bank.sqlite" --bank "$run_dir/bank-cold.sqlite" --out "$serving"
fi

echo
echo "results table: $run_dir/experiment/results.md"
echo "report:        $run_dir/report.html"
echo "outputs in $run_dir"
echo "serve it:      $here/build/bin/userip serve --model $serving --bank $run_dir/bank.sqlite \\
                 --bank $run_dir/bank-cold.sqlite --explanations $run_dir/profiles/explanations.jsonl"
