#pragma once
// One table of names per enum drives both directions: to_string (logs, JSON, --help) and the parse
// that command-line options and JSON readers use, with one wording for an unknown name.
//
//   constexpr EnumName<EmMode> kEmModeNames[] = {{EmMode::alternating, "alternating"}, {EmMode::joint, "joint"}};
//   std::string to_string(EmMode m) { return enum_name(kEmModeNames, m); }
//   EmMode em_mode_from_string(std::string_view s) { return enum_from_name(kEmModeNames, s, "EM mode"); }
#include <cstddef>
#include <string>
#include <string_view>

#include "userip/util/error.h"

namespace userip {

template <typename Enum>
struct EnumName {
  Enum value;
  const char* name;
};

// The name of `value`, or nullptr when the table has none (a value read from a file, say).
template <typename Enum, std::size_t N>
const char* find_enum_name(const EnumName<Enum> (&names)[N], Enum value) {
  for (const auto& entry : names)
    if (entry.value == value) return entry.name;
  return nullptr;
}

// The name of `value`; "?" for a value outside the table, which only a cast can make.
template <typename Enum, std::size_t N>
std::string enum_name(const EnumName<Enum> (&names)[N], Enum value) {
  const char* name = find_enum_name(names, value);
  return name ? name : "?";
}

// "a, b, c": the names in table order, for help texts and errors.
template <typename Enum, std::size_t N>
std::string enum_name_list(const EnumName<Enum> (&names)[N]) {
  std::string out;
  for (const auto& entry : names) out += (out.empty() ? "" : ", ") + std::string(entry.name);
  return out;
}

// The value called `name`, or userip::Error "unknown <what> '<name>' (expected one of: a, b, c)".
template <typename Enum, std::size_t N>
Enum enum_from_name(const EnumName<Enum> (&names)[N], std::string_view name, std::string_view what) {
  for (const auto& entry : names)
    if (name == entry.name) return entry.value;
  fail("unknown {} '{}' (expected one of: {})", what, name, enum_name_list(names));
}

}  // namespace userip
