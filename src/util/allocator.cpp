#include "userip/util/allocator.h"

#include <malloc.h>

#include "userip/util/log.h"

namespace userip {

void configure_allocator() {
  constexpr int kOneGiB = 1 << 30;
  const bool ok = mallopt(M_MMAP_THRESHOLD, kOneGiB) == 1 && mallopt(M_TRIM_THRESHOLD, kOneGiB) == 1;
  if (!ok) spdlog::debug("mallopt refused the allocator settings; keeping glibc's defaults");
}

}  // namespace userip
