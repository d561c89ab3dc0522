#pragma once
// Byte-pair-encoding tokenizers in the Hugging Face `tokenizers` sense: byte-level BPE (GPT-2,
// Llama 3, Qwen2, SmolLM) and the SentencePiece-style BPE of some tokenizer.json files
// (spaces as "▁", byte fallback). Built from tokenizer.json, from vocab.json + merges.txt, or
// from plain vectors such as GGUF metadata.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "userip/text/tokenizer.h"

namespace userip::text {

// Pre-tokenization regexes (PCRE2 syntax, matched on code points with Unicode properties).
// In all of them `\s` means the Unicode White_Space property (as in the `regex` module GPT-2
// was published with, Oniguruma in HF `tokenizers`, and llama.cpp).
extern const char* const kGpt2Pattern;
extern const char* const kLlama3Pattern;
extern const char* const kQwen2Pattern;

// How a Split step treats the text its regex matches (HF `SplitDelimiterBehavior`).
enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitStep {
  std::string pattern;  // a regex; a literal string must be escaped by the caller
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;  // apply `behavior` to what the regex does NOT match
};

// The regex steps of a GGUF `tokenizer.ggml.pre` name ("gpt2", "gpt-2", "llama-bpe",
// "llama3", "qwen2", "smollm", ...). Throws userip::Error on a name it does not know.
std::vector<SplitStep> bpe_pre_tokenizer(std::string_view pre);

struct BpeOptions {
  std::vector<SplitStep> pre_tokenizer;  // applied in order; empty: the text is one word
  // Bytes are mapped to printable characters as GPT-2 does before merging, and back on decode.
  bool byte_level = true;
  // A word that is itself a vocabulary entry becomes that token without merging (Llama 3).
  bool ignore_merges = false;
  // Non-byte-level models only: characters missing from the vocabulary become their UTF-8
  // bytes as "<0xAB>" tokens; without it they become unk_token (consecutive ones fused when
  // fuse_unk).
  bool byte_fallback = false;
  std::string unk_token;
  bool fuse_unk = false;
  // SentencePiece-style text: spaces become "▁", and "▁" is prepended to the first piece of
  // text (prepend_scheme "first") or to every piece between added tokens ("always").
  bool metaspace = false;
  enum class Prepend { kNever, kFirst, kAlways } metaspace_prepend = Prepend::kFirst;
  // GPT-2 `add_prefix_space`: a space is put before text that does not start with one.
  bool add_prefix_space = false;
};

// A token matched in raw text before pre-tokenization (HF added tokens; GGUF control and
// user-defined tokens).
struct AddedToken {
  std::string content;
  std::int32_t id = -1;
  bool special = true;
  bool lstrip = false;       // also swallows the whitespace before it
  bool rstrip = false;       // also swallows the whitespace after it
  bool single_word = false;  // only where it is not part of a longer word
};

class BpeTokenizer : public Tokenizer {
 public:
  // `vocab[i]` is the token of id i (empty strings are holes); `merges` are pairs in rank
  // order. `source` names the file(s) in error messages. Throws userip::Error when a merge
  // names a token that is not in the vocabulary.
  BpeTokenizer(std::vector<std::string> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
               BpeOptions options, std::vector<AddedToken> added_tokens, std::string source);

  std::vector<std::int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<std::int32_t>& ids) const override;
  std::int32_t vocab_size() const override { return static_cast<std::int32_t>(vocab_.size()); }
  std::string token_text(std::int32_t id) const override;
  std::string kind() const override { return "bpe"; }
  std::int32_t token_id(std::string_view token) const override;

  // What a writer (HF vocab.json/merges.txt, GGUF) needs to save this tokenizer again.
  const std::vector<std::string>& vocab() const { return vocab_; }
  std::vector<std::pair<std::string, std::string>> merges() const;
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  const BpeOptions& options() const { return options_; }
  // The GGUF pre-tokenizer name this was built from ("" if built otherwise).
  const std::string& pre_name() const { return pre_name_; }
  void set_pre_name(std::string name) { pre_name_ = std::move(name); }

  // Registers more tokens to match in raw text (special tokens named by tokenizer_config.json
  // in a vocab.json + merges.txt directory). A content missing from the vocabulary is
  // appended with the given id (or the next free one when id is -1).
  void add_tokens(const std::vector<AddedToken>& tokens);

  // The pre-tokenized words of `text` (after added-token splitting and normalization, before
  // the byte mapping), for tests and diagnostics.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  ~BpeTokenizer() override;

 private:
  struct Segment;
  class Splitter;
  std::vector<Segment> split_added(std::string_view text) const;
  void encode_word(std::string_view word, std::vector<std::int32_t>& out) const;
  std::vector<std::int32_t> merge_word(std::string_view word) const;
  std::vector<std::string> pre_tokenize_segment(std::string_view text, bool first_segment) const;

  std::vector<std::string> vocab_;
  std::unordered_map<std::string, std::int32_t> ids_;
  // (left id << 32 | right id) -> (rank, merged id)
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges_;
  BpeOptions options_;
  std::vector<AddedToken> added_;
  std::vector<std::vector<std::uint32_t>> added_by_first_byte_;  // indices into added_, longest first
  std::vector<bool> is_added_;                                   // by id
  std::vector<std::unique_ptr<Splitter>> splitters_;
  std::int32_t byte_ids_[256];  // byte-level: id of each byte's character; else "<0xAB>" ids
  std::int32_t unk_id_ = -1;
  std::string source_;
  std::string pre_name_;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache_;
};

// GPT-2's byte <-> printable-character table: bytes that are printable Latin-1 map to
// themselves, the others to U+0100 onwards. Returned as UTF-8 strings.
const std::vector<std::string>& byte_to_unicode();

// vocab.json + merges.txt (GPT-2 layout). Throws userip::Error naming the file and line.
std::unique_ptr<BpeTokenizer> load_bpe_vocab_merges(const std::filesystem::path& vocab_json,
                                                    const std::filesystem::path& merges_txt,
                                                    std::string_view pre = "gpt2");

// A Hugging Face tokenizer.json whose model is BPE. Special-token defaults (bos/eos from the
// post-processor template, "<|endoftext|>" for GPT-2 vocabularies) are set on the result.
std::unique_ptr<BpeTokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json);

// True if tokenizer.json holds a byte-level BPE model (which this project tokenizes itself)
// rather than a SentencePiece-derived one (better served by tokenizer.model when present).
bool tokenizer_json_is_byte_level(const std::filesystem::path& tokenizer_json);

// Byte-level BPE from GGUF metadata (tokenizer.ggml.model "gpt2"): `tokens`
// (tokenizer.ggml.tokens), `merges` ("a b" strings, tokenizer.ggml.merges), `pre`
// (tokenizer.ggml.pre) and optional `token_types` (tokenizer.ggml.token_type; control (3) and
// user-defined (4) tokens are matched in raw text like HF added tokens). Special tokens are
// left for the caller to set from the GGUF keys.
std::unique_ptr<BpeTokenizer> make_bpe_tokenizer(const std::vector<std::string>& tokens,
                                                 const std::vector<std::string>& merges, std::string_view pre,
                                                 const std::vector<std::int32_t>& token_types = {});

}  // namespace userip::text
