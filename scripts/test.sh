#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine: installs what is missing, builds, runs
# every test with CTest, then the same suite again under AddressSanitizer + UBSan.
#
#   scripts/test.sh [--no-sanitize] [ctest args...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sanitize=1
if [ "${1:-}" = "--no-sanitize" ]; then sanitize=0; shift; fi
jobs="$(nproc)"

bash "$here/scripts/setup.sh" --build-dir "$here/build"
ctest --test-dir "$here/build" --output-on-failure -j "$jobs" "$@"

if [ "$sanitize" -eq 1 ]; then
  # The slow tests are not run here, so not built either. -O1 -g1: half the compile time of -O2 -g
  # under the sanitizers, with the line tables their reports need; the hot loops are libtorch's, which
  # is not rebuilt here (docs/BENCHMARKS.md, "Build and test times").
  bash "$here/scripts/setup.sh" --build-dir "$here/build-asan" --build-type RelWithDebInfo \
    -- -DUSERIP_SANITIZE=ON -DUSERIP_BUILD_BENCHMARKS=OFF -DUSERIP_BUILD_SLOW_TESTS=OFF "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
  # libtorch itself is not instrumented: its one-time allocations at exit are not our leaks, and
  # std containers resized inside it trip container-overflow checks falsely.
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_odr_violation=0:detect_container_overflow=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  ctest --test-dir "$here/build-asan" --output-on-failure -j "$jobs" -LE slow "$@"
fi
