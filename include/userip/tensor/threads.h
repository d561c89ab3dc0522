#pragma once
// Thread settings for ATen (libtorch) and the BLAS beneath it, set once at program start.
#include <string>

namespace userip {

struct BlasInfo {
  std::string name;     // "OpenBLAS", or the file the BLAS symbols came from
  std::string config;   // OpenBLAS' own config string (core type, thread model), if OpenBLAS
  bool is_openblas = false;
  // Netlib's reference BLAS (Debian's libblas3), about 10x slower than OpenBLAS. Other BLAS
  // (OpenBLAS, or the MKL inside a PyTorch wheel's libtorch_cpu) are fine.
  bool is_reference = false;
};

// Which BLAS the process actually resolved (Debian's libblas.so.3 is an alternatives link:
// without libopenblas0-pthread it is the reference BLAS).
BlasInfo detect_blas();

// Sets ATen intra-op threads and OpenBLAS threads to `threads` (0 = all cores) and ATen
// inter-op threads to 1, so the two pools never oversubscribe the cores. Returns the count used.
int configure_threads(int threads);

int hardware_threads();

// For the duration of a scope, ATen's intra-op pool runs single-threaded while OpenBLAS keeps its
// threads. Use it around CPU training loops: through an LM (pretraining, profile fitting) and of
// CTR models.
//
// Why: ATen's OpenMP pool and OpenBLAS's pthread pool both busy-wait for a while after each
// parallel call. A training step alternates GEMMs (OpenBLAS threads) with element-wise ops (OpenMP
// threads) hundreds of times, so with both pools at N threads each pool's spinning workers take
// the cores the other pool's next call needs. The GEMMs still use every core through OpenBLAS.
// Measured side by side in bench/lm_bench (docs/BENCHMARKS.md, "thread policy").
// `active` = false (e.g. training on a GPU) makes it a no-op.
class ScopedSingleThreadedAten {
 public:
  explicit ScopedSingleThreadedAten(bool active = true);
  ~ScopedSingleThreadedAten();
  ScopedSingleThreadedAten(const ScopedSingleThreadedAten&) = delete;
  ScopedSingleThreadedAten& operator=(const ScopedSingleThreadedAten&) = delete;

 private:
  int saved_;
};

// How many single-threaded pieces of work may run side by side: ATen's thread count, or, inside a
// ScopedSingleThreadedAten, the count it had before the scope.
int threads_for_side_by_side_work();

// For the duration of a scope, OpenBLAS runs its GEMMs in the calling thread. Use it where several
// threads each run their own single-threaded work (the profile fit's parallel E-step): OpenBLAS's
// own workers would otherwise spin (sched_yield) on the cores those threads need. A no-op where
// BLAS is not OpenBLAS.
class ScopedSingleThreadedBlas {
 public:
  explicit ScopedSingleThreadedBlas(bool active = true);
  ~ScopedSingleThreadedBlas();
  ScopedSingleThreadedBlas(const ScopedSingleThreadedBlas&) = delete;
  ScopedSingleThreadedBlas& operator=(const ScopedSingleThreadedBlas&) = delete;

 private:
  int saved_ = 0;
};

}  // namespace userip
