#pragma once
// Shared by the text tests: fixture locations, running reference programs, and the
// deterministic conformance corpus.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/temp_dir.h"
#include "userip/util/fs.h"
#include "userip/util/random.h"
#include "userip/util/strings.h"

namespace userip::testing::text {

namespace fs = std::filesystem;

inline fs::path fixtures() { return fs::path(USERIP_SOURCE_DIR) / "tests" / "data" / "tokenizer"; }

// The tokenizer files of a reference checkpoint ("tiny-llama", "tiny-gpt2"): this module's
// copy in tests/data/tokenizer, else the full checkpoint copy in tests/data/reference, so
// either may be dropped to avoid keeping the 1.5 MB GPT-2 vocabulary twice.
inline fs::path model_dir(const std::string& name) {
  const fs::path own = fixtures() / name;
  if (fs::exists(own / "tokenizer_config.json")) return own;
  return fs::path(USERIP_SOURCE_DIR) / "tests" / "data" / "reference" / (name + "-hf");
}

// ../shared/reference next to the checkout, where CI has it; empty if absent.
inline fs::path shared_reference() {
  const fs::path p = fs::path(USERIP_SOURCE_DIR) / ".." / "shared" / "reference";
  return fs::exists(p / "README.md") ? p : fs::path();
}

inline nlohmann::json read_json(const fs::path& path) { return nlohmann::json::parse(userip::read_file(path)); }

// Runs a shell command; returns its exit status and its stdout (stderr goes to `err_file`
// when given, else to the test's stderr).
inline int run_command(const std::string& command, std::string* output) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::array<char, 65536> buffer{};
  std::string text;
  std::size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) text.append(buffer.data(), n);
  const int status = pclose(pipe);
  if (output != nullptr) *output = std::move(text);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

// The absolute path of `program` on PATH, or "".
inline std::string find_program(const std::string& program) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return {};
  std::string dirs = path;
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const std::size_t end = std::min(dirs.find(':', start), dirs.size());
    const fs::path candidate = fs::path(dirs.substr(start, end - start)) / program;
    if (end > start && ::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    start = end + 1;
  }
  return {};
}

inline std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

inline std::string utf8(std::uint32_t cp) { return userip::utf8_encode(cp); }

// splitmix64: a fixed generator, so the corpus is the same on every platform (std::
// distributions are not).
class CorpusRng {
 public:
  explicit CorpusRng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() { return userip::splitmix64(state_); }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }

 private:
  std::uint64_t state_;
};

// A varied, deterministic corpus for tokenizer conformance: hand-picked strings (movie
// titles, contractions, emoji, whitespace runs, digits, scripts) followed by random
// combinations of fragments and random code points from long-assigned Unicode blocks.
//
// `single_line`: no "\n" or "\r" (for line-oriented reference tools). Two code points are left
// out on purpose because the regex engines that define GPT-2 pre-tokenization disagree on them
// (U+0085 NEL: whitespace for Python `regex`, Oniguruma and this project, not for JavaScript;
// U+FEFF: the reverse); bpe_test.cpp checks this project's choice separately.
inline std::vector<std::string> conformance_corpus(std::size_t count, std::uint64_t seed, bool single_line) {
  const std::vector<std::string> fixed = {
      "Hello world",
      "hello World!",
      "The user watched Toy Story (1995) and rated it 4.5 stars.",
      "Amélie (2001)",
      "Léon: The Professional (1994)",
      "Toy Story (1995)",
      "Se7en (1995)",
      "WALL·E (2008)",
      "Crouching Tiger, Hidden Dragon (Wo hu cang long) (2000)",
      "City of God (Cidade de Deus) (2002)",
      "Spirited Away (Sen to Chihiro no kamikakushi) (2001)",
      "千と千尋の神隠し (2001)",
      "Das Boot (1981)",
      "La vita è bella (1997)",
      "Pokémon: The First Movie (1998)",
      "Æon Flux (2005)",
      "Schindler's List (1993)",
      "Star Wars: Episode IV - A New Hope (1977)",
      "Monty Python and the Holy Grail (1975)",
      "Naïve café",
      "Fußball",
      "Ὀδύσσεια",
      "Москва слезам не верит (1979)",
      "अमर अकबर एंथनी (1977)",
      "괴물 (2006)",
      "العربية",
      "עברית",
      "Ça va? İstanbul!",
      "ﬁnancial ﬂow",
      "they're",
      "They're",
      "THEY'RE",
      "don't",
      "Don'T",
      "I'm",
      "I'M",
      "we've",
      "she'll",
      "he'd",
      "it's",
      "It's not theirs'",
      "'s 't 're 've 'm 'll 'd",
      "rock'n'roll",
      "O'Brien's",
      "1",
      "12",
      "123",
      "1234",
      "12345",
      "1234567",
      "3.14159",
      "1,000,000",
      "2001-09-11",
      "½ ¼ ² ³",
      "٣٤٥",
      "१२३",
      "Ⅻ",
      "１２３",
      "$5.99",
      "100%",
      "#hashtag @user",
      "e-mail: a.b@c.de",
      "https://example.com/path?q=1&r=2",
      "<html><body>hi</body></html>",
      "`code` **bold** _it_",
      "C:\\Users\\me",
      "a|b|c",
      "Comedy|Romance",
      "Action|Adventure|Sci-Fi",
      "(no genres listed)",
      "😀",
      "👍🏽",
      "👨‍👩‍👧‍👦",
      "🇫🇷🇯🇵",
      "❤️",
      "✨🎬🍿",
      "ok 😀 ok",
      "😀😀😀",
      " ",
      "  ",
      "   ",
      "    ",
      " leading",
      "  leading spaces",
      "trailing ",
      "trailing   ",
      "a  b",
      "a   b",
      "\t",
      "tab\there",
      "\t\tdouble tab",
      "mixed \t \t spaces",
      "a\u00a0b",
      "a\u3000b",
      "thin\u2009space",
      "zero\u200bwidth",
      "line\u2028separator",
      "para\u2029graph",
      "!!!",
      "?!",
      "...",
      "—",
      "–",
      "“quoted”",
      "«guillemets»",
      "‘single’",
      "¡Hola! ¿Qué tal?",
      "…",
      "•",
      "©®™",
      "€£¥",
      "∑∫√∞",
      "→←↑↓",
      "┌─┐",
      "\x01\x02",
      "\x1f",
      "\x7f",
      "Ω≈ç√∫˜µ≤≥÷",
      "åß∂ƒ©˙∆˚¬…æ",
      "ÅÍÎÏ˝ÓÔÒÚÆ",
      "Ǆǅǆ",
      "ＡＢＣ",
      "ｶﾀｶﾅ",
      "हिन्दी",
      "ภาษาไทย",
      "日本語のテキスト",
      "中文文本",
      "한국어 텍스트",
      "é",
      "e\u0301",
      "n\u0303",
      "Z\u0351\u036b\u0343",
      "x\u0300\u0301\u0302",
  };
  const std::vector<std::string> multi_line = {
      "\n",
      "\n\n",
      "\r\n",
      " \n ",
      "line one\nline two",
      "para\n\n\npara",
      "trailing newline\n",
      "\nleading newline",
      "a \n b",
      "crlf\r\nline",
      "tabs\t\n\tand newlines",
      "!!\n\nend",
      "x\r",
  };
  const std::vector<std::string> words = {
      "the",    "The",         "movie",      "Movie",  "rated",  "stars",  "user",     "watched", "and",
      "of",     "a",           "I",          "love",   "Comedy", "Drama",  "Thriller", "Sci-Fi",  "film-noir",
      "sequel", "prequel",     "director's", "cut",    "café",   "naïve",  "résumé",   "über",    "straße",
      "garçon", "smörgåsbord", "Ñandú",      "ПРИВЕТ", "мир",    "Ελλάδα", "日本",     "東京",    "北京",
      "서울",   "שלום",        "مرحبا",      "नमस्ते",   "ไทย",    "ABC",    "xyz",      "Q",
  };
  const std::vector<std::string> punctuation = {
      ".", ",", "!",   "?",  ";",  ":",  "'",  "\"",  "(",   ")",  "[",   "]",  "{",  "}",  "-",   "--",
      "—", "/", "\\",  "&",  "*",  "#",  "@",  "%",   "^",   "~",  "`",   "|",  "<",  ">",  "=",   "+",
      "_", "$", "...", "?!", "''", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE",
  };
  const std::vector<std::string> emoji = {"😀",    "😂",  "👍",           "👍🏿", "❤️", "🎬",
                                          "🍿", "🇺🇸", "👩‍💻", "✨",        "🔥",      "💯"};
  std::vector<std::string> spaces = {" ", " ", " ", "  ", "   ", "\t", " \t", "\u00a0", "\u3000", ""};
  if (!single_line) {
    for (const char* s : {"\n", "\n\n", " \n", "\r\n", "\n \n"}) spaces.push_back(s);
  }
  // Blocks assigned long before Unicode 14 (PCRE2 10.42's tables), so that every engine
  // classifies them alike.
  const std::vector<std::pair<std::uint32_t, std::uint32_t>> blocks = {
      {0x20, 0x7E},     {0xC0, 0xFF},       {0x100, 0x17F},     {0x391, 0x3C9},   {0x410, 0x44F},   {0x5D0, 0x5EA},
      {0x627, 0x64A},   {0x660, 0x669},     {0x905, 0x939},     {0x966, 0x96F},   {0xE01, 0xE2E},   {0x3041, 0x3096},
      {0x30A1, 0x30FA}, {0x4E00, 0x9FA5},   {0xAC00, 0xD7A3},   {0x300, 0x36F},   {0x2200, 0x22FF}, {0x2190, 0x21FF},
      {0x2500, 0x257F}, {0x1F600, 0x1F64F}, {0x1F300, 0x1F5FF}, {0xFF10, 0xFF19}, {0x2160, 0x216F}, {0x1, 0x8},
      {0xE, 0x1F},      {0x2000, 0x200A},   {0x2010, 0x2027},   {0xFF01, 0xFF5E},
  };

  std::vector<std::string> corpus;
  const auto add = [&](std::string s) {
    if (s.empty()) return;
    if (single_line && (s.find('\n') != std::string::npos || s.find('\r') != std::string::npos)) return;
    corpus.push_back(std::move(s));
  };
  for (const auto& s : fixed) add(s);
  if (!single_line) {
    for (const auto& s : multi_line) add(s);
  }
  CorpusRng rng(seed);
  while (corpus.size() < count) {
    std::string s;
    const std::size_t parts = 1 + rng.below(8);
    for (std::size_t p = 0; p < parts; ++p) {
      if (p > 0) s += rng.pick(spaces);
      switch (rng.below(8)) {
        case 0:
        case 1:
          s += rng.pick(words);
          break;
        case 2:
          s += rng.pick(punctuation);
          break;
        case 3:
          s += rng.pick(emoji);
          break;
        case 4: {  // digits, sometimes with separators
          const std::size_t n = 1 + rng.below(12);
          for (std::size_t i = 0; i < n; ++i) s += static_cast<char>('0' + rng.below(10));
          if (rng.below(3) == 0) s += rng.pick(std::vector<std::string>{".", ",", ")", "%"});
          break;
        }
        case 5:
          s += rng.pick(fixed);
          break;
        default: {  // random code points
          const std::size_t n = 1 + rng.below(6);
          for (std::size_t i = 0; i < n; ++i) {
            const auto& [lo, hi] = rng.pick(blocks);
            s += utf8(lo + static_cast<std::uint32_t>(rng.below(hi - lo + 1)));
          }
        }
      }
    }
    add(std::move(s));
  }
  return corpus;
}

}  // namespace userip::testing::text

// The names every text test uses, so that each test file need not repeat them.
namespace userip::text {
using nlohmann::json;
using testing::TempDir;
using testing::text::fixtures;
using testing::text::model_dir;
using testing::text::read_json;
}  // namespace userip::text
