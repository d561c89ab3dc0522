#pragma once
// Thread settings for ATen (libtorch) and the BLAS beneath it, set once at program start.
#include <string>

namespace userip {

struct BlasInfo {
  std::string name;     // "OpenBLAS", or the file the BLAS symbols came from
  std::string config;   // OpenBLAS' own config string (core type, thread model), if OpenBLAS
  bool is_openblas = false;
};

// Which BLAS the process actually resolved (Debian's libblas.so.3 is an alternatives link:
// without libopenblas0-pthread it is the reference BLAS, about 10x slower).
BlasInfo detect_blas();

// Sets ATen intra-op threads and OpenBLAS threads to `threads` (0 = all cores) and ATen
// inter-op threads to 1, so the two pools never oversubscribe the cores. Returns the count used.
int configure_threads(int threads);

int hardware_threads();

}  // namespace userip
