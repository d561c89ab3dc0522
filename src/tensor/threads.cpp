#include "userip/tensor/threads.h"

#include <atomic>
#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "userip/util/error.h"

namespace userip {

namespace {
using SetThreadsFn = void (*)(int);
using GetThreadsFn = int (*)();
using GetConfigFn = char* (*)();

// OpenBLAS's thread-count setter, or nullptr where BLAS is not OpenBLAS.
SetThreadsFn openblas_set_num_threads_fn() {
  return reinterpret_cast<SetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
}
}  // namespace

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

BlasInfo detect_blas() {
  BlasInfo info;
  // What matters is who provides sgemm_, the symbol libtorch calls: Debian's libblas.so.3 is an
  // alternatives link, and OpenBLAS may be loaded (through liblapack) while the reference BLAS
  // still serves sgemm_.
  Dl_info where{};
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  if (!sgemm || !dladdr(sgemm, &where) || !where.dli_fname) {
    info.name = "unknown (no sgemm_ symbol)";
    return info;
  }
  std::error_code ec;
  std::string resolved = std::filesystem::canonical(where.dli_fname, ec).string();
  if (ec) resolved = where.dli_fname;
  info.is_openblas = resolved.find("openblas") != std::string::npos;
  info.is_reference = !info.is_openblas && std::filesystem::path(resolved).filename().string().rfind("libblas.so", 0) == 0;
  info.name = info.is_openblas ? "OpenBLAS" : resolved;
  if (auto get_config = reinterpret_cast<GetConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    if (info.is_openblas && get_config()) info.config = get_config();
  }
  return info;
}

int configure_threads(int threads) {
  USERIP_CHECK(threads >= 0, "--threads must be >= 0 (0 = all cores), got {}", threads);
  int n = threads == 0 ? hardware_threads() : threads;
  at::set_num_threads(n);
  // Inter-op parallelism only helps graphs with independent branches; ours are sequential,
  // and a second pool would compete with the intra-op one for the same cores.
  static bool interop_set = false;
  if (!interop_set) {
    try {
      at::set_num_interop_threads(1);
    } catch (const std::exception&) {
      // Already started by an earlier parallel call: harmless, keep its setting.
    }
    interop_set = true;
  }
  if (auto set_blas = openblas_set_num_threads_fn()) set_blas(n);
  return n;
}

ScopedSingleThreadedBlas::ScopedSingleThreadedBlas(bool active) {
  if (!active) return;
  auto get = reinterpret_cast<GetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  auto set = openblas_set_num_threads_fn();
  if (!get || !set) return;
  saved_ = get();
  if (saved_ > 1) set(1);
}

ScopedSingleThreadedBlas::~ScopedSingleThreadedBlas() {
  if (saved_ <= 1) return;
  if (auto set = openblas_set_num_threads_fn()) set(saved_);
}

namespace {
// ATen's thread count before the outermost ScopedSingleThreadedAten (0: none is active).
std::atomic<int> g_threads_outside_scope{0};
}  // namespace

ScopedSingleThreadedAten::ScopedSingleThreadedAten(bool active) : saved_(active ? at::get_num_threads() : 0) {
  if (saved_ > 1) {
    int none = 0;
    g_threads_outside_scope.compare_exchange_strong(none, saved_);
    at::set_num_threads(1);
  }
}

ScopedSingleThreadedAten::~ScopedSingleThreadedAten() {
  if (saved_ > 1) {
    at::set_num_threads(saved_);
    int mine = saved_;
    g_threads_outside_scope.compare_exchange_strong(mine, 0);
  }
}

int threads_for_side_by_side_work() {
  const int outside = g_threads_outside_scope.load();
  return std::max(1, outside > 0 ? outside : at::get_num_threads());
}

}  // namespace userip
