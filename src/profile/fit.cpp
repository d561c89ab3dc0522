// fit_profiles: reuse a finished fit, restore a checkpoint, run the rounds (fit_engine.cpp: the E-step;
// split_merge.cpp: refinement), the M-step, log and checkpoint after each, then the profiles and the fit's
// record. The state the rounds share is FitState (fit_state.cpp); profiles.cpp writes the files,
// fit_options.cpp reads the options, infer.cpp folds in and evaluates.
#include "userip/profile/fit.h"

#include "profile/fit_internal.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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
#include <optional>
#include <set>
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

// A dataset's identity for the fit fingerprint: where it came from, its counts and its split.
std::string dataset_fingerprint(const data::Dataset& d) {
  nlohmann::json j = {{"provenance", d.provenance},
                      {"users", d.num_users()},
                      {"items", d.num_items()},
                      {"interactions", d.num_interactions()},
                      {"split", d.has_split() ? d.split.config.to_json() : nlohmann::json(nullptr)}};
  std::uint64_t h = fnv1a64(j.dump());
  // The columns themselves, sampled sparsely: enough to tell two datasets with equal counts apart.
  const auto& in = d.interactions;
  const std::size_t step = std::max<std::size_t>(1, in.size() / 4096);
  for (std::size_t i = 0; i < in.size(); i += step) {
    std::uint64_t row[3] = {in.user[i], in.item[i], static_cast<std::uint64_t>(in.timestamp[i])};
    h = fnv1a64(std::string_view(reinterpret_cast<const char*>(row), sizeof(row)), h);
  }
  return hex64(h);
}


// λ of round r: none in round 0 (no codes exist before the first E-step), then geometric from
// lambda_start to lambda_end, so early rounds let profiles move and late ones pull them onto codes.
double lambda_for_round(const FitOptions& o, int round) {
  if (o.ablation == ProfileAblation::no_codebook || round == 0) return 0.0;
  if (o.rounds <= 2) return o.lambda_end;
  double t = static_cast<double>(round - 1) / static_cast<double>(o.rounds - 2);
  return o.lambda_start * std::pow(o.lambda_end / o.lambda_start, t);
}


// `model_fingerprint` is passed in: hashing every weight is costly for a real checkpoint.
std::string fit_fingerprint(const FitInputs& in, const FitOptions& o, const std::string& model_fingerprint) {
  nlohmann::json j = {{"options", o.to_json()},
                      {"template", in.profile_template->to_json()},
                      {"model", model_fingerprint},
                      {"dataset", dataset_fingerprint(*in.dataset)}};
  return hex64(fnv1a64(j.dump()));
}


// Samples never run past the LM's context: positions it was not trained on make its attention, and
// so the profiles' influence, unreliable.
FitOptions within_context(const FitOptions& options, const lm::CausalLM& model) {
  FitOptions o = options;
  const std::int64_t context = model.config().max_position_embeddings;
  if (context > 0 && o.samples.max_tokens > context) {
    spdlog::info("samples of at most {} tokens, the model's context (--max-tokens {})", context, o.samples.max_tokens);
    o.samples.max_tokens = context;
  }
  return o;
}

}  // namespace detail

namespace {

// A finished fit of the same inputs and options in `out`: its profiles and evaluation. nullopt when
// there is none (an unreadable earlier result is simply replaced).
std::optional<FitResult> reuse_finished_fit(const FitInputs& in, const fs::path& out, const std::string& fingerprint) {
  if (!fs::exists(out / "profile.json") || fs::exists(out / kCheckpointDir)) return std::nullopt;
  try {
    auto done = nlohmann::json::parse(read_file(out / "profile.json"));
    if (done.value("fingerprint", "") != fingerprint) return std::nullopt;
    FitResult result;
    auto saved = load_fit(out, *in.dataset, *in.profile_template);
    result.profiles = std::move(saved.profiles);
    if (done.contains("evaluation")) {
      const auto& e = done["evaluation"];
      result.evaluation.own = e.value("own", 0.0);
      result.evaluation.mean = e.value("mean", 0.0);
      result.evaluation.shuffled = e.value("shuffled", 0.0);
      result.evaluation.quantized = e["quantized"].is_null() ? -1.0 : e.value("quantized", -1.0);
      result.evaluation.tokens = e.value("tokens", std::int64_t{0});
      result.evaluation.users = e.value("users", std::int64_t{0});
    }
    spdlog::info("{}: profiles of these inputs and options exist; reusing them", out.string());
    return result;
  } catch (const Error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return std::nullopt;
}

// The users whose codes and samples the refinement rounds work on: all (empty) unless --refine-users.
std::vector<std::int64_t> refinement_rows(const FitOptions& o, std::int64_t users) {
  std::vector<std::int64_t> rows;
  if (o.refine_rounds > 0 && o.refine_users > 0 && o.refine_users < users) {
    std::vector<std::int64_t> all(static_cast<std::size_t>(users));
    std::iota(all.begin(), all.end(), std::int64_t{0});
    Rng rng = Rng::derive(o.seed, 4000);
    rng.shuffle(all);
    rows.assign(all.begin(), all.begin() + o.refine_users);
    std::sort(rows.begin(), rows.end());
  }
  return rows;
}

// The M-step after a round: the codebooks seeded by k-means++ the first time, then (alternating EM
// rounds) refitted to the profiles. The joint mode trains its codewords by gradient, the refinement
// rounds by likelihood.
void mstep_after_round(const RoundContext& ctx, FitState& state, bool refining) {
  const FitOptions& o = ctx.o;
  if (!uses_codebooks(o)) return;
  torch::NoGradGuard no_grad;
  if (!state.codebooks_ready) {
    for (std::size_t a = 0; a < state.codebooks.size(); ++a) {
      const auto seeding = state.codebooks[a].init_kmeanspp_best_of(
          ctx.engine.attribute_view(state.z, a), Rng::derive(o.seed, 300 + a).next_u64(), o.kmeans_restarts,
          o.mstep_iterations);
      if (o.kmeans_restarts > 1)
        spdlog::info("attribute '{}': k-means seeding {} of {} kept (quantization error {:.4g} after {} Lloyd "
                     "steps; the worst seeding {:.4g})",
                     ctx.attributes[a].name, seeding.kept + 1, o.kmeans_restarts, seeding.best_error,
                     o.mstep_iterations, seeding.worst_error);
    }
    state.codebooks_ready = true;
  }
  if (o.mode != EmMode::joint && !refining) mstep(ctx.engine, state.z, state.codebooks, o.mstep_iterations);
}

// The profiles, codes and codebooks of the finished state, every user's codes by the fold-in's rule
// when the options ask for it.
Profiles final_profiles(const FitInputs& in, const FitOptions& o, const Engine& engine, FitState& state,
                        bool show_progress) {
  const auto& attributes = in.profile_template->attributes();
  const auto& users = engine.users();
  const std::int64_t U = static_cast<std::int64_t>(users.size());
  torch::Tensor& z = state.z;
  auto& codebooks = state.codebooks;
  Profiles profiles;
  profiles.users = users;
  for (auto u : users) profiles.user_ids.push_back(in.dataset->user_ids[u]);
  profiles.attributes = attributes;
  for (std::size_t a = 0; a < attributes.size(); ++a) profiles.attribute_offset.push_back(in.profile_template->soft_offset(a));
  {
    torch::NoGradGuard no_grad;
    for (auto& c : codebooks)
      for (auto& w : c.codewords()) w = w.detach().requires_grad_(false);
  }
  if (o.ablation == ProfileAblation::mean) z = z.mean(0, true).expand({U, z.size(1), z.size(2)}).contiguous();
  profiles.vectors = z.detach().cpu();
  if (uses_codebooks(o)) {
    for (const auto& c : codebooks) profiles.codebooks.push_back(codebook_on(c, torch::kCPU));
    profiles.codes = assign_all(engine, profiles.vectors, profiles.codebooks);
    if (o.final_codes_by_likelihood()) {
      // The fold-in's rule (infer.cpp): from the population's codes, two sweeps over every user's whole history.
      torch::NoGradGuard no_grad;
      const auto start = assign_all(engine, z.mean(0, true), codebooks).select(2, 0).to(o.device);
      ProgressBar final_codes("profile fit: codes by likelihood", static_cast<std::uint64_t>(U), "users");
      if (!show_progress) final_codes.disable();
      auto codes = likelihood_codes_of_histories(
          engine, codebooks, start.expand({U, -1}).contiguous(), 2, side_by_side_workers(o),
          [&](std::uint64_t done, std::uint64_t total) { final_codes.set(static_cast<std::uint64_t>(U) * done / total); });
      final_codes.finish();
      profiles.vectors = engine.compose(codebooks, codes).cpu().contiguous();
      profiles.codes = codes.cpu().unsqueeze(2);
      const auto start_cpu = start.cpu().reshape({-1});
      profiles.likelihood_start_codes.assign(start_cpu.data_ptr<std::int64_t>(),
                                             start_cpu.data_ptr<std::int64_t>() + start_cpu.numel());
    }
  }
  return profiles;
}

}  // namespace

FitResult fit_profiles(const FitInputs& in, const FitOptions& requested, const fs::path& out) {
  requested.validate();
  USERIP_CHECK(in.model, "fit_profiles: no model");
  const FitOptions o = within_context(requested, *in.model);
  USERIP_CHECK(in.dataset && in.model && in.tokenizer && in.profile_template, "fit_profiles: missing inputs");
  in.model->assert_frozen();
  // Every rank runs the whole fit on the same numbers; the E-step's batches (alternating mode) and the
  // final likelihood pass are shared out (docs/DISTRIBUTED.md). Only rank 0 writes.
  dist::World& world = dist::World::get();
  const bool writer = world.is_root();
  ScopedSingleThreadedAten thread_policy(o.device.is_cpu());
  const auto& attributes = in.profile_template->attributes();
  const std::string model_fingerprint = in.model->fingerprint();
  const std::string fingerprint = fit_fingerprint(in, o, model_fingerprint);
  fs::create_directories(out);
  if (auto reused = reuse_finished_fit(in, out, fingerprint)) return std::move(*reused);

  const auto train = in.dataset->training_view();
  std::vector<std::uint32_t> users = train.users();
  USERIP_CHECK(!users.empty(), "the dataset has no training interactions to fit profiles on");
  Engine engine(in, o, train, users);
  const std::int64_t U = static_cast<std::int64_t>(users.size());
  const bool joint = o.mode == EmMode::joint;

  FitResult result;
  FitState state = FitState::initial(in, o, U);
  const CheckpointDir checkpoint(out / kCheckpointDir, fingerprint);
  result.resumed = state.restore(checkpoint, o, attributes);
  if (result.resumed)
    spdlog::info("resuming the fit from round {} batch {} ({})", state.round + 1, state.batch, checkpoint.dir().string());
  // Ranks other than 0 read the same run directory above (reuse, resume) and write nothing; none may
  // write before all have read.
  world.barrier();

  const auto started = std::chrono::steady_clock::now();
  const double seconds_before = state.seconds;
  auto elapsed = [&] {
    return seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  auto last_checkpoint = std::chrono::steady_clock::now();
  const auto save_checkpoint = [&](const FitState& s) {
    if (!writer) return;
    s.save(checkpoint, attributes, elapsed());
    last_checkpoint = std::chrono::steady_clock::now();
  };
  // log.jsonl is rewritten from the rounds' records, which the checkpoint carries in full.
  const auto write_log = [&] {
    if (!writer) return;
    std::string text;
    for (const auto& r : state.log) text += r.to_json(attributes).dump() + "\n";
    write_file_atomic(out / "log.jsonl", text);
  };

  const auto valid = in.dataset->view({data::SplitPart::valid});
  const auto eval_samples = engine.evaluation_samples(valid, o.max_eval_users);

  const int total_rounds = o.rounds + o.refine_rounds;
  ProgressBar progress(fmt::format("profile fit ({})", to_string(o.mode)),
                       static_cast<std::uint64_t>(total_rounds) * static_cast<std::uint64_t>(U), "users");
  if (!o.show_progress || !writer) progress.disable();
  progress.set(static_cast<std::uint64_t>(state.round) * static_cast<std::uint64_t>(U));
  const RoundContext ctx{o,
                         engine,
                         attributes,
                         world,
                         progress,
                         // The alternating E-step's batches hold disjoint users and read only the frozen LM, so
                         // on the CPU they run `--threads` at a time, each single-threaded, their results summed
                         // in batch order (docs/BENCHMARKS.md, "Profile fitting").
                         o.mode == EmMode::alternating ? side_by_side_workers(o) : 1,
                         save_checkpoint,
                         [&] {
                           return std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint)
                                      .count() >= o.checkpoint_seconds;
                         }};

  const bool has_init = std::any_of(attributes.begin(), attributes.end(), [](const auto& a) { return !a.init.empty(); });
  if (!result.resumed && !joint && o.ablation != ProfileAblation::random && (o.population_steps > 0 || has_init)) {
    // Everyone starts from the population's profile, with a tenth of the usual noise to break ties.
    const std::int64_t P = state.z.size(1), d = state.z.size(2);
    auto shared = initial_soft_tokens(in, initial_vectors(o, 1, P, d, 2)[0]).unsqueeze(0);
    if (o.population_steps > 0) shared = population_profile(engine, o, shared, &progress);
    state.z = shared.expand({U, P, d}) + 0.1 * state.z;
  }
  const auto loop_started = std::chrono::steady_clock::now();
  const std::int64_t tokens_before_loop = state.tokens;
  const bool fit_vectors = o.ablation != ProfileAblation::random;
  const auto refine_rows = refinement_rows(o, U);
  bool interrupted = false;
  for (int round = state.round; round < total_rounds && !interrupted; ++round) {
    state.round = round;
    const bool refining = round >= o.rounds;
    const double lambda = joint ? 0.0 : lambda_for_round(o, std::min(round, o.rounds - 1));
    RoundLog log;
    if (refining) {
      refinement_round(ctx, state, round, refine_rows, log);
    } else if (fit_vectors && !estep_round(ctx, state, round, lambda)) {
      interrupted = true;
      break;
    }
    progress.set(static_cast<std::uint64_t>(round + 1) * static_cast<std::uint64_t>(U));
    mstep_after_round(ctx, state, refining);

    log.round = round + 1;
    log.lambda = lambda;
    log.refinement = refining;
    log.train_nll = state.pass.tokens > 0 ? state.pass.nll / static_cast<double>(state.pass.tokens) : 0.0;
    log.tokens = state.pass.tokens;
    if (!eval_samples.empty()) {
      auto [nll, tokens] = engine.total_nll(eval_samples, state.z);
      log.valid_nll = tokens > 0 ? nll / static_cast<double>(tokens) : -1.0;
    }
    if (state.codebooks_ready) fill_code_stats(log, engine, state.z.detach(), state.codebooks);
    log.seconds = elapsed();
    state.log.push_back(log);
    write_log();
    spdlog::info("round {}/{}{}: λ {:.3g}, train NLL/token {:.4f}, valid {:.4f}{}", round + 1, total_rounds,
                 refining ? " (refinement by likelihood)" : "", lambda, log.train_nll, log.valid_nll,
                 log.quantization_error.empty() ? std::string()
                                                : fmt::format(", quantization error {:.4g}", log.quantization_error[0]));
    state.round = round + 1;
    state.batch = 0;
    state.pass = PassState{};
    // After the last round too when the final codes by likelihood follow: they take minutes.
    if (round + 1 < total_rounds || o.final_codes_by_likelihood()) save_checkpoint(state);
    if (o.stop_after_batches > 0 && state.batches_done >= o.stop_after_batches && round + 1 < total_rounds)
      interrupted = true;
  }
  progress.finish();
  result.interrupted = interrupted;
  result.seconds = elapsed();
  result.tokens = state.tokens;
  result.log = state.log;
  USERIP_CHECK(in.model->fingerprint() == model_fingerprint,
               "internal error: the LM's weights changed during the fit (frozen-parameter guard)");
  if (interrupted) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_started).count();
    const auto tokens = state.tokens - tokens_before_loop;
    spdlog::info("stopped as asked after {} batches ({} label tokens through the LM in {:.1f} s since the first batch: "
                 "{:.0f} tokens/s); a rerun resumes from {}",
                 state.batches_done, tokens, seconds, seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0,
                 checkpoint.dir().string());
    return result;
  }

  result.profiles = final_profiles(in, o, engine, state, o.show_progress && writer);
  result.evaluation = evaluate_profiles(in, result.profiles, o, train, valid);
  const nlohmann::json record = {{"fingerprint", fingerprint},
                                 {"options", o.to_json()},
                                 {"seed", o.seed},
                                 {"model", {{"path", in.model_path}, {"fingerprint", model_fingerprint}}},
                                 {"model_fingerprint", model_fingerprint},
                                 {"template", in.profile_template->to_json()},
                                 {"template_path", in.template_path},
                                 {"dataset", in.dataset_path},
                                 {"evaluation", result.evaluation.to_json()},
                                 {"seconds", result.seconds},
                                 {"tokens", result.tokens},
                                 {"resumed", result.resumed}};
  if (writer) {
    save_profiles(result.profiles, out, record);
    write_file_atomic(out / "evaluation.json", result.evaluation.to_json().dump(2));
    checkpoint.remove();
  }
  return result;
}

}  // namespace userip::profile
