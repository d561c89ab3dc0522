#include "userip/util/option_table.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

namespace userip::option_detail {

namespace {
std::string number_text(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{}", v);
}
}  // namespace

std::string range_text(std::optional<double> lo, bool lo_open, std::optional<double> hi, bool hi_open) {
  if (lo && hi) return fmt::format("{}{}, {}{}", lo_open ? "(" : "[", number_text(*lo), number_text(*hi), hi_open ? ")" : "]");
  if (lo) return fmt::format("{} {}", lo_open ? ">" : ">=", number_text(*lo));
  if (hi) return fmt::format("{} {}", hi_open ? "<" : "<=", number_text(*hi));
  return "";
}

nlohmann::json parse_text(const std::string& text, const std::string& kind) {
  if (kind == "integer") {
    const char* end = text.data() + text.size();
    if (!text.empty() && text[0] == '-') {
      std::int64_t v = 0;
      auto [ptr, ec] = std::from_chars(text.data(), end, v);
      USERIP_CHECK(ec == std::errc() && ptr == end, "must be an integer, got '{}'", text);
      return v;
    }
    std::uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(text.data(), end, v);
    USERIP_CHECK(ec == std::errc() && ptr == end, "must be an integer, got '{}'", text);
    return v;
  }
  if (kind == "number" || kind == "number or null") {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    USERIP_CHECK(!text.empty() && end == text.c_str() + text.size() && std::isfinite(v), "must be a number, got '{}'",
                 text);
    return v;
  }
  if (kind == "boolean") {
    USERIP_CHECK(text == "true" || text == "false", "must be true or false, got '{}'", text);
    return text == "true";
  }
  return text;  // strings and enum names; the field's reader checks them
}

std::string show(const nlohmann::json& value) {
  if (value.is_null()) return "unset";
  if (value.is_string()) return value.get<std::string>();
  return value.dump();
}

}  // namespace userip::option_detail
