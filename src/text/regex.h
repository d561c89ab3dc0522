#pragma once
// A compiled PCRE2 pattern used for pre-tokenization: UTF-8 subjects, Unicode properties for
// \p{..}, \d, \w and \s, JIT when the platform has it. Shareable between threads.
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace userip::text::detail {

class Regex {
 public:
  // Throws userip::Error naming `source` and the position PCRE2 rejects.
  Regex(const std::string& pattern, const std::string& source);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [begin, end) byte ranges of the successive non-overlapping matches in `subject`, which
  // must be valid UTF-8. Empty matches are skipped.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view subject) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8
};

// Makes `\s` (and `\S`) in a pattern mean the Unicode White_Space property: PCRE2's \s under
// UCP leaves out U+0085 (NEL), which the regex engines GPT-2-family tokenizers were defined
// with (Python `regex`, Oniguruma) count as whitespace.
std::string widen_whitespace_class(std::string_view pattern);

// Escapes regex metacharacters so `literal` matches itself.
std::string regex_escape(std::string_view literal);

// Length in bytes of the valid UTF-8 sequence starting at text[i], or 0 if it is invalid.
std::size_t utf8_sequence_length(std::string_view text, std::size_t i);

}  // namespace userip::text::detail
