#pragma once
// Minimal UTF-8 helpers for the tokenizers (validation lives in text/regex.h).
#include <cstdint>
#include <string>
#include <string_view>

#include "text/regex.h"
#include "userip/util/strings.h"

namespace userip::text::detail {

inline std::string utf8_encode(std::uint32_t cp) { return userip::utf8_encode(cp); }

// Decodes the code point at text[i] and advances i past it. An invalid byte is returned as
// 0x110000 + byte (never a real code point) and skipped alone.
inline std::uint32_t utf8_decode(std::string_view text, std::size_t& i) {
  const std::size_t n = utf8_sequence_length(text, i);
  const auto b = [&](std::size_t k) { return static_cast<std::uint32_t>(static_cast<unsigned char>(text[i + k])); };
  std::uint32_t cp;
  switch (n) {
    case 1:
      cp = b(0);
      break;
    case 2:
      cp = ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
      break;
    case 3:
      cp = ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
      break;
    case 4:
      cp = ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
      break;
    default:
      cp = 0x110000 + b(0);
      i += 1;
      return cp;
  }
  i += n;
  return cp;
}

}  // namespace userip::text::detail
