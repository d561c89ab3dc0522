#pragma once
// Checkpoints in, checkpoints out: Hugging Face model directories (config.json + safetensors)
// and GGUF files, for the GPT-2 and Llama families. Tensors are converted one at a time into the
// requested dtype and device, so loading needs little more memory than the final weights.
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "userip/lm/config.h"
#include "userip/tensor/gguf.h"
#include "userip/lm/model.h"

namespace userip::lm {

// `path` is a Hugging Face model directory (or its config.json / a .safetensors file inside it)
// or a .gguf file. Throws userip::Error naming the file and tensor on unknown architectures,
// missing tensors and shape mismatches.
CausalLM load_model(const std::filesystem::path& path, torch::ScalarType dtype = torch::kFloat32,
                    torch::Device device = torch::kCPU);

// What a checkpoint holds, read from its headers without loading a weight (`userip lm info`).
struct CheckpointSummary {
  ModelConfig config;
  std::size_t tensors = 0;
  // Weights only: buffers some checkpoints carry beside them (GPT-2's causal-mask "attn.bias" and
  // "attn.masked_bias", RoPE tables) and a head tied to the embedding do not count.
  std::int64_t parameters = 0;
  std::map<std::string, std::int64_t> parameters_by_type;  // stored type name ("F32", "Q8_0", ...) → count
};
CheckpointSummary summarize_checkpoint(const std::filesystem::path& path);

// The config a GGUF file describes (general.architecture llama, qwen2 or gpt2).
ModelConfig config_from_gguf(const tensor::GgufFile& file);

// Writes config.json and model.safetensors (sharded above `max_shard_bytes`, as transformers
// does) into `dir`, in the model's dtype, with Hugging Face tensor names and layouts (GPT-2's
// Conv1D [in, out]), and copies `tokenizer_files` (tokenizer.json, tokenizer.model,
// tokenizer_config.json, vocab.json, merges.txt, ...) beside them.
void save_model_hf(const CausalLM& model, const std::filesystem::path& dir,
                   const std::vector<std::filesystem::path>& tokenizer_files = {},
                   std::uint64_t max_shard_bytes = 5ULL << 30);

// The files of a Hugging Face directory that belong to its tokenizer (for save_model_hf).
std::vector<std::filesystem::path> tokenizer_files_in(const std::filesystem::path& dir);

// Writes a GGUF file llama.cpp can open: llama-family models as architecture "llama" (with q/k
// rows permuted the way llama.cpp's converter does) or "qwen2", GPT-2 as "gpt2". Matrices are
// stored in the model's dtype (f32, f16 or bf16) or, with `quantize_q8_0`, as Q8_0; norms and
// biases stay f32. `extra_metadata` carries what the model does not know, chiefly the
// tokenizer.ggml.* keys (see gguf_tokenizer_metadata).
void save_model_gguf(const CausalLM& model, const std::filesystem::path& file,
                     const std::vector<std::pair<std::string, tensor::GgufValue>>& extra_metadata = {},
                     bool quantize_q8_0 = false);

// Every tokenizer.* key of a GGUF file, to carry a GGUF model's vocabulary into a new file.
std::vector<std::pair<std::string, tensor::GgufValue>> gguf_tokenizer_metadata(const tensor::GgufFile& file);

}  // namespace userip::lm
