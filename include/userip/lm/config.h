#pragma once
// The shape and numerics of a decoder-only transformer, read from (and written to) a Hugging Face
// config.json. One struct covers GPT-2 and the Llama family (Llama 2/3, TinyLlama, Mistral,
// Qwen2, SmolLM): the differences between them are the fields below, not separate classes.
// No libtorch here: the CLI and `lm info` read configs without pulling in tensors.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace userip::lm {

enum class Architecture {
  llama,  // RoPE, RMSNorm, SwiGLU, grouped-query attention (also Mistral, Qwen2)
  gpt2,   // learned positions, LayerNorm with bias, GELU MLP, fused qkv
};
std::string to_string(Architecture architecture);

enum class Activation {
  silu,       // SwiGLU gate (Llama family)
  gelu_tanh,  // HF "gelu_new" / "gelu_pytorch_tanh" / "gelu_fast": GPT-2's tanh approximation
  gelu,       // exact erf GELU
};
std::string to_string(Activation activation);

enum class RopeScalingType {
  none,     // plain RoPE
  linear,   // positions divided by `factor` (position interpolation)
  dynamic,  // NTK-aware: the base grows once a sequence outruns max_position_embeddings
  llama3,   // Llama 3.1: low frequencies divided by `factor`, high ones kept, smooth in between
};
std::string to_string(RopeScalingType type);

struct RopeScaling {
  RopeScalingType type = RopeScalingType::none;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3 only
  double high_freq_factor = 4.0;  // llama3 only
  // llama3: the context the model was pretrained with (8192 for Llama 3.1); 0 = not given.
  std::int64_t original_max_position_embeddings = 0;
  // Per-frequency divisors applied after the rule above: how llama.cpp stores Llama 3 scaling in
  // GGUF files (tensor rope_freqs.weight). config.json has no field for them.
  std::vector<double> frequency_divisors;
};

struct ModelConfig {
  Architecture architecture = Architecture::llama;
  std::string model_type = "llama";  // config.json's model_type, kept so a save reproduces it
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;
  std::int64_t num_kv_heads = 0;  // < num_heads: grouped-query attention
  std::int64_t head_dim = 0;      // usually hidden_size / num_heads; Mistral-style configs may differ
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;  // GPT-2: size of the learned position table
  double norm_eps = 1e-5;                    // rms_norm_eps or layer_norm_epsilon
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  std::int64_t sliding_window = 0;  // 0: full causal attention (Mistral may set a window)
  bool qkv_bias = false;            // Qwen2; Llama's attention_bias sets this and out_bias
  bool out_bias = false;
  bool mlp_bias = false;  // Llama's mlp_bias; GPT-2 always has MLP biases
  bool tie_word_embeddings = false;
  Activation activation = Activation::silu;
  // GPT-2's scale_attn_by_inverse_layer_idx (extra 1/(layer+1) on attention scores).
  bool scale_attn_by_inverse_layer_idx = false;
  std::int32_t bos_token_id = -1;  // -1: none
  std::vector<std::int32_t> eos_token_ids;  // Llama 3 lists several
  std::int32_t pad_token_id = -1;
  std::string torch_dtype = "float32";  // the dtype the weights were saved in, informative only

  std::int64_t q_dim() const { return num_heads * head_dim; }
  std::int64_t kv_dim() const { return num_kv_heads * head_dim; }
  std::int32_t eos_token_id() const { return eos_token_ids.empty() ? -1 : eos_token_ids.front(); }

  // Throws userip::Error naming `source` when sizes are missing or inconsistent.
  void validate(const std::string& source) const;

  // Parses a Hugging Face config.json object; `source` names the file in error messages.
  static ModelConfig from_json(const nlohmann::json& json, const std::string& source);
  // The config.json a Hugging Face `transformers` would accept for this model.
  nlohmann::json to_json() const;
};

// Reads `path` (a config.json) or `path`/config.json when given a directory.
ModelConfig load_config(const std::filesystem::path& path);
void save_config(const ModelConfig& config, const std::filesystem::path& file);

// RoPE inverse frequencies (length head_dim / 2) after the config's scaling, for a forward pass
// whose largest position id is `sequence_length - 1` (only the "dynamic" type depends on it).
std::vector<double> rope_inverse_frequencies(const ModelConfig& config, std::int64_t sequence_length);

}  // namespace userip::lm
