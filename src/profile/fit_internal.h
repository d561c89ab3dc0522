#pragma once
// The fit's machinery shared by its files (fit.cpp: the EM rounds; fit_engine.cpp: the E-step engine and the
// M-step; split_merge.cpp: the refinement move; infer.cpp: fold-in and evaluation; profiles.cpp: the files;
// fit_options.cpp: the options). Not part of the library's interface.
#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "userip/dist/world.h"
#include "userip/lm/model.h"
#include "userip/quantize/codebook.h"
#include "userip/profile/fit.h"
#include "userip/profile/samples.h"
#include "userip/profile/template.h"
#include "userip/util/checkpoint.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"

namespace userip::profile::detail {

constexpr const char* kCheckpointDir = "checkpoint";
constexpr double kAdamBeta1 = 0.9, kAdamBeta2 = 0.999, kAdamEps = 1e-8;

// A dataset's identity for the fit fingerprint: where it came from, its counts and its split.
std::string dataset_fingerprint(const data::Dataset& d);

// λ of round r: none in round 0 (no codes exist before the first E-step), then geometric from
// lambda_start to lambda_end, so early rounds let profiles move and late ones pull them onto codes.
double lambda_for_round(const FitOptions& o, int round);

inline bool uses_codebooks(const FitOptions& o) { return o.ablation != ProfileAblation::no_codebook; }

// Rows [b] of a per-user Adam(W) state, updated in place: every user is its own parameter group,
// with its own step count (bias correction), so users that appear in different numbers of batches
// are treated exactly as if each had its own optimiser.
struct RowAdam {
  torch::Tensor m, v;     // like the parameter
  torch::Tensor steps;    // [U] float32

  void reset(const torch::Tensor& like) {
    m = torch::zeros_like(like);
    v = torch::zeros_like(like);
    steps = torch::zeros({like.size(0)}, like.options());
  }
  void step(torch::Tensor& param, const torch::Tensor& rows, const torch::Tensor& grad, double lr,
            double weight_decay) {
    auto z = param.index_select(0, rows);
    auto m_rows = m.index_select(0, rows).mul_(kAdamBeta1).add_(grad, 1 - kAdamBeta1);
    auto v_rows = v.index_select(0, rows).mul_(kAdamBeta2).addcmul_(grad, grad, 1 - kAdamBeta2);
    auto t = steps.index_select(0, rows).add_(1);
    auto shape = std::vector<std::int64_t>(static_cast<std::size_t>(param.dim()), 1);
    shape[0] = -1;
    auto bias1 = (1 - torch::pow(kAdamBeta1, t)).view(shape);
    auto bias2 = (1 - torch::pow(kAdamBeta2, t)).view(shape);
    if (weight_decay > 0) z.mul_(1 - lr * weight_decay);
    z.sub_(lr * (m_rows / bias1) / ((v_rows / bias2).sqrt_() + kAdamEps));
    param.index_copy_(0, rows, z);
    m.index_copy_(0, rows, m_rows);
    v.index_copy_(0, rows, v_rows);
    steps.index_copy_(0, rows, t);
  }
};

// One batch of samples, with the batch's distinct users.
struct PreparedBatch {
  SampleBatch batch;
  torch::Tensor user_rows;   // [b] int64: rows of the profile matrix of the batch's distinct users
  torch::Tensor slot_local;  // [N] int64: for each soft slot, its user's index among user_rows
  torch::Tensor row_local;   // [B] int64: for each batch row, its user's index among user_rows
  torch::Tensor row_weight;  // [B] float: 1 / (labels of that row's user in the batch)
  std::int64_t labels = 0;
};

// The fitting machinery shared by fit, fold-in and evaluation: samples of one history, profile
// rows of a set of users, and the loss through the frozen LM.
class Engine {
 public:
  Engine(const FitInputs& in, const FitOptions& o, const data::SplitView& history, std::vector<std::uint32_t> users)
      : in_(in), o_(o), builder_(*in.dataset, history, *in.profile_template, *in.tokenizer, o.samples),
        history_(history), users_(std::move(users)) {
    const auto& attributes = in.profile_template->attributes();
    for (std::size_t a = 0; a < attributes.size(); ++a) offsets_.push_back(in.profile_template->soft_offset(a));
    for (std::size_t i = 0; i < users_.size(); ++i) row_of_[users_[i]] = static_cast<std::int64_t>(i);
  }

  const std::vector<std::uint32_t>& users() const { return users_; }
  const SampleBuilder& builder() const { return builder_; }
  const FitOptions& options() const { return o_; }
  const data::SplitView& history() const { return history_; }
  std::int64_t row_of(std::uint32_t user) const { return row_of_.at(user); }
  std::size_t num_attributes() const { return offsets_.size(); }
  std::int64_t soft_tokens(std::size_t a) const { return in_.profile_template->attributes()[a].soft_tokens; }

  torch::Tensor attribute_view(const torch::Tensor& z, std::size_t a) const {
    return z.narrow(1, offsets_[a], soft_tokens(a)).reshape({z.size(0), -1});
  }

  PreparedBatch prepare(const std::vector<const ProfileSample*>& samples) const {
    PreparedBatch p;
    p.batch = make_batch(samples, o_.attention, o_.device);
    std::vector<std::int64_t> distinct, row_local(samples.size());
    std::unordered_map<std::uint32_t, std::int64_t> local;
    for (std::size_t r = 0; r < samples.size(); ++r) {
      auto [it, added] = local.emplace(samples[r]->user, static_cast<std::int64_t>(distinct.size()));
      if (added) distinct.push_back(row_of(samples[r]->user));
      row_local[r] = it->second;
    }
    // Each user's objective is its NLL per label token over its rows in the batch.
    std::vector<double> labels_of_user(distinct.size(), 0.0);
    for (std::size_t r = 0; r < samples.size(); ++r) {
      const auto labels = samples[r]->label_count();
      p.labels += labels;
      labels_of_user[static_cast<std::size_t>(row_local[r])] += static_cast<double>(labels);
    }
    std::vector<float> weight(samples.size());
    for (std::size_t r = 0; r < samples.size(); ++r)
      weight[r] = static_cast<float>(1.0 / std::max(1.0, labels_of_user[static_cast<std::size_t>(row_local[r])]));
    auto cpu_long = torch::TensorOptions().dtype(torch::kLong);
    p.user_rows = torch::tensor(distinct, cpu_long).to(o_.device);
    p.row_local = torch::tensor(row_local, cpu_long).to(o_.device);
    p.slot_local = p.row_local.index_select(0, p.batch.soft_row.to(o_.device));
    p.row_weight = torch::tensor(weight).to(o_.device);
    return p;
  }

  // NLL per row [B] (summed over its labels) with the batch users' profiles z_local [b, P, d].
  torch::Tensor row_nll(const PreparedBatch& p, const torch::Tensor& z_local) const {
    const auto& model = *in_.model;
    auto embeds = model.embed(p.batch.ids);
    auto rows = z_local.index({p.slot_local, p.batch.soft_index.to(o_.device)});
    embeds = lm::splice_soft_tokens(embeds, p.batch.soft_slots, rows.to(embeds.scalar_type()));
    auto nll = model.token_nll(embeds, p.batch.attention, p.batch.targets);
    return nll.sum(1).to(torch::kFloat);
  }

  // Profiles [b, P, d] made of the codewords of level-0 codes [b, A]; differentiable with respect
  // to the codewords.
  torch::Tensor compose(const std::vector<quantize::ResidualCodebook>& codebooks, const torch::Tensor& codes) const {
    std::vector<torch::Tensor> parts;
    for (std::size_t a = 0; a < codebooks.size(); ++a) {
      const auto column = codes.narrow(1, static_cast<std::int64_t>(a), 1);
      parts.push_back(codebooks[a].reconstruct(column).view({codes.size(0), soft_tokens(a), -1}));
    }
    return torch::cat(parts, 1);
  }

  // The level-0 codes [b, A] of the batch's users under which the LM gives their rows the highest
  // likelihood, by coordinate ascent from `codes`: each attribute in turn takes its best code with
  // the other attributes' codes held, `sweeps` times over the attributes. With `margins` (and
  // `runner_up`), also each user's NLL per token under its second-best code minus under its code,
  // and that second-best code, from the last sweep ([b, A]; a one-code attribute has margin 0).
  torch::Tensor likelihood_codes(const PreparedBatch& p, const std::vector<quantize::ResidualCodebook>& codebooks,
                                 torch::Tensor codes, int sweeps, torch::Tensor* margins = nullptr,
                                 torch::Tensor* runner_up = nullptr) const {
    torch::NoGradGuard no_grad;
    const auto b = codes.size(0);
    if (margins) {
      *margins = torch::zeros({b, static_cast<std::int64_t>(codebooks.size())}, codes.options().dtype(torch::kFloat));
      *runner_up = codes.clone();
    }
    for (int sweep = 0; sweep < sweeps; ++sweep) {
      for (std::size_t a = 0; a < codebooks.size(); ++a) {
        std::vector<torch::Tensor> user_nll;
        for (std::int64_t k = 0; k < codebooks[a].codes(); ++k) {
          auto candidate = codes.clone();
          candidate.select(1, static_cast<std::int64_t>(a)).fill_(k);
          auto nll = row_nll(p, compose(codebooks, candidate));
          user_nll.push_back(torch::zeros({b}, nll.options()).index_add_(0, p.row_local, nll));
        }
        const auto all = torch::stack(user_nll);
        const auto best = all.argmin(0);
        codes.select(1, static_cast<std::int64_t>(a)).copy_(best);
        if (margins && sweep + 1 == sweeps && all.size(0) >= 2) {
          const auto others = all.scatter(0, best.unsqueeze(0), std::numeric_limits<float>::infinity());
          // A user's rows all carry the same weight, 1 / its label tokens in the batch.
          const auto per_token = torch::zeros({b}, p.row_weight.options()).index_copy_(0, p.row_local, p.row_weight);
          margins->select(1, static_cast<std::int64_t>(a))
              .copy_((std::get<0>(others.min(0)) - all.gather(0, best.unsqueeze(0)).squeeze(0)) * per_token);
          runner_up->select(1, static_cast<std::int64_t>(a)).copy_(others.argmin(0));
        }
      }
    }
    return codes;
  }

  // Squared distance of each row's attribute vectors to their nearest reconstruction: [b].
  torch::Tensor prior_distance(const torch::Tensor& z_local, const std::vector<quantize::ResidualCodebook>& codebooks) const {
    auto total = torch::zeros({z_local.size(0)}, z_local.options());
    for (std::size_t a = 0; a < codebooks.size(); ++a) {
      auto x = attribute_view(z_local, a);
      auto target = codebooks[a].reconstruct(codebooks[a].assign(x.detach())).detach();
      total = total + (x - target).pow(2).sum(1);
    }
    return total;
  }

  // The training samples of a round and their batches, in a seeded order.
  struct Round {
    std::vector<ProfileSample> samples;
    std::vector<std::vector<std::size_t>> batches;
  };
  // Joint mode (the released code's scheme): windows of history, batched by length regardless of
  // user, one optimiser step per batch.
  Round window_samples(std::uint64_t round, std::int64_t max_rows) const {
    Round r;
    for (std::uint32_t u : users_) {
      auto s = builder_.training_samples(u, round);
      for (auto& sample : s) r.samples.push_back(std::move(sample));
    }
    r.batches = pack_samples(r.samples, o_.max_batch_tokens, max_rows);
    Rng rng = Rng::derive(o_.seed, 1000 + round);
    rng.shuffle(r.batches);
    return r;
  }
  // E-steps: each user's history packed into samples, of which `samples_per_user` are drawn per
  // round (seeded by round and user), and all of a user's samples in one batch, so that every Adam
  // step follows the gradient of the user's whole drawn history. A single window of a few
  // interactions makes the gradient mostly about that window's titles and years, which the next
  // round's window does not share: profiles then chase noise instead of settling on taste.
  // `only` (rows of users()), when given, limits the round to those users.
  Round user_samples(std::uint64_t round, const std::vector<std::int64_t>* only = nullptr) const {
    Round r;
    std::vector<std::pair<std::size_t, std::size_t>> spans;  // per user: [first, last) in r.samples
    std::vector<std::uint32_t> chosen;
    if (only)
      for (auto row : *only) chosen.push_back(users_.at(static_cast<std::size_t>(row)));
    for (std::uint32_t u : only ? chosen : users_) {
      auto chunks = builder_.evaluation_samples(u, history_);
      const auto keep = static_cast<std::size_t>(o_.samples.samples_per_user);
      if (chunks.size() > keep) {
        Rng rng = Rng::derive(o_.seed ^ (round * 0x9E3779B97F4A7C15ULL), u);
        rng.shuffle(chunks);
        chunks.resize(keep);
      }
      const std::size_t first = r.samples.size();
      for (auto& c : chunks) r.samples.push_back(std::move(c));
      if (r.samples.size() > first) spans.emplace_back(first, r.samples.size());
    }
    // Users in order of their longest sample, so each batch holds users of similar length (little
    // padding), filled up to the batch limits with whole users.
    auto longest = [&](const std::pair<std::size_t, std::size_t>& span) {
      std::int64_t m = 0;
      for (auto i = span.first; i < span.second; ++i) m = std::max(m, r.samples[i].length());
      return m;
    };
    std::stable_sort(spans.begin(), spans.end(), [&](const auto& a, const auto& b) { return longest(a) < longest(b); });
    std::vector<std::size_t> current;
    std::int64_t current_longest = 0;
    for (const auto& span : spans) {
      const auto rows = static_cast<std::int64_t>(span.second - span.first);
      const auto width = std::max(current_longest, longest(span));
      const auto total_rows = static_cast<std::int64_t>(current.size()) + rows;
      if (!current.empty() && (total_rows > o_.max_batch_rows || total_rows * width > o_.max_batch_tokens)) {
        r.batches.push_back(std::move(current));
        current.clear();
        current_longest = 0;
      }
      for (auto i = span.first; i < span.second; ++i) current.push_back(i);
      current_longest = std::max(current_longest, longest(span));
    }
    if (!current.empty()) r.batches.push_back(std::move(current));
    Rng rng = Rng::derive(o_.seed, 1000 + round);
    rng.shuffle(r.batches);
    return r;
  }

  // Σ NLL and label tokens of `vectors` (rows aligned with users()) on evaluation samples, in
  // batches of the fit's limits, the threads' count side by side and the world's ranks in turn,
  // summed in batch order (the same at any thread count or world size).
  std::pair<double, std::int64_t> total_nll(const std::vector<ProfileSample>& samples,
                                            const torch::Tensor& vectors) const;

  std::vector<ProfileSample> evaluation_samples(const data::SplitView& view, std::int64_t max_users) const {
    std::vector<std::uint32_t> chosen;
    for (auto u : users_)
      if (view.user_count(u) > 0) chosen.push_back(u);
    if (max_users > 0 && static_cast<std::int64_t>(chosen.size()) > max_users) {
      Rng rng = Rng::derive(o_.seed, 77);
      rng.shuffle(chosen);
      chosen.resize(static_cast<std::size_t>(max_users));
      std::sort(chosen.begin(), chosen.end());
    }
    std::vector<ProfileSample> samples;
    for (auto u : chosen)
      for (auto& s : builder_.evaluation_samples(u, view)) samples.push_back(std::move(s));
    return samples;
  }

 private:
  const FitInputs& in_;
  const FitOptions& o_;
  SampleBuilder builder_;
  data::SplitView history_;
  std::vector<std::uint32_t> users_;
  std::unordered_map<std::uint32_t, std::int64_t> row_of_;
  std::vector<std::int64_t> offsets_;
};

torch::Tensor initial_vectors(const FitOptions& o, std::int64_t users, std::int64_t soft, std::int64_t dim,
                              std::uint64_t stream);

// One profile [1, P, d] shared by every user, fitted by Adam from `start` on `steps` batches of training samples
// (cycling over a round's batches drawn from their own seed stream).
torch::Tensor population_profile(const Engine& engine, const FitOptions& o, const torch::Tensor& start,
                                 ProgressBar* progress);

void mstep(const Engine& engine, const torch::Tensor& z, std::vector<quantize::ResidualCodebook>& codebooks, int iterations);

// Codes [U, A, R] of the profiles under the codebooks.
torch::Tensor assign_all(const Engine& engine, const torch::Tensor& z, const std::vector<quantize::ResidualCodebook>& codebooks);

// What one E-step batch gives back: its NLL and label tokens.
struct BatchOutcome {
  double nll = 0;
  std::int64_t labels = 0;
};

// After an E-step span of batches [b, b + outcomes.size()) of which [mine, mine_end) ran on this rank:
// those batches' users' rows of z and of the Adam state, and every batch's outcome, as every rank
// holds them (batches hold disjoint users; ranks' shares follow one another in batch order).
void share_estep_span(dist::World& world, const Engine& engine, const Engine::Round& r, std::size_t b,
                      std::size_t mine, std::size_t mine_end, torch::Tensor& z, RowAdam& adam,
                      std::vector<BatchOutcome>& outcomes);

// Runs work(i) for every i in [first, end) at once, each in its own thread (the calling thread takes
// `first`), single-threaded in ATen, and rethrows the first error in index order. Callers keep
// each item's result apart and combine them in index order, so results do not depend on how many
// run side by side; put a ScopedSingleThreadedBlas around the loop.
void run_side_by_side(std::size_t first, std::size_t end, const std::function<void(std::size_t)>& work);

// How many batches run side by side: the threads (threads_for_side_by_side_work) on the CPU, else 1.
int side_by_side_workers(const FitOptions& o);

// Level-0 codes [U, A] of the engine's users by likelihood over each user's whole history,
// (the same rule as Engine::likelihood_codes, by coordinate ascent from `codes`, `sweeps` times
// over the attributes), read in row batches of the fit's batch limits whatever a history's length,
// `workers` batches side by side. Users without history keep their codes. `on_progress` gets the
// batch passes done and their total.
torch::Tensor likelihood_codes_of_histories(const Engine& engine, const std::vector<quantize::ResidualCodebook>& codebooks,
                                            torch::Tensor codes, int sweeps, int workers,
                                            const std::function<void(std::uint64_t, std::uint64_t)>& on_progress);

void fill_code_stats(RoundLog& log, const Engine& engine, const torch::Tensor& z,
                     const std::vector<quantize::ResidualCodebook>& codebooks);

// The split-and-merge move (codebook.h) on one attribute, in place on `codes` ([U] level-0 codes of
// every user) and the codebook: the members of `dissolved` among `rows` take their `runner_up`
// codes, and the codeword of `dissolved` splits the code whose members' `gradients` ([U, dim], each
// user's gradient of its NLL per token with respect to its codeword) spread most, along their main
// direction. The members on the side of the new codeword (the side their gradient descends to) take it.
RoundLog::CodeMove split_and_merge(quantize::ResidualCodebook& codebook, torch::Tensor codes, const torch::Tensor& runner_up,
                                   const torch::Tensor& gradients, const torch::Tensor& rows, std::int64_t dissolved);

// A detached copy of a codebook on `device` (plain tensors, no optimiser or autograd history).
quantize::ResidualCodebook codebook_on(const quantize::ResidualCodebook& codebook, torch::Device device);

// `model_fingerprint` is passed in: hashing every weight is costly for a real checkpoint.
std::string fit_fingerprint(const FitInputs& in, const FitOptions& o, const std::string& model_fingerprint);

// One E-step pass over a round's batches (alternating and fold-in), or one joint epoch.
struct PassState {
  double nll = 0;
  std::int64_t tokens = 0;
};

// The fit's whole state between two batches: what a checkpoint saves and a resume restores.
struct FitState {
  torch::Tensor z;                          // [U, P, d] every user's soft tokens
  RowAdam adam;                             // their per-user Adam state
  std::vector<quantize::ResidualCodebook> codebooks;  // one per attribute (none without codebooks)
  bool codebooks_ready = false;             // seeded: after the first M-step, from the start in joint mode
  std::unique_ptr<torch::optim::AdamW> codebook_optimizer;  // joint mode's, once the codebooks are ready
  int round = 0;                            // the round under way
  std::size_t batch = 0;                    // its first batch not yet run
  PassState pass;                           // its sums over the batches run so far
  std::int64_t batches_done = 0;            // over every round, for --stop-after-batches
  std::int64_t tokens = 0;                  // label tokens through the LM, every round and step
  double seconds = 0;                       // fitting time of earlier processes (a resumed fit)
  std::vector<RoundLog> log;                // the finished rounds' records

  // Fresh state: seeded vectors and Adam state, codebooks shaped for the template (seeded at once in
  // joint mode).
  static FitState initial(const FitInputs& in, const FitOptions& o, std::int64_t users);
  // The joint mode's codebook optimiser over the current codewords.
  void make_codebook_optimizer(const FitOptions& o);
  // One checkpoint: the tensors (and the joint optimiser) under names of this round and batch, then
  // state.json naming them. `seconds`: the fit's time so far.
  void save(const CheckpointDir& checkpoint, const std::vector<AttributeSpec>& attributes, double seconds) const;
  // The checkpoint's state when it belongs to this fit (CheckpointDir::load's policy); false otherwise.
  bool restore(const CheckpointDir& checkpoint, const FitOptions& o, const std::vector<AttributeSpec>& attributes);
};

// What a fit's rounds share.
struct RoundContext {
  const FitOptions& o;
  const Engine& engine;
  const std::vector<AttributeSpec>& attributes;
  dist::World& world;
  ProgressBar& progress;
  int estep_workers = 1;  // batches side by side
  // A mid-round checkpoint of the state as it stands, and whether one is due (--checkpoint-seconds).
  std::function<void(const FitState&)> save;
  std::function<bool()> checkpoint_due;
};

// One round of the E-step from state.batch (alternating: every user's steps on its own profile with
// the prior of weight `lambda`; joint: one epoch with the codebook loss), its batches shared out to
// ranks. Returns false when --stop-after-batches stopped it within the round (a checkpoint written).
bool estep_round(const RoundContext& ctx, FitState& state, int round, double lambda);

// One refinement round: codes by likelihood with the codewords held, then the codewords by
// likelihood with the codes held, split-and-merge moves every second round, and in the last round
// every user's final codes over its whole history. The profiles become their codewords. Works on
// `refine_rows` (all users when empty); fills the log's code margins and moves.
void refinement_round(const RoundContext& ctx, FitState& state, int round,
                      const std::vector<std::int64_t>& refine_rows, RoundLog& log);

// Samples never run past the LM's context: positions it was not trained on make its attention, and
// so the profiles' influence, unreliable.
FitOptions within_context(const FitOptions& options, const lm::CausalLM& model);

// The options a fit recorded in profile.json ("options"); errors name `source`.
FitOptions options_from_json(const nlohmann::json& j, const std::string& source);

}  // namespace userip::profile::detail
