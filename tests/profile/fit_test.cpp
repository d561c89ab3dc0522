// The profile-fitting machinery end to end on a small synthetic world, through a tiny LM pretrained
// here on the world's own training text (the same code path as the default LM). What the profiles
// are worth (ground-truth recovery, held-out NLL against controls) needs the full-size world and the
// default LM: docs/RESULTS.md. Here:
// 1. outputs round-trip through load_fit, and a rerun reuses them; the frozen LM is untouched;
// 2. an interrupted fit resumes to the same codes as an uninterrupted one;
// 3. refinement rounds leave profiles on their codewords, and fold-in after them takes the likeliest
//    codes; fold-in gives codes to cold users; the joint mode and the ablations run; explanations cover
//    every code and its members; bad options are rejected.
#include "userip/profile/fit.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>

#include <csignal>
#include <ATen/Parallel.h>
#include <map>
#include <set>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>

#include "profile/fit_fixture.h"
#include "profile/profile_world.h"
#include "support/temp_dir.h"
#include "text/text_test_support.h"
#include "userip/data/split.h"
#include "userip/data/synth.h"
#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/lm/pretrain.h"
#include "userip/quantize/clustering.h"
#include "userip/profile/explain.h"
#include "userip/profile/recovery.h"
#include "userip/profile/session.h"
#include "userip/text/corpus.h"
#include "userip/util/fs.h"

namespace userip::profile {
namespace {

namespace fs = std::filesystem;
using userip::testing::TempDir;

using testing_fit::codeword_vectors;
using testing_fit::g_world;
using testing_fit::ProfileFit;


TEST_F(ProfileFit, OutputsRoundTripAndARerunReusesThem) {
  TempDir dir;
  auto options = small_options();
  options.rounds = 2;
  auto result = fit_profiles(g_world->inputs(), options, dir.path());
  for (const char* file : {"profile.json", "profiles.safetensors", "users.txt", "codes.csv", "log.jsonl", "evaluation.json"})
    EXPECT_TRUE(fs::exists(dir / file)) << file;
  EXPECT_FALSE(fs::exists(dir / "checkpoint"));
  auto saved = load_fit(dir.path(), g_world->dataset, *g_world->tmpl);
  EXPECT_TRUE(torch::equal(saved.profiles.vectors, result.profiles.vectors));
  EXPECT_TRUE(torch::equal(saved.profiles.codes, result.profiles.codes));
  EXPECT_EQ(saved.profiles.user_ids, result.profiles.user_ids);
  EXPECT_EQ(saved.record["seed"], 42);
  EXPECT_EQ(saved.record["model_fingerprint"], g_world->model->fingerprint());
  // codes.csv: a header and one line per user, codes as the tensor says.
  std::ifstream csv(dir / "codes.csv");
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header, "user,taste,background");
  std::size_t lines = 0;
  while (std::getline(csv, line)) {
    const auto i = static_cast<std::int64_t>(lines);
    EXPECT_EQ(line, fmt::format("{},{},{}", result.profiles.user_ids[lines], result.profiles.codes[i][0][0].item<std::int64_t>(),
                                result.profiles.codes[i][1][0].item<std::int64_t>()));
    ++lines;
  }
  EXPECT_EQ(lines, result.profiles.users.size());
  // Same inputs and options: reused, nothing refitted.
  const auto modified = fs::last_write_time(dir / "profiles.safetensors");
  auto again = fit_profiles(g_world->inputs(), options, dir.path());
  EXPECT_EQ(fs::last_write_time(dir / "profiles.safetensors"), modified);
  EXPECT_TRUE(torch::equal(again.profiles.codes, result.profiles.codes));
}

// The E-step runs `--threads` batches at a time (disjoint users, each batch single-threaded); how
// many run side by side must not change a bit of the fit.
TEST_F(ProfileFit, TheEStepsParallelBatchesGiveTheSameFitAsOneAtATime) {
  TempDir dir;
  auto options = small_options();
  options.rounds = 2;
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  auto one_at_a_time = fit_profiles(g_world->inputs(), options, dir / "one");
  at::set_num_threads(3);
  auto three_at_a_time = fit_profiles(g_world->inputs(), options, dir / "three");
  at::set_num_threads(saved);
  EXPECT_TRUE(torch::equal(one_at_a_time.profiles.vectors, three_at_a_time.profiles.vectors));
  EXPECT_TRUE(torch::equal(one_at_a_time.profiles.codes, three_at_a_time.profiles.codes));
  ASSERT_EQ(one_at_a_time.log.size(), three_at_a_time.log.size());
  for (std::size_t i = 0; i < one_at_a_time.log.size(); ++i) {
    EXPECT_EQ(one_at_a_time.log[i].train_nll, three_at_a_time.log[i].train_nll) << "round " << i + 1;
  }
}

TEST_F(ProfileFit, AnInterruptedFitResumesToTheSameCodes) {
  TempDir dir;  // one per test: TempDir names come from the test, so two would share a path
  const auto whole = dir / "whole", split = dir / "split";
  auto options = small_options();
  options.rounds = 3;
  options.checkpoint_seconds = 1e9;  // only the interruption writes one
  auto uninterrupted = fit_profiles(g_world->inputs(), options, whole);
  auto stopping = options;
  stopping.stop_after_batches = 5;  // inside round 1
  auto first = fit_profiles(g_world->inputs(), stopping, split);
  ASSERT_TRUE(first.interrupted);
  ASSERT_TRUE(fs::exists(split / "checkpoint" / "state.json"));
  stopping.stop_after_batches = 0;
  auto resumed = fit_profiles(g_world->inputs(), stopping, split);
  EXPECT_TRUE(resumed.resumed);
  ASSERT_EQ(resumed.profiles.users, uninterrupted.profiles.users);
  auto same = (resumed.profiles.codes == uninterrupted.profiles.codes).all(2).all(1).to(torch::kDouble).mean().item<double>();
  EXPECT_GE(same, 0.99);
  EXPECT_TRUE(torch::allclose(resumed.profiles.vectors, uninterrupted.profiles.vectors, 1e-5, 1e-6));
}

TEST_F(ProfileFit, FoldInGivesCodesToColdUsers) {
  TempDir dir;
  auto options = small_options();  // codes by distance: the E-step fold-in below is compared with them
  options.rounds = 3;
  auto fit = fit_profiles(g_world->inputs(), options, dir.path());
  auto history = g_world->dataset.view({data::SplitPart::cold_history});
  auto users = history.users();
  ASSERT_FALSE(users.empty());
  InferOptions io;
  io.show_progress = false;
  io.method = FoldInMethod::estep;
  auto cold = infer_profiles(g_world->inputs(), fit.profiles, options, history, users, io);
  ASSERT_TRUE(cold.has_codes());
  EXPECT_EQ(cold.codes.size(0), static_cast<std::int64_t>(users.size()));
  // By default (codebooks of one level) the new users' profiles are the codewords of codes chosen by likelihood.
  EXPECT_EQ(resolve_fold_in_method(fit.profiles, FoldInMethod::automatic), FoldInMethod::likelihood);
  EXPECT_EQ(resolve_fold_in_method(fit.profiles, FoldInMethod::estep), FoldInMethod::estep);
  InferOptions automatic;
  automatic.show_progress = false;
  auto by_likelihood = infer_profiles(g_world->inputs(), fit.profiles, options, history, users, automatic);
  for (std::size_t a = 0; a < by_likelihood.attributes.size(); ++a)
    EXPECT_TRUE(torch::allclose(by_likelihood.attribute_vectors(a), codeword_vectors(by_likelihood, by_likelihood.codes, a)))
        << by_likelihood.attributes[a].name;
  EXPECT_EQ(cold.codebook_fingerprint(), fit.profiles.codebook_fingerprint());
  // The likelihood pass reads histories in row batches: one row per batch (every history spread over
  // many batches) and three batches side by side give the same codes as the default limits.
  {
    auto one_row = options;
    one_row.max_batch_rows = 1;
    const int saved = at::get_num_threads();
    at::set_num_threads(3);
    const auto spread = infer_profiles(g_world->inputs(), fit.profiles, one_row, history, users, automatic);
    at::set_num_threads(saved);
    EXPECT_TRUE(torch::equal(spread.codes, by_likelihood.codes));
  }
  // Their held-out behaviour can be scored with the folded-in profiles.
  auto test = g_world->dataset.view({data::SplitPart::cold_test});
  auto e = evaluate_profiles(g_world->inputs(), cold, options, history, test);
  EXPECT_GT(e.tokens, 0);
  EXPECT_TRUE(std::isfinite(e.own));
  // Folded in from their own training histories, the fitted users mostly get their fitted codes back: fold-in
  // anneals the prior as the fit did, instead of holding every new user at the codeword nearest the mean profile.
  const auto training = g_world->dataset.training_view();
  auto again = infer_profiles(g_world->inputs(), fit.profiles, options, training, fit.profiles.users, io);
  for (std::int64_t a = 0; a < again.codes.size(1); ++a) {
    const auto fitted_codes = fit.profiles.codes.select(1, a).reshape({-1});
    const auto refolded = again.codes.select(1, a).reshape({-1});
    const double agreement = (fitted_codes == refolded).to(torch::kDouble).mean().item<double>();
    const double commonest = torch::bincount(fitted_codes).max().item<double>() /
                             static_cast<double>(fitted_codes.numel());
    EXPECT_GT(agreement, commonest) << "attribute " << a;
  }
  // A user with no history cannot be folded in.
  auto train_user = training.users().front();
  testing::expect_error([&] { infer_profiles(g_world->inputs(), fit.profiles, options, history, {train_user}, io); },
                        {"no history"});
}

TEST_F(ProfileFit, CodesByLikelihoodAreTheCodesFoldInGivesTheFittedUsers) {
  TempDir dir;
  auto options = small_options();
  options.rounds = 1;
  options.codes_by = CodesBy::automatic;
  ASSERT_TRUE(options.final_codes_by_likelihood());  // the default for one level, alternating
  auto fit = fit_profiles(g_world->inputs(), options, dir.path());
  ASSERT_TRUE(fit.profiles.has_codes());
  ASSERT_EQ(fit.profiles.likelihood_start_codes.size(), fit.profiles.codebooks.size());
  for (std::size_t a = 0; a < fit.profiles.attributes.size(); ++a)
    EXPECT_TRUE(torch::allclose(fit.profiles.attribute_vectors(a), codeword_vectors(fit.profiles, fit.profiles.codes, a)))
        << fit.profiles.attributes[a].name;
  // The start codes travel with the fit, and a fold-in of the fitted users from their training rows gives
  // them exactly their codes: one rule for warm and cold users.
  const auto saved = load_fit(dir.path(), g_world->dataset, *g_world->tmpl);
  EXPECT_EQ(saved.profiles.likelihood_start_codes, fit.profiles.likelihood_start_codes);
  EXPECT_TRUE(saved.options.final_codes_by_likelihood());
  EXPECT_EQ(saved.options.likelihood_interactions, options.likelihood_interactions);
  InferOptions io;
  io.show_progress = false;
  const std::vector<std::uint32_t> some(fit.profiles.users.begin(), fit.profiles.users.begin() + 8);
  const auto again =
      infer_profiles(g_world->inputs(), saved.profiles, saved.options, g_world->dataset.training_view(), some, io);
  EXPECT_TRUE(torch::equal(again.codes, fit.profiles.codes.narrow(0, 0, 8)));
  // Codes by distance are another fit (another fingerprint), and leave the profiles off the codewords.
  auto by_distance = options;
  by_distance.codes_by = CodesBy::distance;
  EXPECT_FALSE(by_distance.final_codes_by_likelihood());
  // Two levels: distance, unless likelihood is asked for, which is then an error.
  auto two_levels = options;
  two_levels.levels = 2;
  EXPECT_FALSE(two_levels.final_codes_by_likelihood());
  two_levels.codes_by = CodesBy::likelihood;
  testing::expect_error([&] { two_levels.validate(); }, {"--codes-by likelihood", "one codebook level"});
  EXPECT_NE(by_distance.to_json().dump(), options.to_json().dump());
}

// Σ NLL of one user's rows in `view` with the given codes [1, A, 1] as profile.
double user_nll(const Profiles& fitted, const FitOptions& options, const data::SplitView& view, std::uint32_t user,
                const torch::Tensor& codes) {
  Profiles one;
  one.users = {user};
  one.user_ids = {g_world->dataset.user_ids[user]};
  one.attributes = fitted.attributes;
  one.attribute_offset = fitted.attribute_offset;
  one.codebooks = fitted.codebooks;
  std::vector<torch::Tensor> parts;
  for (std::size_t a = 0; a < fitted.attributes.size(); ++a)
    parts.push_back(codeword_vectors(fitted, codes, a).view({1, fitted.attributes[a].soft_tokens, -1}));
  one.vectors = torch::cat(parts, 1);
  auto e = evaluate_profiles(g_world->inputs(), one, options, view, view);
  return e.own * static_cast<double>(e.tokens);
}

TEST_F(ProfileFit, RefinementLeavesProfilesOnTheirCodewordsAndFoldInTakesTheLikeliestCodes) {
  TempDir dir;
  auto options = small_options();
  options.rounds = 1;
  options.refine_rounds = 2;
  auto fit = fit_profiles(g_world->inputs(), options, dir.path());
  ASSERT_EQ(fit.log.size(), 3u);
  EXPECT_FALSE(fit.log[0].refinement);
  EXPECT_TRUE(fit.log[1].refinement);
  EXPECT_TRUE(fit.log[2].refinement);
  ASSERT_TRUE(fit.profiles.has_codes());
  for (std::size_t a = 0; a < fit.profiles.attributes.size(); ++a) {
    EXPECT_TRUE(torch::allclose(fit.profiles.attribute_vectors(a), codeword_vectors(fit.profiles, fit.profiles.codes, a)))
        << fit.profiles.attributes[a].name;
  }
  // The options are part of the saved fit: a fold-in of this fit knows to assign by likelihood.
  EXPECT_EQ(load_fit(dir.path(), g_world->dataset, *g_world->tmpl).options.refine_rounds, 2);

  auto history = g_world->dataset.view({data::SplitPart::cold_history});
  auto users = history.users();
  users.resize(std::min<std::size_t>(users.size(), 4));
  InferOptions io;
  io.show_progress = false;
  auto cold = infer_profiles(g_world->inputs(), fit.profiles, options, history, users, io);
  ASSERT_TRUE(cold.has_codes());
  ASSERT_EQ(cold.codes.sizes(), (torch::IntArrayRef{static_cast<std::int64_t>(users.size()), 2, 1}));
  // The last sweep's attribute (background) is the best code given the user's taste code: every
  // other background code gives the user's history a likelihood no higher.
  for (std::size_t i = 0; i < users.size(); ++i) {
    auto chosen = cold.codes.narrow(0, static_cast<std::int64_t>(i), 1).clone();
    const double best = user_nll(fit.profiles, options, history, users[i], chosen);
    for (std::int64_t k = 0; k < fit.profiles.codebooks[1].codes(); ++k) {
      auto other = chosen.clone();
      other[0][1][0] = k;
      EXPECT_GE(user_nll(fit.profiles, options, history, users[i], other), best - 1e-3 * std::abs(best))
          << "user " << i << " background code " << k;
    }
    auto background = cold.vectors.narrow(0, static_cast<std::int64_t>(i), 1)
                          .narrow(1, cold.attribute_offset[1], cold.attributes[1].soft_tokens)
                          .reshape({1, -1});
    EXPECT_TRUE(torch::allclose(background, codeword_vectors(fit.profiles, chosen, 1)));
  }
}

// The move of split_and_merge_options, in round 3 (fit_slow_test.cpp stops the same fit at every round).
TEST_F(ProfileFit, SplitAndMergeMovesAreLoggedWithTheirMargins) {
  TempDir dir;
  const auto options = split_and_merge_options();
  const auto whole = fit_profiles(g_world->inputs(), options, dir / "whole");
  ASSERT_EQ(whole.log.size(), 5u);
  for (std::size_t r : {0u, 1u, 3u, 4u}) EXPECT_TRUE(whole.log[r].moves.empty()) << "round " << r + 1;
  // Rounds with a likelihood E-step report each code's margin; the first refinement round has none.
  EXPECT_TRUE(whole.log[1].code_margins.empty());
  ASSERT_EQ(whole.log[2].code_margins.size(), 2u);
  ASSERT_EQ(whole.log[2].moves.size(), 2u);
  for (const auto& move : whole.log[2].moves) {
    const auto K = whole.profiles.codebooks[move.attribute].codes();
    EXPECT_GE(move.dissolved, 0);
    EXPECT_LT(move.dissolved, K);
    EXPECT_LT(move.margin_ratio, 1.0);
    // The dissolved code had the lowest mean margin, and the ratio is its margin over the median code's.
    std::vector<double> named;
    for (double m : whole.log[2].code_margins[move.attribute])
      if (!std::isnan(m)) named.push_back(m);
    ASSERT_GE(named.size(), 3u);
    std::sort(named.begin(), named.end());
    const double median = named.size() % 2 ? named[named.size() / 2]
                                           : 0.5 * (named[named.size() / 2 - 1] + named[named.size() / 2]);
    const double dissolved_margin = whole.log[2].code_margins[move.attribute][static_cast<std::size_t>(move.dissolved)];
    EXPECT_DOUBLE_EQ(dissolved_margin, named.front());
    EXPECT_NEAR(move.margin_ratio, dissolved_margin / median, 1e-9);
    ASSERT_GE(move.split, 0);
    EXPECT_NE(move.split, move.dissolved);
    EXPECT_GE(move.split_members, 2);
    EXPECT_LE(move.moved, move.split_members);
  }
  std::ifstream log(dir / "whole" / "log.jsonl");
  std::string line;
  std::vector<nlohmann::json> records;
  while (std::getline(log, line)) records.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(records.size(), 5u);
  EXPECT_EQ(records[2]["split_merge"].size(), 2u);
  EXPECT_EQ(records[2]["attributes"]["taste"]["code_margins"].size(), 4u);
  EXPECT_FALSE(records[3].contains("split_merge"));
  for (std::size_t a = 0; a < whole.profiles.attributes.size(); ++a)
    EXPECT_TRUE(
        torch::allclose(whole.profiles.attribute_vectors(a), codeword_vectors(whole.profiles, whole.profiles.codes, a)));
}

TEST_F(ProfileFit, InitTextsStartTheSoftTokensFromTheirTokenEmbeddings) {
  const auto& shipped = *g_world->tmpl;  // templates/synthetic.json: both attributes have an init text
  const std::int64_t P = shipped.total_soft_tokens(), d = g_world->model->config().hidden_size;
  const auto otherwise = torch::full({P, d}, 7.0f);
  // Attribute 0 keeps its init text, attribute 1 loses it.
  nlohmann::json record = {{"template", shipped.to_json()}};
  record["template"]["attributes"][1].erase("init");
  const auto partial = recorded_template(record, g_world->dataset, "partial");
  for (const ProfileTemplate* t : {&shipped, &partial}) {
    auto in = g_world->inputs();
    in.profile_template = t;
    const auto start = initial_soft_tokens(in, otherwise);
    ASSERT_EQ(start.sizes(), otherwise.sizes());
    std::int64_t row = 0;
    for (const auto& a : t->attributes()) {
      const auto ids = g_world->tokenizer->encode(a.init);
      for (int i = 0; i < a.soft_tokens; ++i, ++row) {
        // Cycled through the text's tokens; the rows of an attribute without a text are the fallback's.
        const auto expected = a.init.empty() ? otherwise[row]
                                             : g_world->model->embed(torch::tensor({static_cast<std::int64_t>(
                                                   ids[static_cast<std::size_t>(i) % ids.size()])}))[0];
        EXPECT_TRUE(torch::equal(start[row], expected.to(torch::kFloat))) << a.name << " soft token " << i;
      }
    }
  }
  testing::expect_error([&] { initial_soft_tokens(g_world->inputs(), torch::zeros({P + 1, d})); },
                        {"initial soft tokens", "expected ["});
}

TEST_F(ProfileFit, JointModeAndAblationsRun) {
  TempDir dir;
  const auto joint_dir = dir / "joint", dense_dir = dir / "dense", mean_dir = dir / "mean", random_dir = dir / "random";
  auto options = small_options();
  options.rounds = 2;
  auto joint = options;
  joint.mode = EmMode::joint;
  auto j = fit_profiles(g_world->inputs(), joint, joint_dir);
  ASSERT_TRUE(j.profiles.has_codes());
  auto dense = options;
  dense.ablation = ProfileAblation::no_codebook;
  auto d = fit_profiles(g_world->inputs(), dense, dense_dir);
  EXPECT_FALSE(d.profiles.has_codes());
  EXPECT_FALSE(fs::exists(dense_dir / "codes.csv"));
  auto mean = options;
  mean.ablation = ProfileAblation::mean;
  auto m = fit_profiles(g_world->inputs(), mean, mean_dir);
  EXPECT_EQ(std::get<0>(at::_unique(m.profiles.codes.select(1, 0))).numel(), 1);
  auto random = options;
  random.ablation = ProfileAblation::random;
  auto r = fit_profiles(g_world->inputs(), random, random_dir);
  EXPECT_EQ(r.tokens, 0);  // nothing was fitted
  ASSERT_TRUE(r.profiles.has_codes());
}

TEST_F(ProfileFit, ExplanationsCoverEveryCodeAndItsMembers) {
  TempDir dir;
  auto options = small_options();
  options.rounds = 2;
  auto fit = fit_profiles(g_world->inputs(), options, dir.path());
  ExplainOptions eo;
  eo.max_new_tokens = 6;
  auto train = g_world->dataset.training_view();
  auto codes = explain_codes(g_world->inputs(), fit.profiles, train, eo);
  ASSERT_EQ(codes.size(), 4u + 3u);
  std::int64_t taste_members = 0;
  std::map<std::string, std::set<std::string>> continuations, notes;
  for (const auto& c : codes) {
    if (c.attribute == "taste") taste_members += c.members.users;
    // Either the code's own continuation, or a note quoting the one every code of the attribute shares.
    EXPECT_NE(c.continuation.empty(), c.continuation_note.empty()) << c.to_json().dump();
    if (!c.continuation.empty()) continuations[c.attribute].insert(c.continuation);
    if (!c.continuation_note.empty()) notes[c.attribute].insert(c.continuation_note);
    if (c.members.users > 0) {
      EXPECT_FALSE(c.members.top_categories.empty());
    }
    for (const auto& item : c.members.typical_items) {
      EXPECT_FALSE(item.name.empty());
      EXPECT_GE(item.share, 0.1);
      EXPECT_GT(item.lift, 0);
    }
  }
  for (const auto& [attribute, texts] : continuations) EXPECT_GT(texts.size(), 1u) << attribute;  // they differ
  for (const auto& [attribute, texts] : notes) {
    EXPECT_EQ(texts.size(), 1u) << attribute;
    EXPECT_EQ(continuations.count(attribute), 0u) << attribute;  // never a mix
  }
  EXPECT_EQ(taste_members, static_cast<std::int64_t>(fit.profiles.users.size()));
  auto user = explain_user(g_world->inputs(), fit.profiles, train, fit.profiles.user_ids.front(), eo);
  EXPECT_EQ(user.fields, (std::vector<std::string>{"taste", "background"}));
  EXPECT_EQ(user.continuations.size(), 2u);
  testing::expect_error([&] { explain_user(g_world->inputs(), fit.profiles, train, "nobody", eo); }, {"nobody"});
}

TEST_F(ProfileFit, RecoveryReportsNmiOfCodesAndOfTheControl) {
  // Codes that are the latent classes themselves: NMI 1 with their own class.
  Profiles p;
  auto train = g_world->dataset.training_view();
  p.users = train.users();
  p.attributes = g_world->tmpl->attributes();
  auto codes = torch::zeros({static_cast<std::int64_t>(p.users.size()), 2, 1}, torch::kLong);
  for (std::size_t i = 0; i < p.users.size(); ++i) {
    codes[static_cast<std::int64_t>(i)][0][0] = g_world->truth.taste[p.users[i]];
    codes[static_cast<std::int64_t>(i)][1][0] = g_world->truth.background[p.users[i]];
  }
  p.codes = codes;
  auto r = ground_truth_recovery(p, g_world->truth, train, "categories", 1);
  EXPECT_DOUBLE_EQ(r.taste_nmi[0], 1.0);
  EXPECT_DOUBLE_EQ(r.background_nmi[1], 1.0);
  EXPECT_LT(r.taste_nmi[1], 0.5);
  // The control sees the categories users chose: far above chance for taste in this world.
  EXPECT_GT(r.control_taste_nmi, 0.5);
  EXPECT_EQ(r.to_json()["codes"]["taste"]["taste_nmi"], 1.0);
  // The tables count users per (code, class): codes that are the classes fill a diagonal.
  const auto on_diagonal = [](const std::vector<std::vector<std::int64_t>>& table) {
    std::int64_t diagonal = 0, total = 0;
    for (std::size_t code = 0; code < table.size(); ++code)
      for (std::size_t c = 0; c < table[code].size(); ++c) {
        total += table[code][c];
        if (code == c) diagonal += table[code][c];
      }
    return std::make_pair(diagonal, total);
  };
  EXPECT_EQ(on_diagonal(r.taste_table[0]), std::make_pair(static_cast<std::int64_t>(p.users.size()),
                                                          static_cast<std::int64_t>(p.users.size())));
  EXPECT_EQ(on_diagonal(r.background_table[1]), std::make_pair(static_cast<std::int64_t>(p.users.size()),
                                                               static_cast<std::int64_t>(p.users.size())));
  EXPECT_LT(on_diagonal(r.background_table[0]).first, static_cast<std::int64_t>(p.users.size()));
  EXPECT_EQ(r.to_json()["codes"]["background"]["users_by_code_and_background"], r.background_table[1]);
}

TEST_F(ProfileFit, CommandLineFitInferExplainAndBank) {
  TempDir dir;
  const auto data_dir = dir / "data", out = dir / "fit", cold = dir / "cold";
  data::save_synthetic({g_world->dataset, g_world->truth}, data_dir);
  const std::string common = " --dataset " + data_dir.string() + " --model " + g_world->lm_dir.string();
  std::string output;
  ASSERT_EQ(testing::run_cli("profile fit" + common + " --out " + out.string() +
                                 " --codes 4 --attribute-codes background=3 --rounds 2 --samples-per-user 1"
                                 " --population-steps 2 --eval-users 10",
                             &output),
            0)
      << output;
  EXPECT_NE(output.find("validation NLL per token"), std::string::npos) << output;
  EXPECT_NE(output.find("feature bank"), std::string::npos) << output;
  ASSERT_TRUE(fs::exists(out / "bank.sqlite"));
  // The sample shape follows the LM's pretraining documents (one sentence each) unless given.
  EXPECT_EQ(nlohmann::json::parse(read_file(out / "profile.json"))["options"]["max_interactions"], 1);
  // The bank holds what codes.csv says.
  std::ifstream csv(out / "codes.csv");
  std::string header, first;
  std::getline(csv, header);
  std::getline(csv, first);
  const std::string user = first.substr(0, first.find(','));
  ASSERT_EQ(testing::run_cli("bank get " + (out / "bank.sqlite").string() + " " + user, &output), 0) << output;
  const auto codes = nlohmann::json::parse(output)["codes"];
  EXPECT_EQ(fmt::format("{},{},{}", user, codes["taste"].get<int>(), codes["background"].get<int>()), first);

  ASSERT_EQ(testing::run_cli("profile infer --profile " + out.string() + " --out " + cold.string() + " --rounds 1", &output),
            0)
      << output;
  EXPECT_TRUE(fs::exists(cold / "codes.csv"));
  ASSERT_EQ(testing::run_cli("profile explain --profile " + out.string() + " --json --max-new-tokens 3", &output), 0)
      << output;
  EXPECT_NE(output.find("\"attribute\":\"background\""), std::string::npos) << output;
  ASSERT_EQ(testing::run_cli("profile explain --profile " + out.string() + " --user " + user, &output), 0) << output;
  EXPECT_NE(output.find("user " + user), std::string::npos) << output;
  ASSERT_EQ(testing::run_cli("profile recovery --profile " + out.string(), &output), 0) << output;
  EXPECT_NE(output.find("control"), std::string::npos) << output;

  // Bad input: a clear error and a non-zero exit.
  EXPECT_NE(testing::run_cli("profile fit" + common + " --out " + (dir / "x").string() + " --mode sideways", &output), 0);
  EXPECT_NE(output.find("--mode: unknown EM mode 'sideways'"), std::string::npos) << output;
  const auto bad = dir.write("bad.json", "{\"attributes\": [{\"name\": \"taste\", \"evidence\": \"Likes {nope}\"}],\n"
                                          " \"behaviour\": \"Chose {title}.\"}");
  EXPECT_EQ(testing::run_cli("profile fit" + common + " --out " + (dir / "y").string() + " --template " + bad.string(),
                             &output),
            1);
  EXPECT_NE(output.find("bad.json"), std::string::npos) << output;
  EXPECT_NE(output.find("nope"), std::string::npos) << output;
  EXPECT_EQ(testing::run_cli("profile explain --profile " + out.string() + " --user nobody", &output), 1);
  EXPECT_NE(output.find("'nobody'"), std::string::npos) << output;
}

// The real thing the checkpoint is for: `profile fit` killed with SIGKILL part-way, then run again
// with the same command, ends with the codes of an uninterrupted run.
TEST_F(ProfileFit, CommandLineFitKilledWithSigkillResumesToTheSameCodes) {
  TempDir dir;
  const auto data_dir = dir / "data";
  data::save_synthetic({g_world->dataset, g_world->truth}, data_dir);
  const std::string args = "--threads 1 profile fit --dataset " + data_dir.string() + " --model " +
                           g_world->lm_dir.string() +
                           " --codes 4 --attribute-codes background=3 --rounds 3 --samples-per-user 2"
                           " --population-steps 2 --eval-users 10 --no-bank --checkpoint-seconds 0 --out ";
  std::string output;
  ASSERT_EQ(testing::run_cli(args + (dir / "whole").string(), &output), 0) << output;

  const auto killed = dir / "killed";
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string command = std::string(USERIP_CLI) + " " + args + killed.string() + " >/dev/null 2>&1";
    ::execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Kill it as soon as a checkpoint from inside the first round exists.
  bool checkpointed = false;
  for (int i = 0; i < 6000 && !checkpointed; ++i) {
    checkpointed = fs::exists(killed / "checkpoint" / "state.json");
    if (!checkpointed) ::usleep(10000);
  }
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(checkpointed) << "no checkpoint appeared within a minute";
  ASSERT_TRUE(WIFSIGNALED(status)) << "the fit ended before it could be killed";
  EXPECT_FALSE(fs::exists(killed / "codes.csv"));

  ASSERT_EQ(testing::run_cli(args + killed.string(), &output), 0) << output;
  EXPECT_NE(output.find("resum"), std::string::npos) << output;
  auto codes = [](const fs::path& file) {
    std::ifstream in(file);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  };
  const auto a = codes(dir / "whole" / "codes.csv"), b = codes(killed / "codes.csv");
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 1u);
  std::size_t same = 0;
  for (std::size_t i = 1; i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_GE(static_cast<double>(same) / static_cast<double>(a.size() - 1), 0.99);
}

TEST_F(ProfileFit, BadOptionsAreRejected) {
  TempDir dir;
  auto o = small_options();
  o.codes = 0;
  testing::expect_error([&] { fit_profiles(g_world->inputs(), o, dir.path()); }, {"--codes"});
  o = small_options();
  o.lambda_end = 0.01;
  testing::expect_error([&] { fit_profiles(g_world->inputs(), o, dir.path()); }, {"--lambda-start"});
  o = small_options();
  o.samples.max_tokens = 4;
  testing::expect_error([&] { fit_profiles(g_world->inputs(), o, dir.path()); }, {"--max-tokens"});
  o = small_options();
  o.refine_rounds = 2;
  o.levels = 2;
  testing::expect_error([&] { fit_profiles(g_world->inputs(), o, dir.path()); }, {"--refine-rounds", "--levels 1"});
  o = small_options();
  o.refine_steps = -1;
  testing::expect_error([&] { fit_profiles(g_world->inputs(), o, dir.path()); }, {"--refine-steps"});
  o = small_options();
  o.refine_users = -1;
  testing::expect_error([&] { fit_profiles(g_world->inputs(), o, dir.path()); }, {"--refine-users"});
  o = small_options();
  o.refine_rounds = 2;
  o.merge_margin_ratio = 1.5;
  testing::expect_error([&] { fit_profiles(g_world->inputs(), o, dir.path()); }, {"--merge-margin-ratio", "1.5"});
  o.refine_rounds = 0;
  o.merge_margin_ratio = 0.5;
  testing::expect_error([&] { fit_profiles(g_world->inputs(), o, dir.path()); }, {"--merge-margin-ratio", "--refine-rounds"});
}

}  // namespace
}  // namespace userip::profile
