#pragma once
// The main() of the benchmarks that run the library's tensor code: memory and threads set up as the
// CLI sets them, so that a figure here is what a command would see. USERIP_BENCH_THREADS picks the
// threads (default: all cores).
#include <benchmark/benchmark.h>

#include <cstdlib>

#include "userip/tensor/threads.h"
#include "userip/util/allocator.h"
#include "userip/util/log.h"

namespace userip::bench {

inline int run_benchmarks(int argc, char** argv) {
  log_init("warn");
  configure_allocator();  // as the CLI does
  const char* threads = std::getenv("USERIP_BENCH_THREADS");
  configure_threads(threads ? std::atoi(threads) : 0);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}

}  // namespace userip::bench
