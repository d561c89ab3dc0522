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
#include <thread>
#include <unordered_map>

#include "userip/data/export.h"
#include "userip/dist/world.h"
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

void mstep(const Engine& engine, const torch::Tensor& z, std::vector<quantize::ResidualCodebook>& codebooks, int iterations) {
  torch::NoGradGuard no_grad;
  for (std::size_t a = 0; a < codebooks.size(); ++a) {
    auto x = engine.attribute_view(z, a);
    for (int i = 0; i < iterations; ++i) codebooks[a].update_means(x, codebooks[a].assign(x));
  }
}

// Codes [U, A, R] of the profiles under the codebooks.
torch::Tensor assign_all(const Engine& engine, const torch::Tensor& z, const std::vector<quantize::ResidualCodebook>& codebooks) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> per;
  for (std::size_t a = 0; a < codebooks.size(); ++a) per.push_back(codebooks[a].assign(engine.attribute_view(z, a)).cpu());
  return torch::stack(per, 1);
}

void run_side_by_side(std::size_t first, std::size_t end, const std::function<void(std::size_t)>& work) {
  std::vector<std::exception_ptr> errors(end - first);
  {
    std::vector<std::thread> helpers;
    for (std::size_t i = first + 1; i < end; ++i) {
      helpers.emplace_back([&, i] {
        try {
          // OpenMP's thread count is per thread: a new thread starts at all cores.
          at::set_num_threads(1);
          work(i);
        } catch (...) {
          errors[i - first] = std::current_exception();
        }
      });
    }
    try {
      if (first < end) work(first);
    } catch (...) {
      errors[0] = std::current_exception();
    }
    for (auto& h : helpers) h.join();
  }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

std::pair<double, std::int64_t> Engine::total_nll(const std::vector<ProfileSample>& samples,
                                                  const torch::Tensor& vectors) const {
  torch::NoGradGuard no_grad;
  dist::World& world = dist::World::get();
  const auto batches = pack_samples(samples, o_.max_batch_tokens, o_.max_batch_rows);
  const std::size_t group = static_cast<std::size_t>(side_by_side_workers(o_));
  const std::size_t span = group * static_cast<std::size_t>(world.size());
  // Per batch: its NLL and label tokens.
  auto per_batch = torch::zeros({static_cast<std::int64_t>(batches.size()), 2}, torch::kDouble);
  ScopedSingleThreadedBlas blas_policy(o_.device.is_cpu() && span > 1);
  for (std::size_t b = 0; b < batches.size(); b += span) {
    const std::size_t end = std::min(batches.size(), b + span);
    const auto [mine, mine_end] = dist::share_of_span(b, end, group, world.rank());
    run_side_by_side(mine, mine_end, [&](std::size_t i) {
      torch::NoGradGuard no_grad_here;  // grad mode is per thread
      std::vector<const ProfileSample*> members;
      for (auto s : batches[i]) members.push_back(&samples[s]);
      auto p = prepare(members);
      per_batch[static_cast<std::int64_t>(i)][0] = row_nll(p, vectors.index_select(0, p.user_rows)).sum().item<double>();
      per_batch[static_cast<std::int64_t>(i)][1] = static_cast<double>(p.labels);
    });
  }
  if (world.distributed()) {
    // Every rank filled its own batches' rows and left the others' zero: the sum is every batch.
    world.all_reduce_sum(per_batch);
  }
  double nll = 0;
  std::int64_t tokens = 0;
  for (std::int64_t i = 0; i < per_batch.size(0); ++i) {
    nll += per_batch[i][0].item<double>();
    tokens += static_cast<std::int64_t>(per_batch[i][1].item<double>());
  }
  return {nll, tokens};
}

void share_estep_span(dist::World& world, const Engine& engine, const Engine::Round& r, std::size_t b,
                      std::size_t mine, std::size_t mine_end, torch::Tensor& z, RowAdam& adam,
                      std::vector<BatchOutcome>& outcomes) {
  std::vector<std::int64_t> rows;
  for (std::size_t i = mine; i < mine_end; ++i)
    for (auto s : r.batches[i]) rows.push_back(engine.row_of(r.samples[s].user));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  dist::share_rows(world, rows, {&z, &adam.m, &adam.v, &adam.steps});
  auto mine_outcomes = torch::empty({static_cast<std::int64_t>(mine_end - mine), 2}, torch::kDouble);
  for (std::size_t i = mine; i < mine_end; ++i) {
    mine_outcomes[static_cast<std::int64_t>(i - mine)][0] = outcomes[i - b].nll;
    mine_outcomes[static_cast<std::int64_t>(i - mine)][1] = static_cast<double>(outcomes[i - b].labels);
  }
  std::size_t next = 0;
  for (const auto& share : world.all_gather_rows(mine_outcomes)) {
    for (std::int64_t k = 0; k < share.size(0); ++k, ++next) {
      outcomes[next].nll = share[k][0].item<double>();
      outcomes[next].labels = static_cast<std::int64_t>(share[k][1].item<double>());
    }
  }
}

int side_by_side_workers(const FitOptions& o) { return o.device.is_cpu() ? threads_for_side_by_side_work() : 1; }

namespace {

// One batch's [b, K] NLL sums and the rows of its users.
struct Part {
  torch::Tensor user_rows, nll;
};

// Parts [mine, mine_end) were computed here; afterwards every rank holds all of them.
void share_parts(dist::World& world, std::vector<Part>& parts, std::size_t mine, std::size_t mine_end, std::int64_t K,
                 torch::Device device) {
  std::vector<std::int64_t> sizes;
  std::vector<torch::Tensor> rows, nll;
  for (std::size_t i = mine; i < mine_end; ++i) {
    sizes.push_back(parts[i].user_rows.size(0));
    rows.push_back(parts[i].user_rows.cpu());
    nll.push_back(parts[i].nll.cpu());
  }
  const auto gathered_sizes = world.all_gather_rows(torch::tensor(sizes, torch::TensorOptions().dtype(torch::kLong)));
  const auto gathered_rows = world.all_gather_rows(rows.empty() ? torch::empty({0}, torch::kLong) : torch::cat(rows));
  const auto gathered_nll = world.all_gather_rows(nll.empty() ? torch::empty({0, K}, torch::kDouble) : torch::cat(nll));
  std::size_t next = 0;  // the ranks' shares follow one another in batch order
  for (int r = 0; r < world.size(); ++r) {
    std::int64_t offset = 0;
    const auto& counts = gathered_sizes[static_cast<std::size_t>(r)];
    for (std::int64_t k = 0; k < counts.size(0); ++k, ++next) {
      const auto n = counts[k].item<std::int64_t>();
      if (r != world.rank())
        parts[next] = {gathered_rows[static_cast<std::size_t>(r)].narrow(0, offset, n).to(device),
                       gathered_nll[static_cast<std::size_t>(r)].narrow(0, offset, n).to(device)};
      offset += n;
    }
  }
}

}  // namespace

torch::Tensor likelihood_codes_of_histories(const Engine& engine, const std::vector<quantize::ResidualCodebook>& codebooks,
                                            torch::Tensor codes, int sweeps, int workers,
                                            const std::function<void(std::uint64_t, std::uint64_t)>& on_progress) {
  torch::NoGradGuard no_grad;
  const auto& o = engine.options();
  dist::World& world = dist::World::get();
  std::vector<ProfileSample> samples;
  for (auto u : engine.users())
    for (auto& s : most_recent_samples(engine.builder().evaluation_samples(u, engine.history()), o.likelihood_interactions))
      samples.push_back(std::move(s));
  const auto batches = pack_samples(samples, o.max_batch_tokens, o.max_batch_rows);
  const std::int64_t U = codes.size(0);
  std::vector<bool> has_history(static_cast<std::size_t>(U), false);
  for (const auto& s : samples) has_history[static_cast<std::size_t>(engine.row_of(s.user))] = true;
  std::vector<std::int64_t> rows_with_history;
  for (std::int64_t u = 0; u < U; ++u)
    if (has_history[static_cast<std::size_t>(u)]) rows_with_history.push_back(u);
  const auto with_history = torch::tensor(rows_with_history, torch::TensorOptions().dtype(torch::kLong)).to(codes.device());
  const std::uint64_t total = static_cast<std::uint64_t>(sweeps) * codebooks.size() * batches.size();
  std::uint64_t done = 0;
  const std::size_t group = static_cast<std::size_t>(std::max(1, workers));
  ScopedSingleThreadedBlas blas_policy(o.device.is_cpu() && group > 1);
  for (int sweep = 0; sweep < sweeps; ++sweep) {
    for (std::size_t a = 0; a < codebooks.size(); ++a) {
      const std::int64_t K = codebooks[a].codes();
      // Each user's NLL over its whole history under each code of `a` (the other attributes held), in
      // float64 and summed in batch order.
      auto totals = torch::zeros({U, K}, codes.options().dtype(torch::kDouble));
      // Across ranks, each takes the next `group` batches of every W·group in turn, and the parts are
      // shared, so every rank adds the same parts in the same order.
      const std::size_t span = group * static_cast<std::size_t>(world.size());
      for (std::size_t b = 0; b < batches.size(); b += span) {
        const std::size_t end = std::min(batches.size(), b + span);
        const auto [mine, mine_end] = dist::share_of_span(b, end, group, world.rank());
        std::vector<Part> parts(end - b);
        run_side_by_side(mine, mine_end, [&](std::size_t i) {
          torch::NoGradGuard no_grad_here;  // grad mode is per thread
          std::vector<const ProfileSample*> members;
          for (auto s : batches[i]) members.push_back(&samples[s]);
          const auto p = engine.prepare(members);
          const auto base = codes.index_select(0, p.user_rows);
          auto nll = torch::zeros({p.user_rows.size(0), K}, totals.options());
          for (std::int64_t k = 0; k < K; ++k) {
            auto candidate = base.clone();
            candidate.select(1, static_cast<std::int64_t>(a)).fill_(k);
            const auto rows = engine.row_nll(p, engine.compose(codebooks, candidate)).to(torch::kDouble);
            nll.select(1, k).index_add_(0, p.row_local, rows);
          }
          parts[i - b] = {p.user_rows, nll};
        });
        if (world.distributed()) share_parts(world, parts, mine - b, mine_end - b, K, totals.device());
        for (const auto& part : parts) totals.index_add_(0, part.user_rows, part.nll);
        done += end - b;
        on_progress(done, total);
      }
      codes.select(1, static_cast<std::int64_t>(a))
          .index_copy_(0, with_history, totals.index_select(0, with_history).argmin(1).to(codes.scalar_type()));
    }
  }
  return codes;
}

void fill_code_stats(RoundLog& log, const Engine& engine, const torch::Tensor& z,
                     const std::vector<quantize::ResidualCodebook>& codebooks) {
  torch::NoGradGuard no_grad;
  for (std::size_t a = 0; a < codebooks.size(); ++a) {
    auto x = engine.attribute_view(z, a);
    log.quantization_error.push_back(codebooks[a].quantization_error(x));
    auto codes = codebooks[a].assign(x);
    std::vector<double> perplexity;
    std::vector<std::int64_t> dead;
    std::vector<std::vector<std::int64_t>> counts;
    for (int r = 0; r < codebooks[a].levels(); ++r) {
      auto usage = quantize::code_usage(codes.select(1, r), codebooks[a].codes());
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
quantize::ResidualCodebook codebook_on(const quantize::ResidualCodebook& codebook, torch::Device device) {
  std::vector<std::pair<std::string, torch::Tensor>> saved;
  codebook.save(saved, "c");
  std::map<std::string, torch::Tensor> named;
  for (auto& [name, tensor] : saved) named[name] = tensor.to(device);
  return quantize::ResidualCodebook::from_tensors(named, "c");
}

bool estep_round(const RoundContext& ctx, FitState& state, int round, double lambda) {
  const FitOptions& o = ctx.o;
  const Engine& engine = ctx.engine;
  dist::World& world = ctx.world;
  ProgressBar& progress = ctx.progress;
  const std::int64_t U = static_cast<std::int64_t>(engine.users().size());
  const int estep_workers = ctx.estep_workers;
  const bool joint = o.mode == EmMode::joint;
  torch::Tensor& z = state.z;
  RowAdam& adam = state.adam;
  auto& codebooks = state.codebooks;
  bool stopped = false;
  auto r = joint ? engine.window_samples(static_cast<std::uint64_t>(round), o.joint_batch)
                 : engine.user_samples(static_cast<std::uint64_t>(round));
  const std::size_t first = state.batch;
  const int steps = joint ? 1 : o.estep_steps;
  // One batch of the E-step: its users' steps on their own rows of z and of the Adam state.
  const auto run_batch = [&](std::size_t b) {
    std::vector<const ProfileSample*> members;
    for (auto i : r.batches[b]) members.push_back(&r.samples[i]);
    auto p = engine.prepare(members);
    BatchOutcome outcome;
    outcome.labels = p.labels;
    for (int s = 0; s < steps; ++s) {
      auto z_local = z.index_select(0, p.user_rows).detach().requires_grad_(true);
      auto nll_rows = engine.row_nll(p, z_local);
      torch::Tensor loss;
      if (joint) {
        // The released code: batch-mean NLL plus the codebook loss on stopgrad(z).
        loss = (nll_rows * p.row_weight).sum() / static_cast<double>(members.size());
        if (state.codebooks_ready) {
          for (std::size_t a = 0; a < codebooks.size(); ++a) {
            auto x = engine.attribute_view(z_local, a).detach();
            auto target = codebooks[a].reconstruct(codebooks[a].assign(x));
            loss = loss + o.codebook_loss_weight * (x - target).pow(2).mean();
          }
          state.codebook_optimizer->zero_grad();
        }
      } else {
        // Each user's objective: its mean NLL per label token, plus the prior. Summed over users,
        // so every user's gradient is its own.
        loss = (nll_rows * p.row_weight).sum();
        if (lambda > 0 && state.codebooks_ready) loss = loss + lambda * engine.prior_distance(z_local, codebooks).sum();
      }
      loss.backward();
      {
        torch::NoGradGuard no_grad;
        adam.step(z, p.user_rows, z_local.grad(), joint ? o.joint_learning_rate : o.learning_rate,
                  joint ? o.weight_decay : 0.0);
        if (joint && state.codebooks_ready) state.codebook_optimizer->step();
      }
      if (s == steps - 1) outcome.nll = nll_rows.detach().sum().item<double>();
    }
    return outcome;
  };
  const std::size_t group = static_cast<std::size_t>(estep_workers);
  // Across ranks (alternating mode), each takes the next `group` batches of every W·group in
  // turn; the users' rows of z and of the Adam state and the batches' outcomes are then shared,
  // so every rank holds what one process would (batches hold disjoint users).
  const bool sharded = world.distributed() && !joint;
  double sharing_seconds = 0;  // in the collectives that share the E-step's results
  const std::size_t span = sharded ? group * static_cast<std::size_t>(world.size()) : group;
  // Every batch in one thread, whatever the group: a batch's numbers then do not depend on how
  // many batches run beside it.
  ScopedSingleThreadedBlas blas_policy(o.device.is_cpu());
  for (std::size_t b = first; b < r.batches.size(); b += span) {
    const std::size_t end = std::min(r.batches.size(), b + span);
    const auto [mine, mine_end] = sharded ? dist::share_of_span(b, end, group, world.rank()) : std::make_pair(b, end);
    std::vector<BatchOutcome> outcomes(end - b);
    run_side_by_side(mine, mine_end, [&](std::size_t i) { outcomes[i - b] = run_batch(i); });
    if (sharded) {
      const auto sharing_started = std::chrono::steady_clock::now();
      share_estep_span(world, engine, r, b, mine, mine_end, z, adam, outcomes);
      sharing_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - sharing_started).count();
    }
    for (const auto& outcome : outcomes) {
      state.pass.nll += outcome.nll;
      state.pass.tokens += outcome.labels;
      state.tokens += outcome.labels * steps;
      ++state.batches_done;
    }
    // Users of the round done so far, in proportion to its batches.
    progress.set(static_cast<std::uint64_t>(round) * static_cast<std::uint64_t>(U) +
                 static_cast<std::uint64_t>(U) * end / r.batches.size());
    if (state.pass.tokens > 0) progress.set_metric(fmt::format("nll {:.3f}", state.pass.nll / state.pass.tokens));
    const bool stop = o.stop_after_batches > 0 && state.batches_done >= o.stop_after_batches;
    if ((stop || ctx.checkpoint_due()) && end < r.batches.size()) {
      state.batch = end;
      ctx.save(state);
    }
    if (stop && end < r.batches.size()) {
      stopped = true;
      break;
    }
  }
  if (sharded)
    spdlog::info("round {}: {:.2f} s of the E-step in the collectives sharing its results across {} ranks", round + 1,
                 sharing_seconds, world.size());
  return !stopped;
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
