// The frozen LM's forward pass on tiny random models: config parsing, fast attention against the
// loop reference, gradients against finite differences, padding, attend matrices, the KV cache,
// per-position NLL and the frozen-weight guard.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/optim/adam.h>

#include <cmath>

#include "support/temp_dir.h"
#include "userip/lm/attention.h"
#include "userip/lm/config.h"
#include "userip/lm/model.h"
#include "userip/util/error.h"
#include "lm/lm_test_support.h"

namespace userip::lm {
namespace {

using namespace test_support;

using nlohmann::json;

json tiny_llama_json() {
  return {{"model_type", "llama"},       {"hidden_size", 16},      {"intermediate_size", 24},
          {"num_hidden_layers", 2},      {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"vocab_size", 50},            {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},       {"bos_token_id", 1},      {"eos_token_id", 2}};
}

json tiny_gpt2_json() {
  return {{"model_type", "gpt2"}, {"n_embd", 16},   {"n_layer", 2},   {"n_head", 2},
          {"vocab_size", 50},     {"n_positions", 32}, {"bos_token_id", 0}, {"eos_token_id", 0}};
}

// Large weights so attention is far from uniform and the MLPs leave their linear range.
CausalLM random_model(const json& config_json, torch::ScalarType dtype = at::kDouble, std::uint64_t seed = 7) {
  ModelConfig config = ModelConfig::from_json(config_json, "test config");
  return CausalLM(config, random_weights(config, seed, dtype, at::kCPU, /*stddev=*/0.4), "random");
}

at::Tensor random_embeds(int64_t batch, int64_t tokens, int64_t dim, std::uint64_t seed,
                         at::ScalarType dtype = at::kDouble) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn({batch, tokens, dim}, generator, at::TensorOptions().dtype(at::kDouble)).to(dtype);
}


// ---------------------------------------------------------------------------------------------
// Config

TEST(ModelConfig, ParsesLlamaFamilyFields) {
  json j = tiny_llama_json();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  j["eos_token_id"] = {128001, 128009};
  j["vocab_size"] = 128256;
  ModelConfig c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.architecture, Architecture::llama);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::llama3);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int32_t>{128001, 128009}));
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(ModelConfig, Qwen2HasQkvBiasWithoutOutputBias) {
  json j = tiny_llama_json();
  j["model_type"] = "qwen2";
  j["tie_word_embeddings"] = true;
  ModelConfig c = ModelConfig::from_json(j, "config.json");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.out_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
}

TEST(ModelConfig, ParsesGpt2Names) {
  ModelConfig c = ModelConfig::from_json(tiny_gpt2_json(), "config.json");
  EXPECT_EQ(c.architecture, Architecture::gpt2);
  EXPECT_EQ(c.hidden_size, 16);
  EXPECT_EQ(c.intermediate_size, 64);  // n_inner absent: 4 * n_embd
  EXPECT_EQ(c.max_position_embeddings, 32);
  EXPECT_EQ(c.activation, Activation::gelu_tanh);
  EXPECT_TRUE(c.tie_word_embeddings);
}

TEST(ModelConfig, ArchitecturesFieldAloneIsEnough) {
  json j = tiny_llama_json();
  j.erase("model_type");
  j["architectures"] = {"MistralForCausalLM"};
  EXPECT_EQ(ModelConfig::from_json(j, "config.json").model_type, "mistral");
}

TEST(ModelConfig, UnknownArchitectureNamesFileAndValue) {
  json j = tiny_llama_json();
  j["model_type"] = "mamba";
  try {
    ModelConfig::from_json(j, "/models/x/config.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/models/x/config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("mamba"), std::string::npos) << e.what();
  }
  j.erase("model_type");
  j["architectures"] = {"FalconForCausalLM"};
  EXPECT_THROW(ModelConfig::from_json(j, "c.json"), Error);
}

TEST(ModelConfig, RejectsYarnAndBadShapes) {
  json j = tiny_llama_json();
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  try {
    ModelConfig::from_json(j, "c.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("yarn"), std::string::npos);
  }
  j = tiny_llama_json();
  j["num_key_value_heads"] = 3;
  EXPECT_THROW(ModelConfig::from_json(j, "c.json"), Error);
  j = tiny_llama_json();
  j["hidden_size"] = "big";
  EXPECT_THROW(ModelConfig::from_json(j, "c.json"), Error);
  j = tiny_llama_json();
  j.erase("vocab_size");
  EXPECT_THROW(ModelConfig::from_json(j, "c.json"), Error);
}

TEST(ModelConfig, JsonRoundTrip) {
  for (json j : {tiny_llama_json(), tiny_gpt2_json()}) {
    ModelConfig a = ModelConfig::from_json(j, "a");
    ModelConfig b = ModelConfig::from_json(a.to_json(), "b");
    EXPECT_EQ(a.to_json(), b.to_json());
  }
  json q = tiny_llama_json();
  q["model_type"] = "qwen2";
  q["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ModelConfig a = ModelConfig::from_json(q, "a");
  ModelConfig b = ModelConfig::from_json(a.to_json(), "b");
  EXPECT_TRUE(b.qkv_bias);
  EXPECT_EQ(b.rope_scaling.type, RopeScalingType::linear);
  EXPECT_DOUBLE_EQ(b.rope_scaling.factor, 2.0);

  testing::TempDir dir;
  save_config(a, dir / "config.json");
  EXPECT_EQ(load_config(dir.path()).to_json(), a.to_json());
}

// ---------------------------------------------------------------------------------------------
// Attention

TEST(Attention, BatchedGqaMatchesLoops) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto q = at::randn({2, 6, 5, 8}, gen, f64);
  auto k = at::randn({2, 3, 7, 8}, gen, f64);
  auto v = at::randn({2, 3, 7, 8}, gen, f64);
  auto allowed = at::rand({2, 5, 7}, gen, f64) > 0.4;
  allowed.index_put_({0, 2}, false);  // a query that may attend to nothing
  const double scale = 1.0 / std::sqrt(8.0);
  auto fast = attention(q, k, v, attention_bias(allowed, at::kDouble), scale);
  auto naive = attention_naive(q, k, v, allowed, scale);
  EXPECT_LT(max_abs_diff(fast, naive), 1e-12);

  auto fast32 = attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), attention_bias(allowed, at::kFloat), scale);
  EXPECT_LT(max_abs_diff(fast32, naive), 1e-5);
  auto fast16 = attention(q.to(at::kBFloat16), k.to(at::kBFloat16), v.to(at::kBFloat16),
                          attention_bias(allowed, at::kFloat), scale);
  EXPECT_LT(max_abs_diff(fast16, naive), 0.1);
}

TEST(Attention, RopeRotatesHalves) {
  // head_dim 4, one position p: pairs (x0, x2) and (x1, x3) rotate by p * inv_freq[0] and
  // p * inv_freq[1], inv_freq[i] = theta^(-2i/d).
  json j = tiny_llama_json();
  j["hidden_size"] = 8;
  j["num_attention_heads"] = 2;
  j["num_key_value_heads"] = 2;
  ModelConfig c = ModelConfig::from_json(j, "c");
  auto positions = at::full({1, 1}, 3, at::TensorOptions().dtype(at::kLong));
  auto [cos, sin] = rope_tables(c, positions, at::kDouble);
  auto x = at::tensor({1.0, 2.0, 3.0, 4.0}, at::TensorOptions().dtype(at::kDouble)).view({1, 1, 1, 4});
  auto y = apply_rope(x, cos, sin).view({4});
  const double a0 = 3.0, a1 = 3.0 / 100.0;  // 10000^(-2/4) = 1/100
  std::vector<double> expected = {1 * std::cos(a0) - 3 * std::sin(a0), 2 * std::cos(a1) - 4 * std::sin(a1),
                                  3 * std::cos(a0) + 1 * std::sin(a0), 4 * std::cos(a1) + 2 * std::sin(a1)};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i].item<double>(), expected[static_cast<size_t>(i)], 1e-12);
}

// ---------------------------------------------------------------------------------------------
// Forward pass properties

class ForwardTest : public ::testing::TestWithParam<std::string> {
 protected:
  json config_json() const { return GetParam() == "gpt2" ? tiny_gpt2_json() : tiny_llama_json(); }
};

TEST_P(ForwardTest, GradientMatchesCentralDifferences) {
  CausalLM model = random_model(config_json());
  const int64_t d = model.hidden_size();
  auto embeds = random_embeds(2, 5, d, 11).requires_grad_(true);
  auto mask = at::tensor({1, 1, 1, 1, 1, 0, 1, 1, 1, 1}, at::TensorOptions().dtype(at::kLong)).view({2, 5});
  auto targets = at::tensor({3, 7, -100, 9, 4, -100, 8, 1, 2, 5}, at::TensorOptions().dtype(at::kLong)).view({2, 5});
  auto loss = model.token_nll(embeds, mask, targets).sum();
  loss.backward();
  auto analytic = embeds.grad().clone();
  EXPECT_TRUE(model.is_frozen());
  for (const auto& [name, w] : model.weights().named()) EXPECT_FALSE(w.grad().defined()) << name;

  at::NoGradGuard no_grad;
  auto base = embeds.detach().clone();
  const double h = 1e-6;
  double worst = 0, scale = 0;
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t t = 0; t < 5; ++t) {
      for (int64_t k = 0; k < d; ++k) {
        auto plus = base.clone(), minus = base.clone();
        plus.index_put_({b, t, k}, base.index({b, t, k}) + h);
        minus.index_put_({b, t, k}, base.index({b, t, k}) - h);
        double numeric = (model.token_nll(plus, mask, targets).sum().item<double>() -
                          model.token_nll(minus, mask, targets).sum().item<double>()) /
                         (2 * h);
        double exact = analytic.index({b, t, k}).item<double>();
        worst = std::max(worst, std::abs(numeric - exact));
        scale = std::max(scale, std::abs(exact));
      }
    }
  }
  EXPECT_GT(scale, 1e-3);  // the check is not vacuous
  EXPECT_LT(worst, 1e-6 * std::max(1.0, scale)) << "max |analytic - numeric| = " << worst;
  // Position (1, 0) is padding: no target and no later query sees it.
  EXPECT_EQ(analytic.index({1, 0}).abs().max().item<double>(), 0.0);
}

TEST_P(ForwardTest, PaddedBatchesMatchSingleSequences) {
  CausalLM model = random_model(config_json());
  const int64_t d = model.hidden_size();
  const std::vector<int64_t> lengths = {3, 7, 5};
  const int64_t width = 7;
  std::vector<at::Tensor> singles;
  for (size_t i = 0; i < lengths.size(); ++i) singles.push_back(random_embeds(1, lengths[i], d, 20 + i));
  for (bool left : {false, true}) {
    auto batch = random_embeds(3, width, d, 99);  // garbage in the padding slots
    auto mask = at::zeros({3, width}, at::TensorOptions().dtype(at::kLong));
    for (size_t i = 0; i < lengths.size(); ++i) {
      const int64_t start = left ? width - lengths[i] : 0;
      batch.select(0, static_cast<int64_t>(i)).narrow(0, start, lengths[i]).copy_(singles[i][0]);
      mask.select(0, static_cast<int64_t>(i)).narrow(0, start, lengths[i]).fill_(1);
    }
    auto hidden = model.forward_embeddings(batch, mask);
    for (size_t i = 0; i < lengths.size(); ++i) {
      const int64_t start = left ? width - lengths[i] : 0;
      auto alone = model.forward_embeddings(singles[i]);
      auto padded = hidden.select(0, static_cast<int64_t>(i)).narrow(0, start, lengths[i]);
      EXPECT_LT(max_abs_diff(alone[0], padded), 1e-12) << (left ? "left" : "right") << " row " << i;
    }
  }
}

TEST_P(ForwardTest, AttendMatrixReproducesCausalAndSegments) {
  CausalLM model = random_model(config_json());
  const int64_t d = model.hidden_size();
  auto x = random_embeds(1, 6, d, 5);
  auto causal = at::ones({6, 6}, at::TensorOptions().dtype(at::kBool)).tril().unsqueeze(0);
  EXPECT_LT(max_abs_diff(model.forward_embeddings(x, causal), model.forward_embeddings(x)), 1e-12);

  // Two independent segments packed into one row: block-diagonal causal matrix and positions
  // restarting at 0 give each segment's stand-alone result.
  auto blocks = at::zeros({1, 6, 6}, at::TensorOptions().dtype(at::kBool));
  blocks.index_put_({0, at::indexing::Slice(0, 2), at::indexing::Slice(0, 2)}, causal[0].narrow(0, 0, 2).narrow(1, 0, 2));
  blocks.index_put_({0, at::indexing::Slice(2, 6), at::indexing::Slice(2, 6)}, causal[0].narrow(0, 0, 4).narrow(1, 0, 4));
  auto positions = at::tensor({0, 1, 0, 1, 2, 3}, at::TensorOptions().dtype(at::kLong)).view({1, 6});
  auto packed = model.forward_embeddings(x, blocks, positions);
  auto first = model.forward_embeddings(x.narrow(1, 0, 2));
  auto second = model.forward_embeddings(x.narrow(1, 2, 4));
  EXPECT_LT(max_abs_diff(packed.narrow(1, 0, 2), first), 1e-12);
  EXPECT_LT(max_abs_diff(packed.narrow(1, 2, 4), second), 1e-12);
}

TEST_P(ForwardTest, KvCacheMatchesFullForward) {
  CausalLM model = random_model(config_json());
  const int64_t d = model.hidden_size();
  auto x = random_embeds(2, 9, d, 8);
  auto mask = at::ones({2, 9}, at::TensorOptions().dtype(at::kLong));
  mask.index_put_({1, at::indexing::Slice(0, 2)}, 0);  // row 1 left-padded
  auto full = model.forward_embeddings(x, mask);
  KVCache cache;
  std::vector<at::Tensor> parts;
  for (auto [start, count] : std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {4, 1}, {5, 3}, {8, 1}})
    parts.push_back(model.forward_embeddings(x.narrow(1, start, count), mask.narrow(1, start, count), {}, &cache));
  EXPECT_EQ(cache.length(), 9);
  auto incremental = at::cat(parts, 1);
  EXPECT_LT(max_abs_diff(full.narrow(1, 2, 7), incremental.narrow(1, 2, 7)), 1e-12);
  EXPECT_LT(max_abs_diff(full[0], incremental[0]), 1e-12);

  // The attend-matrix form with a cache: each chunk's rows cover cached + new keys.
  auto causal = at::ones({9, 9}, at::TensorOptions().dtype(at::kBool)).tril().unsqueeze(0).expand({2, 9, 9});
  KVCache matrix_cache;
  auto head = model.forward_embeddings(x.narrow(1, 0, 5), causal.narrow(1, 0, 5).narrow(2, 0, 5), {}, &matrix_cache);
  auto tail = model.forward_embeddings(x.narrow(1, 5, 4), causal.narrow(1, 5, 4), {}, &matrix_cache);
  EXPECT_LT(max_abs_diff(at::cat({head, tail}, 1)[0], full[0]), 1e-12);
}

TEST_P(ForwardTest, TokenNllIsLogSoftmaxAtTargets) {
  CausalLM model = random_model(config_json());
  auto ids = at::tensor({5, 9, 13, 2, 40, 7}, at::TensorOptions().dtype(at::kLong)).view({1, 6});
  auto label_mask = at::tensor({0, 0, 0, 1, 1, 1}, at::TensorOptions().dtype(at::kLong)).view({1, 6});
  auto targets = next_token_targets(ids, label_mask);
  EXPECT_EQ(targets[0][1].item<int64_t>(), kIgnoreIndex);
  EXPECT_EQ(targets[0][2].item<int64_t>(), 2);
  EXPECT_EQ(targets[0][5].item<int64_t>(), kIgnoreIndex);
  auto nll = model.token_nll(model.embed(ids), {}, targets);
  auto log_probs = at::log_softmax(model.forward_tokens(ids), -1);
  for (int64_t t = 0; t < 6; ++t) {
    auto target = targets[0][t].item<int64_t>();
    double expected = target == kIgnoreIndex ? 0.0 : -log_probs[0][t][target].item<double>();
    EXPECT_NEAR(nll[0][t].item<double>(), expected, 1e-12) << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, ForwardTest, ::testing::Values("llama", "gpt2"));

TEST(Forward, SlidingWindowLimitsAttention) {
  json j = tiny_llama_json();
  j["model_type"] = "mistral";
  j["sliding_window"] = 3;
  CausalLM windowed = random_model(j);
  j["sliding_window"] = nullptr;
  CausalLM full = random_model(j);
  auto x = random_embeds(1, 6, 16, 4);
  auto a = windowed.forward_embeddings(x), b = full.forward_embeddings(x);
  EXPECT_LT(max_abs_diff(a.narrow(1, 0, 3), b.narrow(1, 0, 3)), 1e-12);  // window not yet binding
  EXPECT_GT(max_abs_diff(a.narrow(1, 3, 3), b.narrow(1, 3, 3)), 1e-6);
  // A windowed query attends to keys at distance < 3 only: the matrix form agrees.
  auto allowed = at::zeros({1, 6, 6}, at::TensorOptions().dtype(at::kBool));
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t k = std::max<int64_t>(0, i - 2); k <= i; ++k) allowed.index_put_({0, i, k}, true);
  EXPECT_LT(max_abs_diff(full.forward_embeddings(x, allowed), a), 1e-12);
}

TEST(Forward, Gpt2RejectsPositionsBeyondItsTable) {
  CausalLM model = random_model(tiny_gpt2_json());
  EXPECT_THROW(model.forward_embeddings(random_embeds(1, 33, 16, 1)), Error);
  EXPECT_THROW(model.embed(at::full({1, 1}, 50, at::TensorOptions().dtype(at::kLong))), Error);
}

// ---------------------------------------------------------------------------------------------
// Frozen weights

TEST(Frozen, WeightsNeverRequireGradAndSoftPromptTrainingLeavesThemUnchanged) {
  ModelConfig config = ModelConfig::from_json(tiny_llama_json(), "c");
  ModelWeights weights = random_weights(config, 3, at::kFloat, at::kCPU, 0.3);
  weights.layers[0].qkv_weight.requires_grad_(true);  // a careless caller
  CausalLM model(config, weights, "random");
  EXPECT_TRUE(model.is_frozen());
  model.assert_frozen();
  const std::string before = model.fingerprint();

  // Soft-prompt tuning: two trainable rows in front of fixed text, Adam, a few steps.
  auto soft = (random_embeds(1, 2, 16, 1, at::kFloat) * 0.1).requires_grad_(true);
  torch::optim::Adam optimizer({soft}, torch::optim::AdamOptions(0.05));
  auto ids = at::tensor({4, 8, 15, 16, 23, 42}, at::TensorOptions().dtype(at::kLong)).view({1, 6});
  auto targets = at::full({1, 8}, kIgnoreIndex, at::TensorOptions().dtype(at::kLong));
  targets.narrow(1, 1, 5).copy_(ids.narrow(1, 0, 5));  // soft tokens predict the text
  targets.narrow(1, 6, 1).copy_(ids.narrow(1, 5, 1));
  double first_loss = 0, last_loss = 0;
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    auto inputs = at::cat({soft, model.embed(ids)}, 1);
    auto loss = model.token_nll(inputs, {}, targets).sum() / 6.0;
    loss.backward();
    optimizer.step();
    (step == 0 ? first_loss : last_loss) = loss.item<double>();
  }
  EXPECT_LT(last_loss, first_loss);
  EXPECT_TRUE(model.is_frozen());
  EXPECT_EQ(model.fingerprint(), before);

  // The fingerprint does see a change to any weight.
  model.weights().layers[1].down_weight.add_(1e-3);
  EXPECT_NE(model.fingerprint(), before);
}

TEST(Frozen, SplicedSoftTokensGetTheGradient) {
  CausalLM model = random_model(tiny_llama_json());
  auto ids = at::tensor({4, 0, 8, 0, 15, 16}, at::TensorOptions().dtype(at::kLong)).view({1, 6});
  auto slots = ids.eq(0);
  auto soft = random_embeds(1, 2, 16, 3)[0].requires_grad_(true);
  auto inputs = splice_soft_tokens(model.embed(ids), slots, soft);
  EXPECT_TRUE(at::equal(inputs[0][1], soft[0].detach()));
  EXPECT_TRUE(at::equal(inputs[0][2], model.embed(ids)[0][2]));
  auto targets = at::full({1, 6}, kIgnoreIndex, at::TensorOptions().dtype(at::kLong));
  targets.index_put_({0, 4}, 16);
  model.token_nll(inputs, {}, targets).sum().backward();
  EXPECT_GT(soft.grad().abs().sum().item<double>(), 0.0);
  EXPECT_THROW(splice_soft_tokens(model.embed(ids), slots, soft.narrow(0, 0, 1)), Error);
}

TEST(Frozen, CheckWeightsNamesTheBadTensor) {
  ModelConfig config = ModelConfig::from_json(tiny_llama_json(), "c");
  ModelWeights weights = random_weights(config, 3, at::kFloat, at::kCPU);
  weights.layers[1].out_weight = at::zeros({16, 15});
  try {
    CausalLM model(config, weights, "/tmp/ckpt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.1.out_weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("/tmp/ckpt"), std::string::npos) << e.what();
  }
  weights = random_weights(config, 3, at::kFloat, at::kCPU);
  weights.final_norm_weight = at::Tensor();
  EXPECT_THROW(CausalLM(config, weights), Error);
}

TEST(Frozen, ConversionKeepsValues) {
  CausalLM model = random_model(tiny_llama_json(), at::kFloat);
  CausalLM half = model.to(at::kBFloat16, at::kCPU);
  EXPECT_EQ(half.dtype(), at::kBFloat16);
  EXPECT_TRUE(half.is_frozen());
  EXPECT_EQ(model.num_parameters(), half.num_parameters());
  auto ids = at::tensor({1, 5, 9, 3}, at::TensorOptions().dtype(at::kLong)).view({1, 4});
  auto a = model.forward_tokens(ids), b = half.forward_tokens(ids);
  EXPECT_EQ(b.scalar_type(), at::kFloat);
  EXPECT_LT(max_abs_diff(a, b), 0.1 * a.abs().max().item<double>());
}

}  // namespace
}  // namespace userip::lm
