#!/usr/bin/env bash
# The HTTP layer's latency floor: bench/http_floor (a constant 1.5 KB JSON answer, no handler) on
# cpp-httplib and on libmicrohttpd, both running, loaded in turn by wrk with bench/wrk/score.lua at
# a fixed rate (16 connections, Poisson arrivals, 100-candidate bodies), R times each. Prints one
# line per measurement and the median p50 / p99 of each server. Results: docs/BENCHMARKS.md.
#
#   scripts/bench/http_floor.sh [--rate 1000] [--repeats 3] [--duration 20] [--microhttpd-threads 1]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
floor="$root/build/bench/http_floor"
rate=1000 repeats=3 duration=20 mhd_threads=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate) rate="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --microhttpd-threads) mhd_threads="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x "$floor" ]] || { echo "error: $floor is not built (ninja -C build http_floor)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "error: wrk is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
seq 1 600 | sed 's/^/u/' >"$work/users.txt"
seq 1 5000 | sed 's/^/i/' >"$work/items.txt"
"$floor" --server httplib --port 18941 & pids+=($!)
"$floor" --server microhttpd --port 18942 --threads "$mhd_threads" & pids+=($!)
sleep 1
per_connection=$(awk -v r="$rate" 'BEGIN { printf "%.6f", r / 16 }')
load() {  # port, seconds
  wrk -t 1 -c 16 -d "${2}s" --timeout 10s -s "$root/bench/wrk/score.lua" "http://127.0.0.1:$1" -- \
    "$work/users.txt" "$work/items.txt" 100 "$per_connection" /v1/score | grep '^RESULT'
}
for r in $(seq 1 "$repeats"); do
  for server in httplib:18941 microhttpd:18942; do
    load "${server#*:}" 3 >/dev/null
    echo "${server%%:*} $(load "${server#*:}" "$duration")"
  done
done | tee "$work/results"
awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "p50_ms") p50[$1] = p50[$1] " " kv[2]; if (kv[1] == "p99_ms") p99[$1] = p99[$1] " " kv[2] } }
  function median(list,   a, n, i, j, t) { n = split(list, a, " ");
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  END { for (s in p50) printf "%s: median p50 %.3f ms, p99 %.3f ms\n", s, median(p50[s]), median(p99[s]) }' "$work/results"
