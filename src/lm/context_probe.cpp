#include "userip/lm/context_probe.h"

#include <torch/torch.h>

#include <cmath>

#include "userip/util/error.h"

namespace userip::lm {

bool ContextReport::reads_every_part() const {
  for (const auto& p : parts)
    if (!p.read()) return false;
  return !parts.empty();
}

bool ContextReport::reads_any_part() const {
  for (const auto& p : parts)
    if (p.read()) return true;
  return false;
}

nlohmann::json ContextReport::to_json() const {
  nlohmann::json out = {{"cases", cases},
                        {"skipped", skipped},
                        {"behaviour_nll", behaviour_nll},
                        {"reads_extra_nats", kReadsExtraNats}};
  out["parts"] = nlohmann::json::array();
  for (const auto& p : parts)
    out["parts"].push_back({{"part", p.part},
                            {"extra_nll", p.extra_nll},
                            {"standard_error", p.standard_error},
                            {"cases", p.cases},
                            {"read", p.read()}});
  return out;
}

namespace {

// Summed NLL of every predicted token of each text (all but the first).
std::vector<double> sequence_nll(const CausalLM& model, const std::vector<std::vector<std::int32_t>>& texts,
                                 const BatchingOptions& batching) {
  std::vector<std::int64_t> lengths;
  for (const auto& t : texts) lengths.push_back(static_cast<std::int64_t>(t.size()));
  std::vector<double> out(texts.size(), 0.0);
  torch::NoGradGuard no_grad;
  for (const auto& batch : bucket_by_length(lengths, batching)) {
    std::int64_t longest = 0;
    for (auto i : batch) longest = std::max(longest, lengths[i]);
    if (longest < 2) continue;
    // Right padding: with causal attention no real position sees a padded one.
    auto ids = torch::zeros({static_cast<std::int64_t>(batch.size()), longest}, torch::kLong);
    auto targets = torch::full({static_cast<std::int64_t>(batch.size()), longest}, kIgnoreIndex, torch::kLong);
    auto ids_a = ids.accessor<std::int64_t, 2>();
    auto targets_a = targets.accessor<std::int64_t, 2>();
    for (std::size_t r = 0; r < batch.size(); ++r) {
      const auto& t = texts[batch[r]];
      for (std::size_t k = 0; k < t.size(); ++k) ids_a[r][k] = t[k];
      for (std::size_t k = 0; k + 1 < t.size(); ++k) targets_a[r][k] = t[k + 1];
    }
    auto nll = model.token_nll(model.embed(ids.to(model.device())), {}, targets).to(torch::kDouble).sum(1).cpu();
    for (std::size_t r = 0; r < batch.size(); ++r) out[batch[r]] = nll[static_cast<std::int64_t>(r)].item<double>();
  }
  return out;
}

}  // namespace

ContextReport measure_context_reading(const CausalLM& model, const text::Tokenizer& tokenizer,
                                      const text::ContextProbe& probe, const BatchingOptions& batching) {
  USERIP_CHECK(!probe.cases.empty(), "the context probe has no cases");
  const std::int64_t context = model.config().max_position_embeddings;
  const auto fits = [&](const std::vector<std::int32_t>& ids) {
    return context <= 0 || static_cast<std::int64_t>(ids.size()) <= context;
  };
  // texts[2k] is a summary alone, texts[2k + 1] the same summary followed by the behaviour. A pair longer than
  // the model's context is left out: the model never saw a summary that far back.
  std::vector<std::vector<std::int32_t>> texts;
  const auto add_pair = [&](const std::string& summary, const std::string& behaviour) {
    auto alone = tokenizer.encode_for_model(summary);
    auto followed = tokenizer.encode_for_model(summary + " " + behaviour);
    if (!fits(alone) || !fits(followed)) return false;
    texts.push_back(std::move(alone));
    texts.push_back(std::move(followed));
    return true;
  };
  // pair_of[case][0]: the own summary's pair; [1 + part]: that part altered (-1: none).
  std::vector<std::vector<std::int64_t>> pair_of;
  ContextReport report;
  for (const auto& c : probe.cases) {
    USERIP_CHECK(c.altered.size() == probe.parts.size(), "context probe: a case has {} altered summaries for {} parts",
                 c.altered.size(), probe.parts.size());
    std::vector<std::int64_t> pairs(1 + c.altered.size(), -1);
    if (!add_pair(c.summary, c.behaviour)) {
      ++report.skipped;
      continue;
    }
    pairs[0] = static_cast<std::int64_t>(texts.size() / 2 - 1);
    for (std::size_t p = 0; p < c.altered.size(); ++p)
      if (!c.altered[p].empty() && add_pair(c.altered[p], c.behaviour))
        pairs[1 + p] = static_cast<std::int64_t>(texts.size() / 2 - 1);
    pair_of.push_back(std::move(pairs));
  }
  const auto nll = sequence_nll(model, texts, batching);
  const auto behaviour_nll = [&](std::int64_t pair) {
    return nll[static_cast<std::size_t>(2 * pair + 1)] - nll[static_cast<std::size_t>(2 * pair)];
  };

  report.cases = static_cast<std::int64_t>(pair_of.size());
  std::vector<double> sum(probe.parts.size(), 0.0), sum_sq(probe.parts.size(), 0.0);
  std::vector<std::int64_t> count(probe.parts.size(), 0);
  for (const auto& pairs : pair_of) {
    const double own = behaviour_nll(pairs[0]);
    report.behaviour_nll += own;
    for (std::size_t p = 0; p < probe.parts.size(); ++p) {
      if (pairs[1 + p] < 0) continue;
      const double extra = behaviour_nll(pairs[1 + p]) - own;
      sum[p] += extra;
      sum_sq[p] += extra * extra;
      ++count[p];
    }
  }
  if (report.cases > 0) report.behaviour_nll /= static_cast<double>(report.cases);
  for (std::size_t p = 0; p < probe.parts.size(); ++p) {
    ContextReading r;
    r.part = probe.parts[p];
    r.cases = count[p];
    if (count[p] > 0) {
      const double n = static_cast<double>(count[p]);
      r.extra_nll = sum[p] / n;
      const double variance = count[p] > 1 ? std::max(0.0, (sum_sq[p] - n * r.extra_nll * r.extra_nll) / (n - 1)) : 0.0;
      r.standard_error = std::sqrt(variance / n);
    }
    report.parts.push_back(r);
  }
  return report;
}

}  // namespace userip::lm
