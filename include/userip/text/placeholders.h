#pragma once
// The one reader of "{placeholder}" phrases: the corpus's item, behaviour and user phrases, and the
// profile templates' evidence and behaviour phrases. What a name means is the caller's business;
// the syntax is the same everywhere: "{name}" is a placeholder, "{{" and "}}" are literal braces.
#include <string>
#include <string_view>
#include <vector>

namespace userip::text {

struct PhrasePart {
  bool placeholder = false;
  std::string text;  // the literal text, or the placeholder's name
};

// Literal runs and placeholders in order (no empty literal parts). An unclosed "{" throws
// userip::Error "<context>: unclosed '{' at character N of "<phrase>"".
std::vector<PhrasePart> split_placeholders(std::string_view phrase, std::string_view context);

}  // namespace userip::text
