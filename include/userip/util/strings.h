#pragma once
// Strict text-to-number parsing and small string helpers used by every parser in the project.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace userip {

// Whole-string parses: leading/trailing spaces are allowed, anything else is not.
std::optional<std::int64_t> parse_int64(std::string_view text);
std::optional<double> parse_double(std::string_view text);

std::string_view trim(std::string_view text);
std::vector<std::string_view> split(std::string_view text, char separator);
std::vector<std::string> split_list(std::string_view text, char separator);  // trimmed, empty items dropped
std::string join(const std::vector<std::string>& parts, std::string_view separator);

// `text` with every occurrence of `from` (non-empty) replaced by `to`.
std::string replace_all(std::string_view text, std::string_view from, std::string_view to);

// The UTF-8 bytes of code point `cp` (<= U+10FFFF).
std::string utf8_encode(std::uint32_t cp);

// True if `text` is well-formed UTF-8 (no overlong forms, surrogates or code points > U+10FFFF).
bool is_valid_utf8(std::string_view text);

// Shortens `text` for an error message, escaping control characters.
std::string quote_for_message(std::string_view text, std::size_t max_chars = 60);

}  // namespace userip
