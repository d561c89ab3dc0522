#include "userip/text/bpe.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <queue>
#include <unordered_set>

#include "text/regex.h"
#include "text/utf8.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::text {

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

constexpr std::size_t kCacheLimit = 1 << 16;
const std::string kMetaspace = "\xE2\x96\x81";  // U+2581 "▁"

std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

std::string byte_token(unsigned value) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "<0x%02X>", value & 0xFF);
  return buf;
}

// The byte a "<0xAB>" token stands for, or -1.
int parse_byte_token(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  int value = 0;
  for (std::size_t i = 3; i < 5; ++i) {
    const char c = token[i];
    int digit;
    if (c >= '0' && c <= '9')
      digit = c - '0';
    else if (c >= 'A' && c <= 'F')
      digit = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      digit = c - 'a' + 10;
    else
      return -1;
    value = value * 16 + digit;
  }
  return value;
}

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

bool is_word_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || u == '_';
}

}  // namespace

const std::vector<std::string>& byte_to_unicode() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    // Printable Latin-1 bytes keep their code point so that common text stays readable in
    // the vocabulary; the rest (controls, space, soft hyphen, ...) move to U+0100 onwards in
    // byte order, which is the table every GPT-2-derived vocabulary was built with.
    unsigned next = 256;
    for (unsigned b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = detail::utf8_encode(printable ? b : next++);
    }
    return t;
  }();
  return table;
}

namespace {
// Code point -> byte, the inverse of byte_to_unicode().
const std::unordered_map<std::uint32_t, std::uint8_t>& unicode_to_byte() {
  static const std::unordered_map<std::uint32_t, std::uint8_t> table = [] {
    std::unordered_map<std::uint32_t, std::uint8_t> t;
    const auto& forward = byte_to_unicode();
    for (unsigned b = 0; b < 256; ++b) {
      std::size_t i = 0;
      t[detail::utf8_decode(forward[b], i)] = static_cast<std::uint8_t>(b);
    }
    return t;
  }();
  return table;
}
}  // namespace

std::vector<SplitStep> bpe_pre_tokenizer(std::string_view pre) {
  const SplitStep gpt2{kGpt2Pattern};
  const SplitStep digits{R"(\p{N})"};
  if (pre == "gpt2" || pre == "gpt-2" || pre == "phi-2" || pre == "olmo" || pre == "mpt" || pre == "jina-es" ||
      pre == "jina-de") {
    return {gpt2};
  }
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "smaug-bpe") return {{kLlama3Pattern}};
  if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "qwen") return {{kQwen2Pattern}};
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r") return {digits, gpt2};
  if (pre == "default" || pre.empty()) {
    // Converters write "default" when they do not recognise a BPE vocabulary; GPT-2's rules
    // are what the rest of that family assumes.
    spdlog::warn("BPE tokenizer without a known pre-tokenizer name ('{}'): using GPT-2's rules", pre);
    return {gpt2};
  }
  fail("unknown BPE pre-tokenizer '{}' (known: gpt2, llama-bpe, qwen2, smollm, starcoder, refact, command-r)", pre);
}

// ---------------------------------------------------------------------------------------------

struct BpeTokenizer::Segment {
  std::string_view text;
  std::int32_t id = -1;  // an added token; -1: ordinary text
  bool first = false;    // the text starts the input (for Metaspace's prepend_scheme "first")
};

class BpeTokenizer::Splitter {
 public:
  Splitter(const SplitStep& step, const std::string& source) : step_(step), regex_(step.pattern, source) {}

  void split(const std::string& piece, std::vector<std::string>& out) const {
    struct Interval {
      std::size_t begin, end;
      bool match;
    };
    std::vector<Interval> intervals;
    std::size_t pos = 0;  // end of what `intervals` covers
    std::size_t i = 0;
    const std::string_view text(piece);
    // PCRE2 needs valid UTF-8: run it on each valid stretch; a stray byte is a piece of its own.
    while (i < text.size()) {
      std::size_t j = i;
      std::size_t n;
      while (j < text.size() && (n = detail::utf8_sequence_length(text, j)) > 0) j += n;
      if (j > i) {
        for (const auto& [b, e] : regex_.find_all(text.substr(i, j - i))) {
          if (i + b > pos) intervals.push_back({pos, i + b, step_.invert});
          intervals.push_back({i + b, i + e, !step_.invert});
          pos = i + e;
        }
        if (j > pos) intervals.push_back({pos, j, step_.invert});
        pos = j;
      }
      if (j < text.size()) {
        intervals.push_back({j, j + 1, false});
        pos = j + 1;
        j += 1;
      }
      i = j;
    }
    if (step_.behavior == SplitBehavior::kMergedWithNext) {
      // Walked backwards: a delimiter joins the piece after it unless that is a delimiter too.
      std::vector<std::string> reversed;
      bool next_was_match = false;
      for (auto it = intervals.rbegin(); it != intervals.rend(); ++it) {
        std::string part = piece.substr(it->begin, it->end - it->begin);
        if (it->match && !next_was_match && !reversed.empty())
          reversed.back() = part + reversed.back();
        else
          reversed.push_back(std::move(part));
        next_was_match = it->match;
      }
      out.insert(out.end(), std::make_move_iterator(reversed.rbegin()), std::make_move_iterator(reversed.rend()));
      return;
    }
    bool last_was_match = false;
    const std::size_t first_out = out.size();
    for (const auto& iv : intervals) {
      std::string part = piece.substr(iv.begin, iv.end - iv.begin);
      switch (step_.behavior) {
        case SplitBehavior::kIsolated:
          out.push_back(std::move(part));
          break;
        case SplitBehavior::kRemoved:
          if (!iv.match) out.push_back(std::move(part));
          break;
        case SplitBehavior::kMergedWithPrevious:
          if (iv.match && out.size() > first_out && !last_was_match)
            out.back() += part;
          else
            out.push_back(std::move(part));
          break;
        case SplitBehavior::kMergedWithNext:
          break;  // handled above
        case SplitBehavior::kContiguous:
          if (iv.match && last_was_match && out.size() > first_out)
            out.back() += part;
          else
            out.push_back(std::move(part));
          break;
      }
      last_was_match = iv.match;
    }
  }

 private:
  SplitStep step_;
  detail::Regex regex_;
};

BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer::BpeTokenizer(std::vector<std::string> vocab,
                           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
                           std::vector<AddedToken> added_tokens, std::string source)
    : vocab_(std::move(vocab)), options_(std::move(options)), source_(std::move(source)) {
  ids_.reserve(vocab_.size());
  for (std::size_t id = 0; id < vocab_.size(); ++id) {
    if (!vocab_[id].empty()) ids_.emplace(vocab_[id], static_cast<std::int32_t>(id));
  }
  is_added_.assign(vocab_.size(), false);
  add_tokens(added_tokens);

  merges_.reserve(merges.size());
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const auto ia = ids_.find(a);
    const auto ib = ids_.find(b);
    const auto iab = ids_.find(a + b);
    const char* missing = ia == ids_.end() ? "left token" : ib == ids_.end() ? "right token" : "merged token";
    USERIP_CHECK(ia != ids_.end() && ib != ids_.end() && iab != ids_.end(),
                 "{}: merge {} ({} {}): its {} is not in the vocabulary", source_, rank + 1, quote_for_message(a),
                 quote_for_message(b), missing);
    // A repeated pair keeps its first (highest-priority) rank.
    merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(static_cast<std::int32_t>(rank), iab->second));
  }

  for (unsigned b = 0; b < 256; ++b) {
    const std::string key = options_.byte_level ? byte_to_unicode()[b] : byte_token(b);
    const auto it = ids_.find(key);
    byte_ids_[b] = it == ids_.end() ? -1 : it->second;
  }
  if (!options_.unk_token.empty()) {
    const auto it = ids_.find(options_.unk_token);
    USERIP_CHECK(it != ids_.end(), "{}: unk_token {} is not in the vocabulary", source_,
                 quote_for_message(options_.unk_token));
    unk_id_ = it->second;
  }
  for (const auto& step : options_.pre_tokenizer) splitters_.push_back(std::make_unique<Splitter>(step, source_));

  // GPT-2-style vocabularies use one token as bos, eos and unk alike.
  if (const auto it = ids_.find("<|endoftext|>"); it != ids_.end()) {
    specials_.bos = specials_.eos = it->second;
  }
  if (unk_id_ >= 0) specials_.unk = unk_id_;
}

void BpeTokenizer::add_tokens(const std::vector<AddedToken>& tokens) {
  for (AddedToken token : tokens) {
    USERIP_CHECK(!token.content.empty(), "{}: an added token has empty content", source_);
    if (token.id < 0) {
      const auto it = ids_.find(token.content);
      token.id = it != ids_.end() ? it->second : static_cast<std::int32_t>(vocab_.size());
    }
    const auto id = static_cast<std::size_t>(token.id);
    if (id >= vocab_.size()) {
      vocab_.resize(id + 1);
      is_added_.resize(id + 1, false);
    }
    if (vocab_[id].empty()) vocab_[id] = token.content;
    ids_.emplace(token.content, token.id);
    if (is_added_[id]) {
      // Redefinitions (tokenizer.json and tokenizer_config.json both list it) replace the flags.
      for (auto& existing : added_) {
        if (existing.id == token.id && existing.content == token.content) existing = token;
      }
      continue;
    }
    is_added_[id] = true;
    added_.push_back(std::move(token));
  }
  // Longest first, so that "<|a|>" wins over a prefix of it at the same position.
  std::stable_sort(added_.begin(), added_.end(),
                   [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
  added_by_first_byte_.assign(256, {});
  for (std::size_t i = 0; i < added_.size(); ++i) {
    added_by_first_byte_[static_cast<unsigned char>(added_[i].content[0])].push_back(static_cast<std::uint32_t>(i));
  }
}

std::string BpeTokenizer::token_text(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= vocab_.size()) return {};
  return vocab_[static_cast<std::size_t>(id)];
}

std::int32_t BpeTokenizer::token_id(std::string_view token) const {
  const auto it = ids_.find(std::string(token));
  return it == ids_.end() ? -1 : it->second;
}

std::vector<std::pair<std::string, std::string>> BpeTokenizer::merges() const {
  std::vector<std::pair<std::string, std::string>> out(merges_.size());
  std::vector<bool> seen(merges_.size(), false);
  for (const auto& [key, value] : merges_) {
    const auto a = static_cast<std::size_t>(key >> 32);
    const auto b = static_cast<std::size_t>(key & 0xFFFFFFFFu);
    const auto rank = static_cast<std::size_t>(value.first);
    if (rank < out.size()) {
      out[rank] = {vocab_[a], vocab_[b]};
      seen[rank] = true;
    }
  }
  // Ranks of dropped duplicates leave holes; close them so the ranks stay in order.
  std::vector<std::pair<std::string, std::string>> compact;
  compact.reserve(out.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (seen[i]) compact.push_back(std::move(out[i]));
  }
  return compact;
}

std::vector<BpeTokenizer::Segment> BpeTokenizer::split_added(std::string_view text) const {
  std::vector<Segment> out;
  std::size_t start = 0;  // start of the pending ordinary text
  std::size_t i = 0;
  if (added_.empty()) {
    if (!text.empty()) out.push_back({text, -1, true});
    return out;
  }
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (const std::uint32_t k : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& token = added_[k];
      if (text.compare(i, token.content.size(), token.content) != 0) continue;
      if (token.single_word) {
        const std::size_t end = i + token.content.size();
        if ((i > 0 && is_word_byte(text[i - 1])) || (end < text.size() && is_word_byte(text[end]))) continue;
      }
      hit = &token;
      break;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    std::size_t text_end = i;
    if (hit->lstrip) {
      while (text_end > start && is_ascii_space(text[text_end - 1])) --text_end;
    }
    if (text_end > start) out.push_back({text.substr(start, text_end - start), -1, start == 0});
    out.push_back({text.substr(i, hit->content.size()), hit->id, false});
    i += hit->content.size();
    if (hit->rstrip) {
      while (i < text.size() && is_ascii_space(text[i])) ++i;
    }
    start = i;
  }
  if (start < text.size()) out.push_back({text.substr(start), -1, start == 0});
  return out;
}

std::vector<std::string> BpeTokenizer::pre_tokenize_segment(std::string_view text, bool first_segment) const {
  std::string normalized(text);
  if (options_.metaspace) {
    normalized = replace_all(normalized, " ", kMetaspace);
    const bool prepend = options_.metaspace_prepend == BpeOptions::Prepend::kAlways ||
                         (options_.metaspace_prepend == BpeOptions::Prepend::kFirst && first_segment);
    if (prepend && normalized.compare(0, kMetaspace.size(), kMetaspace) != 0) normalized = kMetaspace + normalized;
  }
  if (options_.add_prefix_space && (normalized.empty() || normalized[0] != ' ')) normalized = " " + normalized;

  std::vector<std::string> pieces{std::move(normalized)};
  std::vector<std::string> next;
  for (const auto& splitter : splitters_) {
    next.clear();
    for (const auto& piece : pieces) splitter->split(piece, next);
    pieces.swap(next);
  }
  pieces.erase(std::remove_if(pieces.begin(), pieces.end(), [](const std::string& p) { return p.empty(); }),
               pieces.end());
  return pieces;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::string> out;
  for (const auto& segment : split_added(text)) {
    if (segment.id >= 0) continue;
    for (auto& piece : pre_tokenize_segment(segment.text, segment.first)) out.push_back(std::move(piece));
  }
  return out;
}

std::vector<std::int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> ids;
  for (const auto& segment : split_added(text)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    for (const auto& word : pre_tokenize_segment(segment.text, segment.first)) encode_word(word, ids);
  }
  return ids;
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<std::int32_t>& out) const {
  if (word.empty()) return;
  const std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::int32_t> ids = merge_word(word);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() >= kCacheLimit) cache_.clear();  // bounded memory on unbounded input
  cache_.emplace(key, std::move(ids));
}

std::vector<std::int32_t> BpeTokenizer::merge_word(std::string_view word) const {
  std::vector<std::int32_t> symbols;
  symbols.reserve(word.size());
  if (options_.byte_level) {
    std::string mapped;
    for (const char c : word) mapped += byte_to_unicode()[static_cast<unsigned char>(c)];
    if (options_.ignore_merges) {
      if (const auto it = ids_.find(mapped); it != ids_.end()) return {it->second};
    }
    for (const char c : word) {
      const std::int32_t id = byte_ids_[static_cast<unsigned char>(c)];
      if (id >= 0) {
        symbols.push_back(id);
      } else {
        USERIP_CHECK(unk_id_ >= 0, "{}: the vocabulary has no token for byte 0x{:02X} and no unk_token", source_,
                     static_cast<unsigned char>(c));
        symbols.push_back(unk_id_);
      }
    }
  } else {
    if (options_.ignore_merges) {
      if (const auto it = ids_.find(std::string(word)); it != ids_.end()) return {it->second};
    }
    bool previous_unk = false;
    std::size_t i = 0;
    while (i < word.size()) {
      std::size_t n = detail::utf8_sequence_length(word, i);
      if (n == 0) n = 1;
      const auto it = ids_.find(std::string(word.substr(i, n)));
      if (it != ids_.end()) {
        symbols.push_back(it->second);
        previous_unk = false;
      } else {
        bool done = false;
        if (options_.byte_fallback) {
          done = true;
          for (std::size_t k = 0; k < n; ++k) done = done && byte_ids_[static_cast<unsigned char>(word[i + k])] >= 0;
          if (done) {
            for (std::size_t k = 0; k < n; ++k) symbols.push_back(byte_ids_[static_cast<unsigned char>(word[i + k])]);
            previous_unk = false;
          }
        }
        if (!done) {
          USERIP_CHECK(unk_id_ >= 0, "{}: {} is not in the vocabulary and there is no unk_token", source_,
                       quote_for_message(word.substr(i, n)));
          if (!(options_.fuse_unk && previous_unk)) symbols.push_back(unk_id_);
          previous_unk = true;
        }
      }
      i += n;
    }
  }
  if (symbols.size() < 2 || merges_.empty()) return symbols;

  // Lowest rank first, leftmost on ties: the order in which `tokenizers` applies merges.
  struct Node {
    std::int32_t id, prev, next;
  };
  struct Candidate {
    std::int32_t rank, left, left_id, right_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  const auto n = static_cast<std::int32_t>(symbols.size());
  std::vector<Node> nodes(static_cast<std::size_t>(n));
  for (std::int32_t k = 0; k < n; ++k)
    nodes[static_cast<std::size_t>(k)] = {symbols[static_cast<std::size_t>(k)], k - 1, k + 1 < n ? k + 1 : -1};
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto push = [&](std::int32_t left) {
    const std::int32_t right = nodes[static_cast<std::size_t>(left)].next;
    if (left < 0 || right < 0) return;
    const std::int32_t a = nodes[static_cast<std::size_t>(left)].id;
    const std::int32_t b = nodes[static_cast<std::size_t>(right)].id;
    const auto it = merges_.find(pair_key(a, b));
    if (it != merges_.end()) queue.push({it->second.first, left, a, b});
  };
  for (std::int32_t k = 0; k + 1 < n; ++k) push(k);
  std::vector<bool> dead(static_cast<std::size_t>(n), false);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    auto& left = nodes[static_cast<std::size_t>(c.left)];
    if (dead[static_cast<std::size_t>(c.left)] || left.next < 0) continue;
    auto& right = nodes[static_cast<std::size_t>(left.next)];
    // Stale entries (either side has merged since it was queued) no longer match the ids.
    if (left.id != c.left_id || right.id != c.right_id) continue;
    left.id = merges_.at(pair_key(c.left_id, c.right_id)).second;
    dead[static_cast<std::size_t>(left.next)] = true;
    left.next = right.next;
    if (left.next >= 0) nodes[static_cast<std::size_t>(left.next)].prev = c.left;
    if (left.prev >= 0) push(left.prev);
    push(c.left);
  }
  std::vector<std::int32_t> out;
  for (std::int32_t k = 0; k >= 0; k = nodes[static_cast<std::size_t>(k)].next)
    out.push_back(nodes[static_cast<std::size_t>(k)].id);
  return out;
}

std::string BpeTokenizer::decode(const std::vector<std::int32_t>& ids) const {
  std::string out;
  bool first = true;
  for (const std::int32_t id : ids) {
    // Ids past the vocabulary (models often pad their embedding matrix) decode to nothing.
    if (id < 0 || static_cast<std::size_t>(id) >= vocab_.size()) continue;
    const std::string& token = vocab_[static_cast<std::size_t>(id)];
    if (is_added_[static_cast<std::size_t>(id)]) {
      out += token;
    } else if (options_.byte_level) {
      const auto& table = unicode_to_byte();
      std::size_t i = 0;
      while (i < token.size()) {
        const std::size_t start = i;
        const std::uint32_t cp = detail::utf8_decode(token, i);
        const auto it = table.find(cp);
        if (it != table.end())
          out += static_cast<char>(it->second);
        else
          out.append(token, start, i - start);
      }
    } else {
      const int byte = options_.byte_fallback ? parse_byte_token(token) : -1;
      if (byte >= 0) {
        out += static_cast<char>(byte);
      } else if (options_.metaspace) {
        std::string piece = replace_all(token, kMetaspace, " ");
        if (first && options_.metaspace_prepend != BpeOptions::Prepend::kNever && !piece.empty() && piece[0] == ' ') {
          piece.erase(0, 1);
        }
        out += piece;
      } else {
        out += token;
      }
    }
    first = false;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

std::unique_ptr<BpeTokenizer> make_bpe_tokenizer(const std::vector<std::string>& tokens,
                                                 const std::vector<std::string>& merges, std::string_view pre,
                                                 const std::vector<std::int32_t>& token_types) {
  USERIP_CHECK(token_types.empty() || token_types.size() == tokens.size(),
               "GGUF tokenizer: {} token types for {} tokens", token_types.size(), tokens.size());
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(merges.size());
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const std::string& m = merges[i];
    const std::size_t space = m.find(' ');
    USERIP_CHECK(
        space != std::string::npos && space > 0 && space + 1 < m.size() && m.find(' ', space + 1) == std::string::npos,
        "GGUF tokenizer.ggml.merges[{}]: expected two tokens separated by one space, got {}", i, quote_for_message(m));
    pairs.emplace_back(m.substr(0, space), m.substr(space + 1));
  }
  std::vector<AddedToken> added;
  for (std::size_t i = 0; i < token_types.size(); ++i) {
    // Control and user-defined tokens are matched in raw text, as llama.cpp does when asked
    // to parse special tokens and as HF does for added tokens.
    if ((token_types[i] == 3 || token_types[i] == 4) && !tokens[i].empty()) {
      added.push_back({tokens[i], static_cast<std::int32_t>(i), token_types[i] == 3});
    }
  }
  BpeOptions options;
  options.pre_tokenizer = bpe_pre_tokenizer(pre);
  options.byte_level = true;
  // llama.cpp skips merging for words already in a Llama 3 vocabulary, as its tokenizer.json does.
  options.ignore_merges = pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3";
  auto tok = std::make_unique<BpeTokenizer>(tokens, pairs, std::move(options), std::move(added),
                                            fmt::format("GGUF tokenizer (pre '{}')", pre));
  tok->set_pre_name(std::string(pre));
  return tok;
}

}  // namespace userip::text
