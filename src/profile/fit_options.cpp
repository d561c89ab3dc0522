// FitOptions: names of its enums, validation, JSON out and in; the round log and NLL comparison as JSON.
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
#include "userip/util/option_table.h"
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
constexpr EnumName<EmMode> kEmModeNames[] = {{EmMode::alternating, "alternating"}, {EmMode::joint, "joint"}};
constexpr EnumName<ProfileAblation> kAblationNames[] = {{ProfileAblation::none, "none"},
                                                        {ProfileAblation::no_codebook, "no-codebook"},
                                                        {ProfileAblation::random, "random"},
                                                        {ProfileAblation::mean, "mean"}};
constexpr EnumName<CodesBy> kCodesByNames[] = {
    {CodesBy::automatic, "auto"}, {CodesBy::distance, "distance"}, {CodesBy::likelihood, "likelihood"}};
}  // namespace

std::string to_string(CodesBy rule) { return enum_name(kCodesByNames, rule); }
CodesBy codes_by_from_string(std::string_view name) { return enum_from_name(kCodesByNames, name, "code rule"); }

bool FitOptions::final_codes_by_likelihood() const {
  if (refine_rounds > 0 || codes_by == CodesBy::distance) return false;
  const bool applies = mode == EmMode::alternating && levels == 1 && ablation == ProfileAblation::none;
  return codes_by == CodesBy::likelihood || applies;
}

std::string to_string(EmMode mode) { return enum_name(kEmModeNames, mode); }
EmMode em_mode_from_string(std::string_view name) { return enum_from_name(kEmModeNames, name, "EM mode"); }

std::string to_string(ProfileAblation a) { return enum_name(kAblationNames, a); }
ProfileAblation profile_ablation_from_string(std::string_view name) {
  return enum_from_name(kAblationNames, name, "ablation");
}

const OptionTable<FitOptions>& FitOptions::table() {
  static const OptionTable<FitOptions> table = [] {
    using O = FitOptions;
    OptionTable<O> t("fit");
    t.add_enum("mode", &O::mode, kEmModeNames, "EM mode",
               "EM scheme: alternating (E-step/M-step) or joint (the released code's)");
    t.add_enum("attention", &O::attention, kAttentionStructureNames, "attention structure",
               "segment (each attribute's evidence and soft tokens see only their own segment) or causal");
    t.add_enum("ablation", &O::ablation, kAblationNames, "ablation",
               "none, no-codebook (dense profiles only), random or mean");
    t.add("codes", &O::codes, "Codes per attribute and level (K)").range(1, quantize::ResidualCodebook::kMaxCodes);
    t.add("codes_per_attribute", &O::codes_per_attribute, "K for one attribute, as NAME=K (repeatable)")
        .alias("attribute-codes");
    t.add("levels", &O::levels, "Residual codebook levels (hierarchical IDs)").range(1, quantize::ResidualCodebook::kMaxLevels);
    t.add("rounds", &O::rounds, "EM rounds (alternating) or epochs (joint)").range(1, 1000);
    t.add("population_steps", &O::population_steps,
          "Adam steps on one profile shared by all users, the start of every user's E-steps (alternating)")
        .range(0, 100000)
        .absent_means(0);
    t.add("estep_steps", &O::estep_steps, "Adam steps per batch in each E-step").range(1, 1000);
    t.add("learning_rate", &O::learning_rate, "Adam learning rate of the soft tokens (alternating)")
        .range(0, 10)
        .open_below();
    t.add("mstep_iterations", &O::mstep_iterations, "Lloyd iterations of each M-step at fixed profiles (alternating)")
        .range(1, 1000);
    // Each option added after the first fits is written only when it differs from what fits made
    // before it did, so that those fits keep their fingerprints (and are reused).
    t.add("kmeans_restarts", &O::kmeans_restarts,
          "k-means++ seedings tried for the first codebooks; the one with the lowest quantization error after "
          "--mstep-iterations Lloyd steps is kept (alternating)")
        .range(1, 1000)
        .written_when([](const O& o) { return o.kmeans_restarts != 1; })
        .absent_means(1);
    t.add("joint_learning_rate", &O::joint_learning_rate, "AdamW learning rate (joint)").range(0, 10).open_below();
    t.add("joint_batch", &O::joint_batch, "Samples per step (joint)").at_least(1);
    t.add("refine_rounds", &O::refine_rounds,
          "Rounds after the EM rounds in which each user takes the code whose codeword gives its behaviour the "
          "highest likelihood and codewords follow their members' likelihood gradient (alternating, one level)")
        .range(0, 1000)
        .written_when([](const O& o) { return o.refine_rounds > 0; })
        .absent_means(0);
    t.add("refine_learning_rate", &O::refine_learning_rate, "Adam learning rate of the codewords in refinement rounds")
        .range(0, 10)
        .open_below()
        .written_when([](const O& o) { return o.refine_rounds > 0; })
        .absent_means(0.01);
    t.add("refine_steps", &O::refine_steps,
          "Adam steps on the codewords per refinement round, each on the gradient of an equal share of the round's "
          "batches (0 = one step per batch)")
        .range(0, 1000000)
        .written_when([](const O& o) { return o.refine_rounds > 0 && o.refine_steps > 0; })
        .absent_means(0);
    t.add("refine_users", &O::refine_users,
          "Users (a seeded draw, the same in every refinement round) on whom the refinement rounds fit the "
          "codewords; the last round's final pass still gives every user its codes (0 = all users)")
        .at_least(0)
        .written_when([](const O& o) { return o.refine_rounds > 0 && o.refine_users > 0; })
        .absent_means(0);
    t.add("merge_margin_ratio", &O::merge_margin_ratio,
          "Split-and-merge in refinement rounds: a code whose members lose less likelihood by moving to their "
          "second-best codes than this fraction of what the median code's members lose is merged into those, and "
          "its codeword splits the code whose members' gradients disagree most (0 = off)")
        .range(0, 1)
        .written_when([](const O& o) { return o.refine_rounds > 0 && o.merge_margin_ratio > 0; })
        .absent_means(0.0);
    // Written as the rule that ran: fits made before the option had their codes by distance.
    t.add_enum("codes_by", &O::codes_by, kCodesByNames, "code rule",
               "The fitted users' final codes: likelihood (as fold-in gives a new user its codes: those under which "
               "the LM finds the user's history likeliest, its most recent --likelihood-interactions; profiles become "
               "codewords), distance (the codeword nearest each profile), auto (likelihood for the alternating mode "
               "with one level and no ablation, else distance)")
        .written_when([](const O& o) { return o.final_codes_by_likelihood(); })
        .write_as([](const O&) { return nlohmann::json("likelihood"); })
        .absent_means("distance");
    t.add("likelihood_interactions", &O::likelihood_interactions,
          "Codes by likelihood (final codes, refinement, later fold-ins of this fit) read each user's most recent "
          "interactions, at most this many (0 = all)")
        .at_least(0)
        .written_when([](const O& o) { return o.final_codes_by_likelihood() || o.refine_rounds > 0; })
        .absent_means(0);
    t.add("lambda_start", &O::lambda_start, "Prior weight λ in round 2").above(0);
    t.add("lambda_end", &O::lambda_end, "Prior weight λ in the last round (geometric in between)").above(0);
    t.add("codebook_loss_weight", &O::codebook_loss_weight, "Weight of the codebook loss (joint)")
        .at_least(0)
        .no_flag();
    t.add("weight_decay", &O::weight_decay, "AdamW weight decay (joint)").range(0, 1).open_above().no_flag();
    t.add("init_range", &O::init_range, "Soft tokens start uniform in [-init_range, init_range]").above(0).no_flag();
    t.add<std::int64_t>("max_tokens", [](O& o) -> std::int64_t& { return o.samples.max_tokens; },
                        "Tokens per sample (prompt + behaviour), at most the LM's context")
        .range(8, 1 << 20);
    t.add<int>("samples_per_user", [](O& o) -> int& { return o.samples.samples_per_user; },
               "History samples drawn per user and round (joint mode: history windows)")
        .range(1, 1000)
        .default_is("enough for about 8 interactions when samples hold a few, else 1");
    t.add<std::int64_t>("max_interactions", [](O& o) -> std::int64_t& { return o.samples.max_interactions; },
                        "Interactions per sample at most, 0 = as many as --max-tokens allows")
        .range(0, 100000)
        .alias("interactions-per-sample")
        .default_is("the behaviour sentences per document the LM was pretrained on (its pretrain.json), else 0")
        .written_when([](const O& o) { return o.samples.max_interactions > 0; })
        .absent_means(0);
    t.add("max_batch_tokens", &O::max_batch_tokens, "Tokens per batch, padding included").alias("batch-tokens");
    t.add("max_batch_rows", &O::max_batch_rows, "Samples per batch, at most").at_least(1).alias("batch-rows");
    t.add("max_eval_users", &O::max_eval_users, "Users whose validation NLL is measured each round (0 = all)")
        .at_least(0)
        .alias("eval-users");
    t.add("seed", &O::seed, "Seed of initialisation, samples and codebooks");
    t.add("checkpoint_seconds", &O::checkpoint_seconds, "Seconds between resumable checkpoints").at_least(0).not_saved();
    t.add("stop_after_batches", &O::stop_after_batches,
          "Stop after this many batches as an interruption would (for testing resume)")
        .at_least(0)
        .not_saved();
    return t;
  }();
  return table;
}

void FitOptions::validate() const {
  const auto& t = table();
  t.check(*this, Spelling::flag);
  auto flag = [&](const char* key) { return t.name_of(key, Spelling::flag); };
  for (const auto& [name, k] : codes_per_attribute)
    USERIP_CHECK(k >= 1 && k <= quantize::ResidualCodebook::kMaxCodes, "{} for attribute '{}' must be in [1, {}], got {}",
                 flag("codes_per_attribute"), name, quantize::ResidualCodebook::kMaxCodes, k);
  USERIP_CHECK(lambda_end >= lambda_start, "the prior weights need {} <= {}, got {} and {}", flag("lambda_start"),
               flag("lambda_end"), lambda_start, lambda_end);
  USERIP_CHECK(merge_margin_ratio == 0 || refine_rounds > 0, "{} acts in refinement rounds: it needs {} > 0",
               flag("merge_margin_ratio"), flag("refine_rounds"));
  USERIP_CHECK(refine_rounds == 0 || (mode == EmMode::alternating && levels == 1 && ablation == ProfileAblation::none),
               "{} needs the alternating mode, one codebook level ({} 1) and no ablation", flag("refine_rounds"),
               flag("levels"));
  USERIP_CHECK(codes_by != CodesBy::likelihood ||
                   (mode == EmMode::alternating && levels == 1 && ablation == ProfileAblation::none),
               "{} likelihood needs the alternating mode, one codebook level ({} 1) and no ablation", flag("codes_by"),
               flag("levels"));
  USERIP_CHECK(max_batch_tokens >= samples.max_tokens, "{} ({}) must be at least {} ({})", flag("max_batch_tokens"),
               max_batch_tokens, flag("max_tokens"), samples.max_tokens);
}

nlohmann::json FitOptions::to_json() const { return table().to_json(*this); }

namespace detail {
FitOptions options_from_json(const nlohmann::json& j, const std::string& source) {
  FitOptions o;
  FitOptions::table().read(j, o, source, Absent::required);
  o.samples.seed = o.seed;
  o.validate();
  return o;
}
}  // namespace detail

std::int64_t FitOptions::codes_for(const std::string& attribute) const {
  auto it = codes_per_attribute.find(attribute);
  return it == codes_per_attribute.end() ? codes : it->second;
}

nlohmann::json RoundLog::to_json(const std::vector<AttributeSpec>& attributes) const {
  nlohmann::json j = {{"round", round},   {"lambda", lambda}, {"train_nll", train_nll},
                      {"seconds", seconds}, {"tokens", tokens}};
  if (refinement) j["refinement"] = true;
  j["valid_nll"] = valid_nll < 0 ? nlohmann::json(nullptr) : nlohmann::json(valid_nll);
  nlohmann::json per = nlohmann::json::object();
  for (std::size_t a = 0; a < attributes.size() && a < quantization_error.size(); ++a) {
    per[attributes[a].name] = {{"quantization_error", quantization_error[a]},
                               {"code_perplexity", code_perplexity[a]},
                               {"dead_codes", dead_codes[a]},
                               {"code_counts", code_counts[a]}};
    if (a < code_margins.size()) {
      auto margins = nlohmann::json::array();
      for (double m : code_margins[a]) margins.push_back(std::isnan(m) ? nlohmann::json(nullptr) : nlohmann::json(m));
      per[attributes[a].name]["code_margins"] = margins;
    }
  }
  j["attributes"] = per;
  if (!moves.empty()) {
    auto list = nlohmann::json::array();
    for (const auto& m : moves)
      list.push_back({{"attribute", attributes.at(m.attribute).name},
                      {"dissolved", m.dissolved},
                      {"margin_ratio", m.margin_ratio},
                      {"split", m.split},
                      {"split_members", m.split_members},
                      {"moved", m.moved}});
    j["split_merge"] = list;
  }
  return j;
}

RoundLog RoundLog::from_json(const nlohmann::json& j, const std::vector<AttributeSpec>& attributes,
                             const std::string& source) {
  try {
    RoundLog r;
    r.round = j.at("round").get<int>();
    r.lambda = j.at("lambda").get<double>();
    r.refinement = j.value("refinement", false);
    r.train_nll = j.at("train_nll").get<double>();
    r.valid_nll = j.at("valid_nll").is_null() ? -1.0 : j.at("valid_nll").get<double>();
    r.seconds = j.at("seconds").get<double>();
    r.tokens = j.at("tokens").get<std::int64_t>();
    const auto& per = j.at("attributes");
    for (const auto& spec : attributes) {
      if (!per.contains(spec.name)) continue;
      const auto& a = per.at(spec.name);
      r.quantization_error.push_back(a.at("quantization_error").get<double>());
      r.code_perplexity.push_back(a.at("code_perplexity").get<std::vector<double>>());
      r.dead_codes.push_back(a.at("dead_codes").get<std::vector<std::int64_t>>());
      r.code_counts.push_back(a.at("code_counts").get<std::vector<std::vector<std::int64_t>>>());
      if (a.contains("code_margins")) {
        std::vector<double> margins;
        for (const auto& m : a.at("code_margins"))
          margins.push_back(m.is_null() ? std::numeric_limits<double>::quiet_NaN() : m.get<double>());
        r.code_margins.push_back(std::move(margins));
      }
    }
    for (const auto& m : j.value("split_merge", nlohmann::json::array())) {
      CodeMove move;
      const auto name = m.at("attribute").get<std::string>();
      const auto it = std::find_if(attributes.begin(), attributes.end(), [&](const auto& a) { return a.name == name; });
      USERIP_CHECK(it != attributes.end(), "{}: split_merge names attribute '{}', which the template does not have",
                   source, name);
      move.attribute = static_cast<std::size_t>(it - attributes.begin());
      move.dissolved = m.at("dissolved").get<std::int64_t>();
      move.margin_ratio = m.at("margin_ratio").get<double>();
      move.split = m.at("split").get<std::int64_t>();
      move.split_members = m.at("split_members").get<std::int64_t>();
      move.moved = m.at("moved").get<std::int64_t>();
      r.moves.push_back(move);
    }
    return r;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a round of the fit log ({})", source, e.what());
  }
}

nlohmann::json NllComparison::to_json() const {
  return {{"own", own},
          {"quantized", quantized < 0 ? nlohmann::json(nullptr) : nlohmann::json(quantized)},
          {"mean", mean},
          {"shuffled", shuffled},
          {"tokens", tokens},
          {"users", users}};
}

}  // namespace userip::profile
