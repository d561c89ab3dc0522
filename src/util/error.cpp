#include "userip/util/error.h"

#include <cstdio>
#include <cstdlib>

namespace userip {

void assert_fail(const char* condition, const char* file, int line, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "%s:%d: internal error: assertion '%s' failed%s%s\n", file, line, condition,
               message.empty() ? "" : ": ", message.c_str());
  std::abort();
}

}  // namespace userip
