// Generation: the KV-cached loop against recomputing the prefix, padding, sampling rules, stops.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>

#include "userip/lm/generate.h"
#include "userip/util/random.h"

namespace userip::lm {
namespace {

using nlohmann::json;

CausalLM random_model(const std::string& kind, std::uint64_t seed = 5) {
  json j = kind == "gpt2"
               ? json{{"model_type", "gpt2"}, {"n_embd", 32}, {"n_layer", 2}, {"n_head", 4},
                      {"vocab_size", 64},     {"n_positions", 32}, {"bos_token_id", 0}, {"eos_token_id", 0}}
               : json{{"model_type", "llama"}, {"hidden_size", 32}, {"intermediate_size", 48},
                      {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                      {"vocab_size", 64},      {"max_position_embeddings", 128}, {"eos_token_id", 2}};
  ModelConfig config = ModelConfig::from_json(j, "test");
  // Large weights give peaked next-token distributions, so greedy paths are not decided by ties.
  return CausalLM(config, random_weights(config, seed, at::kFloat, at::kCPU, /*stddev=*/0.5), "random");
}

at::Tensor ids_tensor(const std::vector<std::int64_t>& ids) {
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
}

class GenerateTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GenerateTest, CachedGreedyEqualsUncached) {
  CausalLM model = random_model(GetParam());
  GenerationOptions options;
  options.max_new_tokens = 12;
  options.stop_tokens = {-1};  // never stop early: compare the full length
  auto cached = generate_from_tokens(model, {3, 17, 9, 41}, options);
  options.use_cache = false;
  auto uncached = generate_from_tokens(model, {3, 17, 9, 41}, options);
  EXPECT_EQ(cached.tokens.size(), 12u);
  EXPECT_EQ(cached.tokens, uncached.tokens);
  EXPECT_EQ(cached.reason, StopReason::max_tokens);

  // And uncached greedy is the argmax of a plain full forward at each step.
  std::vector<std::int64_t> sequence = {3, 17, 9, 41};
  for (auto token : cached.tokens) {
    auto logits = model.forward_tokens(ids_tensor(sequence));
    EXPECT_EQ(logits[0][-1].argmax().item<std::int64_t>(), token);
    sequence.push_back(token);
  }
}

TEST_P(GenerateTest, PaddedBatchMatchesSinglePrompts) {
  CausalLM model = random_model(GetParam());
  GenerationOptions options;
  options.max_new_tokens = 6;
  options.stop_tokens = {-1};
  const std::vector<std::vector<std::int32_t>> prompts = {{5, 6}, {7, 8, 9, 10, 11}, {12, 13, 14}};
  for (bool left : {true, false}) {
    const int64_t width = 5;
    auto ids = at::zeros({3, width}, at::TensorOptions().dtype(at::kLong));
    auto mask = at::zeros({3, width}, at::TensorOptions().dtype(at::kLong));
    for (int64_t b = 0; b < 3; ++b) {
      const auto& p = prompts[static_cast<size_t>(b)];
      const int64_t start = left ? width - static_cast<int64_t>(p.size()) : 0;
      for (size_t t = 0; t < p.size(); ++t) {
        ids.index_put_({b, start + static_cast<int64_t>(t)}, p[t]);
        mask.index_put_({b, start + static_cast<int64_t>(t)}, 1);
      }
    }
    at::Tensor embeds;
    {
      at::NoGradGuard no_grad;
      embeds = model.embed(ids);
    }
    for (bool cache : {true, false}) {
      options.use_cache = cache;
      auto batch = generate_batch(model, embeds, mask, options);
      for (size_t b = 0; b < 3; ++b)
        EXPECT_EQ(batch[b].tokens, generate_from_tokens(model, prompts[b], options).tokens)
            << (left ? "left" : "right") << " cache=" << cache << " row " << b;
    }
  }
}

TEST_P(GenerateTest, SoftTokenPromptsAndStops) {
  CausalLM model = random_model(GetParam());
  at::NoGradGuard no_grad;
  // A prompt row that is no vocabulary entry, as a profile codeword is.
  auto prompt = model.embed(ids_tensor({4, 22, 31}));
  prompt.select(1, 1).copy_(at::linspace(-1, 1, model.hidden_size()));
  GenerationOptions options;
  options.max_new_tokens = 8;
  options.stop_tokens = {-1};
  auto free_run = generate(model, prompt, options);
  options.use_cache = false;
  EXPECT_EQ(generate(model, prompt, options).tokens, free_run.tokens);

  // Stop at the third produced token: it is included and ends the output.
  options.use_cache = true;
  options.stop_tokens = {free_run.tokens[2]};
  auto stopped = generate(model, prompt, options);
  auto first_hit = std::find(free_run.tokens.begin(), free_run.tokens.end(), free_run.tokens[2]) - free_run.tokens.begin();
  EXPECT_EQ(stopped.reason, StopReason::stop_token);
  EXPECT_EQ(static_cast<long>(stopped.tokens.size()), first_hit + 1);
}

TEST_P(GenerateTest, SamplingIsReproducibleAndTopKOneIsGreedy) {
  CausalLM model = random_model(GetParam());
  GenerationOptions options;
  options.max_new_tokens = 10;
  options.stop_tokens = {-1};
  options.temperature = 1.5;
  options.seed = 42;
  auto a = generate_from_tokens(model, {1, 2, 3}, options);
  auto b = generate_from_tokens(model, {1, 2, 3}, options);
  EXPECT_EQ(a.tokens, b.tokens);
  options.use_cache = false;
  EXPECT_EQ(generate_from_tokens(model, {1, 2, 3}, options).tokens, a.tokens);
  options.use_cache = true;

  GenerationOptions greedy;
  greedy.max_new_tokens = 10;
  greedy.stop_tokens = {-1};
  auto greedy_run = generate_from_tokens(model, {1, 2, 3}, greedy);
  options.top_k = 1;
  EXPECT_EQ(generate_from_tokens(model, {1, 2, 3}, options).tokens, greedy_run.tokens);
  options.top_k = 0;
  options.top_p = 1e-6;
  EXPECT_EQ(generate_from_tokens(model, {1, 2, 3}, options).tokens, greedy_run.tokens);
}

INSTANTIATE_TEST_SUITE_P(Architectures, GenerateTest, ::testing::Values("llama", "gpt2"));

TEST(Generate, StopsAtTheContextLimit) {
  CausalLM model = random_model("gpt2");  // 32 learned positions
  GenerationOptions options;
  options.max_new_tokens = 10;
  options.stop_tokens = {-1};
  std::vector<std::int32_t> prompt(30, 7);
  auto out = generate_from_tokens(model, prompt, options);
  // Tokens 1 and 2 are fed at positions 30 and 31; token 3 would need position 32.
  EXPECT_EQ(out.tokens.size(), 3u);
  EXPECT_EQ(out.reason, StopReason::context);
}

TEST(PickToken, TopKAndTopPKeepTheRightTokens) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
  auto logits = at::log(at::tensor({0.15, 0.5, 0.05, 0.3}, at::TensorOptions().dtype(at::kDouble))).to(at::kFloat);
  GenerationOptions options;
  options.temperature = 1.0;
  Rng rng(1);
  EXPECT_EQ(pick_token(logits, GenerationOptions{}, rng), 1);  // greedy

  auto histogram = [&](const GenerationOptions& o) {
    std::map<int, int> counts;
    for (int i = 0; i < 4000; ++i) ++counts[pick_token(logits, o, rng)];
    return counts;
  };
  options.top_k = 2;
  auto top2 = histogram(options);
  EXPECT_EQ(top2.size(), 2u);
  EXPECT_NEAR(top2[1] / 4000.0, 0.5 / 0.8, 0.03);
  EXPECT_NEAR(top2[3] / 4000.0, 0.3 / 0.8, 0.03);

  options.top_k = 0;
  options.top_p = 0.9;  // 0.5 + 0.3 = 0.8 < 0.9: the 0.15 token is needed too
  auto nucleus = histogram(options);
  EXPECT_EQ(nucleus.size(), 3u);
  EXPECT_EQ(nucleus.count(2), 0u);
  EXPECT_NEAR(nucleus[0] / 4000.0, 0.15 / 0.95, 0.03);

  options.top_p = 1.0;
  auto all = histogram(options);
  EXPECT_NEAR(all[2] / 4000.0, 0.05, 0.02);
}

}  // namespace
}  // namespace userip::lm
