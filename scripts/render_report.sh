#!/usr/bin/env bash
# Renders a `userip report` page in headless Chromium: a PNG of the whole page and the DOM after the
# page's scripts ran; fails when the page reports a script error or leaves a plot undrawn.
#
#   scripts/render_report.sh REPORT.html [OUT.png] [--dom FILE] [--width PX] [--budget-ms MS]
#
# OUT.png defaults to REPORT.png beside the page; --dom keeps the rendered DOM (default: dropped).
# Exit status: 0 rendered and checked; 1 script errors, undrawn plots or a browser failure;
# 2 bad usage; 3 no Chromium (install it with scripts/setup.sh). CHROMIUM overrides the browser.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

html="" png="" dom="" width=1400 budget_ms=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --dom) dom="$2"; shift ;;
    --width) width="$2"; shift ;;
    --budget-ms) budget_ms="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "render_report: unknown option '$1'" >&2; exit 2 ;;
    *)
      if [ -z "$html" ]; then html="$1"
      elif [ -z "$png" ]; then png="$1"
      else echo "render_report: unexpected argument '$1'" >&2; exit 2
      fi ;;
  esac
  shift
done
[ -n "$html" ] || { usage >&2; exit 2; }
[ -f "$html" ] || { echo "render_report: $html does not exist" >&2; exit 2; }
[ -n "$png" ] || png="${html%.html}.png"

browser="${CHROMIUM:-}"
if [ -z "$browser" ]; then
  for candidate in /usr/bin/chromium chromium chromium-browser; do
    if command -v "$candidate" >/dev/null 2>&1; then browser="$(command -v "$candidate")"; break; fi
  done
fi
if [ -z "$browser" ] || ! command -v "$browser" >/dev/null 2>&1; then
  echo "render_report: Chromium is not installed (expected /usr/bin/chromium); run scripts/setup.sh" >&2
  exit 3
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/render_report.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# file:// URL of the page, with the characters that would end or alter a URL path escaped.
absolute="$(cd "$(dirname "$html")" && pwd)/$(basename "$html")"
url="file://"
for ((i = 0; i < ${#absolute}; i++)); do
  c="${absolute:i:1}"
  case "$c" in
    [a-zA-Z0-9/._~-]) url+="$c" ;;
    *) url+="$(printf '%%%02X' "'$c")" ;;
  esac
done
[[ "$absolute" =~ ^[[:print:]]*$ ]] || url="file://$absolute"  # non-ASCII: let the browser encode it

# --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start. A profile of its own
# per call, so concurrent renders never share (and lock) one.
flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars --mute-audio
       --no-first-run --no-default-browser-check --disable-extensions --disable-background-networking
       --user-data-dir="$work/profile" --virtual-time-budget="$budget_ms")

run_browser() {  # run_browser LOG ARGS...: the browser's own chatter (D-Bus, GPU) goes to LOG
  local log="$1"; shift
  if ! timeout 180 "$browser" "${flags[@]}" "$@" 2>"$log"; then
    echo "render_report: $browser failed on $html; its last messages:" >&2
    tail -n 20 "$log" >&2
    return 1
  fi
}

# 1. The DOM after the scripts ran, at the screenshot's width so the layout (and height) match.
run_browser "$work/dom.log" --window-size="$width,1000" --dump-dom "$url" >"$work/dom.html" || exit 1
body="$(grep -o -m1 '<body[^>]*>' "$work/dom.html" || true)"
attribute() { printf '%s' "$body" | sed -n "s/.* $1=\"\\([^\"]*\\)\".*/\\1/p"; }

problems=0
if [ "$(attribute data-rendered)" != "true" ]; then
  echo "render_report: the page's drawing script did not finish (no data-rendered=\"true\" on <body>)" >&2
  problems=1
fi
errors="$(attribute data-errors)"
if [ "$errors" != "0" ]; then
  echo "render_report: the page reports ${errors:-an unknown number of} script error(s):" >&2
  # The messages, as the page shows them in #script-errors.
  tr '\n' '\f' <"$work/dom.html" | sed -n 's/.*<div id="script-errors"[^>]*>\([^<]*\)<\/div>.*/\1/p' | tr '\f' '\n' >&2
  problems=1
fi
grep -o '<figure [^>]*class="plot"[^>]*>' "$work/dom.html" >"$work/figures" || true
plots="$(wc -l <"$work/figures")"
drawn="$(grep -c 'data-drawn="true"' "$work/figures" || true)"
if [ "$drawn" -ne "$plots" ]; then
  echo "render_report: $((plots - drawn)) of $plots plots were not drawn:" >&2
  grep -v 'data-drawn="true"' "$work/figures" | sed -n 's/.* id="\([^"]*\)".*/  \1/p' >&2
  problems=1
fi
[ -z "$dom" ] || cp "$work/dom.html" "$dom"

# 2. The screenshot, as tall as the page the script measured (bounded: a runaway page would make a
# gigantic PNG).
height="$(attribute data-page-height)"
[[ "$height" =~ ^[0-9]+$ ]] || height=5000
height=$((height + 40))
[ "$height" -ge 600 ] || height=600
[ "$height" -le 30000 ] || height=30000
rm -f "$png"
run_browser "$work/screenshot.log" --window-size="$width,$height" --screenshot="$png" "$url" >/dev/null || exit 1
if [ ! -s "$png" ]; then
  echo "render_report: $browser wrote no screenshot to $png" >&2
  exit 1
fi

echo "render_report: $drawn of $plots plots drawn, ${errors:-?} script errors;" \
     "$png (${width}x${height})${dom:+; DOM $dom}"
exit "$problems"
