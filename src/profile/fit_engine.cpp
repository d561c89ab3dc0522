// The E-step engine's helpers (Engine itself: fit_internal.h): initial and population profiles, the M-step,
// code assignment by distance and by likelihood, and the per-round code statistics.
#include "userip/profile/fit.h"

#include "profile/fit_internal.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/autograd.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <unordered_map>

#include "userip/data/export.h"
#include "userip/lm/tensor_file.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"
#include "userip/util/strings.h"
#include "userip/lm/threads.h"

namespace userip::profile {

namespace fs = std::filesystem;
using torch::indexing::Slice;
using namespace detail;

namespace detail {

torch::Tensor initial_vectors(const FitOptions& o, std::int64_t users, std::int64_t soft, std::int64_t dim,
                              std::uint64_t stream) {
  // Drawn on the CPU from the seed, so every device starts from the same profiles.
  auto generator_seed = Rng::derive(o.seed, stream).next_u64();
  auto gen = at::detail::createCPUGenerator(generator_seed);
  auto z = at::empty({users, soft, dim}, at::kFloat).uniform_(-o.init_range, o.init_range, gen);
  return z.to(o.device);
}


// One profile [1, P, d] shared by every user, fitted by Adam from `start` on `steps` batches of training samples
// (cycling over a round's batches drawn from their own seed stream).
torch::Tensor population_profile(const Engine& engine, const FitOptions& o, const torch::Tensor& start,
                                 ProgressBar* progress) {
  auto shared = start.clone();
  RowAdam adam;
  adam.reset(shared);
  auto round = engine.user_samples(std::uint64_t{1} << 40);
  const auto zero = torch::zeros({1}, torch::TensorOptions().dtype(torch::kLong).device(o.device));
  for (int step = 0; step < o.population_steps && !round.batches.empty(); ++step) {
    const auto& batch = round.batches[static_cast<std::size_t>(step) % round.batches.size()];
    std::vector<const ProfileSample*> members;
    for (auto i : batch) members.push_back(&round.samples[i]);
    auto p = engine.prepare(members);
    auto z = shared.detach().requires_grad_(true);
    auto loss = (engine.row_nll(p, z.expand({p.user_rows.size(0), -1, -1})) * p.row_weight).sum() /
                static_cast<double>(p.user_rows.size(0));
    loss.backward();
    torch::NoGradGuard no_grad;
    adam.step(shared, zero, z.grad(), o.learning_rate, 0.0);
    if (progress) progress->set_metric(fmt::format("population profile {}/{}", step + 1, o.population_steps));
  }
  return shared;
}

void mstep(const Engine& engine, const torch::Tensor& z, std::vector<ResidualCodebook>& codebooks, int iterations) {
  torch::NoGradGuard no_grad;
  for (std::size_t a = 0; a < codebooks.size(); ++a) {
    auto x = engine.attribute_view(z, a);
    for (int i = 0; i < iterations; ++i) codebooks[a].update_means(x, codebooks[a].assign(x));
  }
}

// Codes [U, A, R] of the profiles under the codebooks.
torch::Tensor assign_all(const Engine& engine, const torch::Tensor& z, const std::vector<ResidualCodebook>& codebooks) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> per;
  for (std::size_t a = 0; a < codebooks.size(); ++a) per.push_back(codebooks[a].assign(engine.attribute_view(z, a)).cpu());
  return torch::stack(per, 1);
}

// Level-0 codes [U, A] of the engine's users by likelihood over each user's whole history
// (Engine::likelihood_codes), starting from `codes`; `on_batch` gets the users done so far.
torch::Tensor likelihood_codes_of_histories(const Engine& engine, const std::vector<ResidualCodebook>& codebooks,
                                            torch::Tensor codes, int sweeps,
                                            const std::function<void(std::uint64_t)>& on_batch) {
  auto r = engine.user_samples(0, /*whole_history=*/true);
  std::uint64_t done = 0;
  for (const auto& batch : r.batches) {
    std::vector<const ProfileSample*> members;
    for (auto i : batch) members.push_back(&r.samples[i]);
    auto p = engine.prepare(members);
    codes.index_copy_(0, p.user_rows, engine.likelihood_codes(p, codebooks, codes.index_select(0, p.user_rows), sweeps));
    done += static_cast<std::uint64_t>(p.user_rows.size(0));
    on_batch(done);
  }
  return codes;
}

void fill_code_stats(RoundLog& log, const Engine& engine, const torch::Tensor& z,
                     const std::vector<ResidualCodebook>& codebooks) {
  torch::NoGradGuard no_grad;
  for (std::size_t a = 0; a < codebooks.size(); ++a) {
    auto x = engine.attribute_view(z, a);
    log.quantization_error.push_back(codebooks[a].quantization_error(x));
    auto codes = codebooks[a].assign(x);
    std::vector<double> perplexity;
    std::vector<std::int64_t> dead;
    std::vector<std::vector<std::int64_t>> counts;
    for (int r = 0; r < codebooks[a].levels(); ++r) {
      auto usage = code_usage(codes.select(1, r), codebooks[a].codes());
      perplexity.push_back(usage.perplexity);
      dead.push_back(usage.dead);
      counts.push_back(usage.counts);
    }
    log.code_perplexity.push_back(perplexity);
    log.dead_codes.push_back(dead);
    log.code_counts.push_back(counts);
  }
}

// A detached copy of a codebook on `device` (plain tensors, no optimiser or autograd history).
ResidualCodebook codebook_on(const ResidualCodebook& codebook, torch::Device device) {
  std::vector<std::pair<std::string, torch::Tensor>> saved;
  codebook.save(saved, "c");
  std::map<std::string, torch::Tensor> named;
  for (auto& [name, tensor] : saved) named[name] = tensor.to(device);
  return ResidualCodebook::from_tensors(named, "c");
}

}  // namespace detail

torch::Tensor initial_soft_tokens(const FitInputs& in, const torch::Tensor& otherwise) {
  const auto& attributes = in.profile_template->attributes();
  USERIP_CHECK(otherwise.dim() == 2 && otherwise.size(0) == in.profile_template->total_soft_tokens() &&
                   otherwise.size(1) == in.model->config().hidden_size,
               "initial soft tokens: expected [{}, {}], got {}", in.profile_template->total_soft_tokens(),
               in.model->config().hidden_size, fmt::format("{}", otherwise.sizes()));
  auto start = otherwise.detach().clone();
  std::int64_t offset = 0;
  for (const auto& a : attributes) {
    if (!a.init.empty()) {
      const auto ids = in.tokenizer->encode(a.init);
      USERIP_CHECK(!ids.empty(), "template attribute '{}': its init text \"{}\" has no tokens under the model's tokenizer",
                   a.name, a.init);
      std::vector<std::int64_t> cycled;
      for (int i = 0; i < a.soft_tokens; ++i) cycled.push_back(ids[static_cast<std::size_t>(i) % ids.size()]);
      torch::NoGradGuard no_grad;
      auto rows = in.model->embed(torch::tensor(cycled).to(in.model->device()));
      start.slice(0, offset, offset + a.soft_tokens).copy_(rows.to(start.device(), torch::kFloat));
      spdlog::info("attribute '{}' starts from the embeddings of \"{}\" ({} token{} for {} soft token{})", a.name,
                   a.init, ids.size(), ids.size() == 1 ? "" : "s", a.soft_tokens, a.soft_tokens == 1 ? "" : "s");
    }
    offset += a.soft_tokens;
  }
  return start;
}


}  // namespace userip::profile
