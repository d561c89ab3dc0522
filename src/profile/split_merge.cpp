// The refinement rounds: codes and codewords by likelihood in turn, and the split-and-merge move that they make
// every second round (codebook.h moves the codewords).
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

namespace detail {

// The split-and-merge move (codebook.h) on one attribute, in place on `codes` ([U] level-0 codes of
// every user) and the codebook: the members of `dissolved` among `rows` take their `runner_up`
// codes, and the codeword of `dissolved` splits the code whose members' `gradients` ([U, dim], each
// user's gradient of its NLL per token with respect to its codeword) spread most, along their main
// direction. The members on the side of the new codeword (the side their gradient descends to) take it.
RoundLog::CodeMove split_and_merge(quantize::ResidualCodebook& codebook, torch::Tensor codes, const torch::Tensor& runner_up,
                                   const torch::Tensor& gradients, const torch::Tensor& rows, std::int64_t dissolved) {
  RoundLog::CodeMove move;
  move.dissolved = dissolved;
  move.split = -1;
  const auto before = codes.index_select(0, rows);
  const auto g = gradients.index_select(0, rows).to(torch::kFloat);
  auto after = torch::where(before == dissolved, runner_up.index_select(0, rows), before);
  double widest = -1;
  torch::Tensor direction;
  for (std::int64_t k = 0; k < codebook.codes(); ++k) {
    if (k == dissolved) continue;
    const auto members = (before == k).nonzero().squeeze(1);
    if (members.size(0) < 2) continue;
    auto spread = quantize::principal_direction(g.index_select(0, members));
    if (spread.spread > widest) {
      widest = spread.spread;
      direction = spread.direction;
      move.split = k;
      move.split_members = members.size(0);
    }
  }
  if (move.split >= 0 && direction.norm().item<double>() > 0) {
    codebook.split_code(move.split, dissolved, direction);
    const auto to_new = (before == move.split).logical_and(g.mv(direction.to(g.device())) < 0);
    move.moved = to_new.sum().item<std::int64_t>();
    after = torch::where(to_new, torch::full_like(after, dissolved), after);
  } else {
    move.split = -1;
  }
  codes.index_copy_(0, rows, after);
  return move;
}

void refinement_round(const RoundContext& ctx, FitState& state, int round,
                      const std::vector<std::int64_t>& refine_rows, RoundLog& log) {
  const FitOptions& o = ctx.o;
  const Engine& engine = ctx.engine;
  const auto& attributes = ctx.attributes;
  ProgressBar& progress = ctx.progress;
  const std::int64_t U = static_cast<std::int64_t>(engine.users().size());
  const int total_rounds = o.rounds + o.refine_rounds;
  const int estep_workers = ctx.estep_workers;
  torch::Tensor& z = state.z;
  auto& codebooks = state.codebooks;
  const auto refine_count = refine_rows.empty() ? U : static_cast<std::int64_t>(refine_rows.size());
  // Checkpoints fall on round boundaries only: z then holds every user's codewords, from which
  // the distance assignment gives back the codes exactly.
  torch::Tensor codes = assign_all(engine, z, codebooks).select(2, 0).to(o.device);
  const auto refined_codes =
      refine_rows.empty() ? codes : codes.index_select(0, torch::tensor(refine_rows).to(o.device));
  for (std::size_t a = 0; a < codebooks.size(); ++a) {
    // A code left with under a quarter of its fair share counts as dead, not only an empty one: refinement
    // can leave a code a handful of users while another holds two classes' worth (docs/RESULTS.md).
    const auto min_members = std::max<std::int64_t>(1, refine_count / (4 * codebooks[a].codes()));
    const int split = codebooks[a].split_into_dead_codes(
        refined_codes.select(1, static_cast<long>(a)),
        Rng::derive(o.seed, 500 + 64 * static_cast<std::uint64_t>(round) + a), min_members);
    if (split > 0)
      spdlog::info("round {}: {} dead code(s) of '{}' (under {} users) split off its most chosen codes", round + 1,
                   split, attributes[a].name, min_members);
  }
  std::vector<torch::Tensor> codewords;
  for (auto& c : codebooks) codewords.push_back(c.codewords()[0].requires_grad_(true));
  torch::optim::Adam optimizer(codewords, torch::optim::AdamOptions(o.refine_learning_rate));
  // The first refinement round keeps the EM rounds' codes and only fits the codewords to them by
  // likelihood. Those codewords are means of profiles, each more or less generically good for
  // everyone; assigned by likelihood straight away, nearly every user takes the generically best
  // one and the codebook collapses. Fitted to their
  // members first, all codewords are good for their members, and the next rounds' assignments
  // follow what tells the users apart.
  const bool fit_codewords_to_em_codes = round == o.rounds;
  auto r = engine.user_samples(static_cast<std::uint64_t>(round), refine_rows.empty() ? nullptr : &refine_rows);
  // E-step over the round's users (every user unless --refine-users) against the codebook as it
  // stands, then the M-step with those codes held. Assigned batch by batch while the codewords moved (later
  // batches against codewords that earlier ones had already pulled towards their members), codes swing
  // between rounds instead of settling, the more so the more users there are.
  const auto batch_progress = [&](std::size_t b, double phase) {
    progress.set(static_cast<std::uint64_t>(round) * static_cast<std::uint64_t>(U) +
                 static_cast<std::uint64_t>(static_cast<double>(U) * (phase + (b + 1.0) / r.batches.size()) /
                                            (fit_codewords_to_em_codes ? 1.0 : 2.0)));
  };
  const auto prepared = [&](std::size_t b) {
    std::vector<const ProfileSample*> members;
    for (auto i : r.batches[b]) members.push_back(&r.samples[i]);
    return engine.prepare(members);
  };
  const auto round_rows =
      (refine_rows.empty() ? torch::arange(U, torch::TensorOptions().dtype(torch::kLong)) : torch::tensor(refine_rows))
          .to(o.device);
  std::vector<quantize::RedundantCode> dissolve(codebooks.size());
  torch::Tensor margins, runner_up, gradients;
  if (!fit_codewords_to_em_codes) {
    std::int64_t candidates = 0;
    for (const auto& c : codebooks) candidates += c.codes();
    margins = torch::zeros({U, static_cast<std::int64_t>(codebooks.size())}, z.options().dtype(torch::kFloat));
    runner_up = codes.clone();
    // In place: a user's samples all lie in one batch, and the codebook does not move during the E-step.
    for (std::size_t b = 0; b < r.batches.size(); ++b) {
      auto p = prepared(b);
      torch::Tensor batch_margins, batch_runner_up;
      codes.index_copy_(0, p.user_rows,
                        engine.likelihood_codes(p, codebooks, codes.index_select(0, p.user_rows), 1,
                                                &batch_margins, &batch_runner_up));
      margins.index_copy_(0, p.user_rows, batch_margins);
      runner_up.index_copy_(0, p.user_rows, batch_runner_up);
      state.tokens += p.labels * candidates;
      batch_progress(b, 0.0);
    }
    // Moves need rounds after them: one for the split codewords to part, one to settle. Every second
    // refinement round only: right after a move, the two halves of the split code have hardly parted and
    // their members' margins are small, which is not redundancy.
    const bool moves_allowed =
        o.merge_margin_ratio > 0 && round + 2 < total_rounds && (round - o.rounds) % 2 == 1;
    for (std::size_t a = 0; a < codebooks.size(); ++a) {
      const auto column = codes.select(1, static_cast<std::int64_t>(a)).index_select(0, round_rows);
      const auto margin = margins.select(1, static_cast<std::int64_t>(a)).index_select(0, round_rows);
      log.code_margins.push_back(quantize::mean_per_code(column, margin, codebooks[a].codes()));
      if (moves_allowed) dissolve[a] = quantize::redundant_code(column, margin, codebooks[a].codes(), o.merge_margin_ratio);
    }
    if (std::any_of(dissolve.begin(), dissolve.end(), [](const quantize::RedundantCode& r) { return r.code >= 0; }))
      gradients = torch::zeros_like(z);
  }
  const std::size_t batches = r.batches.size();
  const std::size_t steps = o.refine_steps > 0 ? std::min<std::size_t>(o.refine_steps, batches) : batches;
  const auto step_of = [&](std::size_t b) { return b * steps / batches; };
  for (std::size_t b = 0; b < batches; ++b) {
    auto p = prepared(b);
    auto local = codes.index_select(0, p.user_rows);
    if (b == 0 || step_of(b) != step_of(b - 1)) optimizer.zero_grad();
    auto composed = engine.compose(codebooks, local);
    // A zero added to the profiles, so that its gradient is each user's own (the codewords' sums them).
    torch::Tensor probe;
    if (gradients.defined()) {
      probe = torch::zeros_like(composed).requires_grad_(true);
      composed = composed + probe;
    }
    auto nll_rows = engine.row_nll(p, composed);
    (nll_rows * p.row_weight).sum().backward();
    if (probe.defined()) gradients.index_copy_(0, p.user_rows, probe.grad());
    if (b + 1 == batches || step_of(b + 1) != step_of(b)) optimizer.step();
    state.pass.nll += nll_rows.detach().sum().item<double>();
    state.pass.tokens += p.labels;
    state.tokens += p.labels;
    ++state.batches_done;
    batch_progress(b, fit_codewords_to_em_codes ? 0.0 : 1.0);
    progress.set_metric(fmt::format("nll {:.3f}", state.pass.nll / std::max<std::int64_t>(state.pass.tokens, 1)));
  }
  torch::NoGradGuard no_grad;
  for (auto& w : codewords) w.requires_grad_(false);
  for (std::size_t a = 0; a < codebooks.size(); ++a) {
    if (dissolve[a].code < 0) continue;
    auto move = split_and_merge(codebooks[a], codes.select(1, static_cast<std::int64_t>(a)),
                                runner_up.select(1, static_cast<std::int64_t>(a)),
                                engine.attribute_view(gradients, a), round_rows, dissolve[a].code);
    move.attribute = a;
    move.margin_ratio = dissolve[a].margin_ratio;
    if (move.split >= 0)
      spdlog::info("round {}: code {} of '{}' merged into its members' second choices (their mean likelihood margin "
                   "{:.2f} of the median code's); its codeword split code {} along its {} members' main gradient "
                   "direction, {} of them taking the new side",
                   round + 1, move.dissolved, attributes[a].name, move.margin_ratio, move.split, move.split_members,
                   move.moved);
    else
      spdlog::info("round {}: code {} of '{}' merged into its members' second choices (their mean likelihood margin "
                   "{:.2f} of the median code's); no code had members enough to split",
                   round + 1, move.dissolved, attributes[a].name, move.margin_ratio);
    log.moves.push_back(move);
  }
  if (round + 1 == total_rounds) {
    // The final codes read each user's whole training history, as a fold-in reads a new user's,
    // so that warm and cold users' codes come from the same rule (and from all their evidence,
    // not this round's draw of samples).
    codes = likelihood_codes_of_histories(engine, codebooks, codes, 1, estep_workers,
                                          [&](std::uint64_t done, std::uint64_t total) {
                                            progress.set_metric(fmt::format(
                                                "final codes over whole histories: {}/{} batch passes", done, total));
                                          });
  }
  z = engine.compose(codebooks, codes).contiguous();
}

}  // namespace detail

}  // namespace userip::profile
