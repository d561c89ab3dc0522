// Fold-in of new users into a finished fit, and the held-out NLL comparison of profiles.
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
#include "userip/tensor/tensor_file.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"
#include "userip/util/strings.h"
#include "userip/tensor/threads.h"

namespace userip::profile {

namespace fs = std::filesystem;
using torch::indexing::Slice;
using namespace detail;

namespace {
constexpr EnumName<FoldInMethod> kFoldInMethodNames[] = {
    {FoldInMethod::automatic, "auto"}, {FoldInMethod::estep, "estep"}, {FoldInMethod::likelihood, "likelihood"}};
}  // namespace

std::string to_string(FoldInMethod method) { return enum_name(kFoldInMethodNames, method); }
FoldInMethod fold_in_method_from_string(std::string_view name) {
  return enum_from_name(kFoldInMethodNames, name, "fold-in method");
}

namespace {
bool has_one_level_codes(const Profiles& fitted) { return fitted.has_codes() && fitted.codes.size(2) == 1; }
}  // namespace

FoldInMethod resolve_fold_in_method(const Profiles& fitted, FoldInMethod requested) {
  if (requested != FoldInMethod::automatic) return requested;
  return has_one_level_codes(fitted) ? FoldInMethod::likelihood : FoldInMethod::estep;
}

NllComparison evaluate_profiles(const FitInputs& in, const Profiles& profiles, const FitOptions& requested,
                                const data::SplitView& history, const data::SplitView& view) {
  const FitOptions o = within_context(requested, *in.model);
  NllComparison c;
  Engine engine(in, o, history, profiles.users);
  auto samples = engine.evaluation_samples(view, o.max_eval_users);
  if (samples.empty()) return c;
  std::set<std::uint32_t> users;
  for (const auto& s : samples) users.insert(s.user);
  c.users = static_cast<std::int64_t>(users.size());
  const auto vectors = profiles.vectors.to(o.device);
  auto [own, tokens] = engine.total_nll(samples, vectors);
  c.tokens = tokens;
  c.own = own / static_cast<double>(tokens);
  c.mean = engine.total_nll(samples, vectors.mean(0, true).expand_as(vectors).contiguous()).first / static_cast<double>(tokens);
  // Another user's profile: a seeded derangement (no user keeps its own).
  const std::int64_t U = vectors.size(0);
  std::vector<std::int64_t> other(static_cast<std::size_t>(U));
  std::iota(other.begin(), other.end(), 0);
  if (U > 1) {
    Rng rng = Rng::derive(o.seed, 99);
    std::int64_t shift = 1 + static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(U - 1)));
    std::vector<std::int64_t> perm(other);
    rng.shuffle(perm);
    for (std::int64_t i = 0; i < U; ++i) other[static_cast<std::size_t>(perm[static_cast<std::size_t>(i)])] = perm[static_cast<std::size_t>((i + shift) % U)];
  }
  auto shuffled = vectors.index_select(0, torch::tensor(other).to(o.device));
  c.shuffled = engine.total_nll(samples, shuffled).first / static_cast<double>(tokens);
  if (profiles.has_codes()) {
    torch::NoGradGuard no_grad;
    auto quantized = vectors.clone();
    for (std::size_t a = 0; a < profiles.codebooks.size(); ++a) {
      auto recon = profiles.codebooks[a].reconstruct(profiles.codes.select(1, static_cast<std::int64_t>(a)).to(o.device));
      quantized.narrow(1, profiles.attribute_offset[a], profiles.attributes[a].soft_tokens)
          .copy_(recon.view({U, profiles.attributes[a].soft_tokens, -1}));
    }
    c.quantized = engine.total_nll(samples, quantized).first / static_cast<double>(tokens);
  }
  return c;
}

Profiles infer_profiles(const FitInputs& in, const Profiles& fitted, const FitOptions& o_fit,
                        const data::SplitView& history, const std::vector<std::uint32_t>& users,
                        const InferOptions& options) {
  USERIP_CHECK(!users.empty(), "no users to infer profiles for");
  in.model->assert_frozen();
  FitOptions o = within_context(o_fit, *in.model);
  const int workers = side_by_side_workers(o);
  ScopedSingleThreadedAten thread_policy(o.device.is_cpu());
  o.rounds = options.rounds > 0 ? options.rounds : o_fit.rounds;
  for (auto u : users)
    USERIP_CHECK(history.user_count(u) > 0, "user '{}' has no history interactions to infer a profile from",
                 in.dataset->user_ids[u]);
  Engine engine(in, o, history, users);
  const std::int64_t U = static_cast<std::int64_t>(users.size());
  // New users start from the population's mean profile: the prior's best guess before evidence.
  torch::Tensor z = fitted.vectors.to(o.device).mean(0, true).expand({U, -1, -1}).contiguous();
  RowAdam adam;
  adam.reset(z);
  std::vector<quantize::ResidualCodebook> codebooks;
  for (const auto& c : fitted.codebooks) codebooks.push_back(codebook_on(c, o.device));
  Profiles result;
  result.users = users;
  for (auto u : users) result.user_ids.push_back(in.dataset->user_ids[u]);
  result.attributes = fitted.attributes;
  result.attribute_offset = fitted.attribute_offset;
  result.codebooks = fitted.codebooks;
  result.likelihood_start_codes = fitted.likelihood_start_codes;
  if (resolve_fold_in_method(fitted, options.method) == FoldInMethod::likelihood) {
    USERIP_CHECK(has_one_level_codes(fitted),
                 "fold-in by likelihood needs a fit with codebooks of one level (this one has {})",
                 fitted.has_codes() ? fmt::format("{} levels", fitted.codes.size(2)) : std::string("none"));
    // The λ → ∞ limit of the fit's objective: a new user takes the codes under which the LM finds its
    // whole history likeliest, starting from the population's codes (two sweeps over the attributes).
    ProgressBar progress("profile infer (by likelihood)", static_cast<std::uint64_t>(U), "users");
    if (!options.show_progress) progress.disable();
    // From the codes the fit's own codes by likelihood started from, so that the rule is the same.
    const auto start = fitted.likelihood_start_codes.empty()
                           ? assign_all(engine, fitted.vectors.to(o.device).mean(0, true), codebooks).select(2, 0).to(o.device)
                           : torch::tensor(fitted.likelihood_start_codes).view({1, -1}).to(o.device);
    auto codes = likelihood_codes_of_histories(
        engine, codebooks, start.expand({U, -1}).contiguous(), 2, workers,
        [&](std::uint64_t done, std::uint64_t total) { progress.set(static_cast<std::uint64_t>(U) * done / total); });
    progress.finish();
    torch::NoGradGuard no_grad;
    result.vectors = engine.compose(codebooks, codes).cpu().contiguous();
    result.codes = codes.cpu().unsqueeze(2);
    return result;
  }
  ProgressBar progress("profile infer", static_cast<std::uint64_t>(o.rounds) * static_cast<std::uint64_t>(U), "users");
  if (!options.show_progress) progress.disable();
  for (int round = 0; round < o.rounds; ++round) {
    // The prior anneals as in the fit: with its final weight from the start, every new user, starting from the
    // mean profile, is held at the codeword nearest the mean before its own evidence can move it, and all new users
    // can end on one code (docs/RESULTS.md).
    const double lambda = o.mode == EmMode::joint ? 0.0 : lambda_for_round(o, round);
    auto r = engine.user_samples(static_cast<std::uint64_t>(round));
    for (const auto& batch : r.batches) {
      std::vector<const ProfileSample*> members;
      for (auto i : batch) members.push_back(&r.samples[i]);
      auto p = engine.prepare(members);
      for (int s = 0; s < o.estep_steps; ++s) {
        auto z_local = z.index_select(0, p.user_rows).detach().requires_grad_(true);
        auto loss = (engine.row_nll(p, z_local) * p.row_weight).sum();
        if (lambda > 0 && !codebooks.empty()) loss = loss + lambda * engine.prior_distance(z_local, codebooks).sum();
        loss.backward();
        torch::NoGradGuard no_grad;
        adam.step(z, p.user_rows, z_local.grad(), o.mode == EmMode::joint ? o.joint_learning_rate : o.learning_rate,
                  0.0);
      }
    }
    progress.set(static_cast<std::uint64_t>(round + 1) * static_cast<std::uint64_t>(U));
  }
  progress.finish();
  result.vectors = z.detach().cpu();
  if (!fitted.codebooks.empty()) result.codes = assign_all(engine, result.vectors, result.codebooks);
  return result;
}

}  // namespace userip::profile
