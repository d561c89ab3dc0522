// fit_profiles: the EM rounds (alternating or joint), the refinement rounds, checkpoints and resume, and the
// fit's record. Its machinery is in fit_engine.cpp, split_merge.cpp, infer.cpp, profiles.cpp and
// fit_options.cpp (fit_internal.h). About 600 lines because fit_profiles's round loop still reads and
// writes its state inline; moving that state into one struct with save and restore is the next step.
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
#include <set>
#include <unordered_map>

#include "userip/data/export.h"
#include "userip/dist/world.h"
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

FitResult fit_profiles(const FitInputs& in, const FitOptions& requested, const fs::path& out) {
  requested.validate();
  USERIP_CHECK(in.model, "fit_profiles: no model");
  const FitOptions o = within_context(requested, *in.model);
  USERIP_CHECK(in.dataset && in.model && in.tokenizer && in.profile_template, "fit_profiles: missing inputs");
  in.model->assert_frozen();
  // The alternating E-step's batches hold disjoint users and read only the frozen LM, so on the CPU
  // they run `--threads` at a time, each single-threaded (ATen and OpenBLAS), and their results are
  // summed in batch order: a batch's numbers do not depend on the others running beside it. One
  // batch with OpenBLAS's two threads used 1.75 CPU-seconds per second for 1.12× the speed of one
  // thread (docs/BENCHMARKS.md, "Profile fitting").
  const int estep_workers = o.mode == EmMode::alternating ? side_by_side_workers(o) : 1;
  // Every rank runs the whole fit on the same numbers; the E-step's batches (alternating mode) and the
  // final likelihood pass are shared out (docs/DISTRIBUTED.md). Only rank 0 writes.
  dist::World& world = dist::World::get();
  const bool writer = world.is_root();
  ScopedSingleThreadedAten thread_policy(o.device.is_cpu());
  const auto& attributes = in.profile_template->attributes();
  const std::string model_fingerprint = in.model->fingerprint();
  const std::string fingerprint = fit_fingerprint(in, o, model_fingerprint);
  fs::create_directories(out);

  nlohmann::json record = {{"fingerprint", fingerprint},
                           {"options", o.to_json()},
                           {"seed", o.seed},
                           {"model", {{"path", in.model_path}, {"fingerprint", model_fingerprint}}},
                           {"model_fingerprint", model_fingerprint},
                           {"template", in.profile_template->to_json()},
                           {"template_path", in.template_path},
                           {"dataset", in.dataset_path}};

  FitResult result;
  // A finished fit of the same inputs and options: nothing to do.
  if (fs::exists(out / "profile.json") && !fs::exists(out / kCheckpointDir)) {
    try {
      auto done = nlohmann::json::parse(read_file(out / "profile.json"));
      if (done.value("fingerprint", "") == fingerprint) {
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
      }
    } catch (const Error&) {
      // An unreadable earlier result is simply replaced.
    } catch (const nlohmann::json::exception&) {
    }
  }

  const auto train = in.dataset->training_view();
  std::vector<std::uint32_t> users = train.users();
  USERIP_CHECK(!users.empty(), "the dataset has no training interactions to fit profiles on");
  Engine engine(in, o, train, users);
  const std::int64_t U = static_cast<std::int64_t>(users.size());
  const std::int64_t P = in.profile_template->total_soft_tokens();
  const std::int64_t d = in.model->hidden_size();
  const bool joint = o.mode == EmMode::joint;

  torch::Tensor z = initial_vectors(o, U, P, d, 1);
  RowAdam adam;
  adam.reset(z);
  std::vector<ResidualCodebook> codebooks;
  bool codebooks_ready = false;
  if (uses_codebooks(o)) {
    for (const auto& spec : attributes)
      codebooks.emplace_back(spec.soft_tokens * d, o.codes_for(spec.name), o.levels);
    if (joint) {
      for (std::size_t a = 0; a < codebooks.size(); ++a) codebooks[a].init_uniform(Rng::derive(o.seed, 200 + a).next_u64(), o.device);
      codebooks_ready = true;
    }
  }
  std::unique_ptr<torch::optim::AdamW> codebook_optimizer;
  auto make_codebook_optimizer = [&] {
    std::vector<torch::Tensor> params;
    for (auto& c : codebooks)
      for (auto& w : c.codewords()) params.push_back(w.requires_grad_(true));
    codebook_optimizer = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(o.joint_learning_rate).weight_decay(o.weight_decay));
  };
  if (joint && uses_codebooks(o)) make_codebook_optimizer();

  // Resume.
  const fs::path checkpoint = out / kCheckpointDir;
  int start_round = 0;
  std::size_t start_batch = 0;
  double clock_offset = 0;
  PassState carried;
  std::int64_t batches_done = 0;
  if (fs::exists(checkpoint / "state.json")) {
    nlohmann::json state;
    try {
      state = nlohmann::json::parse(read_file(checkpoint / "state.json"));
    } catch (const nlohmann::json::exception& e) {
      spdlog::warn("{}: unreadable checkpoint state ({}); starting over", checkpoint.string(), e.what());
    }
    if (!state.is_null() && state.value("fingerprint", "") != fingerprint) {
      spdlog::warn("{}: the checkpoint belongs to other inputs or options; starting over", checkpoint.string());
    } else if (!state.is_null()) {
      auto source = lm::open_safetensors(checkpoint / state.at("tensors").get<std::string>());
      z = source->load("z", torch::kFloat, o.device);
      adam.m = source->load("adam_m", torch::kFloat, o.device);
      adam.v = source->load("adam_v", torch::kFloat, o.device);
      adam.steps = source->load("adam_steps", torch::kFloat, o.device);
      codebooks_ready = state.at("codebooks_ready").get<bool>();
      if (codebooks_ready) {
        for (std::size_t a = 0; a < codebooks.size(); ++a)
          codebooks[a] = ResidualCodebook::from_source(*source, "codebook." + attributes[a].name, o.device);
        if (joint) {
          make_codebook_optimizer();
          torch::load(*codebook_optimizer, (checkpoint / state.at("optimizer").get<std::string>()).string());
        }
      }
      start_round = state.at("round").get<int>();
      start_batch = state.at("batch").get<std::size_t>();
      clock_offset = state.at("seconds").get<double>();
      carried.nll = state.at("pass_nll").get<double>();
      carried.tokens = state.at("pass_tokens").get<std::int64_t>();
      batches_done = state.at("batches_done").get<std::int64_t>();
      result.tokens = state.at("tokens").get<std::int64_t>();
      for (const auto& l : state.at("log"))
        result.log.push_back(RoundLog::from_json(l, attributes, (checkpoint / "state.json").string()));
      result.resumed = true;
      spdlog::info("resuming the fit from round {} batch {} ({})", start_round + 1, start_batch, checkpoint.string());
    }
  }
  // log.jsonl is rewritten from the rounds' records, which the checkpoint carries in full.
  // Ranks other than 0 read the same run directory above (reuse, resume) and write nothing; none may
  // write before all have read.
  world.barrier();
  auto write_log = [&] {
    if (!writer) return;
    std::string text;
    for (const auto& r : result.log) text += r.to_json(attributes).dump() + "\n";
    write_file_atomic(out / "log.jsonl", text);
  };

  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return clock_offset + std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  auto last_checkpoint = std::chrono::steady_clock::now();
  auto save_checkpoint = [&](int round, std::size_t batch, const PassState& pass) {
    if (!writer) return;
    fs::create_directories(checkpoint);
    const std::string tensors_name = fmt::format("state-{}-{}.safetensors", round, batch);
    std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"z", z.detach().cpu()},
                                                                  {"adam_m", adam.m.cpu()},
                                                                  {"adam_v", adam.v.cpu()},
                                                                  {"adam_steps", adam.steps.cpu()}};
    if (codebooks_ready)
      for (std::size_t a = 0; a < codebooks.size(); ++a) codebooks[a].save(tensors, "codebook." + attributes[a].name);
    lm::write_safetensors(checkpoint / tensors_name, tensors);
    std::string optimizer_name;
    if (codebook_optimizer && codebooks_ready) {
      optimizer_name = fmt::format("optimizer-{}-{}.pt", round, batch);
      torch::save(*codebook_optimizer, (checkpoint / (optimizer_name + ".next")).string());
      fs::rename(checkpoint / (optimizer_name + ".next"), checkpoint / optimizer_name);
    }
    nlohmann::json log = nlohmann::json::array();
    for (const auto& r : result.log) log.push_back(r.to_json(attributes));
    write_file_atomic(checkpoint / "state.json", nlohmann::json{{"fingerprint", fingerprint},
                                                                {"round", round},
                                                                {"batch", batch},
                                                                {"seconds", elapsed()},
                                                                {"pass_nll", pass.nll},
                                                                {"pass_tokens", pass.tokens},
                                                                {"batches_done", batches_done},
                                                                {"tokens", result.tokens},
                                                                {"codebooks_ready", codebooks_ready},
                                                                {"tensors", tensors_name},
                                                                {"optimizer", optimizer_name},
                                                                {"log", log}}
                                                     .dump(2));
    // Only now, with state.json naming the new files, are older ones removed.
    for (const auto& entry : fs::directory_iterator(checkpoint)) {
      const std::string file = entry.path().filename().string();
      if ((file.rfind("state-", 0) == 0 && file != tensors_name) ||
          (file.rfind("optimizer-", 0) == 0 && file != optimizer_name))
        fs::remove(entry.path());
    }
    last_checkpoint = std::chrono::steady_clock::now();
  };

  const auto valid = in.dataset->view({data::SplitPart::valid});
  const auto eval_samples = engine.evaluation_samples(valid, o.max_eval_users);

  const int total_rounds = o.rounds + o.refine_rounds;
  ProgressBar progress(fmt::format("profile fit ({})", to_string(o.mode)),
                       static_cast<std::uint64_t>(total_rounds) * static_cast<std::uint64_t>(U), "users");
  if (!o.show_progress || !writer) progress.disable();
  progress.set(static_cast<std::uint64_t>(start_round) * static_cast<std::uint64_t>(U));

  const bool has_init = std::any_of(attributes.begin(), attributes.end(), [](const auto& a) { return !a.init.empty(); });
  if (!result.resumed && !joint && o.ablation != ProfileAblation::random && (o.population_steps > 0 || has_init)) {
    // Everyone starts from the population's profile, with a tenth of the usual noise to break ties.
    auto shared = initial_soft_tokens(in, initial_vectors(o, 1, P, d, 2)[0]).unsqueeze(0);
    if (o.population_steps > 0) shared = population_profile(engine, o, shared, &progress);
    z = shared.expand({U, P, d}) + 0.1 * z;
  }
  const std::string frozen_before = model_fingerprint;
  const auto loop_started = std::chrono::steady_clock::now();
  const std::int64_t tokens_before_loop = result.tokens;
  bool interrupted = false;
  const bool fit_vectors = o.ablation != ProfileAblation::random;
  // The users whose codes and samples the refinement rounds work on (all unless --refine-users);
  // the final pass then gives every user its codes.
  std::vector<std::int64_t> refine_rows;
  if (o.refine_rounds > 0 && o.refine_users > 0 && o.refine_users < U) {
    std::vector<std::int64_t> all(static_cast<std::size_t>(U));
    std::iota(all.begin(), all.end(), std::int64_t{0});
    Rng rng = Rng::derive(o.seed, 4000);
    rng.shuffle(all);
    refine_rows.assign(all.begin(), all.begin() + o.refine_users);
    std::sort(refine_rows.begin(), refine_rows.end());
  }
  const auto refine_count = refine_rows.empty() ? U : static_cast<std::int64_t>(refine_rows.size());
  for (int round = start_round; round < total_rounds && !interrupted; ++round) {
    const bool refining = round >= o.rounds;
    const double lambda = joint ? 0.0 : lambda_for_round(o, std::min(round, o.rounds - 1));
    PassState pass = round == start_round ? carried : PassState{};
    std::vector<std::vector<double>> round_margins;
    std::vector<RoundLog::CodeMove> round_moves;
    if (refining) {
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
      std::vector<RedundantCode> dissolve(codebooks.size());
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
          result.tokens += p.labels * candidates;
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
          round_margins.push_back(mean_per_code(column, margin, codebooks[a].codes()));
          if (moves_allowed) dissolve[a] = redundant_code(column, margin, codebooks[a].codes(), o.merge_margin_ratio);
        }
        if (std::any_of(dissolve.begin(), dissolve.end(), [](const RedundantCode& r) { return r.code >= 0; }))
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
        pass.nll += nll_rows.detach().sum().item<double>();
        pass.tokens += p.labels;
        result.tokens += p.labels;
        ++batches_done;
        batch_progress(b, fit_codewords_to_em_codes ? 0.0 : 1.0);
        progress.set_metric(fmt::format("nll {:.3f}", pass.nll / std::max<std::int64_t>(pass.tokens, 1)));
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
        round_moves.push_back(move);
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
    } else if (fit_vectors) {
      auto r = joint ? engine.window_samples(static_cast<std::uint64_t>(round), o.joint_batch)
                     : engine.user_samples(static_cast<std::uint64_t>(round));
      std::size_t first = round == start_round ? start_batch : 0;
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
            if (codebooks_ready) {
              for (std::size_t a = 0; a < codebooks.size(); ++a) {
                auto x = engine.attribute_view(z_local, a).detach();
                auto target = codebooks[a].reconstruct(codebooks[a].assign(x));
                loss = loss + o.codebook_loss_weight * (x - target).pow(2).mean();
              }
              codebook_optimizer->zero_grad();
            }
          } else {
            // Each user's objective: its mean NLL per label token, plus the prior. Summed over users,
            // so every user's gradient is its own.
            loss = (nll_rows * p.row_weight).sum();
            if (lambda > 0 && codebooks_ready) loss = loss + lambda * engine.prior_distance(z_local, codebooks).sum();
          }
          loss.backward();
          {
            torch::NoGradGuard no_grad;
            adam.step(z, p.user_rows, z_local.grad(), joint ? o.joint_learning_rate : o.learning_rate,
                      joint ? o.weight_decay : 0.0);
            if (joint && codebooks_ready) codebook_optimizer->step();
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
          pass.nll += outcome.nll;
          pass.tokens += outcome.labels;
          result.tokens += outcome.labels * steps;
          ++batches_done;
        }
        // Users of the round done so far, in proportion to its batches.
        progress.set(static_cast<std::uint64_t>(round) * static_cast<std::uint64_t>(U) +
                     static_cast<std::uint64_t>(U) * end / r.batches.size());
        if (pass.tokens > 0) progress.set_metric(fmt::format("nll {:.3f}", pass.nll / pass.tokens));
        const bool stop = o.stop_after_batches > 0 && batches_done >= o.stop_after_batches;
        const bool due = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint).count() >=
                         o.checkpoint_seconds;
        if ((stop || due) && end < r.batches.size()) save_checkpoint(round, end, pass);
        if (stop && end < r.batches.size()) {
          interrupted = true;
          break;
        }
      }
      if (sharded)
        spdlog::info("round {}: {:.2f} s of the E-step in the collectives sharing its results across {} ranks", round + 1,
                     sharing_seconds, world.size());
      if (interrupted) break;
    }
    progress.set(static_cast<std::uint64_t>(round + 1) * static_cast<std::uint64_t>(U));

    // M-step (alternating; the joint mode trains its codewords by gradient).
    if (uses_codebooks(o)) {
      torch::NoGradGuard no_grad;
      if (!codebooks_ready) {
        for (std::size_t a = 0; a < codebooks.size(); ++a) {
          const auto seeding = codebooks[a].init_kmeanspp_best_of(
              engine.attribute_view(z, a), Rng::derive(o.seed, 300 + a).next_u64(), o.kmeans_restarts,
              o.mstep_iterations);
          if (o.kmeans_restarts > 1)
            spdlog::info("attribute '{}': k-means seeding {} of {} kept (quantization error {:.4g} after {} Lloyd "
                         "steps; the worst seeding {:.4g})",
                         attributes[a].name, seeding.kept + 1, o.kmeans_restarts, seeding.best_error,
                         o.mstep_iterations, seeding.worst_error);
        }
        codebooks_ready = true;
      }
      if (!joint && !refining) mstep(engine, z, codebooks, o.mstep_iterations);
    }

    RoundLog log;
    log.round = round + 1;
    log.lambda = lambda;
    log.refinement = refining;
    log.train_nll = pass.tokens > 0 ? pass.nll / static_cast<double>(pass.tokens) : 0.0;
    log.tokens = pass.tokens;
    if (!eval_samples.empty()) {
      auto [nll, tokens] = engine.total_nll(eval_samples, z);
      log.valid_nll = tokens > 0 ? nll / static_cast<double>(tokens) : -1.0;
    }
    if (codebooks_ready) fill_code_stats(log, engine, z.detach(), codebooks);
    log.code_margins = std::move(round_margins);
    log.moves = std::move(round_moves);
    log.seconds = elapsed();
    result.log.push_back(log);
    write_log();
    spdlog::info("round {}/{}{}: λ {:.3g}, train NLL/token {:.4f}, valid {:.4f}{}", round + 1, total_rounds,
                 refining ? " (refinement by likelihood)" : "", lambda,
                 log.train_nll, log.valid_nll,
                 log.quantization_error.empty() ? std::string()
                                                : fmt::format(", quantization error {:.4g}", log.quantization_error[0]));
    // After the last round too when the final codes by likelihood follow: they take minutes.
    if (round + 1 < total_rounds || o.final_codes_by_likelihood()) save_checkpoint(round + 1, 0, PassState{});
    if (o.stop_after_batches > 0 && batches_done >= o.stop_after_batches && round + 1 < total_rounds) interrupted = true;
  }
  progress.finish();
  result.interrupted = interrupted;
  result.seconds = elapsed();
  USERIP_CHECK(in.model->fingerprint() == frozen_before,
               "internal error: the LM's weights changed during the fit (frozen-parameter guard)");
  if (interrupted) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_started).count();
    const auto tokens = result.tokens - tokens_before_loop;
    spdlog::info("stopped as asked after {} batches ({} label tokens through the LM in {:.1f} s since the first batch: "
                 "{:.0f} tokens/s); a rerun resumes from {}",
                 batches_done, tokens, seconds, seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0,
                 checkpoint.string());
    return result;
  }

  // Outputs.
  Profiles& profiles = result.profiles;
  profiles.users = users;
  for (auto u : users) profiles.user_ids.push_back(in.dataset->user_ids[u]);
  profiles.attributes = attributes;
  for (std::size_t a = 0; a < attributes.size(); ++a) profiles.attribute_offset.push_back(in.profile_template->soft_offset(a));
  {
    torch::NoGradGuard no_grad;
    for (auto& c : codebooks)
      for (auto& w : c.codewords()) w = w.detach().requires_grad_(false);
  }
  if (o.ablation == ProfileAblation::mean) z = z.mean(0, true).expand({U, P, d}).contiguous();
  profiles.vectors = z.detach().cpu();
  if (uses_codebooks(o)) {
    for (const auto& c : codebooks) profiles.codebooks.push_back(codebook_on(c, torch::kCPU));
    profiles.codes = assign_all(engine, profiles.vectors, profiles.codebooks);
    if (o.final_codes_by_likelihood()) {
      // The fold-in's rule (infer.cpp): from the population's codes, two sweeps over every user's whole history.
      torch::NoGradGuard no_grad;
      const auto start = assign_all(engine, z.mean(0, true), codebooks).select(2, 0).to(o.device);
      ProgressBar final_codes("profile fit: codes by likelihood", static_cast<std::uint64_t>(U), "users");
      if (!o.show_progress || !writer) final_codes.disable();
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
  result.evaluation = evaluate_profiles(in, profiles, o, train, valid);
  record["evaluation"] = result.evaluation.to_json();
  record["seconds"] = result.seconds;
  record["tokens"] = result.tokens;
  record["resumed"] = result.resumed;
  if (writer) {
    save_profiles(profiles, out, record);
    write_file_atomic(out / "evaluation.json", result.evaluation.to_json().dump(2));
    fs::remove_all(checkpoint);
  }
  return result;
}

}  // namespace userip::profile
