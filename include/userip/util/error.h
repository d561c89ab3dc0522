#pragma once
// The project's two kinds of failure:
//  - bad user input (a malformed file, an out-of-range option, an unknown user) throws
//    userip::Error with a message that names the file, line, field or tensor; the CLI prints
//    "error: <message>" and exits non-zero;
//  - a broken internal invariant is a bug: USERIP_ASSERT aborts with file and line.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace userip {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

[[noreturn]] void assert_fail(const char* condition, const char* file, int line, const std::string& message);

}  // namespace userip

#define USERIP_ASSERT(cond)                                             \
  do {                                                                  \
    if (!(cond)) ::userip::assert_fail(#cond, __FILE__, __LINE__, {}); \
  } while (0)

#define USERIP_ASSERT_MSG(cond, ...)                                                        \
  do {                                                                                      \
    if (!(cond)) ::userip::assert_fail(#cond, __FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

// Throws userip::Error (bad input, not a bug) when `cond` is false.
#define USERIP_CHECK(cond, ...)                         \
  do {                                                  \
    if (!(cond)) ::userip::fail(__VA_ARGS__);           \
  } while (0)
