#pragma once
// The frozen decoder-only language model: GPT-2 and the Llama family behind one class.
//
// UserIP-Tuning fits soft profile tokens by back-propagating the LM's loss into its *input
// embeddings* while every LM weight stays fixed. So the model's weights are plain tensors that
// never require grad (no torch::nn::Module, no optimiser can reach them), the forward pass starts
// from embeddings so soft-token rows can be spliced in, and losses are computed per position
// only where a target is given.
//
// Shapes: B = batch, T = new tokens in this call, S = keys attended (cached + new), d = hidden.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "userip/lm/config.h"

namespace userip::lm {

// Target value that token_nll() skips (the Hugging Face / PyTorch convention).
constexpr std::int64_t kIgnoreIndex = -100;

// One transformer block. Projections are stored [out, in] (as torch::linear wants them); q, k and
// v are stacked into one matrix, and Llama's gate and up projections into another, so each is a
// single GEMM. Undefined tensors are absent parts (e.g. biases of a bias-free Llama).
struct LayerWeights {
  torch::Tensor attn_norm_weight, attn_norm_bias;  // bias: LayerNorm (GPT-2) only
  torch::Tensor qkv_weight, qkv_bias;              // [q_dim + 2 kv_dim, d]: rows q, then k, then v
  torch::Tensor out_weight, out_bias;              // [d, q_dim]
  torch::Tensor mlp_norm_weight, mlp_norm_bias;
  torch::Tensor up_weight, up_bias;      // Llama: [2 ffn, d], rows gate then up; GPT-2: [ffn, d]
  torch::Tensor down_weight, down_bias;  // [d, ffn]
};

struct ModelWeights {
  torch::Tensor token_embedding;     // [vocab, d]
  torch::Tensor position_embedding;  // [max_positions, d]; GPT-2 only
  std::vector<LayerWeights> layers;
  torch::Tensor final_norm_weight, final_norm_bias;
  torch::Tensor lm_head;  // [vocab, d]; undefined when tied to token_embedding

  // Every defined tensor under a stable name ("layers.3.qkv_weight"), in a fixed order.
  std::vector<std::pair<std::string, torch::Tensor>> named() const;
};

// Throws userip::Error naming `source` and the tensor when a weight is missing, has the wrong
// shape, or when weights disagree on dtype/device.
void check_weights(const ModelConfig& config, const ModelWeights& weights, const std::string& source);

// Random weights (Gaussian, `stddev`; norm weights near 1) drawn in float64 on the CPU from
// `seed` and then converted, so the same seed gives the same model in every dtype and on every
// device. For tests, benchmarks and as the initialisation of pretraining.
ModelWeights random_weights(const ModelConfig& config, std::uint64_t seed, torch::ScalarType dtype,
                            torch::Device device, double stddev = 0.02);

// Keys and values of the tokens seen so far, for incremental decoding. Filled by
// forward_embeddings(); one cache belongs to one batch of sequences.
struct KVCache {
  std::vector<torch::Tensor> keys;    // per layer [B, kv_heads, S, head_dim], RoPE already applied
  std::vector<torch::Tensor> values;  // per layer [B, kv_heads, S, head_dim]
  torch::Tensor key_valid;            // [B, S] bool: false where a cached position was padding
  torch::Tensor key_positions;        // [B, S] int64: position ids of the cached keys
  torch::Tensor next_position;        // [B] int64: the position id of the next real token

  std::int64_t length() const { return key_valid.defined() ? key_valid.size(1) : 0; }
  bool empty() const { return length() == 0; }
  void clear() { *this = KVCache(); }
};

// The forward pass as a function of explicit weights: what CausalLM runs on its frozen weights,
// and what a trainer that owns trainable weights (LM pretraining) runs on its own.
//
// `attention` selects how tokens see each other:
//   undefined    - every token is real; causal attention;
//   [B, T]       - key-padding mask (nonzero = real token), causal attention among real tokens;
//                  left or right padding both work; default positions count real tokens only,
//                  so a padded row gets the same results as the unpadded sequence;
//   [B, T, S]    - bool attend matrix (true = query t may attend key s; no causal rule added),
//                  S = cached + T; default positions are cache length + 0..T-1.
// `position_ids` [B, T] overrides the default positions. A query allowed to attend to nothing
// gets the mean of all values (finite, so gradients stay finite); callers ignore such positions.
// Returns the final (normed) hidden states [B, T, d] in the weights' dtype (float32 for float16
// weights on the CPU, whose backend lacks float16 kernels).
torch::Tensor forward_hidden(const ModelConfig& config, const ModelWeights& weights, const torch::Tensor& inputs_embeds,
                             const torch::Tensor& attention = {}, const torch::Tensor& position_ids = {},
                             KVCache* cache = nullptr);

class CausalLM {
 public:
  // Takes the weights, detaches them and switches requires_grad off for good.
  CausalLM(ModelConfig config, ModelWeights weights, std::string source = "model");

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  torch::ScalarType dtype() const { return weights_.token_embedding.scalar_type(); }
  torch::Device device() const { return weights_.token_embedding.device(); }
  std::int64_t hidden_size() const { return config_.hidden_size; }
  std::int64_t vocab_size() const { return config_.vocab_size; }
  std::int64_t num_parameters() const;  // tied head counted once
  const std::string& source() const { return source_; }  // where it was loaded from, for messages

  // A copy with weights converted to `dtype` on `device` (norms stay numerically in f32 anyway).
  CausalLM to(torch::ScalarType dtype, torch::Device device) const;

  // Token ids [B, T] (any integer type) -> input embeddings [B, T, d] in the model's dtype.
  torch::Tensor embed(const torch::Tensor& token_ids) const;

  // See forward_hidden(). inputs_embeds of another floating dtype is converted (differentiably).
  torch::Tensor forward_embeddings(const torch::Tensor& inputs_embeds, const torch::Tensor& attention = {},
                                   const torch::Tensor& position_ids = {}, KVCache* cache = nullptr) const;

  // Hidden states [..., d] -> logits [..., vocab] in float32 (float64 for a float64 model).
  torch::Tensor logits(const torch::Tensor& hidden) const;

  // embed + forward_embeddings + logits, for token input.
  torch::Tensor forward_tokens(const torch::Tensor& token_ids, const torch::Tensor& attention = {},
                               const torch::Tensor& position_ids = {}, KVCache* cache = nullptr) const;

  // Negative log-likelihood [B, T] (float32, or float64 for a float64 model): entry (b, t) is
  // -log p(targets[b, t] | inputs up to and including position t), i.e. `targets` is already the
  // *next* token for each position; kIgnoreIndex entries give 0. Only the hidden states of target
  // positions go through the LM head, so a long prompt with a short label costs one small GEMM.
  // Differentiable with respect to inputs_embeds.
  torch::Tensor token_nll(const torch::Tensor& inputs_embeds, const torch::Tensor& attention,
                          const torch::Tensor& targets, const torch::Tensor& position_ids = {}) const;

  // Frozen-parameter guard: true when no weight requires grad. assert_frozen() aborts otherwise
  // (a weight that requires grad is a bug in the caller, never a user error).
  bool is_frozen() const;
  void assert_frozen() const;
  // A hash of every weight's bytes (hex), so a test can prove that a training run changed none.
  std::string fingerprint() const;

 private:
  ModelConfig config_;
  ModelWeights weights_;
  std::string source_;
};

// Input embeddings with soft-token rows spliced in: `embeds` [B, T, d] (e.g. embed() of a
// template whose soft slots hold any token id), `slots` [B, T] bool marking the soft positions,
// `rows` [N, d] with N = number of true slots, taken in row-major order. Differentiable with
// respect to `rows` (and `embeds`); the result is a new tensor.
torch::Tensor splice_soft_tokens(const torch::Tensor& embeds, const torch::Tensor& slots, const torch::Tensor& rows);

// Helper for building next-token targets: given token ids [B, T] and a bool mask [B, T] of the
// positions whose token is a label, returns targets [B, T] int64 where targets[b, t] =
// ids[b, t + 1] if position t + 1 is a label, else kIgnoreIndex.
torch::Tensor next_token_targets(const torch::Tensor& token_ids, const torch::Tensor& label_mask);

}  // namespace userip::lm
