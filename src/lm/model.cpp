#include "userip/lm/model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "lm/model_internal.h"
#include "userip/lm/attention.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::lm {

using detail::activation_dtype;
using detail::needs_float_gemm;
using detail::shape_string;

namespace {

// Norms, softmax and log-softmax run in float32 for f16/bf16 models (their range and rounding
// are too coarse for sums of squares and exponentials), and in float64 for float64 models so
// gradient checks are not limited by float32.
at::ScalarType compute_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto xc = x.to(compute_dtype(x.scalar_type()));
  auto normed = xc * at::rsqrt(xc.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return normed.to(x.scalar_type()) * weight;
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  auto cd = compute_dtype(x.scalar_type());
  return at::layer_norm(x.to(cd), {x.size(-1)}, weight.to(cd), bias.to(cd), eps).to(x.scalar_type());
}

at::Tensor norm(const ModelConfig& config, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return config.architecture == Architecture::gpt2 ? layer_norm(x, weight, bias, config.norm_eps)
                                                   : rms_norm(x, weight, config.norm_eps);
}

at::Tensor activate(Activation activation, const at::Tensor& x) {
  switch (activation) {
    case Activation::silu: return at::silu(x);
    case Activation::gelu_tanh: return at::gelu(x, "tanh");
    case Activation::gelu: return at::gelu(x);
  }
  return x;
}

at::Tensor dense(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (needs_float_gemm(weight)) {
    auto b = bias.defined() ? bias.to(x.scalar_type()) : at::Tensor();
    return b.defined() ? at::linear(x, weight.to(x.scalar_type()), b) : at::linear(x, weight.to(x.scalar_type()));
  }
  return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

// Which keys each query may see and at which positions the new tokens sit.
struct StepLayout {
  at::Tensor allowed;        // [B, T, S] bool
  at::Tensor positions;      // [B, T] int64
  at::Tensor key_valid;      // [B, S] bool, for the cache
  at::Tensor key_positions;  // [B, S] int64, for the cache
  at::Tensor next_position;  // [B] int64, for the cache
};

StepLayout layout_step(const ModelConfig& config, const at::Tensor& attention, const at::Tensor& position_ids,
                       const KVCache* cache, int64_t batch, int64_t tokens, at::Device device) {
  const auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
  const int64_t past = cache ? cache->length() : 0;
  const int64_t keys = past + tokens;
  StepLayout layout;
  at::Tensor start = (cache && cache->next_position.defined()) ? cache->next_position : at::zeros({batch}, long_options);

  at::Tensor real;  // [B, T]: which new tokens are real
  if (attention.defined() && attention.dim() == 3) {
    USERIP_CHECK(attention.size(0) == batch && attention.size(1) == tokens && attention.size(2) == keys,
                 "attend matrix has shape [{}, {}, {}], expected [{}, {}, {}] (batch, tokens, cached + tokens)",
                 attention.size(0), attention.size(1), attention.size(2), batch, tokens, keys);
    layout.allowed = attention.to(device, at::kBool);
    real = at::ones({batch, tokens}, long_options.dtype(at::kBool));
    layout.positions = position_ids.defined() ? position_ids : start.unsqueeze(1) + at::arange(tokens, long_options);
  } else {
    if (attention.defined()) {
      USERIP_CHECK(attention.dim() == 2 && attention.size(0) == batch && attention.size(1) == tokens,
                   "key-padding mask has shape {}, expected [{}, {}]", shape_string(attention.sizes()), batch, tokens);
      real = attention.to(device).ne(0);
    } else {
      real = at::ones({batch, tokens}, long_options.dtype(at::kBool));
    }
    // Positions count real tokens only, so left padding does not shift the real tokens' positions.
    layout.positions = position_ids.defined()
                           ? position_ids
                           : start.unsqueeze(1) + (real.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  }
  USERIP_CHECK(layout.positions.dim() == 2 && layout.positions.size(0) == batch && layout.positions.size(1) == tokens,
               "position_ids has shape {}, expected [{}, {}]", shape_string(layout.positions.sizes()), batch, tokens);
  layout.positions = layout.positions.to(device, at::kLong);

  layout.key_valid = past > 0 ? at::cat({cache->key_valid, real}, 1) : real;
  layout.key_positions = past > 0 ? at::cat({cache->key_positions, layout.positions}, 1) : layout.positions;
  auto real_max = at::where(real, layout.positions, at::full_like(layout.positions, -1)).amax(1);
  layout.next_position = at::maximum(start, real_max + 1);

  if (!layout.allowed.defined()) {
    auto query_index = at::arange(past, keys, long_options).unsqueeze(1);  // [T, 1]
    auto key_index = at::arange(keys, long_options).unsqueeze(0);          // [1, S]
    auto causal = (key_index <= query_index).unsqueeze(0) & layout.key_valid.unsqueeze(1);
    if (config.sliding_window > 0) {
      auto distance = layout.positions.unsqueeze(2) - layout.key_positions.unsqueeze(1);
      causal = causal & (distance < config.sliding_window);
    }
    // Every query sees itself, so padding queries never have an empty row.
    layout.allowed = causal | (key_index == query_index).unsqueeze(0);
  }
  return layout;
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> ModelWeights::named() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  auto add = [&](std::string name, const at::Tensor& t) {
    if (t.defined()) out.emplace_back(std::move(name), t);
  };
  add("token_embedding", token_embedding);
  add("position_embedding", position_embedding);
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    add(p + "attn_norm_weight", l.attn_norm_weight);
    add(p + "attn_norm_bias", l.attn_norm_bias);
    add(p + "qkv_weight", l.qkv_weight);
    add(p + "qkv_bias", l.qkv_bias);
    add(p + "out_weight", l.out_weight);
    add(p + "out_bias", l.out_bias);
    add(p + "mlp_norm_weight", l.mlp_norm_weight);
    add(p + "mlp_norm_bias", l.mlp_norm_bias);
    add(p + "up_weight", l.up_weight);
    add(p + "up_bias", l.up_bias);
    add(p + "down_weight", l.down_weight);
    add(p + "down_bias", l.down_bias);
  }
  add("final_norm_weight", final_norm_weight);
  add("final_norm_bias", final_norm_bias);
  add("lm_head", lm_head);
  return out;
}

namespace {

// The shape each weight must have under `config`; an empty shape means "must be absent".
struct ExpectedWeight {
  std::string name;
  const at::Tensor* tensor;
  std::vector<int64_t> shape;
};

std::vector<ExpectedWeight> expected_weights(const ModelConfig& c, const ModelWeights& w) {
  const bool gpt2 = c.architecture == Architecture::gpt2;
  const int64_t d = c.hidden_size, qkv = c.q_dim() + 2 * c.kv_dim();
  const int64_t up_rows = gpt2 ? c.intermediate_size : 2 * c.intermediate_size;
  auto when = [](bool present, std::vector<int64_t> shape) { return present ? shape : std::vector<int64_t>{}; };
  std::vector<ExpectedWeight> out;
  out.push_back({"token_embedding", &w.token_embedding, {c.vocab_size, d}});
  out.push_back({"position_embedding", &w.position_embedding, when(gpt2, {c.max_position_embeddings, d})});
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const auto& l = w.layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    out.push_back({p + "attn_norm_weight", &l.attn_norm_weight, {d}});
    out.push_back({p + "attn_norm_bias", &l.attn_norm_bias, when(gpt2, {d})});
    out.push_back({p + "qkv_weight", &l.qkv_weight, {qkv, d}});
    out.push_back({p + "qkv_bias", &l.qkv_bias, when(c.qkv_bias, {qkv})});
    out.push_back({p + "out_weight", &l.out_weight, {d, c.q_dim()}});
    out.push_back({p + "out_bias", &l.out_bias, when(c.out_bias, {d})});
    out.push_back({p + "mlp_norm_weight", &l.mlp_norm_weight, {d}});
    out.push_back({p + "mlp_norm_bias", &l.mlp_norm_bias, when(gpt2, {d})});
    out.push_back({p + "up_weight", &l.up_weight, {up_rows, d}});
    out.push_back({p + "up_bias", &l.up_bias, when(c.mlp_bias, {up_rows})});
    out.push_back({p + "down_weight", &l.down_weight, {d, c.intermediate_size}});
    out.push_back({p + "down_bias", &l.down_bias, when(c.mlp_bias, {d})});
  }
  out.push_back({"final_norm_weight", &w.final_norm_weight, {d}});
  out.push_back({"final_norm_bias", &w.final_norm_bias, when(gpt2, {d})});
  out.push_back({"lm_head", &w.lm_head, when(!c.tie_word_embeddings, {c.vocab_size, d})});
  return out;
}

}  // namespace

void check_weights(const ModelConfig& config, const ModelWeights& weights, const std::string& source) {
  if (static_cast<int64_t>(weights.layers.size()) != config.num_layers)
    fail("{}: {} layers of weights for a config with {}", source, weights.layers.size(), config.num_layers);
  if (!weights.token_embedding.defined()) fail("{}: missing tensor token_embedding", source);
  const auto dtype = weights.token_embedding.scalar_type();
  const auto device = weights.token_embedding.device();
  if (!at::isFloatingType(dtype)) fail("{}: weights must be floating point, got {}", source, c10::toString(dtype));
  for (const auto& e : expected_weights(config, weights)) {
    const at::Tensor& t = *e.tensor;
    if (e.shape.empty()) {
      if (t.defined()) fail("{}: tensor {} is present but the config has no such part", source, e.name);
      continue;
    }
    if (!t.defined()) fail("{}: missing tensor {}", source, e.name);
    if (t.sizes() != at::IntArrayRef(e.shape))
      fail("{}: tensor {} has shape {}, expected {}", source, e.name, shape_string(t.sizes()), shape_string(e.shape));
    if (t.scalar_type() != dtype || t.device() != device)
      fail("{}: tensor {} is {} on {}, the rest {} on {}", source, e.name, c10::toString(t.scalar_type()),
           t.device().str(), c10::toString(dtype), device.str());
  }
}

ModelWeights random_weights(const ModelConfig& config, std::uint64_t seed, torch::ScalarType dtype,
                            torch::Device device, double stddev) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto draw = [&](std::vector<int64_t> shape, double mean, double scale) {
    auto t = at::randn(shape, generator, f64) * scale + mean;
    return t.to(device, dtype);
  };
  const bool gpt2 = config.architecture == Architecture::gpt2;
  const int64_t d = config.hidden_size, qkv = config.q_dim() + 2 * config.kv_dim();
  const int64_t ffn = config.intermediate_size, up_rows = gpt2 ? ffn : 2 * ffn;
  constexpr double kNormSpread = 0.1;  // norm weights near 1, but not exactly 1, so tests see them
  ModelWeights w;
  w.token_embedding = draw({config.vocab_size, d}, 0, stddev);
  if (gpt2) w.position_embedding = draw({config.max_position_embeddings, d}, 0, stddev);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    LayerWeights l;
    l.attn_norm_weight = draw({d}, 1, kNormSpread);
    if (gpt2) l.attn_norm_bias = draw({d}, 0, kNormSpread);
    l.qkv_weight = draw({qkv, d}, 0, stddev);
    if (config.qkv_bias) l.qkv_bias = draw({qkv}, 0, stddev);
    l.out_weight = draw({d, config.q_dim()}, 0, stddev);
    if (config.out_bias) l.out_bias = draw({d}, 0, stddev);
    l.mlp_norm_weight = draw({d}, 1, kNormSpread);
    if (gpt2) l.mlp_norm_bias = draw({d}, 0, kNormSpread);
    l.up_weight = draw({up_rows, d}, 0, stddev);
    if (config.mlp_bias) l.up_bias = draw({up_rows}, 0, stddev);
    l.down_weight = draw({d, ffn}, 0, stddev);
    if (config.mlp_bias) l.down_bias = draw({d}, 0, stddev);
    w.layers.push_back(std::move(l));
  }
  w.final_norm_weight = draw({d}, 1, kNormSpread);
  if (gpt2) w.final_norm_bias = draw({d}, 0, kNormSpread);
  if (!config.tie_word_embeddings) w.lm_head = draw({config.vocab_size, d}, 0, stddev);
  return w;
}

torch::Tensor forward_hidden(const ModelConfig& config, const ModelWeights& weights, const torch::Tensor& inputs_embeds,
                             const torch::Tensor& attention, const torch::Tensor& position_ids, KVCache* cache) {
  USERIP_CHECK(inputs_embeds.dim() == 3 && inputs_embeds.size(2) == config.hidden_size,
               "inputs_embeds has shape {}, expected [batch, tokens, {}]", shape_string(inputs_embeds.sizes()), config.hidden_size);
  const auto dtype = weights.token_embedding.scalar_type();
  const auto device = weights.token_embedding.device();
  const int64_t batch = inputs_embeds.size(0), tokens = inputs_embeds.size(1);
  if (cache && !cache->empty())
    USERIP_CHECK(cache->key_valid.size(0) == batch, "the KV cache holds a batch of {}, this call has {}",
                 cache->key_valid.size(0), batch);
  StepLayout layout = layout_step(config, attention, position_ids, cache, batch, tokens, device);

  const bool gpt2 = config.architecture == Architecture::gpt2;
  const auto cd = compute_dtype(dtype);
  at::Tensor x = inputs_embeds.to(device, activation_dtype(weights.token_embedding));
  at::Tensor cos, sin;
  if (gpt2) {
    const int64_t max_position = tokens > 0 ? layout.positions.max().item<int64_t>() : 0;
    USERIP_CHECK(max_position < config.max_position_embeddings,
                 "position {} is beyond this GPT-2 model's {} learned positions", max_position,
                 config.max_position_embeddings);
    x = x + at::embedding(weights.position_embedding, layout.positions).to(x.scalar_type());
  } else {
    std::tie(cos, sin) = rope_tables(config, layout.positions, cd);
  }
  const at::Tensor bias = attention_bias(layout.allowed, cd);
  const int64_t heads = config.num_heads, kv_heads = config.num_kv_heads, head_dim = config.head_dim;
  if (cache) {
    cache->keys.resize(static_cast<size_t>(config.num_layers));
    cache->values.resize(static_cast<size_t>(config.num_layers));
  }

  for (int64_t i = 0; i < config.num_layers; ++i) {
    const LayerWeights& l = weights.layers[static_cast<size_t>(i)];
    at::Tensor h = norm(config, x, l.attn_norm_weight, l.attn_norm_bias);
    // split (not narrow): its backward concatenates the three gradients in one pass instead of
    // zero-filling a full-width buffer per part.
    auto qkv = dense(h, l.qkv_weight, l.qkv_bias).split_with_sizes({config.q_dim(), config.kv_dim(), config.kv_dim()}, -1);
    auto q = qkv[0].view({batch, tokens, heads, head_dim}).transpose(1, 2);
    auto k = qkv[1].view({batch, tokens, kv_heads, head_dim}).transpose(1, 2);
    auto v = qkv[2].view({batch, tokens, kv_heads, head_dim}).transpose(1, 2);
    if (!gpt2) {
      q = apply_rope(q, cos, sin);
      k = apply_rope(k, cos, sin);
    }
    if (cache) {
      auto& cached_k = cache->keys[static_cast<size_t>(i)];
      auto& cached_v = cache->values[static_cast<size_t>(i)];
      if (cached_k.defined()) {
        k = at::cat({cached_k, k}, 2);
        v = at::cat({cached_v, v}, 2);
      }
      cached_k = k;
      cached_v = v;
    }
    double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    if (config.scale_attn_by_inverse_layer_idx) scale /= static_cast<double>(i + 1);
    at::Tensor a = lm::attention(q, k, v, bias, scale).transpose(1, 2).reshape({batch, tokens, config.q_dim()});
    x = x + dense(a, l.out_weight, l.out_bias);

    h = norm(config, x, l.mlp_norm_weight, l.mlp_norm_bias);
    at::Tensor m;
    if (gpt2) {
      m = activate(config.activation, dense(h, l.up_weight, l.up_bias));
    } else {
      auto gate_up = dense(h, l.up_weight, l.up_bias).split(config.intermediate_size, -1);
      m = activate(config.activation, gate_up[0]) * gate_up[1];
    }
    x = x + dense(m, l.down_weight, l.down_bias);
  }
  if (cache) {
    cache->key_valid = layout.key_valid;
    cache->key_positions = layout.key_positions;
    cache->next_position = layout.next_position;
  }
  return norm(config, x, weights.final_norm_weight, weights.final_norm_bias);
}

CausalLM::CausalLM(ModelConfig config, ModelWeights weights, std::string source)
    : config_(std::move(config)), weights_(std::move(weights)), source_(std::move(source)) {
  config_.validate(source_);
  check_weights(config_, weights_, source_);
  // Freezing is what makes the soft prompt the only trainable thing: detach() drops any graph the
  // caller's tensors were part of, and requires_grad stays false on the stored tensors.
  auto freeze = [](at::Tensor& t) {
    if (t.defined()) t = t.detach().set_requires_grad(false);
  };
  freeze(weights_.token_embedding);
  freeze(weights_.position_embedding);
  freeze(weights_.final_norm_weight);
  freeze(weights_.final_norm_bias);
  freeze(weights_.lm_head);
  for (auto& l : weights_.layers) {
    for (at::Tensor* t : {&l.attn_norm_weight, &l.attn_norm_bias, &l.qkv_weight, &l.qkv_bias, &l.out_weight,
                          &l.out_bias, &l.mlp_norm_weight, &l.mlp_norm_bias, &l.up_weight, &l.up_bias,
                          &l.down_weight, &l.down_bias})
      freeze(*t);
  }
}

std::int64_t CausalLM::num_parameters() const {
  std::int64_t total = 0;
  for (const auto& [name, t] : weights_.named()) total += t.numel();
  return total;
}

CausalLM CausalLM::to(torch::ScalarType dtype, torch::Device device) const {
  ModelWeights converted = weights_;
  auto convert = [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device, dtype);
  };
  convert(converted.token_embedding);
  convert(converted.position_embedding);
  convert(converted.final_norm_weight);
  convert(converted.final_norm_bias);
  convert(converted.lm_head);
  for (auto& l : converted.layers) {
    for (at::Tensor* t : {&l.attn_norm_weight, &l.attn_norm_bias, &l.qkv_weight, &l.qkv_bias, &l.out_weight,
                          &l.out_bias, &l.mlp_norm_weight, &l.mlp_norm_bias, &l.up_weight, &l.up_bias,
                          &l.down_weight, &l.down_bias})
      convert(*t);
  }
  return CausalLM(config_, std::move(converted), source_);
}

torch::Tensor CausalLM::embed(const torch::Tensor& token_ids) const {
  USERIP_CHECK(!at::isFloatingType(token_ids.scalar_type()), "token ids must be integers");
  auto ids = token_ids.to(device(), at::kLong);
  if (ids.numel() > 0) {
    const auto lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    USERIP_CHECK(lo >= 0 && hi < config_.vocab_size, "{}: token id {} is outside the vocabulary of {}", source_,
                 lo < 0 ? lo : hi, config_.vocab_size);
  }
  return at::embedding(weights_.token_embedding, ids);
}

torch::Tensor CausalLM::forward_embeddings(const torch::Tensor& inputs_embeds, const torch::Tensor& attention,
                                           const torch::Tensor& position_ids, KVCache* cache) const {
  USERIP_CHECK(at::isFloatingType(inputs_embeds.scalar_type()), "inputs_embeds must be floating point");
  return forward_hidden(config_, weights_, inputs_embeds, attention, position_ids, cache);
}

torch::Tensor CausalLM::logits(const torch::Tensor& hidden) const {
  const at::Tensor& head = weights_.lm_head.defined() ? weights_.lm_head : weights_.token_embedding;
  return dense(hidden.to(activation_dtype(head)), head, at::Tensor()).to(compute_dtype(dtype()));
}

torch::Tensor CausalLM::forward_tokens(const torch::Tensor& token_ids, const torch::Tensor& attention,
                                       const torch::Tensor& position_ids, KVCache* cache) const {
  return logits(forward_embeddings(embed(token_ids), attention, position_ids, cache));
}

torch::Tensor CausalLM::token_nll(const torch::Tensor& inputs_embeds, const torch::Tensor& attention,
                                  const torch::Tensor& targets, const torch::Tensor& position_ids) const {
  USERIP_CHECK(targets.dim() == 2 && inputs_embeds.dim() == 3 && targets.size(0) == inputs_embeds.size(0) &&
                   targets.size(1) == inputs_embeds.size(1),
               "targets has shape {}, expected [batch, tokens] of inputs_embeds {}", shape_string(targets.sizes()),
               shape_string(inputs_embeds.sizes()));
  const int64_t batch = targets.size(0), tokens = targets.size(1);
  at::Tensor hidden = forward_embeddings(inputs_embeds, attention, position_ids);
  auto flat_targets = targets.to(device(), at::kLong).reshape({batch * tokens});
  auto picked = flat_targets.ne(kIgnoreIndex).nonzero().squeeze(1);
  auto chosen_targets = flat_targets.index_select(0, picked);
  if (chosen_targets.numel() > 0) {
    const auto lo = chosen_targets.min().item<int64_t>(), hi = chosen_targets.max().item<int64_t>();
    USERIP_CHECK(lo >= 0 && hi < config_.vocab_size, "target id {} is outside the vocabulary of {} (use {} to skip)",
                 lo < 0 ? lo : hi, config_.vocab_size, kIgnoreIndex);
  }
  auto chosen_hidden = hidden.reshape({batch * tokens, config_.hidden_size}).index_select(0, picked);
  auto chosen_logits = logits(chosen_hidden);
  auto nll = at::logsumexp(chosen_logits, -1) - chosen_logits.gather(1, chosen_targets.unsqueeze(1)).squeeze(1);
  return at::zeros({batch * tokens}, nll.options()).index_copy(0, picked, nll).view({batch, tokens});
}

bool CausalLM::is_frozen() const {
  for (const auto& [name, t] : weights_.named())
    if (t.requires_grad()) return false;
  return true;
}

void CausalLM::assert_frozen() const {
  for (const auto& [name, t] : weights_.named())
    USERIP_ASSERT_MSG(!t.requires_grad(), "{}: LM weight {} requires grad; the LM must stay frozen", source_, name);
}

std::string CausalLM::fingerprint() const {
  std::uint64_t hash = fnv1a64("userip-lm-weights");
  for (const auto& [name, t] : weights_.named()) {
    hash = fnv1a64(name, hash);
    auto cpu = t.detach().to(at::kCPU).contiguous();
    hash = fnv1a64(c10::toString(cpu.scalar_type()), hash);
    for (auto size : cpu.sizes()) hash = fnv1a64(std::to_string(size) + ",", hash);
    hash = fnv1a64(std::string_view(static_cast<const char*>(cpu.data_ptr()), cpu.nbytes()), hash);
  }
  return hex64(hash);
}

torch::Tensor splice_soft_tokens(const torch::Tensor& embeds, const torch::Tensor& slots, const torch::Tensor& rows) {
  USERIP_CHECK(embeds.dim() == 3 && slots.dim() == 2 && slots.size(0) == embeds.size(0) && slots.size(1) == embeds.size(1),
               "soft-token slots {} do not match embeddings {}", shape_string(slots.sizes()),
               shape_string(embeds.sizes()));
  const int64_t batch = embeds.size(0), tokens = embeds.size(1), dim = embeds.size(2);
  auto index = slots.to(embeds.device()).ne(0).reshape({batch * tokens}).nonzero().squeeze(1);
  USERIP_CHECK(rows.dim() == 2 && rows.size(0) == index.size(0) && rows.size(1) == dim,
               "{} soft-token rows of shape {} for {} slots of width {}", rows.dim() == 2 ? rows.size(0) : -1,
               shape_string(rows.sizes()), index.size(0), dim);
  return embeds.reshape({batch * tokens, dim})
      .index_copy(0, index, rows.to(embeds.device(), embeds.scalar_type()))
      .view({batch, tokens, dim});
}

torch::Tensor next_token_targets(const torch::Tensor& token_ids, const torch::Tensor& label_mask) {
  USERIP_CHECK(token_ids.dim() == 2 && label_mask.sizes() == token_ids.sizes(),
               "token ids {} and label mask {} must both be [batch, tokens]", shape_string(token_ids.sizes()), shape_string(label_mask.sizes()));
  auto ids = token_ids.to(at::kLong);
  auto targets = at::full_like(ids, kIgnoreIndex);
  const int64_t tokens = ids.size(1);
  if (tokens > 1) {
    auto next_ids = ids.narrow(1, 1, tokens - 1);
    auto next_is_label = label_mask.narrow(1, 1, tokens - 1).to(ids.device()).ne(0);
    targets.narrow(1, 0, tokens - 1).copy_(at::where(next_is_label, next_ids, at::full_like(next_ids, kIgnoreIndex)));
  }
  return targets;
}

}  // namespace userip::lm
