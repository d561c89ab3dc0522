#pragma once
// Attention kernels and rotary embeddings, exposed so tests can hold the fast path against a
// plain-loop reference.
#include <torch/types.h>

#include "userip/lm/config.h"

namespace userip::lm {

// The additive score bias for a bool attend matrix [B, T, S] (true = may attend): 0 where allowed,
// a large finite negative number elsewhere, float32 (float64 for float64 models), shaped
// [B, 1, T, S] so it broadcasts over heads.
torch::Tensor attention_bias(const torch::Tensor& allowed, torch::ScalarType compute_dtype);

// Scaled dot-product attention with grouped-query heads: q [B, H, T, hd]; k, v [B, KVH, S, hd]
// with H a multiple of KVH (query head h reads kv head h / (H / KVH), as Hugging Face's
// repeat_kv does). Scores and softmax are computed in `bias`'s dtype. Returns [B, H, T, hd].
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& bias, double scale);

// The same result from explicit loops in float64 on the CPU, for tests. `allowed` is the bool
// attend matrix [B, T, S]; a query with no allowed key averages all values (as the fast path).
torch::Tensor attention_naive(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& allowed, double scale);

// cos and sin tables [B, 1, T, head_dim] for `position_ids` [B, T], in `dtype`, after the config's
// RoPE scaling (Hugging Face layout: the frequency vector repeated twice).
std::pair<torch::Tensor, torch::Tensor> rope_tables(const ModelConfig& config, const torch::Tensor& position_ids,
                                                    torch::ScalarType dtype);

// Hugging Face's rotary convention: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
// over the two halves of the head dimension. x [B, heads, T, hd]; computed in cos's dtype.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace userip::lm
