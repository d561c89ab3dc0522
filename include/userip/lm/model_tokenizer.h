#pragma once
// The tokenizer that belongs to a checkpoint, wherever it keeps it: the tokenizer files of a
// Hugging Face directory, or the tokenizer.ggml.* metadata of a GGUF file. And the way back:
// a tokenizer as GGUF metadata or as Hugging Face files, so that a model exported by the project
// carries its vocabulary into llama.cpp-style tools and into transformers.
#include <torch/types.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "userip/tensor/gguf.h"
#include "userip/text/tokenizer.h"

namespace userip::lm {

// `path` as given to load_model(). Throws userip::Error naming the file when the tokenizer is
// missing or of an unsupported kind. GGUF vocabularies: tokenizer.ggml.model "llama"
// (SentencePiece BPE), "t5" (SentencePiece unigram) and "gpt2" (byte-level BPE).
std::unique_ptr<text::Tokenizer> load_model_tokenizer(const std::filesystem::path& path);

// The tokenizer.ggml.* metadata that llama.cpp needs to tokenize like `tokenizer`:
//   SentencePiece  -> model "llama" ("t5" for unigram models), pre "default", tokens, scores,
//                     token_type (SentencePiece piece types), add_space_prefix,
//                     remove_extra_whitespaces;
//   byte-level BPE -> model "gpt2", pre (llama.cpp's name of the pre-tokenizer: "gpt-2",
//                     "llama-bpe", "qwen2", "smollm", ...), tokens, merges ("a b"), token_type
//                     (control for special added tokens, user-defined for other added tokens,
//                     unused for holes in the vocabulary);
// and for both bos/eos/unk/padding token ids (where the tokenizer has them) and
// add_bos_token / add_eos_token. load_model_tokenizer() of a file written with this metadata
// tokenizes exactly as `tokenizer` does. Throws userip::Error for tokenizers GGUF cannot
// express (SentencePiece-style BPE from a tokenizer.json without tokenizer.model; byte-level
// BPE whose pre-tokenizer llama.cpp has no name for).
std::vector<std::pair<std::string, tensor::GgufValue>> gguf_tokenizer_metadata(const text::Tokenizer& tokenizer);

// Writes Hugging Face tokenizer files for `tokenizer` into `dir` (created if needed):
// SentencePiece -> tokenizer.model; byte-level BPE -> tokenizer.json; both with a
// tokenizer_config.json naming the special tokens and add_bos_token / add_eos_token.
// text::load_tokenizer(dir) then tokenizes exactly as `tokenizer` does. Throws userip::Error
// for tokenizers it cannot write (as gguf_tokenizer_metadata).
void save_tokenizer_hf(const text::Tokenizer& tokenizer, const std::filesystem::path& dir);

enum class ExportFormat { gguf, hf };

struct ExportOptions {
  ExportFormat format = ExportFormat::gguf;
  // Weights' dtype in the output (f32, f16 or bf16); nullopt: the source's own (its matrices'
  // stored type, f32 for quantized sources).
  std::optional<torch::ScalarType> dtype;
  bool quantize_q8_0 = false;  // GGUF only: matrices as Q8_0
};

// Converts the checkpoint at `source` (a Hugging Face directory or a GGUF file, as load_model()
// takes) into `out` with its tokenizer: a GGUF file (tokenizer metadata from
// gguf_tokenizer_metadata(), or copied verbatim from a GGUF source, plus the chat template of a
// tokenizer_config.json) or a Hugging Face directory (the source directory's tokenizer files
// copied, or files written by save_tokenizer_hf() for a GGUF source). The tensors are converted
// one at a time. Throws userip::Error naming the file on unreadable sources and on outputs
// that cannot hold the model or its tokenizer.
void export_model(const std::filesystem::path& source, const std::filesystem::path& out, const ExportOptions& options);

// The dtype the source's matrices are stored in: f16 or bf16 where most of its 2-D weights are,
// f32 otherwise (f32 and quantized checkpoints).
torch::ScalarType stored_dtype(const std::filesystem::path& source);

}  // namespace userip::lm
