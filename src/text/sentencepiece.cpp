// Long (about 960 lines) on purpose: the model file's protobuf wire format, the normaliser (byte
// trie and precompiled charsmap), the encoder and decoder all work on the one Model struct, which
// would otherwise have to be exposed in a header; spm_train's invocation closes the file.
#include "userip/text/sentencepiece.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <queue>
#include <thread>
#include <unordered_map>

#include "text/regex.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"

extern char** environ;

namespace userip::text {

namespace {

const std::string kSpaceSymbol = "\xE2\x96\x81";      // U+2581, SentencePiece's visible space
const std::string kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// --- protobuf wire format ----------------------------------------------------------------------
// Only what a SentencePiece ModelProto needs (see sentencepiece_model.proto for the field
// numbers used below).

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_tag(std::string& out, int field, int wire_type) {
  put_varint(out, (static_cast<std::uint64_t>(field) << 3) | static_cast<std::uint64_t>(wire_type));
}
void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}
void put_bool(std::string& out, int field, bool value) {
  put_tag(out, field, 0);
  put_varint(out, value ? 1 : 0);
}
void put_int(std::string& out, int field, std::int64_t value) {
  put_tag(out, field, 0);
  put_varint(out, static_cast<std::uint64_t>(value));  // negative int32s take ten bytes, as in protobuf
}
void put_float(std::string& out, int field, float value) {
  put_tag(out, field, 5);
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  for (int i = 0; i < 4; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xFF);
}

struct WireField {
  int number = 0;
  int wire_type = 0;
  std::uint64_t value = 0;  // varint, fixed32 and fixed64 payloads
  std::string_view bytes;   // length-delimited payload
};

class WireReader {
 public:
  WireReader(std::string_view data, const std::string& source, const char* what)
      : data_(data), source_(source), what_(what) {}
  bool done() const { return pos_ >= data_.size(); }
  WireField next() {
    WireField f;
    const std::uint64_t key = varint();
    f.number = static_cast<int>(key >> 3);
    f.wire_type = static_cast<int>(key & 7);
    switch (f.wire_type) {
      case 0:
        f.value = varint();
        break;
      case 1:
        f.value = fixed(8);
        break;
      case 5:
        f.value = fixed(4);
        break;
      case 2: {
        const std::uint64_t n = varint();
        check(n <= data_.size() - pos_);
        f.bytes = data_.substr(pos_, n);
        pos_ += n;
        break;
      }
      default:
        check(false);
    }
    return f;
  }

 private:
  void check(bool ok) const {
    USERIP_CHECK(ok, "{}: not a SentencePiece model (malformed protobuf in {} at byte {})", source_, what_, pos_);
  }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      check(pos_ < data_.size());
      const auto b = static_cast<unsigned char>(data_[pos_++]);
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if (b < 0x80) return v;
    }
    check(false);
    return 0;
  }
  std::uint64_t fixed(std::size_t n) {
    check(n <= data_.size() - pos_);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i)
      v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }
  std::string_view data_;
  std::size_t pos_ = 0;
  const std::string& source_;
  const char* what_;
};

float as_float(std::uint64_t bits) {
  const auto b32 = static_cast<std::uint32_t>(bits);
  float f;
  std::memcpy(&f, &b32, sizeof(f));
  return f;
}

// --- lookup structures ------------------------------------------------------------------------

// A byte trie over a set of strings, for the longest-prefix and all-prefixes queries the
// normaliser (user-defined symbols) and the unigram lattice need.
class ByteTrie {
 public:
  ByteTrie() : values_(1, -1) {}
  bool empty() const { return size_ == 0; }
  void insert(std::string_view key, std::int32_t value) {
    std::int32_t node = 0;
    for (const char c : key) {
      const auto edge = key_of(node, c);
      const auto it = edges_.find(edge);
      if (it != edges_.end()) {
        node = it->second;
      } else {
        const auto child = static_cast<std::int32_t>(values_.size());
        values_.push_back(-1);
        edges_.emplace(edge, child);
        node = child;
      }
    }
    if (values_[static_cast<std::size_t>(node)] < 0) ++size_;
    values_[static_cast<std::size_t>(node)] = value;
  }
  // fn(length, value) for each key that is a prefix of `text`, shortest first.
  template <typename F>
  void prefixes(std::string_view text, F&& fn) const {
    std::int32_t node = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto it = edges_.find(key_of(node, text[i]));
      if (it == edges_.end()) return;
      node = it->second;
      const std::int32_t v = values_[static_cast<std::size_t>(node)];
      if (v >= 0) fn(i + 1, v);
    }
  }
  std::size_t longest_prefix(std::string_view text) const {
    std::size_t best = 0;
    prefixes(text, [&](std::size_t n, std::int32_t) { best = n; });
    return best;
  }

 private:
  static std::uint64_t key_of(std::int32_t node, char c) {
    return (static_cast<std::uint64_t>(node) << 8) | static_cast<unsigned char>(c);
  }
  std::unordered_map<std::uint64_t, std::int32_t> edges_;
  std::vector<std::int32_t> values_;
  std::size_t size_ = 0;
};

// A precompiled normalisation rule (NormalizerSpec.precompiled_charsmap): a 4-byte length,
// a darts-clone double-array trie over the source strings, then the NUL-terminated
// replacement strings the trie's values point into.
class CharsMap {
 public:
  CharsMap() = default;
  CharsMap(std::string_view blob, const std::string& source) {
    USERIP_CHECK(blob.size() > 4, "{}: precompiled_charsmap is truncated", source);
    std::uint32_t trie_bytes = 0;
    for (int i = 0; i < 4; ++i)
      trie_bytes |= static_cast<std::uint32_t>(static_cast<unsigned char>(blob[i])) << (8 * i);
    USERIP_CHECK(trie_bytes % 4 == 0 && trie_bytes <= blob.size() - 4, "{}: precompiled_charsmap is corrupt", source);
    units_.resize(trie_bytes / 4);
    for (std::size_t u = 0; u < units_.size(); ++u) {
      std::uint32_t v = 0;
      for (int i = 0; i < 4; ++i)
        v |= static_cast<std::uint32_t>(static_cast<unsigned char>(blob[4 + 4 * u + static_cast<std::size_t>(i)]))
             << (8 * i);
      units_[u] = v;
    }
    replacements_ = std::string(blob.substr(4 + trie_bytes));
  }
  bool empty() const { return units_.empty(); }
  // The longest rule matching a prefix of `text`: (bytes consumed, replacement), or (0, "").
  std::pair<std::size_t, std::string_view> match(std::string_view text) const {
    std::pair<std::size_t, std::string_view> best{0, {}};
    if (units_.empty()) return best;
    std::size_t pos = offset(units_[0]);
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      pos ^= c;
      if (pos >= units_.size()) break;
      const std::uint32_t unit = units_[pos];
      if (label(unit) != c) break;
      pos ^= offset(unit);
      if (pos >= units_.size()) break;
      if ((unit >> 8) & 1) {  // has a leaf: a rule ends here
        const std::uint32_t value = units_[pos] & 0x7FFFFFFFu;
        if (value < replacements_.size()) {
          best = {i + 1, std::string_view(replacements_.c_str() + value)};
        }
      }
    }
    return best;
  }

 private:
  static std::size_t offset(std::uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }
  static std::uint32_t label(std::uint32_t unit) { return unit & ((1u << 31) | 0xFFu); }
  std::vector<std::uint32_t> units_;
  std::string replacements_;
};

bool consume_prefix(std::string_view& text, std::string_view prefix) {
  if (text.substr(0, prefix.size()) != prefix) return false;
  text.remove_prefix(prefix.size());
  return true;
}

int byte_of_piece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int v = 0;
  for (std::size_t i = 3; i < 5; ++i) {
    const char c = piece[i];
    if (c >= '0' && c <= '9')
      v = v * 16 + (c - '0');
    else if (c >= 'A' && c <= 'F')
      v = v * 16 + (c - 'A' + 10);
    else
      return -1;  // SentencePiece writes upper-case hex only
  }
  return v;
}

}  // namespace

// --- the model --------------------------------------------------------------------------------

struct SentencePieceTokenizer::Model {
  std::string serialized;
  std::string source;
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<PieceType> types;
  std::unordered_map<std::string, std::int32_t> normal;    // NORMAL, USER_DEFINED, UNUSED
  std::unordered_map<std::string, std::int32_t> reserved;  // CONTROL, UNKNOWN, BYTE
  ByteTrie user_defined;
  ByteTrie lattice_trie;  // unigram: normal pieces
  std::int32_t unk = -1;
  std::int32_t byte_ids[256];
  bool unigram = true;
  bool byte_fallback = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  std::string unk_surface = " \xE2\x81\x87 ";
  std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
  CharsMap charsmap;
  float min_score = FLT_MAX;
  float max_score = FLT_MIN;  // libsentencepiece starts from FLT_MIN (tiny, positive); so do we

  std::int32_t piece_to_id(std::string_view piece) const {
    const std::string key(piece);
    if (const auto it = reserved.find(key); it != reserved.end()) return it->second;
    if (const auto it = normal.find(key); it != normal.end()) return it->second;
    return unk;
  }
  PieceType type(std::int32_t id) const { return types[static_cast<std::size_t>(id)]; }

  void parse();
  std::string normalize(std::string_view input) const;
  std::vector<std::pair<std::string_view, std::int32_t>> encode_bpe(std::string_view normalized) const;
  std::vector<std::pair<std::string_view, std::int32_t>> encode_unigram(std::string_view normalized) const;
  std::vector<std::int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<std::int32_t>& ids) const;
};

void SentencePieceTokenizer::Model::parse() {
  USERIP_CHECK(!serialized.empty(), "{}: empty, not a SentencePiece model", source);
  std::string_view trainer_spec, normalizer_spec, denormalizer_spec;
  WireReader top(serialized, source, "ModelProto");
  while (!top.done()) {
    const WireField f = top.next();
    if (f.number == 1 && f.wire_type == 2) {
      std::string piece;
      float score = 0.0f;
      auto type = PieceType::kNormal;
      WireReader r(f.bytes, source, "a piece");
      while (!r.done()) {
        const WireField g = r.next();
        if (g.number == 1 && g.wire_type == 2)
          piece = std::string(g.bytes);
        else if (g.number == 2 && g.wire_type == 5)
          score = as_float(g.value);
        else if (g.number == 3 && g.wire_type == 0)
          type = static_cast<PieceType>(g.value);
      }
      pieces.push_back(std::move(piece));
      scores.push_back(score);
      types.push_back(type);
    } else if (f.number == 2 && f.wire_type == 2) {
      trainer_spec = f.bytes;
    } else if (f.number == 3 && f.wire_type == 2) {
      normalizer_spec = f.bytes;
    } else if (f.number == 5 && f.wire_type == 2) {
      denormalizer_spec = f.bytes;
    }
  }
  USERIP_CHECK(!pieces.empty(), "{}: not a SentencePiece model (no pieces)", source);

  std::int64_t model_type = 1;  // UNIGRAM, the proto default
  bool whitespace_suffix = false;
  for (WireReader r(trainer_spec, source, "trainer_spec"); !r.done();) {
    const WireField g = r.next();
    if (g.wire_type == 0 && g.number == 3)
      model_type = static_cast<std::int64_t>(g.value);
    else if (g.wire_type == 0 && g.number == 24)
      whitespace_suffix = g.value != 0;
    else if (g.wire_type == 0 && g.number == 35)
      byte_fallback = g.value != 0;
    else if (g.wire_type == 2 && g.number == 44)
      unk_surface = std::string(g.bytes);
    else if (g.wire_type == 2 && g.number == 45 && !g.bytes.empty())
      unk_piece = std::string(g.bytes);
    else if (g.wire_type == 2 && g.number == 46 && !g.bytes.empty())
      bos_piece = std::string(g.bytes);
    else if (g.wire_type == 2 && g.number == 47 && !g.bytes.empty())
      eos_piece = std::string(g.bytes);
    else if (g.wire_type == 2 && g.number == 48 && !g.bytes.empty())
      pad_piece = std::string(g.bytes);
  }
  USERIP_CHECK(model_type == 1 || model_type == 2,
               "{}: SentencePiece model type {} is not supported (only unigram and BPE)", source, model_type);
  unigram = model_type == 1;
  USERIP_CHECK(!whitespace_suffix, "{}: treat_whitespace_as_suffix models are not supported", source);

  std::string_view charsmap_blob;
  for (WireReader r(normalizer_spec, source, "normalizer_spec"); !r.done();) {
    const WireField g = r.next();
    if (g.wire_type == 2 && g.number == 2)
      charsmap_blob = g.bytes;
    else if (g.wire_type == 0 && g.number == 3)
      add_dummy_prefix = g.value != 0;
    else if (g.wire_type == 0 && g.number == 4)
      remove_extra_whitespaces = g.value != 0;
    else if (g.wire_type == 0 && g.number == 5)
      escape_whitespaces = g.value != 0;
  }
  if (!charsmap_blob.empty()) charsmap = CharsMap(charsmap_blob, source);
  for (WireReader r(denormalizer_spec, source, "denormalizer_spec"); !r.done();) {
    const WireField g = r.next();
    USERIP_CHECK(!(g.wire_type == 2 && g.number == 2 && !g.bytes.empty()),
                 "{}: models with a denormalisation rule are not supported", source);
  }

  std::fill(std::begin(byte_ids), std::end(byte_ids), -1);
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const auto id = static_cast<std::int32_t>(i);
    const std::string& piece = pieces[i];
    const PieceType t = types[i];
    USERIP_CHECK(!piece.empty(), "{}: piece {} is empty", source, i);
    USERIP_CHECK(static_cast<int>(t) >= 1 && static_cast<int>(t) <= 6, "{}: piece {} has unknown type {}", source, i,
                 static_cast<int>(t));
    const bool is_normal = t == PieceType::kNormal || t == PieceType::kUserDefined || t == PieceType::kUnused;
    USERIP_CHECK((is_normal ? normal : reserved).emplace(piece, id).second, "{}: piece {} is defined twice", source,
                 quote_for_message(piece));
    if (t == PieceType::kUserDefined) user_defined.insert(piece, id);
    if (t == PieceType::kUnknown) {
      USERIP_CHECK(unk < 0, "{}: more than one unknown piece", source);
      unk = id;
    }
    if (t == PieceType::kByte) {
      USERIP_CHECK(byte_fallback, "{}: byte piece {} in a model without byte_fallback", source,
                   quote_for_message(piece));
      const int b = byte_of_piece(piece);
      USERIP_CHECK(b >= 0, "{}: invalid byte piece {}", source, quote_for_message(piece));
      byte_ids[b] = id;
    }
    if (t == PieceType::kNormal) {
      min_score = std::min(min_score, scores[i]);
      max_score = std::max(max_score, scores[i]);
    }
    if (unigram && is_normal) lattice_trie.insert(piece, id);
  }
  USERIP_CHECK(unk >= 0, "{}: the model defines no unknown piece", source);
  if (byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      USERIP_CHECK(byte_ids[b] >= 0, "{}: byte_fallback is set but the byte piece <0x{:02X}> is missing", source, b);
    }
  }
}

std::string SentencePieceTokenizer::Model::normalize(std::string_view input) const {
  std::string out;
  if (input.empty()) return out;
  // One normalisation step: user-defined symbols are kept as they are, then the longest
  // precompiled rule, else one UTF-8 character (a malformed byte becomes U+FFFD).
  const auto prefix = [&](std::string_view in) -> std::pair<std::string_view, std::size_t> {
    if (!user_defined.empty()) {
      if (const std::size_t n = user_defined.longest_prefix(in); n > 0) return {in.substr(0, n), n};
    }
    if (!charsmap.empty()) {
      if (const auto [n, replacement] = charsmap.match(in); n > 0) return {replacement, n};
    }
    const std::size_t n = detail::utf8_sequence_length(in, 0);
    if (n == 0) return {kReplacementChar, 1};
    return {in.substr(0, n), n};
  };

  if (remove_extra_whitespaces) {
    while (!input.empty()) {
      const auto p = prefix(input);
      if (p.first != " ") break;
      input.remove_prefix(p.second);
    }
  }
  if (input.empty()) return out;
  const std::string_view space = escape_whitespaces ? std::string_view(kSpaceSymbol) : std::string_view(" ");
  if (add_dummy_prefix) out.append(space);
  bool previous_space = remove_extra_whitespaces;
  while (!input.empty()) {
    auto [piece, consumed] = prefix(input);
    while (previous_space && consume_prefix(piece, " ")) {
    }
    if (!piece.empty()) {
      for (const char c : piece) {
        if (escape_whitespaces && c == ' ')
          out.append(kSpaceSymbol);
        else
          out += c;
      }
      previous_space = piece.back() == ' ';
    }
    input.remove_prefix(consumed);
    if (!remove_extra_whitespaces) previous_space = false;
  }
  if (remove_extra_whitespaces) {
    while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0) {
      out.resize(out.size() - space.size());
    }
  }
  return out;
}

std::vector<std::pair<std::string_view, std::int32_t>> SentencePieceTokenizer::Model::encode_bpe(
    std::string_view normalized) const {
  struct Symbol {
    std::int32_t prev, next;
    bool frozen;  // a user-defined symbol: never merged
    std::string_view piece;
  };
  struct Pair {
    float score;
    std::int32_t left, right;
    std::size_t size;
  };
  // Highest score first; on ties the leftmost pair.
  const auto lower = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(lower)> agenda(lower);
  std::vector<Symbol> symbols;
  // Unused pieces may be passed through while merging but must not be emitted: this
  // remembers how each was built so it can be split again.
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> unmerge;

  std::string_view rest = normalized;
  while (!rest.empty()) {
    std::size_t n = user_defined.empty() ? 0 : user_defined.longest_prefix(rest);
    const bool frozen = n > 0;
    if (!frozen) {
      n = detail::utf8_sequence_length(rest, 0);
      if (n == 0) n = 1;
    }
    const auto index = static_cast<std::int32_t>(symbols.size());
    symbols.push_back({index - 1, rest.size() > n ? index + 1 : -1, frozen, rest.substr(0, n)});
    rest.remove_prefix(n);
  }
  if (symbols.empty()) return {};

  const auto consider = [&](std::int32_t left, std::int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[static_cast<std::size_t>(left)];
    const Symbol& r = symbols[static_cast<std::size_t>(right)];
    if (l.frozen || r.frozen) return;
    const std::string_view joined(l.piece.data(), l.piece.size() + r.piece.size());
    const auto it = normal.find(std::string(joined));
    if (it == normal.end()) return;
    agenda.push({scores[static_cast<std::size_t>(it->second)], left, right, joined.size()});
    if (type(it->second) == PieceType::kUnused) unmerge[joined] = {l.piece, r.piece};
  };
  for (std::size_t i = 1; i < symbols.size(); ++i)
    consider(static_cast<std::int32_t>(i - 1), static_cast<std::int32_t>(i));

  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[static_cast<std::size_t>(top.left)];
    Symbol& r = symbols[static_cast<std::size_t>(top.right)];
    // Stale: one side was merged away, or grew since this pair was queued.
    if (l.piece.empty() || r.piece.empty() || l.piece.size() + r.piece.size() != top.size) continue;
    l.piece = std::string_view(l.piece.data(), l.piece.size() + r.piece.size());
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<std::size_t>(r.next)].prev = top.left;
    r.piece = std::string_view();
    consider(l.prev, top.left);
    consider(top.left, l.next);
  }

  std::vector<std::pair<std::string_view, std::int32_t>> out;
  const std::function<void(std::string_view)> emit = [&](std::string_view w) {
    const std::int32_t id = piece_to_id(w);
    if (type(id) == PieceType::kUnused) {
      if (const auto it = unmerge.find(w); it != unmerge.end()) {
        emit(it->second.first);
        emit(it->second.second);
        return;
      }
    }
    out.emplace_back(w, id);
  };
  for (std::int32_t i = 0; i >= 0; i = symbols[static_cast<std::size_t>(i)].next)
    emit(symbols[static_cast<std::size_t>(i)].piece);
  return out;
}

std::vector<std::pair<std::string_view, std::int32_t>> SentencePieceTokenizer::Model::encode_unigram(
    std::string_view normalized) const {
  // Viterbi over byte positions: for every end position, the best-scoring path reaching it.
  struct Best {
    std::int32_t id = -1;
    float score = 0.0f;
    std::int64_t start = -1;
  };
  constexpr float kUnknownPenalty = 10.0f;
  const float unk_score = min_score - kUnknownPenalty;
  const std::size_t size = normalized.size();
  std::vector<Best> best(size + 1);
  std::size_t start = 0;
  while (start < size) {
    const float score_here = best[start].score;
    std::size_t char_len = detail::utf8_sequence_length(normalized, start);
    if (char_len == 0) char_len = 1;
    bool has_single_char = false;
    const auto offer = [&](std::size_t end, std::int32_t id, float score) {
      Best& target = best[end];
      const float candidate = score + score_here;
      if (target.start < 0 || candidate > target.score) target = {id, candidate, static_cast<std::int64_t>(start)};
    };
    lattice_trie.prefixes(normalized.substr(start), [&](std::size_t length, std::int32_t id) {
      if (type(id) == PieceType::kUnused) return;
      // User-defined symbols get a bonus so that they always win.
      const float score = type(id) == PieceType::kUserDefined ? static_cast<float>(length) * max_score - 0.1f
                                                              : scores[static_cast<std::size_t>(id)];
      offer(start + length, id, score);
      if (length == char_len) has_single_char = true;
    });
    if (!has_single_char) offer(start + char_len, unk, unk_score);
    start += char_len;
  }
  std::vector<std::pair<std::string_view, std::int32_t>> out;
  for (std::size_t end = size; end > 0;) {
    const Best& node = best[end];
    const auto begin = static_cast<std::size_t>(node.start);
    out.emplace_back(normalized.substr(begin, end - begin), node.id);
    end = begin;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::int32_t> SentencePieceTokenizer::Model::encode(std::string_view text) const {
  const std::string normalized = normalize(text);
  if (normalized.empty()) return {};
  const auto pieces_out = unigram ? encode_unigram(normalized) : encode_bpe(normalized);
  std::vector<std::int32_t> ids;
  ids.reserve(pieces_out.size());
  bool previous_unknown = false;
  for (const auto& [piece, id] : pieces_out) {
    const bool unknown = id == unk;
    if (unknown && byte_fallback) {
      for (const char c : piece) ids.push_back(byte_ids[static_cast<unsigned char>(c)]);
    } else if (!(unknown && previous_unknown)) {  // a run of unknown pieces is one <unk>
      ids.push_back(id);
    }
    previous_unknown = unknown;
  }
  return ids;
}

std::string SentencePieceTokenizer::Model::decode(const std::vector<std::int32_t>& ids) const {
  std::string text;
  std::string pending_bytes;
  // Bytes from byte pieces become text one UTF-8 character at a time; a byte that does not
  // start a valid character becomes U+FFFD.
  const auto flush_bytes = [&] {
    std::size_t i = 0;
    while (i < pending_bytes.size()) {
      const std::size_t n = detail::utf8_sequence_length(pending_bytes, i);
      if (n == 0) {
        text += kReplacementChar;
        i += 1;
      } else {
        text.append(pending_bytes, i, n);
        i += n;
      }
    }
    pending_bytes.clear();
  };
  bool expect_bos_space = true;  // the dummy prefix's "▁" at the start is not text
  bool bos_space_seen = false;
  for (const std::int32_t id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= pieces.size()) continue;
    const PieceType t = type(id);
    if (t == PieceType::kByte) {
      pending_bytes += static_cast<char>(byte_of_piece(pieces[static_cast<std::size_t>(id)]));
      continue;
    }
    flush_bytes();
    if (bos_space_seen || !text.empty()) expect_bos_space = false;
    bos_space_seen = false;
    if (t == PieceType::kControl) continue;
    if (t == PieceType::kUnknown) {
      text += unk_surface;
      continue;
    }
    std::string_view piece = pieces[static_cast<std::size_t>(id)];
    if (expect_bos_space && (add_dummy_prefix || remove_extra_whitespaces)) {
      bos_space_seen = consume_prefix(piece, kSpaceSymbol);
      if (remove_extra_whitespaces) bos_space_seen = false;
    }
    text += replace_all(piece, kSpaceSymbol, " ");
  }
  flush_bytes();
  return text;
}

// --- the tokenizer -----------------------------------------------------------------------------

SentencePieceTokenizer::SentencePieceTokenizer(std::string serialized, std::string source)
    : model_(std::make_unique<Model>()) {
  model_->serialized = std::move(serialized);
  model_->source = std::move(source);
  model_->parse();
  const auto control = [&](const std::string& piece) {
    const std::int32_t id = model_->piece_to_id(piece);
    return model_->type(id) == PieceType::kControl ? id : -1;
  };
  specials_.unk = model_->unk;
  specials_.bos = control(model_->bos_piece);
  specials_.eos = control(model_->eos_piece);
  specials_.pad = control(model_->pad_piece);
  // Llama-family checkpoints (the ones that ship tokenizer.model) prepend bos by default;
  // tokenizer_config.json overrides this where it says otherwise.
  specials_.add_bos = specials_.bos >= 0;
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<std::int32_t> SentencePieceTokenizer::encode(std::string_view text) const { return model_->encode(text); }

std::string SentencePieceTokenizer::decode(const std::vector<std::int32_t>& ids) const { return model_->decode(ids); }

std::int32_t SentencePieceTokenizer::vocab_size() const { return static_cast<std::int32_t>(model_->pieces.size()); }

std::string SentencePieceTokenizer::token_text(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= model_->pieces.size()) return {};
  return model_->pieces[static_cast<std::size_t>(id)];
}

std::int32_t SentencePieceTokenizer::token_id(std::string_view token) const {
  const std::string key(token);
  if (const auto it = model_->reserved.find(key); it != model_->reserved.end()) return it->second;
  if (const auto it = model_->normal.find(key); it != model_->normal.end()) return it->second;
  return -1;
}

float SentencePieceTokenizer::score(std::int32_t id) const {
  USERIP_CHECK(id >= 0 && id < vocab_size(), "{}: id {} out of range", model_->source, id);
  return model_->scores[static_cast<std::size_t>(id)];
}

PieceType SentencePieceTokenizer::piece_type(std::int32_t id) const {
  USERIP_CHECK(id >= 0 && id < vocab_size(), "{}: id {} out of range", model_->source, id);
  return model_->type(id);
}

bool SentencePieceTokenizer::is_unigram() const { return model_->unigram; }
bool SentencePieceTokenizer::add_dummy_prefix() const { return model_->add_dummy_prefix; }
bool SentencePieceTokenizer::remove_extra_whitespaces() const { return model_->remove_extra_whitespaces; }

std::string SentencePieceTokenizer::normalize(std::string_view text) const { return model_->normalize(text); }

const std::string& SentencePieceTokenizer::serialized_model() const { return model_->serialized; }

void SentencePieceTokenizer::save(const std::filesystem::path& file) const {
  write_file_atomic(file, model_->serialized);
}

std::unique_ptr<SentencePieceTokenizer> load_sentencepiece(const std::filesystem::path& model_file) {
  USERIP_CHECK(std::filesystem::exists(model_file), "{}: no such file", model_file.string());
  return std::make_unique<SentencePieceTokenizer>(read_file(model_file), model_file.string());
}

// --- vocabularies given as vectors ------------------------------------------------------------

std::string serialize_sentencepiece_model(const SentencePieceVocab& vocab) {
  const std::size_t n = vocab.tokens.size();
  USERIP_CHECK(n > 0, "SentencePiece vocabulary: no tokens");
  USERIP_CHECK(vocab.scores.empty() || vocab.scores.size() == n, "SentencePiece vocabulary: {} scores for {} tokens",
               vocab.scores.size(), n);
  USERIP_CHECK(vocab.token_types.empty() || vocab.token_types.size() == n,
               "SentencePiece vocabulary: {} token types for {} tokens", vocab.token_types.size(), n);
  std::string out;
  std::int64_t unk = -1;
  bool has_bytes = false;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& token = vocab.tokens[i];
    USERIP_CHECK(!token.empty(), "SentencePiece vocabulary: token {} is empty", i);
    std::int32_t type = vocab.token_types.empty() ? 1 : vocab.token_types[i];
    // GGUF writes 0 (undefined) for some converted vocabularies; SentencePiece has no such type.
    if (type == 0) type = 1;
    USERIP_CHECK(type >= 1 && type <= 6, "SentencePiece vocabulary: token {} ({}) has unknown type {}", i,
                 quote_for_message(token), type);
    if (type == static_cast<int>(PieceType::kUnknown)) {
      USERIP_CHECK(unk < 0, "SentencePiece vocabulary: tokens {} and {} are both of type unknown", unk, i);
      unk = static_cast<std::int64_t>(i);
    }
    has_bytes = has_bytes || type == static_cast<int>(PieceType::kByte);
    std::string piece;
    put_bytes(piece, 1, token);
    put_float(piece, 2, vocab.scores.empty() ? 0.0f : vocab.scores[i]);
    if (type != 1) put_int(piece, 3, type);
    put_bytes(out, 1, piece);
  }
  USERIP_CHECK(unk >= 0, "SentencePiece vocabulary: no token of type unknown (2); SentencePiece needs one");

  const auto piece_name = [&](std::int32_t id) -> const std::string& {
    USERIP_CHECK(static_cast<std::size_t>(id) < n, "SentencePiece vocabulary: special id {} out of range", id);
    return vocab.tokens[static_cast<std::size_t>(id)];
  };
  std::string trainer;
  put_int(trainer, 3, vocab.unigram ? 1 : 2);                           // model_type: UNIGRAM = 1, BPE = 2
  put_int(trainer, 4, static_cast<std::int64_t>(n));                    // vocab_size
  put_bool(trainer, 35, has_bytes);                                     // byte_fallback
  put_bytes(trainer, 45, vocab.tokens[static_cast<std::size_t>(unk)]);  // unk_piece
  if (vocab.bos >= 0) put_bytes(trainer, 46, piece_name(vocab.bos));
  if (vocab.eos >= 0) put_bytes(trainer, 47, piece_name(vocab.eos));
  if (vocab.pad >= 0) put_bytes(trainer, 48, piece_name(vocab.pad));
  put_bytes(out, 2, trainer);

  std::string normalizer;
  put_bytes(normalizer, 1, "identity");
  put_bool(normalizer, 3, vocab.add_dummy_prefix);
  put_bool(normalizer, 4, vocab.remove_extra_whitespaces);
  put_bool(normalizer, 5, true);  // escape_whitespaces: " " <-> "▁"
  put_bytes(out, 3, normalizer);
  return out;
}

std::unique_ptr<SentencePieceTokenizer> make_sentencepiece_tokenizer(const SentencePieceVocab& vocab) {
  auto tok = std::make_unique<SentencePieceTokenizer>(serialize_sentencepiece_model(vocab),
                                                      "SentencePiece vocabulary from GGUF metadata");
  SpecialTokens specials = tok->specials();
  if (vocab.bos >= 0) specials.bos = vocab.bos;
  if (vocab.eos >= 0) specials.eos = vocab.eos;
  if (vocab.pad >= 0) specials.pad = vocab.pad;
  specials.add_bos = specials.bos >= 0;
  tok->set_specials(specials);
  return tok;
}

// --- training ---------------------------------------------------------------------------------

namespace {

std::filesystem::path find_spm_train() {
  if (const char* env = std::getenv("USERIP_SPM_TRAIN"); env != nullptr && *env != '\0') return env;
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    for (const auto& dir : split_list(path, ':')) {
      const std::filesystem::path candidate = std::filesystem::path(dir) / "spm_train";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  fail(
      "spm_train not found on PATH (it comes with Debian's `sentencepiece` package; scripts/setup.sh installs it), "
      "or set USERIP_SPM_TRAIN");
}

// Runs argv[0] with arguments, stdout and stderr to `log` (or inherited); returns the exit
// status, or 128 + signal.
int run_program(const std::vector<std::string>& args, const std::filesystem::path* log) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (log != nullptr) {
    posix_spawn_file_actions_addopen(&actions, 1, log->c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  USERIP_CHECK(rc == 0, "cannot run {}: {}", args[0], std::strerror(rc));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    USERIP_CHECK(errno == EINTR, "waiting for {}: {}", args[0], std::strerror(errno));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string tail_lines(const std::string& text, std::size_t lines) {
  std::size_t pos = text.size();
  while (lines > 0 && pos > 0) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
    --lines;
  }
  return text.substr(pos + 1);
}

class ScratchDir {
 public:
  explicit ScratchDir(const std::filesystem::path& parent) {
    static std::atomic<unsigned> counter{0};
    path_ = parent / fmt::format(".spm-train-{}-{}", ::getpid(), counter++);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace

std::unique_ptr<SentencePieceTokenizer> train_sentencepiece(const SentencePieceTrainOptions& options,
                                                            const std::filesystem::path& model_file) {
  USERIP_CHECK(std::filesystem::is_regular_file(options.corpus), "{}: no such corpus file", options.corpus.string());
  USERIP_CHECK(options.model_type == "bpe" || options.model_type == "unigram",
               "SentencePiece training: model type '{}' is not bpe or unigram", options.model_type);
  USERIP_CHECK(options.vocab_size > 0, "SentencePiece training: the vocabulary size must be positive");
  const std::filesystem::path program = find_spm_train();

  std::filesystem::path parent = model_file.parent_path();
  if (parent.empty()) parent = ".";
  std::filesystem::create_directories(parent);
  const ScratchDir scratch(parent);

  // spm_train splits --input at commas; a path with one goes through a link without.
  std::filesystem::path corpus = std::filesystem::absolute(options.corpus);
  if (corpus.string().find(',') != std::string::npos) {
    const auto link = scratch.path() / "corpus.txt";
    std::filesystem::create_symlink(corpus, link);
    corpus = link;
  }
  const auto flag = [](bool b) { return std::string(b ? "true" : "false"); };
  const int threads = options.num_threads > 0 ? options.num_threads
                                              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::string> args = {
      program.string(),
      "--input=" + corpus.string(),
      "--model_prefix=" + (scratch.path() / "m").string(),
      "--model_type=" + options.model_type,
      "--vocab_size=" + std::to_string(options.vocab_size),
      "--byte_fallback=" + flag(options.byte_fallback),
      fmt::format("--character_coverage={}", options.character_coverage),
      "--split_digits=" + flag(options.split_digits),
      "--normalization_rule_name=identity",
      "--add_dummy_prefix=" + flag(options.add_dummy_prefix),
      "--remove_extra_whitespaces=" + flag(options.remove_extra_whitespaces),
      "--hard_vocab_limit=" + flag(options.hard_vocab_limit),
      // Runs of spaces are common in catalogue text; without this each space is its own piece.
      "--allow_whitespace_only_pieces=true",
      "--unk_id=0",
      "--bos_id=1",
      "--eos_id=2",
      options.with_pad ? "--pad_id=3" : "--pad_id=-1",
      "--max_sentence_length=" + std::to_string(options.max_sentence_length),
      "--num_threads=" + std::to_string(threads),
      "--random_seed=" + std::to_string(options.seed),
      options.verbose ? "--minloglevel=0" : "--minloglevel=1",
  };
  if (options.max_sentences > 0) {
    args.push_back("--input_sentence_size=" + std::to_string(options.max_sentences));
    args.push_back("--shuffle_input_sentence=true");
  }
  // Symbol lists go through files, one per line, so that a symbol may contain a comma.
  const auto symbol_file = [&](const std::vector<std::string>& symbols, const char* name, const char* what) {
    std::string lines;
    for (const auto& s : symbols) {
      USERIP_CHECK(!s.empty() && s.find('\n') == std::string::npos && s.find('\r') == std::string::npos,
                   "SentencePiece training: {} {} may not be empty or span lines", what, quote_for_message(s));
      lines += s + "\n";
    }
    const auto file = scratch.path() / name;
    write_file_atomic(file, lines);
    return file.string();
  };
  if (!options.user_defined_symbols.empty()) {
    args.push_back("--user_defined_symbols_file=" +
                   symbol_file(options.user_defined_symbols, "user_defined.txt", "user-defined symbol"));
  }
  if (!options.control_symbols.empty()) {
    args.push_back("--control_symbols_file=" + symbol_file(options.control_symbols, "control.txt", "control symbol"));
  }

  const auto log = scratch.path() / "train.log";
  const int status = run_program(args, options.verbose ? nullptr : &log);
  if (status != 0) {
    const std::string output = std::filesystem::exists(log) ? read_file(log) : std::string();
    fail("SentencePiece training on {} failed (spm_train exit status {}): {}", options.corpus.string(), status,
         trim(tail_lines(output, 8)));
  }
  const auto trained = scratch.path() / "m.model";
  USERIP_CHECK(std::filesystem::exists(trained), "spm_train wrote no model for {}", options.corpus.string());
  std::string serialized = read_file(trained);
  auto tok = std::make_unique<SentencePieceTokenizer>(serialized, model_file.string());
  write_file_atomic(model_file, serialized);
  return tok;
}

}  // namespace userip::text
