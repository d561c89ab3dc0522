#pragma once
// SentencePiece models: tokenizer.model files, vocabularies given as vectors (GGUF metadata of
// llama-arch files, tokenizer.ggml.model "llama"), and training.
//
// Encoding and decoding are implemented here, following libsentencepiece's algorithms (BPE by
// piece score, unigram Viterbi, its normaliser and decoder); libsentencepiece itself is not
// linked: Debian's build carries a private copy of protobuf whose exported symbols collide
// with the libprotobuf that libtorch loads, and the process crashes at start-up. Its tools
// (spm_train, spm_encode) run as separate processes instead: spm_train for training here,
// spm_encode as the reference in the tests.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "userip/text/tokenizer.h"

namespace userip::text {

// Piece types, numbered as in SentencePiece's ModelProto and GGUF's tokenizer.ggml.token_type.
enum class PieceType : std::int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

class SentencePieceTokenizer : public Tokenizer {
 public:
  // `serialized` is a ModelProto; `source` names it in error messages. Special tokens are
  // initialised from the model (bos/eos/pad/unk ids; add_bos when it has a bos). Throws
  // userip::Error when the bytes are not a model this implementation can run.
  SentencePieceTokenizer(std::string serialized, std::string source);
  ~SentencePieceTokenizer() override;

  std::vector<std::int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<std::int32_t>& ids) const override;
  std::int32_t vocab_size() const override;
  std::string token_text(std::int32_t id) const override;
  std::string kind() const override { return "sentencepiece"; }
  std::int32_t token_id(std::string_view token) const override;

  float score(std::int32_t id) const;
  PieceType piece_type(std::int32_t id) const;
  bool is_unigram() const;  // false: BPE
  // Normaliser settings, e.g. for GGUF's tokenizer.ggml.add_space_prefix /
  // remove_extra_whitespaces.
  bool add_dummy_prefix() const;
  bool remove_extra_whitespaces() const;
  // The text after SentencePiece normalisation ("▁" for spaces, dummy prefix), for tests.
  std::string normalize(std::string_view text) const;
  // The ModelProto, e.g. to write tokenizer.model next to a saved checkpoint.
  const std::string& serialized_model() const;
  void save(const std::filesystem::path& file) const;  // atomic write of serialized_model()

 private:
  struct Model;
  std::unique_ptr<Model> model_;
};

// tokenizer.model. Throws userip::Error naming the file when it is missing or not a model.
std::unique_ptr<SentencePieceTokenizer> load_sentencepiece(const std::filesystem::path& model_file);

// A vocabulary as GGUF stores it for tokenizer.ggml.model "llama".
struct SentencePieceVocab {
  std::vector<std::string> tokens;        // tokenizer.ggml.tokens
  std::vector<float> scores;              // tokenizer.ggml.scores (empty: all 0)
  std::vector<std::int32_t> token_types;  // tokenizer.ggml.token_type (empty: all normal)
  bool add_dummy_prefix = true;           // tokenizer.ggml.add_space_prefix
  bool remove_extra_whitespaces = false;  // tokenizer.ggml.remove_extra_whitespaces
  bool unigram = false;                   // false: BPE (merge by score), as llama.cpp's SPM
  // The special tokens the model names in its trainer spec (-1: the defaults "<s>", "</s>",
  // "<pad>", which count only where such a control piece exists).
  std::int32_t bos = -1, eos = -1, pad = -1;
};

// The ModelProto (protobuf wire format) for `vocab`: identity normalisation, whitespace
// escaped to "▁", byte fallback when the vocabulary has byte pieces. Throws userip::Error on
// inconsistent input (length mismatch, empty token, no or several unknown pieces).
std::string serialize_sentencepiece_model(const SentencePieceVocab& vocab);

// serialize_sentencepiece_model + load. Special tokens: bos/eos/pad from `vocab` where given,
// else the model's; the GGUF loader then sets what its metadata says.
std::unique_ptr<SentencePieceTokenizer> make_sentencepiece_tokenizer(const SentencePieceVocab& vocab);

struct SentencePieceTrainOptions {
  std::filesystem::path corpus;    // UTF-8 text, one sentence per line
  std::string model_type = "bpe";  // "bpe" or "unigram"
  std::int32_t vocab_size = 4000;
  bool byte_fallback = true;
  // Tokens that are always one piece wherever they appear in text (e.g. "<|user|>").
  std::vector<std::string> user_defined_symbols;
  // Tokens that are never produced from text, only inserted by code (e.g. separators).
  std::vector<std::string> control_symbols;
  double character_coverage = 1.0;
  bool split_digits = true;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
  bool hard_vocab_limit = true;             // false: a smaller vocabulary is fine when the corpus is small
  bool with_pad = false;                    // reserve "<pad>" as id 3 (unk 0, bos 1, eos 2 always)
  std::int32_t max_sentence_length = 4192;  // bytes; longer lines are skipped by the trainer
  std::int64_t max_sentences = 0;           // 0: all lines
  std::int32_t num_threads = 0;             // 0: hardware concurrency
  std::uint32_t seed = 1234;
  bool verbose = false;  // libsentencepiece's own progress log on stderr
};

// Trains on `options.corpus` with libsentencepiece's spm_train (found on PATH, or at
// $USERIP_SPM_TRAIN) and writes the model atomically to `model_file` (e.g.
// <dir>/tokenizer.model). Throws userip::Error with the trainer's message on failure.
std::unique_ptr<SentencePieceTokenizer> train_sentencepiece(const SentencePieceTrainOptions& options,
                                                            const std::filesystem::path& model_file);

}  // namespace userip::text
