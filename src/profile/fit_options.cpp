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

void FitOptions::validate() const {
  USERIP_CHECK(codes >= 1 && codes <= ResidualCodebook::kMaxCodes, "--codes must be in [1, {}], got {}",
               ResidualCodebook::kMaxCodes, codes);
  for (const auto& [name, k] : codes_per_attribute)
    USERIP_CHECK(k >= 1 && k <= ResidualCodebook::kMaxCodes, "--codes for attribute '{}' must be in [1, {}], got {}",
                 name, ResidualCodebook::kMaxCodes, k);
  USERIP_CHECK(levels >= 1 && levels <= ResidualCodebook::kMaxLevels, "--levels must be in [1, {}], got {}",
               ResidualCodebook::kMaxLevels, levels);
  USERIP_CHECK(rounds >= 1 && rounds <= 1000, "--rounds must be in [1, 1000], got {}", rounds);
  USERIP_CHECK(estep_steps >= 1 && estep_steps <= 1000, "--estep-steps must be in [1, 1000], got {}", estep_steps);
  USERIP_CHECK(learning_rate > 0 && learning_rate <= 10, "--learning-rate must be in (0, 10], got {}", learning_rate);
  USERIP_CHECK(joint_learning_rate > 0 && joint_learning_rate <= 10, "--joint-learning-rate must be in (0, 10], got {}",
               joint_learning_rate);
  USERIP_CHECK(lambda_start > 0 && lambda_end >= lambda_start,
               "the prior weights need 0 < --lambda-start <= --lambda-end, got {} and {}", lambda_start, lambda_end);
  USERIP_CHECK(mstep_iterations >= 1 && mstep_iterations <= 1000, "--mstep-iterations must be in [1, 1000], got {}",
               mstep_iterations);
  USERIP_CHECK(kmeans_restarts >= 1 && kmeans_restarts <= 1000, "--kmeans-restarts must be in [1, 1000], got {}",
               kmeans_restarts);
  USERIP_CHECK(refine_rounds >= 0 && refine_rounds <= 1000, "--refine-rounds must be in [0, 1000], got {}", refine_rounds);
  USERIP_CHECK(refine_learning_rate > 0 && refine_learning_rate <= 10, "--refine-learning-rate must be in (0, 10], got {}",
               refine_learning_rate);
  USERIP_CHECK(refine_steps >= 0 && refine_steps <= 1000000, "--refine-steps must be in [0, 1000000], got {}",
               refine_steps);
  USERIP_CHECK(refine_users >= 0, "--refine-users must be >= 0, got {}", refine_users);
  USERIP_CHECK(merge_margin_ratio >= 0 && merge_margin_ratio <= 1, "--merge-margin-ratio must be in [0, 1], got {}",
               merge_margin_ratio);
  USERIP_CHECK(merge_margin_ratio == 0 || refine_rounds > 0,
               "--merge-margin-ratio acts in refinement rounds: it needs --refine-rounds > 0");
  USERIP_CHECK(refine_rounds == 0 || (mode == EmMode::alternating && levels == 1 && ablation == ProfileAblation::none),
               "--refine-rounds needs the alternating mode, one codebook level (--levels 1) and no ablation");
  USERIP_CHECK(codes_by != CodesBy::likelihood ||
                   (mode == EmMode::alternating && levels == 1 && ablation == ProfileAblation::none),
               "--codes-by likelihood needs the alternating mode, one codebook level (--levels 1) and no ablation");
  USERIP_CHECK(likelihood_interactions >= 0, "--likelihood-interactions must be >= 0, got {}", likelihood_interactions);
  USERIP_CHECK(joint_batch >= 1, "--joint-batch must be >= 1, got {}", joint_batch);
  USERIP_CHECK(codebook_loss_weight >= 0, "the codebook loss weight must be >= 0, got {}", codebook_loss_weight);
  USERIP_CHECK(weight_decay >= 0 && weight_decay < 1, "the weight decay must be in [0, 1), got {}", weight_decay);
  USERIP_CHECK(init_range > 0, "the initial range must be > 0, got {}", init_range);
  USERIP_CHECK(population_steps >= 0 && population_steps <= 100000, "--population-steps must be in [0, 100000], got {}",
               population_steps);
  USERIP_CHECK(samples.max_tokens >= 8 && samples.max_tokens <= 1 << 20, "--max-tokens must be in [8, 1048576], got {}",
               samples.max_tokens);
  USERIP_CHECK(samples.samples_per_user >= 1 && samples.samples_per_user <= 1000,
               "--samples-per-user must be in [1, 1000], got {}", samples.samples_per_user);
  USERIP_CHECK(samples.max_interactions >= 0 && samples.max_interactions <= 100000,
               "--interactions-per-sample must be in [0, 100000], got {}", samples.max_interactions);
  USERIP_CHECK(max_batch_tokens >= samples.max_tokens, "--batch-tokens ({}) must be at least --max-tokens ({})",
               max_batch_tokens, samples.max_tokens);
  USERIP_CHECK(max_batch_rows >= 1, "--batch-rows must be >= 1, got {}", max_batch_rows);
  USERIP_CHECK(max_eval_users >= 0, "--eval-users must be >= 0, got {}", max_eval_users);
  USERIP_CHECK(checkpoint_seconds >= 0, "the checkpoint interval must be >= 0, got {}", checkpoint_seconds);
}

nlohmann::json FitOptions::to_json() const {
  nlohmann::json j = {{"mode", to_string(mode)},
          {"attention", to_string(attention)},
          {"ablation", to_string(ablation)},
          {"codes", codes},
          {"codes_per_attribute", codes_per_attribute},
          {"levels", levels},
          {"rounds", rounds},
          {"estep_steps", estep_steps},
          {"learning_rate", learning_rate},
          {"lambda_start", lambda_start},
          {"lambda_end", lambda_end},
          {"mstep_iterations", mstep_iterations},
          {"joint_learning_rate", joint_learning_rate},
          {"joint_batch", joint_batch},
          {"codebook_loss_weight", codebook_loss_weight},
          {"weight_decay", weight_decay},
          {"init_range", init_range},
          {"population_steps", population_steps},
          {"max_tokens", samples.max_tokens},
          {"samples_per_user", samples.samples_per_user},
          {"max_batch_tokens", max_batch_tokens},
          {"max_batch_rows", max_batch_rows},
          {"max_eval_users", max_eval_users},
          {"seed", seed}};
  // Only when set, so that fits made before the option existed keep their fingerprints.
  if (samples.max_interactions > 0) j["max_interactions"] = samples.max_interactions;
  // Only when by likelihood: fits made before the option had their codes by distance, and keep their fingerprints.
  if (final_codes_by_likelihood()) j["codes_by"] = "likelihood";
  // Only where codes by likelihood are made: fits made before the option read whole histories.
  if (final_codes_by_likelihood() || refine_rounds > 0) j["likelihood_interactions"] = likelihood_interactions;
  // Only when not 1 (one seeding, as before restarts existed), so that such fits keep their fingerprints.
  if (kmeans_restarts != 1) j["kmeans_restarts"] = kmeans_restarts;
  // Only when on, so that fits made before refinement existed keep their fingerprints (and are reused).
  if (refine_rounds > 0) {
    j["refine_rounds"] = refine_rounds;
    j["refine_learning_rate"] = refine_learning_rate;
    if (refine_steps > 0) j["refine_steps"] = refine_steps;
    if (refine_users > 0) j["refine_users"] = refine_users;
    if (merge_margin_ratio > 0) j["merge_margin_ratio"] = merge_margin_ratio;
  }
  return j;
}

namespace detail {
FitOptions options_from_json(const nlohmann::json& j, const std::string& source) {
  FitOptions o;
  try {
    o.mode = em_mode_from_string(j.at("mode").get<std::string>());
    o.attention = attention_structure_from_string(j.at("attention").get<std::string>());
    o.ablation = profile_ablation_from_string(j.at("ablation").get<std::string>());
    o.codes = j.at("codes").get<std::int64_t>();
    o.codes_per_attribute = j.at("codes_per_attribute").get<std::map<std::string, std::int64_t>>();
    o.levels = j.at("levels").get<int>();
    o.rounds = j.at("rounds").get<int>();
    o.estep_steps = j.at("estep_steps").get<int>();
    o.learning_rate = j.at("learning_rate").get<double>();
    o.lambda_start = j.at("lambda_start").get<double>();
    o.lambda_end = j.at("lambda_end").get<double>();
    o.mstep_iterations = j.at("mstep_iterations").get<int>();
    o.kmeans_restarts = j.value("kmeans_restarts", 1);  // fits saved before restarts existed had one seeding
    o.refine_rounds = j.value("refine_rounds", 0);  // fits saved before refinement existed have none
    o.refine_learning_rate = j.value("refine_learning_rate", 0.01);
    o.refine_steps = j.value("refine_steps", 0);
    o.refine_users = j.value("refine_users", std::int64_t{0});
    o.merge_margin_ratio = j.value("merge_margin_ratio", 0.0);
    o.codes_by = codes_by_from_string(j.value("codes_by", std::string("distance")));
    o.likelihood_interactions = j.value("likelihood_interactions", std::int64_t{0});
    o.joint_learning_rate = j.at("joint_learning_rate").get<double>();
    o.joint_batch = j.at("joint_batch").get<std::int64_t>();
    o.codebook_loss_weight = j.at("codebook_loss_weight").get<double>();
    o.weight_decay = j.at("weight_decay").get<double>();
    o.init_range = j.at("init_range").get<double>();
    o.population_steps = j.value("population_steps", 0);
    o.samples.max_tokens = j.at("max_tokens").get<std::int64_t>();
    o.samples.samples_per_user = j.at("samples_per_user").get<int>();
    o.samples.max_interactions = j.value("max_interactions", std::int64_t{0});
    o.max_batch_tokens = j.at("max_batch_tokens").get<std::int64_t>();
    o.max_batch_rows = j.at("max_batch_rows").get<std::int64_t>();
    o.max_eval_users = j.at("max_eval_users").get<std::int64_t>();
    o.seed = j.at("seed").get<std::uint64_t>();
    o.samples.seed = o.seed;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: the fit options are incomplete or malformed: {}", source, e.what());
  }
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
