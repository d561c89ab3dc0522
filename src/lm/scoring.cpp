#include "userip/lm/scoring.h"

#include <torch/types.h>

namespace userip::lm {

std::vector<double> token_logprobs(const CausalLM& model, const std::vector<std::int32_t>& ids) {
  if (ids.size() < 2) return {};
  torch::NoGradGuard no_grad;
  const auto n = static_cast<std::int64_t>(ids.size());
  auto input = torch::tensor(std::vector<std::int64_t>(ids.begin(), ids.end())).unsqueeze(0).to(model.device());
  auto logp = torch::log_softmax(model.forward_tokens(input)[0].to(torch::kDouble), -1).cpu();
  auto next = torch::tensor(std::vector<std::int64_t>(ids.begin() + 1, ids.end())).unsqueeze(1);
  auto picked = logp.narrow(0, 0, n - 1).gather(1, next).squeeze(1).contiguous();
  return std::vector<double>(picked.data_ptr<double>(), picked.data_ptr<double>() + picked.numel());
}

std::string continuation_text(const text::Tokenizer& tokenizer, const std::vector<std::int32_t>& prompt,
                              const std::vector<std::int32_t>& generated) {
  std::vector<std::int32_t> all = prompt;
  all.insert(all.end(), generated.begin(), generated.end());
  const std::string prefix = tokenizer.decode(prompt), full = tokenizer.decode(all);
  return full.compare(0, prefix.size(), prefix) == 0 ? full.substr(prefix.size()) : tokenizer.decode(generated);
}

}  // namespace userip::lm
