#include "userip/lm/generate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "lm/model_internal.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/random.h"

namespace userip::lm {

namespace {
constexpr EnumName<StopReason> kStopReasonNames[] = {
    {StopReason::stop_token, "stop_token"}, {StopReason::max_tokens, "max_tokens"}, {StopReason::context, "context"}};
}  // namespace

std::string to_string(StopReason reason) { return enum_name(kStopReasonNames, reason); }

std::int32_t pick_token(const torch::Tensor& logits, const GenerationOptions& options, Rng& rng) {
  USERIP_CHECK(logits.dim() == 1 && logits.size(0) > 0, "pick_token needs one row of logits");
  auto row = logits.detach().to(at::kCPU, at::kDouble).contiguous();
  const double* values = row.data_ptr<double>();
  const auto vocab = static_cast<std::size_t>(row.size(0));
  if (options.temperature <= 0)  // first maximum, so ties resolve the same way on every path
    return static_cast<std::int32_t>(std::max_element(values, values + vocab) - values);

  // Temperature, then top-k, then top-p: the order Hugging Face's samplers apply them in.
  std::vector<std::size_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return values[a] > values[b]; });
  std::size_t kept = vocab;
  if (options.top_k > 0) kept = std::min(kept, static_cast<std::size_t>(options.top_k));
  std::vector<double> probability(kept);
  const double top = values[order[0]] / options.temperature;
  double total = 0;
  for (std::size_t i = 0; i < kept; ++i) {
    probability[i] = std::exp(values[order[i]] / options.temperature - top);
    total += probability[i];
  }
  if (options.top_p < 1.0) {
    double mass = 0;
    std::size_t nucleus = 0;
    while (nucleus < kept) {
      mass += probability[nucleus] / total;
      ++nucleus;
      if (mass >= options.top_p) break;
    }
    kept = std::max<std::size_t>(nucleus, 1);
    probability.resize(kept);
  }
  return static_cast<std::int32_t>(order[rng.categorical(probability)]);
}

std::vector<Generation> generate_batch(const CausalLM& model, const torch::Tensor& prompt_embeds,
                                       const torch::Tensor& prompt_mask, const GenerationOptions& options) {
  at::NoGradGuard no_grad;
  USERIP_CHECK(prompt_embeds.dim() == 3 && prompt_embeds.size(2) == model.hidden_size() && prompt_embeds.size(1) > 0,
               "prompt embeddings have shape {}, expected [batch, tokens > 0, {}]",
               detail::shape_string(prompt_embeds.sizes()), model.hidden_size());
  USERIP_CHECK(options.max_new_tokens >= 0, "max_new_tokens must be >= 0");
  USERIP_CHECK(options.top_p > 0 && options.top_p <= 1.0, "top_p must be in (0, 1], got {}", options.top_p);
  const int64_t batch = prompt_embeds.size(0), prompt_tokens = prompt_embeds.size(1);
  const auto device = model.device();
  const auto bool_options = at::TensorOptions().dtype(at::kBool).device(device);
  at::Tensor mask = prompt_mask.defined() ? prompt_mask.to(device).ne(0) : at::ones({batch, prompt_tokens}, bool_options);
  USERIP_CHECK(mask.sizes() == at::IntArrayRef({batch, prompt_tokens}), "prompt mask has shape {}, expected [{}, {}]",
               detail::shape_string(mask.sizes()), batch, prompt_tokens);

  const std::vector<std::int32_t>& stops =
      options.stop_tokens.empty() ? model.config().eos_token_ids : options.stop_tokens;
  const int64_t context = model.config().max_position_embeddings;
  std::vector<int64_t> length(static_cast<size_t>(batch));  // real tokens so far = next position
  std::vector<int64_t> last_real(static_cast<size_t>(batch));
  {
    auto mask_cpu = mask.to(at::kCPU).contiguous();
    const bool* m = mask_cpu.data_ptr<bool>();
    for (int64_t b = 0; b < batch; ++b) {
      last_real[static_cast<size_t>(b)] = -1;
      for (int64_t t = 0; t < prompt_tokens; ++t) {
        if (m[b * prompt_tokens + t]) {
          ++length[static_cast<size_t>(b)];
          last_real[static_cast<size_t>(b)] = t;
        }
      }
      USERIP_CHECK(last_real[static_cast<size_t>(b)] >= 0, "prompt {} of the batch is empty", b);
    }
  }

  std::vector<Generation> results(static_cast<size_t>(batch));
  std::vector<bool> done(static_cast<size_t>(batch), false);
  std::vector<Rng> rngs;
  for (int64_t b = 0; b < batch; ++b) rngs.push_back(Rng::derive(options.seed, static_cast<std::uint64_t>(b)));
  if (options.max_new_tokens == 0) return results;

  KVCache cache;
  KVCache* cache_ptr = options.use_cache ? &cache : nullptr;
  at::Tensor embeds = prompt_embeds.to(device, model.dtype());
  at::Tensor hidden = model.forward_embeddings(embeds, mask, {}, cache_ptr);
  auto last_index = at::tensor(last_real, at::TensorOptions().dtype(at::kLong)).to(device);
  at::Tensor next_logits =
      model.logits(hidden.gather(1, last_index.view({batch, 1, 1}).expand({batch, 1, model.hidden_size()})).squeeze(1));

  for (int64_t step = 0;; ++step) {
    auto logits_cpu = next_logits.to(at::kCPU);
    std::vector<int64_t> fed_ids(static_cast<size_t>(batch), 0);
    std::vector<uint8_t> fed(static_cast<size_t>(batch), 0);
    bool any_fed = false;
    for (int64_t b = 0; b < batch; ++b) {
      const auto i = static_cast<size_t>(b);
      if (done[i]) continue;
      const std::int32_t token = pick_token(logits_cpu[b], options, rngs[i]);
      results[i].tokens.push_back(token);
      if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
        results[i].reason = StopReason::stop_token;
      } else if (static_cast<int64_t>(results[i].tokens.size()) >= options.max_new_tokens) {
        results[i].reason = StopReason::max_tokens;
      } else if (length[i] >= context) {
        results[i].reason = StopReason::context;  // the new token would get a position the model lacks
      } else {
        fed_ids[i] = token;
        fed[i] = 1;
        any_fed = true;
        ++length[i];
        continue;
      }
      done[i] = true;
    }
    if (!any_fed) break;

    // Finished rows still take part (the batch shape is fixed) with a padding token that no later
    // query attends to.
    auto ids = at::tensor(fed_ids, at::TensorOptions().dtype(at::kLong)).view({batch, 1}).to(device);
    auto step_mask = at::tensor(std::vector<int64_t>(fed.begin(), fed.end()), at::TensorOptions().dtype(at::kLong))
                         .view({batch, 1})
                         .to(device)
                         .ne(0);
    at::Tensor step_embeds = model.embed(ids);
    if (options.use_cache) {
      hidden = model.forward_embeddings(step_embeds, step_mask, {}, &cache);
    } else {
      embeds = at::cat({embeds, step_embeds}, 1);
      mask = at::cat({mask, step_mask}, 1);
      hidden = model.forward_embeddings(embeds, mask);
    }
    next_logits = model.logits(hidden.select(1, hidden.size(1) - 1));
  }
  return results;
}

Generation generate(const CausalLM& model, const torch::Tensor& prompt_embeds, const GenerationOptions& options) {
  at::Tensor embeds = prompt_embeds.dim() == 2 ? prompt_embeds.unsqueeze(0) : prompt_embeds;
  USERIP_CHECK(embeds.dim() == 3 && embeds.size(0) == 1, "generate() takes one prompt [tokens, d] or [1, tokens, d]");
  return generate_batch(model, embeds, {}, options).front();
}

Generation generate_from_tokens(const CausalLM& model, const std::vector<std::int32_t>& prompt,
                                const GenerationOptions& options) {
  USERIP_CHECK(!prompt.empty(), "generation needs a non-empty prompt");
  auto ids = at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()), at::TensorOptions().dtype(at::kLong));
  at::NoGradGuard no_grad;
  return generate(model, model.embed(ids.view({1, -1})), options);
}

}  // namespace userip::lm
