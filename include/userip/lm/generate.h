#pragma once
// Text generation from a frozen CausalLM: greedy or sampled (temperature, top-k, top-p) with a
// seed, using the KV cache. Prompts are input embeddings, so a prompt may contain soft tokens
// (the profile explanations feed a codeword as a token and read the continuation).
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "userip/lm/model.h"

namespace userip {
class Rng;
}

namespace userip::lm {

struct GenerationOptions {
  std::int64_t max_new_tokens = 32;
  double temperature = 0.0;  // <= 0: greedy (argmax); otherwise logits are divided by it
  std::int64_t top_k = 0;    // 0: no top-k cut
  double top_p = 1.0;        // 1: no nucleus cut; else the smallest set with probability >= top_p
  std::uint64_t seed = 0;    // sampling is reproducible per (seed, batch row)
  // Tokens that end a sequence (and are included in the output). Empty: the model's eos ids.
  std::vector<std::int32_t> stop_tokens;
  // false recomputes the whole prefix for every new token: slow, for tests and as a reference.
  bool use_cache = true;
};

enum class StopReason {
  stop_token,  // produced one of the stop tokens (it is the last token of the output)
  max_tokens,  // produced max_new_tokens
  context,     // reached the model's max_position_embeddings
};
std::string to_string(StopReason reason);

struct Generation {
  std::vector<std::int32_t> tokens;  // new tokens only
  StopReason reason = StopReason::max_tokens;
};

// One prompt: embeddings [T, d] or [1, T, d] (e.g. model.embed(ids) with soft-token rows spliced).
Generation generate(const CausalLM& model, const torch::Tensor& prompt_embeds, const GenerationOptions& options);

// A batch of prompts [B, T, d] with a key-padding mask [B, T] (left or right padding; undefined =
// no padding). Each row gives the same tokens it would alone (up to float rounding in ties).
std::vector<Generation> generate_batch(const CausalLM& model, const torch::Tensor& prompt_embeds,
                                       const torch::Tensor& prompt_mask, const GenerationOptions& options);

// Token ids in, token ids out.
Generation generate_from_tokens(const CausalLM& model, const std::vector<std::int32_t>& prompt,
                                const GenerationOptions& options);

// Picks the next token from one row of logits [vocab] under `options` (greedy when
// temperature <= 0). Exposed for tests.
std::int32_t pick_token(const torch::Tensor& logits, const GenerationOptions& options, Rng& rng);

}  // namespace userip::lm
