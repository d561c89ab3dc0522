#!/usr/bin/env bash
# GPU check of the LM backbone (issue 3), for a machine with an NVIDIA GPU, CUDA and a PyTorch 2.x
# wheel with `transformers`:
#   1. builds userip against the libtorch inside that PyTorch (-DCMAKE_PREFIX_PATH from
#      torch.utils.cmake_prefix_path), in build-gpu/;
#   2. saves the reference Llama and GPT-2 checkpoints with the project's own writer
#      (`userip lm export --format hf --dtype f32`), loads each saved model in transformers and in
#      userip on the GPU in float32, and compares per-token log-probabilities (max abs diff <= 1e-4);
#   3. measures forward + backward-to-inputs throughput of the same shapes in both (bench/lm_bench
#      with USERIP_BENCH_DEVICE=cuda beside the same computation in PyTorch);
#   4. with --synth DIR (DIR/synth300: `userip data synth --users 300`, DIR/synth-lm: `userip lm
#      pretrain --dataset synth`, both made on a CPU machine), fits profiles on the GPU with the
#      300-user command of docs/RESULTS.md and scores their recovery of the latent classes.
# Results go to $OUT (default ./gpu-check): compare.json, lm_bench.json, torch_bench.json, summary.md,
# and with --synth profile_fit.log, recovery.txt.
# A machine without the Debian packages of scripts/setup.sh (and no registry to get them from) takes
# them with --deps DIR, a folder made by scripts/gpu_deps.sh on a Debian 12 machine.
# Usage: scripts/gpu_check.sh [--skip-build] [--bench-filter REGEX] [--deps DIR] [--synth DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check}
SKIP_BUILD=0
FILTER='default|gpt2|1b|Gemm'
DEPS=
SYNTH=
while [[ $# -gt 0 ]]; do
  case $1 in
    --skip-build) SKIP_BUILD=1 ;;
    --bench-filter) FILTER=$2; shift ;;
    --deps) DEPS=$(realpath "$2"); shift ;;
    --synth) SYNTH=$(realpath "$2"); shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"

missing=()
for tool in cmake c++ python3 nvidia-smi; do command -v "$tool" >/dev/null || missing+=("$tool"); done
python3 -c 'import torch, transformers' 2>/dev/null || missing+=("python modules torch and transformers")
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "gpu_check: missing: ${missing[*]}" >&2
  exit 2
fi
python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  { echo "gpu_check: torch.cuda.is_available() is false" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
prefix_path=$TORCH_PREFIX
deps_args=()
if [[ -n $DEPS ]]; then
  # The packages' .pc files and CMake packages name /usr; the sysroot and prefix below redirect
  # them into DEPS, and system include/lib flags are kept because they now point there.
  lib=$DEPS/usr/lib/x86_64-linux-gnu
  [[ -x $DEPS/usr/bin/pkgconf ]] || { echo "gpu_check: $DEPS has no usr/bin/pkgconf (made by scripts/gpu_deps.sh?)" >&2; exit 2; }
  export PKG_CONFIG_LIBDIR=$lib/pkgconfig:$DEPS/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$DEPS
  export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
  export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  prefix_path="$TORCH_PREFIX;$DEPS/usr"
  deps_args=(-DPKG_CONFIG_EXECUTABLE="$DEPS/usr/bin/pkgconf")
fi
if [[ $SKIP_BUILD == 0 ]]; then
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # The wheel's libtorch uses the pre-C++11 ABI on some releases; CMake's TorchConfig sets the
  # matching _GLIBCXX_USE_CXX11_ABI, which then also applies to our other C++ dependencies.
  cmake -S . -B build-gpu "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix_path" \
    "${deps_args[@]}" -DUSERIP_BUILD_TESTS=OFF -DUSERIP_BUILD_BENCHMARKS=ON 2>&1 | tee "$OUT/configure.log"
  cmake --build build-gpu --target userip_cli lm_bench -j "$(nproc)" 2>&1 | tail -20 | tee "$OUT/build.log"
fi
USERIP=build-gpu/bin/userip

# 2. Conformance: models saved by the project, read by transformers and by userip.
for name in tiny-llama tiny-gpt2; do
  "$USERIP" lm export --model "tests/data/reference/$name-hf" --out "$OUT/$name-saved" --format hf --dtype f32
done
python3 scripts/gpu_check.py compare --userip "$USERIP" --out "$OUT" \
  --model "$OUT/tiny-llama-saved" --prompts tests/data/reference/prompts.txt \
  --model "$OUT/tiny-gpt2-saved" --prompts tests/data/reference/prompts-gpt2.txt

# 3. Throughput, same shapes and batches in both.
USERIP_BENCH_DEVICE=cuda build-gpu/bench/lm_bench --benchmark_filter="$FILTER" \
  --benchmark_out="$OUT/lm_bench.json" --benchmark_out_format=json
python3 scripts/gpu_check.py bench --out "$OUT"
python3 scripts/gpu_check.py summary --out "$OUT" | tee "$OUT/summary.md"

# 4. Profile inference on the GPU: the 300-user fit of docs/RESULTS.md (6 min 15 s on 2 CPU cores there).
if [[ -n $SYNTH ]]; then
  start=$(date +%s)
  "$USERIP" --threads 4 profile fit --dataset "$SYNTH/synth300" --model "$SYNTH/synth-lm" --device cuda \
    --out "$OUT/p300" --no-bank --codes 6 --attribute-codes background=3 --rounds 4 --refine-rounds 8 \
    --refine-learning-rate 0.03 --max-tokens 56 --samples-per-user 16 2>&1 | tr '\r' '\n' | grep -v '^profile fit' \
    | tee "$OUT/profile_fit.log"
  echo "profile fit on cuda: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/profile_fit.log"
  "$USERIP" profile recovery --profile "$OUT/p300" | tee "$OUT/recovery.txt"
fi
