#pragma once
// Tokenizers of real checkpoints: byte-level BPE (GPT-2, Llama 3, Qwen2 pre-tokenization) and
// SentencePiece. One interface, so the LM and the profile code never care which one they have.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace userip::text {

struct SpecialTokens {
  std::int32_t bos = -1;  // -1: the vocabulary has none
  std::int32_t eos = -1;
  std::int32_t pad = -1;
  std::int32_t unk = -1;
  bool add_bos = false;  // whether the checkpoint's own tokenizer prepends bos by default
  bool add_eos = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Plain text to ids; never adds bos/eos (see encode_for_model).
  virtual std::vector<std::int32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(const std::vector<std::int32_t>& ids) const = 0;
  virtual std::int32_t vocab_size() const = 0;
  // The vocabulary entry of `id` as stored (e.g. "Ġthe", "▁the", "<0x0A>").
  virtual std::string token_text(std::int32_t id) const = 0;
  // "bpe" or "sentencepiece", for `lm info`.
  virtual std::string kind() const = 0;
  // The id of a vocabulary entry given as stored (the inverse of token_text), or -1. The
  // default scans the vocabulary; the built-in tokenizers override it with a lookup.
  virtual std::int32_t token_id(std::string_view token) const;

  const SpecialTokens& specials() const { return specials_; }
  void set_specials(const SpecialTokens& specials) { specials_ = specials; }
  // encode() plus bos/eos as the checkpoint's tokenizer config asks.
  std::vector<std::int32_t> encode_for_model(std::string_view text) const;

 protected:
  SpecialTokens specials_;
};

// Loads the tokenizer of a Hugging Face model directory: tokenizer.json, else vocab.json +
// merges.txt, else tokenizer.model (SentencePiece). Special tokens from tokenizer_config.json,
// special_tokens_map.json or config.json where present. Throws userip::Error naming the file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_dir);

// The special-token settings of a model directory: starts from `defaults` (what the tokenizer
// file itself says) and overrides them with config.json (bos/eos/pad_token_id), then
// special_tokens_map.json, then tokenizer_config.json (token strings or {"content": ...}
// objects, resolved through `tokenizer`; add_bos_token / add_eos_token). load_tokenizer
// applies this already; the function is public for loaders that assemble a tokenizer
// themselves.
SpecialTokens read_special_tokens(const std::filesystem::path& model_dir, const Tokenizer& tokenizer,
                                  SpecialTokens defaults);

}  // namespace userip::text
