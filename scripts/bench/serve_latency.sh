#!/usr/bin/env bash
# Serving latency and throughput: `userip serve` on loopback under wrk (bench/wrk/score.lua), for
# 1 and 100 candidate items per request, at fixed request rates and at saturation, with the DCN
# that reads the feature bank's profile codes beside the same DCN without them (base), and
# optionally the fold-in endpoint (a profile computed through the LM per request). Results:
# docs/BENCHMARKS.md ("Serving").
#
#   scripts/bench/serve_latency.sh [--run-dir DIR] [--out DIR] [--duration S] [--rates "R1 R2 ..."]
#                                  [--connections C] [--workers W] [--candidates "1 100"] [--fold-in]
#                                  [--userip PATH] [--compare R] [--port P]
#
# --compare R: instead of the sweep, run the base and codes servers side by side (two ports) and
# alternate 100-candidate measurements at 1,000 requests/s between them R times, then print the
# median p50 and p99 of each and their ratio: what the profile lookup (and the code fields in the
# model) add to base scoring, with the machine's drift shared by both.
#
# --run-dir (default runs/movielens) is a main-job output: dataset/, bank.sqlite, bank-cold.sqlite,
# lm/ and profiles/. The two models are trained once into --out (default /tmp/userip-serve-bench;
# derived from MovieLens, so never inside the repository) and reused. Fixed rates are offered by C
# connections (default 16) each waiting 1000*C/R ms between requests; saturation uses C connections
# with no wait. One line per measurement goes to OUT/results.tsv and the terminal. --workers is the
# server's event loops (default: its own, one per core). --port (default 18931; --compare also uses
# the next one) lets two binaries be measured in turn without waiting for the first one's TIME_WAIT
# connections to expire.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
USERIP="${USERIP:-$root/build/bin/userip}"
run_dir="$root/runs/movielens" out=/tmp/userip-serve-bench duration=20 rates="200 500 1000"
connections=16 workers="" candidates="1 100" fold_in=0 compare=0 port=18931

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --run-dir) run_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --rates) rates="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --candidates) candidates="$2"; shift 2 ;;
    --fold-in) fold_in=1; shift ;;
    --compare) compare="$2"; shift 2 ;;
    --userip) USERIP="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -x "$USERIP" ]] || { echo "error: $USERIP is not built (ninja -C build userip_cli, or set USERIP)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "error: wrk is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
for f in dataset bank.sqlite bank-cold.sqlite; do
  [[ -e "$run_dir/$f" ]] || { echo "error: $run_dir/$f is missing: run the main job (scripts/run_pipeline.sh) first" >&2; exit 1; }
done
mkdir -p "$out"
banks=(--bank "$run_dir/bank.sqlite" --bank "$run_dir/bank-cold.sqlite")

train() {  # name, extra args...
  local name="$1"; shift
  if [[ ! -f "$out/$name/ctr_model.json" ]]; then
    echo "== training the $name DCN (once) into $out/$name"
    "$USERIP" --threads 2 --log-level warn ctr train --dataset "$run_dir/dataset" --kind dcn --seed 1 \
      --config "$root/configs/ctr.json" --out "$out/$name" "$@" >/dev/null
  fi
}
train codes "${banks[@]}"
train base --profile-input none

# Candidates and users: the codes model's vocabularies (users who have a bank entry, items it knows).
/usr/bin/python3 - "$out/codes/features.json" "$out" <<'PY'
import json, sys
features = json.load(open(sys.argv[1]))
open(sys.argv[2] + "/users.txt", "w").write("\n".join(features["users"]) + "\n")
open(sys.argv[2] + "/items.txt", "w").write("\n".join(features["items"]) + "\n")
PY

server_pid=""
start_server() {  # args...
  local worker_args=()
  [[ -n "$workers" ]] && worker_args=(--workers "$workers")
  "$USERIP" --log-level warn serve --port "$port" "${worker_args[@]}" "$@" >"$out/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: the server did not become ready" >&2; exit 1
}
stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || { echo "error: the server exited with status $?" >&2; exit 1; }
}
trap '[[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true' EXIT

results="$out/results.tsv"
[[ -f "$results" ]] || echo -e "date\tmodel\troute\tcandidates\toffered_rps\tconnections\trps\tp50_ms\tp90_ms\tp99_ms\tmax_ms\terrors" >"$results"
measure() {  # model, route, candidates, rate (0 = saturation), connections
  local model="$1" route="$2" n="$3" rate="$4" c="$5" per_connection=0
  [[ "$rate" != 0 ]] && per_connection=$(awk -v r="$rate" -v c="$c" 'BEGIN { printf "%.6f", r / c }')
  # Warm-up, then the measurement. wrk's timers oversleep by a millisecond or so per wait, so a
  # fixed rate is calibrated on the warm-up: the per-connection rate is scaled by offered/achieved.
  local warm
  warm=$(wrk -t 1 -c "$c" -d 3s -s "$root/bench/wrk/score.lua" "http://127.0.0.1:$port" -- \
    "$out/users.txt" "$out/items.txt" "$n" "$per_connection" "$route" | grep '^RESULT' | sed -E 's/.* rps=([0-9.]+) .*/\1/')
  if [[ "$rate" != 0 ]]; then
    per_connection=$(awk -v p="$per_connection" -v r="$rate" -v a="$warm" \
      'BEGIN { f = (a > 0) ? r / a : 1; if (f > 3) f = 3; if (f < 1) f = 1; printf "%.6f", p * f }')
  fi
  local line
  line=$(wrk -t 1 -c "$c" -d "${duration}s" --timeout 10s -s "$root/bench/wrk/score.lua" "http://127.0.0.1:$port" -- \
    "$out/users.txt" "$out/items.txt" "$n" "$per_connection" "$route" | grep '^RESULT')
  local values
  values=$(echo "$line" | sed -E 's/RESULT requests=([0-9]+) seconds=([0-9.]+) rps=([0-9.]+) p50_ms=([0-9.]+) p90_ms=([0-9.]+) p99_ms=([0-9.]+) max_ms=([0-9.]+) errors=([0-9]+)/\3\t\4\t\5\t\6\t\7\t\8/')
  local offered="$rate"
  [[ "$rate" == 0 ]] && offered=saturation
  echo -e "$(date -u +%FT%TZ)\t$model\t$route\t$n\t$offered\t$c\t$values" | tee -a "$results"
}

if [[ "$compare" -gt 0 ]]; then
  start_server --model "$out/base"; base_pid=$server_pid
  port=$((port + 1)); start_server --model "$out/codes" "${banks[@]}"; codes_pid=$server_pid
  base_port=$((port - 1)) codes_port=$port
  for r in $(seq 1 "$compare"); do
    port=$base_port; measure base /v1/score 100 1000 "$connections"
    port=$codes_port; measure codes /v1/score 100 1000 "$connections"
  done | tee "$out/compare.tsv"
  kill -TERM "$base_pid" "$codes_pid"; wait "$base_pid" "$codes_pid"; server_pid=""
  awk -F'\t' '{ p50[$2] = p50[$2] " " $8; p99[$2] = p99[$2] " " $10 }
    function median(list,   a, n, i, j, t) { n = split(list, a, " ");
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    END { b50 = median(p50["base"]); c50 = median(p50["codes"]); b99 = median(p99["base"]); c99 = median(p99["codes"]);
      printf "median of %d pairs: base p50 %.3f ms p99 %.3f ms; codes p50 %.3f ms p99 %.3f ms; codes/base p50 %.3f, p99 %.3f\n",
        split(p50["base"], x, " "), b50, b99, c50, c99, c50 / b50, c99 / b99 }' "$out/compare.tsv"
  exit 0
fi

for model in base codes; do
  if [[ "$model" == codes ]]; then start_server --model "$out/codes" "${banks[@]}"; else start_server --model "$out/base"; fi
  for n in $candidates; do
    for rate in $rates; do measure "$model" /v1/score "$n" "$rate" "$connections"; done
    measure "$model" /v1/score "$n" 0 "$connections"
  done
  stop_server
done

if [[ "$fold_in" == 1 ]]; then
  # One fold-in at a time (the server serialises them): a history of 20 items per request.
  start_server --model "$out/codes" "${banks[@]}" --lm "$run_dir/lm" --profile "$run_dir/profiles"
  measure fold-in /v1/users/{id}/profile:infer 20 0 1
  stop_server
fi
echo "results: $results"
