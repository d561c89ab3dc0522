#include "userip/text/placeholders.h"

#include "userip/util/error.h"

namespace userip::text {

std::vector<PhrasePart> split_placeholders(std::string_view phrase, std::string_view context) {
  std::vector<PhrasePart> parts;
  std::string literal;
  const auto flush = [&] {
    if (!literal.empty()) parts.push_back({false, std::move(literal)});
    literal.clear();
  };
  std::size_t pos = 0;
  while (pos < phrase.size()) {
    const char c = phrase[pos];
    if ((c == '{' || c == '}') && pos + 1 < phrase.size() && phrase[pos + 1] == c) {
      literal += c;
      pos += 2;
      continue;
    }
    if (c != '{') {
      literal += c;
      ++pos;
      continue;
    }
    const std::size_t close = phrase.find('}', pos);
    USERIP_CHECK(close != std::string_view::npos, "{}: unclosed '{{' at character {} of \"{}\"", context, pos + 1,
                 phrase);
    flush();
    parts.push_back({true, std::string(phrase.substr(pos + 1, close - pos - 1))});
    pos = close + 1;
  }
  flush();
  return parts;
}

}  // namespace userip::text
