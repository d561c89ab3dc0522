#include "userip/profile/fit.h"

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

namespace {

constexpr const char* kCheckpointDir = "checkpoint";
constexpr double kAdamBeta1 = 0.9, kAdamBeta2 = 0.999, kAdamEps = 1e-8;

std::string hex64(std::uint64_t value) { return fmt::format("{:016x}", value); }

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

bool uses_codebooks(const FitOptions& o) { return o.ablation != ProfileAblation::no_codebook; }

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

}  // namespace

namespace {
constexpr EnumName<EmMode> kEmModeNames[] = {{EmMode::alternating, "alternating"}, {EmMode::joint, "joint"}};
constexpr EnumName<ProfileAblation> kAblationNames[] = {{ProfileAblation::none, "none"},
                                                        {ProfileAblation::no_codebook, "no-codebook"},
                                                        {ProfileAblation::random, "random"},
                                                        {ProfileAblation::mean, "mean"}};
}  // namespace

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

namespace {
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
}  // namespace

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

nlohmann::json NllComparison::to_json() const {
  return {{"own", own},
          {"quantized", quantized < 0 ? nlohmann::json(nullptr) : nlohmann::json(quantized)},
          {"mean", mean},
          {"shuffled", shuffled},
          {"tokens", tokens},
          {"users", users}};
}

torch::Tensor Profiles::attribute_vectors(std::size_t a) const {
  const std::int64_t begin = attribute_offset.at(a), length = attributes.at(a).soft_tokens;
  return vectors.narrow(1, begin, length).reshape({vectors.size(0), -1});
}

std::string Profiles::codebook_fingerprint() const {
  std::uint64_t h = fnv1a64("codebooks");
  for (const auto& c : codebooks) h = fnv1a64(c.fingerprint(), h);
  return hex64(h);
}

std::string code_field_name(const std::string& attribute, int level) {
  return level == 0 ? attribute : fmt::format("{}.{}", attribute, level + 1);
}

std::vector<std::string> Profiles::field_names() const {
  std::vector<std::string> names;
  for (std::size_t a = 0; a < attributes.size() && a < codebooks.size(); ++a) {
    for (int r = 0; r < codebooks[a].levels(); ++r)
      names.push_back(code_field_name(attributes[a].name, r));
  }
  return names;
}

namespace {

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
  torch::Tensor compose(const std::vector<ResidualCodebook>& codebooks, const torch::Tensor& codes) const {
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
  torch::Tensor likelihood_codes(const PreparedBatch& p, const std::vector<ResidualCodebook>& codebooks,
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
  torch::Tensor prior_distance(const torch::Tensor& z_local, const std::vector<ResidualCodebook>& codebooks) const {
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
  // `whole_history` keeps every sample of each user (fold-in by likelihood, which reads them once).
  // `only` (rows of users()), when given, limits the round to those users.
  Round user_samples(std::uint64_t round, bool whole_history = false,
                     const std::vector<std::int64_t>* only = nullptr) const {
    Round r;
    std::vector<std::pair<std::size_t, std::size_t>> spans;  // per user: [first, last) in r.samples
    std::vector<std::uint32_t> chosen;
    if (only)
      for (auto row : *only) chosen.push_back(users_.at(static_cast<std::size_t>(row)));
    for (std::uint32_t u : only ? chosen : users_) {
      auto chunks = builder_.evaluation_samples(u, history_);
      const auto keep = static_cast<std::size_t>(o_.samples.samples_per_user);
      if (!whole_history && chunks.size() > keep) {
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

  // Σ NLL and label tokens of `vectors` (rows aligned with users()) on evaluation samples.
  std::pair<double, std::int64_t> total_nll(const std::vector<ProfileSample>& samples,
                                            const torch::Tensor& vectors) const {
    torch::NoGradGuard no_grad;
    double nll = 0;
    std::int64_t tokens = 0;
    for (const auto& batch : pack_samples(samples, o_.max_batch_tokens, o_.max_batch_rows)) {
      std::vector<const ProfileSample*> members;
      for (auto i : batch) members.push_back(&samples[i]);
      auto p = prepare(members);
      nll += row_nll(p, vectors.index_select(0, p.user_rows)).sum().item<double>();
      tokens += p.labels;
    }
    return {nll, tokens};
  }

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
                              std::uint64_t stream) {
  // Drawn on the CPU from the seed, so every device starts from the same profiles.
  auto generator_seed = Rng::derive(o.seed, stream).next_u64();
  auto gen = at::detail::createCPUGenerator(generator_seed);
  auto z = at::empty({users, soft, dim}, at::kFloat).uniform_(-o.init_range, o.init_range, gen);
  return z.to(o.device);
}

}  // namespace

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

namespace {

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

// The split-and-merge move (codebook.h) on one attribute, in place on `codes` ([U] level-0 codes of
// every user) and the codebook: the members of `dissolved` among `rows` take their `runner_up`
// codes, and the codeword of `dissolved` splits the code whose members' `gradients` ([U, dim], each
// user's gradient of its NLL per token with respect to its codeword) spread most, along their main
// direction. The members on the side of the new codeword (the side their gradient descends to) take it.
RoundLog::CodeMove split_and_merge(ResidualCodebook& codebook, torch::Tensor codes, const torch::Tensor& runner_up,
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
    auto spread = principal_direction(g.index_select(0, members));
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

// A detached copy of a codebook on `device` (plain tensors, no optimiser or autograd history).
ResidualCodebook codebook_on(const ResidualCodebook& codebook, torch::Device device) {
  std::vector<std::pair<std::string, torch::Tensor>> saved;
  codebook.save(saved, "c");
  std::map<std::string, torch::Tensor> named;
  for (auto& [name, tensor] : saved) named[name] = tensor.to(device);
  return ResidualCodebook::from_tensors(named, "c");
}

// `model_fingerprint` is passed in: hashing every weight is costly for a real checkpoint.
std::string fit_fingerprint(const FitInputs& in, const FitOptions& o, const std::string& model_fingerprint) {
  nlohmann::json j = {{"options", o.to_json()},
                      {"template", in.profile_template->to_json()},
                      {"model", model_fingerprint},
                      {"dataset", dataset_fingerprint(*in.dataset)}};
  return hex64(fnv1a64(j.dump()));
}

}  // namespace

void save_profiles(const Profiles& profiles, const fs::path& dir, const nlohmann::json& record) {
  fs::create_directories(dir);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"profiles", profiles.vectors.detach().cpu().contiguous()}};
  for (std::size_t a = 0; a < profiles.codebooks.size(); ++a)
    profiles.codebooks[a].save(tensors, "codebook." + profiles.attributes[a].name);
  lm::write_safetensors(dir / "profiles.safetensors", tensors);
  std::string users;
  for (const auto& id : profiles.user_ids) {
    USERIP_CHECK(id.find('\n') == std::string::npos, "user id '{}' contains a newline; users.txt cannot hold it", id);
    users += id + "\n";
  }
  write_file_atomic(dir / "users.txt", users);
  nlohmann::json out = record;
  out["users"] = profiles.user_ids.size();
  out["attributes"] = nlohmann::json::array();
  for (std::size_t a = 0; a < profiles.attributes.size(); ++a) {
    const auto& spec = profiles.attributes[a];
    nlohmann::json attr = {{"name", spec.name}, {"soft_tokens", spec.soft_tokens}};
    if (a < profiles.codebooks.size())
      attr.update({{"codes", profiles.codebooks[a].codes()}, {"levels", profiles.codebooks[a].levels()}});
    out["attributes"].push_back(attr);
  }
  out["dim"] = profiles.vectors.size(2);
  if (profiles.has_codes()) {
    out["codebook_fingerprint"] = profiles.codebook_fingerprint();
    out["fields"] = nlohmann::json::array();
    auto names = profiles.field_names();
    std::size_t f = 0;
    for (std::size_t a = 0; a < profiles.codebooks.size(); ++a)
      for (int r = 0; r < profiles.codebooks[a].levels(); ++r)
        out["fields"].push_back({{"name", names[f++]}, {"cardinality", profiles.codebooks[a].codes()}});
    auto codes = profiles.codes.cpu().contiguous();
    std::string csv = "user";
    for (const auto& n : names) csv += "," + data::csv_escape(n);
    csv += "\n";
    auto c = codes.accessor<std::int64_t, 3>();
    for (std::size_t u = 0; u < profiles.user_ids.size(); ++u) {
      csv += data::csv_escape(profiles.user_ids[u]);
      for (std::int64_t a = 0; a < codes.size(1); ++a)
        for (std::int64_t r = 0; r < codes.size(2); ++r) csv += fmt::format(",{}", c[static_cast<std::int64_t>(u)][a][r]);
      csv += "\n";
    }
    write_file_atomic(dir / "codes.csv", csv);
  } else {
    fs::remove(dir / "codes.csv");
  }
  write_file_atomic(dir / "profile.json", out.dump(2));
}

SavedFit load_fit(const fs::path& dir, const data::Dataset& dataset, const ProfileTemplate& profile_template) {
  const fs::path record_file = dir / "profile.json";
  USERIP_CHECK(fs::exists(record_file), "{}: not a profile directory (no profile.json; run `userip profile fit`)",
               dir.string());
  SavedFit saved;
  try {
    saved.record = nlohmann::json::parse(read_file(record_file));
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: malformed JSON: {}", record_file.string(), e.what());
  }
  USERIP_CHECK(saved.record.contains("options"), "{}: no \"options\" object", record_file.string());
  saved.options = options_from_json(saved.record["options"], record_file.string());
  auto& p = saved.profiles;
  p.attributes = profile_template.attributes();
  for (std::size_t a = 0; a < p.attributes.size(); ++a) p.attribute_offset.push_back(profile_template.soft_offset(a));

  auto source = lm::open_safetensors(dir / "profiles.safetensors");
  p.vectors = source->load("profiles", torch::kFloat);
  USERIP_CHECK(p.vectors.dim() == 3 && p.vectors.size(1) == profile_template.total_soft_tokens(),
               "{}: tensor 'profiles' has shape {} but the template has {} soft tokens", source->description(),
               p.vectors.sizes().vec(), profile_template.total_soft_tokens());
  std::ifstream users(dir / "users.txt");
  USERIP_CHECK(users, "{}: cannot open users.txt", dir.string());
  std::string line;
  std::size_t line_number = 0;
  while (std::getline(users, line)) {
    ++line_number;
    auto user = dataset.find_user(line);
    USERIP_CHECK(user.has_value(), "{}:{}: user '{}' is not in the dataset", (dir / "users.txt").string(),
                 line_number, line);
    p.users.push_back(*user);
    p.user_ids.push_back(line);
  }
  USERIP_CHECK(static_cast<std::int64_t>(p.users.size()) == p.vectors.size(0),
               "{}: users.txt lists {} users but 'profiles' has {} rows", dir.string(), p.users.size(), p.vectors.size(0));
  if (source->has("codebook." + p.attributes.at(0).name + ".level0")) {
    for (const auto& spec : p.attributes) {
      p.codebooks.push_back(ResidualCodebook::from_source(*source, "codebook." + spec.name));
    }
    std::vector<torch::Tensor> codes;
    for (std::size_t a = 0; a < p.codebooks.size(); ++a) codes.push_back(p.codebooks[a].assign(p.attribute_vectors(a)));
    p.codes = torch::stack(codes, 1);
  }
  return saved;
}

namespace {

// One E-step pass over a round's batches (alternating and fold-in), or one joint epoch.
struct PassState {
  double nll = 0;
  std::int64_t tokens = 0;
};

}  // namespace

namespace {
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
}  // namespace

FitResult fit_profiles(const FitInputs& in, const FitOptions& requested, const fs::path& out) {
  requested.validate();
  USERIP_CHECK(in.model, "fit_profiles: no model");
  const FitOptions o = within_context(requested, *in.model);
  USERIP_CHECK(in.dataset && in.model && in.tokenizer && in.profile_template, "fit_profiles: missing inputs");
  in.model->assert_frozen();
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
      for (const auto& l : state.at("log")) {
        RoundLog r;
        r.round = l.at("round");
        r.lambda = l.at("lambda");
        r.refinement = l.value("refinement", false);
        r.train_nll = l.at("train_nll");
        r.valid_nll = l.at("valid_nll").is_null() ? -1.0 : l.at("valid_nll").get<double>();
        r.seconds = l.at("seconds");
        r.tokens = l.at("tokens");
        result.log.push_back(r);
      }
      // The rounds' full records (code statistics) live in log.jsonl, rewritten from here on.
      result.resumed = true;
      spdlog::info("resuming the fit from round {} batch {} ({})", start_round + 1, start_batch, checkpoint.string());
    }
  }
  std::vector<nlohmann::json> log_records;
  if (result.resumed && fs::exists(out / "log.jsonl")) {
    std::ifstream log_in(out / "log.jsonl");
    std::string line;
    while (std::getline(log_in, line) && log_records.size() < result.log.size())
      log_records.push_back(nlohmann::json::parse(line));
  }
  auto write_log_records = [&] {
    std::string text;
    for (const auto& r : log_records) text += r.dump() + "\n";
    write_file_atomic(out / "log.jsonl", text);
  };

  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return clock_offset + std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  auto last_checkpoint = std::chrono::steady_clock::now();
  auto save_checkpoint = [&](int round, std::size_t batch, const PassState& pass) {
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
  if (!o.show_progress) progress.disable();
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
      auto r = engine.user_samples(static_cast<std::uint64_t>(round), false, refine_rows.empty() ? nullptr : &refine_rows);
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
        codes = likelihood_codes_of_histories(engine, codebooks, codes, 1, [&](std::uint64_t users_done) {
          progress.set_metric(fmt::format("final codes over whole histories: {}/{} users", users_done, U));
        });
      }
      z = engine.compose(codebooks, codes).contiguous();
    } else if (fit_vectors) {
      auto r = joint ? engine.window_samples(static_cast<std::uint64_t>(round), o.joint_batch)
                     : engine.user_samples(static_cast<std::uint64_t>(round));
      std::size_t first = round == start_round ? start_batch : 0;
      for (std::size_t b = first; b < r.batches.size(); ++b) {
        std::vector<const ProfileSample*> members;
        for (auto i : r.batches[b]) members.push_back(&r.samples[i]);
        auto p = engine.prepare(members);
        const int steps = joint ? 1 : o.estep_steps;
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
          if (s == steps - 1) {
            pass.nll += nll_rows.detach().sum().item<double>();
            pass.tokens += p.labels;
          }
        }
        result.tokens += p.labels * steps;
        ++batches_done;
        // Users of the round done so far, in proportion to its batches.
        progress.set(static_cast<std::uint64_t>(round) * static_cast<std::uint64_t>(U) +
                     static_cast<std::uint64_t>(U) * (b + 1) / r.batches.size());
        if (pass.tokens > 0) progress.set_metric(fmt::format("nll {:.3f}", pass.nll / pass.tokens));
        const bool stop = o.stop_after_batches > 0 && batches_done >= o.stop_after_batches;
        const bool due = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint).count() >=
                         o.checkpoint_seconds;
        if ((stop || due) && b + 1 < r.batches.size()) save_checkpoint(round, b + 1, pass);
        if (stop && b + 1 < r.batches.size()) {
          interrupted = true;
          break;
        }
      }
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
    log_records.push_back(log.to_json(attributes));
    write_log_records();
    spdlog::info("round {}/{}{}: λ {:.3g}, train NLL/token {:.4f}, valid {:.4f}{}", round + 1, total_rounds,
                 refining ? " (refinement by likelihood)" : "", lambda,
                 log.train_nll, log.valid_nll,
                 log.quantization_error.empty() ? std::string()
                                                : fmt::format(", quantization error {:.4g}", log.quantization_error[0]));
    if (round + 1 < total_rounds) save_checkpoint(round + 1, 0, PassState{});
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
  }
  result.evaluation = evaluate_profiles(in, profiles, o, train, valid);
  record["evaluation"] = result.evaluation.to_json();
  record["seconds"] = result.seconds;
  record["tokens"] = result.tokens;
  record["resumed"] = result.resumed;
  save_profiles(profiles, out, record);
  write_file_atomic(out / "evaluation.json", result.evaluation.to_json().dump(2));
  fs::remove_all(checkpoint);
  return result;
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
  ScopedSingleThreadedAten thread_policy(o_fit.device.is_cpu());
  FitOptions o = within_context(o_fit, *in.model);
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
  std::vector<ResidualCodebook> codebooks;
  for (const auto& c : fitted.codebooks) codebooks.push_back(codebook_on(c, o.device));
  Profiles result;
  result.users = users;
  for (auto u : users) result.user_ids.push_back(in.dataset->user_ids[u]);
  result.attributes = fitted.attributes;
  result.attribute_offset = fitted.attribute_offset;
  result.codebooks = fitted.codebooks;
  if (o_fit.refine_rounds > 0) {
    // Fitted profiles are codewords: a new user takes the codes under which the LM finds its whole
    // history likeliest, starting from the population's codes (two sweeps over the attributes).
    ProgressBar progress("profile infer (by likelihood)", static_cast<std::uint64_t>(U), "users");
    if (!options.show_progress) progress.disable();
    const auto mean = fitted.vectors.to(o.device).mean(0, true);
    const auto start = assign_all(engine, mean, codebooks).select(2, 0).to(o.device);
    auto codes = likelihood_codes_of_histories(engine, codebooks, start.expand({U, -1}).contiguous(), 2,
                                               [&](std::uint64_t users_done) { progress.set(users_done); });
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
