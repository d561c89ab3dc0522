#include "userip/ctr/experiment.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include "userip/ctr/controls.h"
#include "userip/ctr/metrics.h"
#include "userip/dist/world.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/log.h"
#include "userip/util/strings.h"

namespace userip::ctr {

using nlohmann::json;

namespace {
constexpr EnumName<Variant> kVariantNames[] = {
    {Variant::base, "base"},         {Variant::codes, "codes"},           {Variant::dense, "dense"},
    {Variant::control_genres, "control-genres"}, {Variant::control_cf, "control-cf"},
    {Variant::control_history, "control-history"}};
const char* const kGroups[] = {"all", "sparse", "cold"};
const char* const kMetrics[] = {"auc", "log_loss", "gauc"};

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }
}  // namespace

std::string to_string(Variant variant) { return enum_name(kVariantNames, variant); }

Variant variant_from_string(std::string_view name) { return enum_from_name(kVariantNames, name, "variant"); }

const OptionTable<CompareConfig>& CompareConfig::table() {
  static const OptionTable<CompareConfig> table = [] {
    using C = CompareConfig;
    OptionTable<C> t("compare", /*flags_by_default=*/false);
    t.add("experiments", &C::experiments, "Experiments of the configuration to run; empty: all (or the base alone)")
        .flag("experiments");
    t.add("seeds", &C::seeds, "Seeds per model and variant").range(1, 1000).flag("seeds");
    t.add("seed_base", &C::seed_base, "The runs' seeds are seed_base, seed_base + 1, ...");
    t.add_enum_list("variants", &C::variants, kVariantNames, "variant", "Variants compared").flag("variants");
    t.add("control_codes", &C::control_codes, "Codes (k) of every no-LM control").at_least(2);
    t.add("control_field", &C::control_field,
          "Item field of control-genres and control-history; empty: the first category field");
    t.add("cf_dim", &C::cf_dim, "Rank of control-cf's factorisation").at_least(1);
    t.add("sparse_quantile", &C::sparse_quantile,
          "Sparse users: the bottom quantile of training history length")
        .range(0, 1)
        .open_below()
        .open_above();
    t.add("learning_rates", &C::learning_rates,
          "Learning rates tried for every model and variant; each reports the rate with the best mean validation "
          "AUC over its seeds (empty: the train section's learning_rate)")
        .flag("learning-rates")
        .written_when([](const C& c) { return !c.learning_rates.empty(); });
    return t;
  }();
  return table;
}

void CompareConfig::validate() const {
  table().check(*this, Spelling::key, "compare");
  USERIP_CHECK(!variants.empty(), "compare: no variants");
  std::set<Variant> seen;
  for (auto v : variants) USERIP_CHECK(seen.insert(v).second, "compare: variant '{}' is listed twice", to_string(v));
  std::set<double> rates;
  for (double r : learning_rates) {
    USERIP_CHECK(std::isfinite(r) && r > 0, "compare: learning_rates must be positive, got {}", r);
    USERIP_CHECK(rates.insert(r).second, "compare: learning rate {} is listed twice", r);
  }
}

json CompareConfig::to_json() const { return table().to_json(*this); }

CompareConfig CompareConfig::from_json(const json& j, const CompareConfig& defaults) {
  CompareConfig c = defaults;
  table().read(j, c, "compare", Absent::keep);
  c.validate();
  return c;
}

namespace {

// Which test rows belong to each user group.
struct Groups {
  std::vector<char> sparse_user;  // per dense user id
  std::int64_t max_history = 0;   // sparse users have at most this many training interactions
  json description;
};

Groups user_groups(const data::Dataset& dataset, const SplitExamples& examples, double quantile) {
  Groups g;
  const data::SplitView train = dataset.training_view();
  std::vector<std::int64_t> lengths;
  for (std::uint32_t u : train.users()) lengths.push_back(static_cast<std::int64_t>(train.user_count(u)));
  USERIP_CHECK(!lengths.empty(), "the training split is empty");
  std::sort(lengths.begin(), lengths.end());
  g.max_history = lengths[static_cast<std::size_t>(quantile * static_cast<double>(lengths.size() - 1))];
  g.sparse_user.assign(dataset.num_users(), 0);
  std::int64_t sparse_users = 0;
  for (std::uint32_t u : train.users()) {
    if (static_cast<std::int64_t>(train.user_count(u)) <= g.max_history) g.sparse_user[u] = 1, ++sparse_users;
  }
  std::int64_t sparse_examples = 0;
  std::set<std::uint32_t> test_users, cold_users;
  for (auto u : examples.test.user) sparse_examples += g.sparse_user[u], test_users.insert(u);
  for (auto u : examples.cold_test.user) cold_users.insert(u);
  g.description = {{"all", {{"users", test_users.size()}, {"examples", examples.test.size()}}},
                   {"sparse", {{"users", sparse_users}, {"examples", sparse_examples}, {"max_history", g.max_history}}},
                   {"cold", {{"users", cold_users.size()}, {"examples", examples.cold_test.size()}}}};
  return g;
}

// Metrics of the examples selected by `keep` (all when empty).
json group_metrics(const std::vector<float>& scores, const Examples& examples, const std::vector<char>& keep_user) {
  std::vector<float> s, labels;
  std::vector<std::int64_t> users;
  const float* label = examples.label.data_ptr<float>();
  for (std::int64_t i = 0; i < examples.size(); ++i) {
    const auto u = examples.user[static_cast<std::size_t>(i)];
    if (!keep_user.empty() && !keep_user[u]) continue;
    s.push_back(scores[static_cast<std::size_t>(i)]);
    labels.push_back(label[i]);
    users.push_back(u);
  }
  std::int64_t positives = 0;
  for (float l : labels) positives += l > 0.5f;
  const double nan = std::nan("");
  const bool both = positives > 0 && positives < static_cast<std::int64_t>(labels.size());
  return {{"auc", number_or_null(both ? auc(s, labels) : nan)},
          {"log_loss", number_or_null(labels.empty() ? nan : log_loss(s, labels))},
          {"gauc", number_or_null(labels.empty() ? nan : grouped_auc(s, labels, users).value)},
          {"examples", labels.size()},
          {"positives", positives}};
}

std::string run_key(const std::string& experiment, Variant variant, std::uint64_t seed) {
  return fmt::format("{}/{}/{}", experiment, to_string(variant), seed);
}

std::string utc_now() {
  std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

json summarize(const json& runs, const std::vector<std::string>& experiments, const std::vector<Variant>& variants) {
  json summary = json::array();
  for (const auto& experiment : experiments) {
    // metric values per (variant, group, metric), keyed by seed so the pairing with base is exact.
    std::map<std::string, std::map<std::uint64_t, double>> values;
    for (const auto& run : runs) {
      if (run["experiment"] != experiment || !run.value("selected", true)) continue;
      for (const char* group : kGroups) {
        for (const char* metric : kMetrics) {
          const json& v = run["groups"][group][metric];
          if (v.is_number()) {
            values[run["variant"].get<std::string>() + "|" + group + "|" + metric][run["seed"].get<std::uint64_t>()] =
                v.get<double>();
          }
        }
      }
    }
    for (auto variant : variants) {
      for (const char* group : kGroups) {
        for (const char* metric : kMetrics) {
          const auto& mine = values[to_string(variant) + "|" + group + "|" + metric];
          const auto& base = values[std::string("base|") + group + "|" + metric];
          std::vector<double> v;
          for (const auto& [seed, value] : mine) v.push_back(value);
          const MeanStd ms = mean_std(v);
          json row = {{"experiment", experiment}, {"variant", to_string(variant)}, {"group", group},
                      {"metric", metric},         {"mean", number_or_null(ms.mean)}, {"std", number_or_null(ms.std)},
                      {"n", ms.n},                {"diff_mean", nullptr},           {"diff_std", nullptr},
                      {"t", nullptr},             {"p_value", nullptr}};
          if (variant != Variant::base) {
            std::vector<double> a, b;
            for (const auto& [seed, value] : mine) {
              auto it = base.find(seed);
              if (it != base.end()) a.push_back(value), b.push_back(it->second);
            }
            if (a.size() >= 2) {
              const PairedTest t = paired_t_test(a, b);
              row["diff_mean"] = number_or_null(t.mean_difference);
              row["diff_std"] = number_or_null(t.std_difference);
              row["t"] = number_or_null(t.t);
              row["p_value"] = number_or_null(t.p_value);
            } else if (a.size() == 1) {
              row["diff_mean"] = number_or_null(a[0] - b[0]);
            }
          }
          summary.push_back(std::move(row));
        }
      }
    }
  }
  return summary;
}

}  // namespace

json run_experiment(const ExperimentInputs& inputs, const CompareConfig& compare, const std::filesystem::path& out,
                    const ExperimentOptions& options) {
  compare.validate();
  USERIP_CHECK(inputs.dataset != nullptr, "experiment: no dataset");
  const data::Dataset& dataset = *inputs.dataset;
  USERIP_CHECK(dataset.has_split(), "experiment: the dataset has no split");
  std::vector<std::string> experiments = compare.experiments;
  if (experiments.empty()) experiments = experiment_names(inputs.config);
  if (experiments.empty()) experiments = {""};  // the base section alone
  std::map<std::string, CtrSettings> settings;
  for (const auto& e : experiments) settings[e] = settings_for(inputs.config, e, inputs.config_path);
  for (auto v : compare.variants) {
    USERIP_CHECK(v != Variant::codes || inputs.userip.codes,
                 "experiment: variant 'codes' needs the UserIP feature bank (--bank), or leave it out of the variants");
    USERIP_CHECK(v != Variant::dense || inputs.userip.vectors,
                 "experiment: variant 'dense' needs the UserIP profile vectors (--profiles), or leave it out of the "
                 "variants");
  }
  std::filesystem::create_directories(out);

  // The controls are computed once: they depend on the data and the seed base, not on the CTR model.
  std::map<Variant, ProfileTables> tables;
  for (auto v : compare.variants) {
    ProfileTables t;
    if (v == Variant::codes) t.codes = inputs.userip.codes;
    if (v == Variant::dense) t.vectors = inputs.userip.vectors;
    if (v == Variant::control_genres) {
      t.codes = histogram_control_codes(dataset, compare.control_field, compare.control_codes, compare.seed_base);
    }
    if (v == Variant::control_cf) {
      t.codes = collaborative_control_codes(dataset, compare.cf_dim, compare.control_codes, compare.seed_base);
    }
    if (v == Variant::control_history) {
      t.codes = history_control_codes(dataset, compare.control_field, compare.control_codes, compare.seed_base);
    }
    tables[v] = std::move(t);
  }

  // Under `userip launch` the runs are dealt out to the ranks (run i to rank i mod W); each is
  // trained whole by one process, so every run is the run one process makes with the same threads.
  dist::World one_process;
  dist::World& world = options.world ? *options.world : one_process;
  const auto runs_path = out / "runs.jsonl";
  const auto rank_runs_path = [&out](int rank) { return out / fmt::format("runs-rank{}.jsonl", rank); };
  const auto rank_runs_files = [&out] {
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(out)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("runs-rank", 0) == 0 && entry.path().extension() == ".jsonl") files.push_back(entry.path());
    }
    return files;
  };

  // Runs already in runs.jsonl (or in a rank's file, from an interrupted run across ranks) with the
  // same inputs are kept: an interrupted or extended experiment only runs what is missing.
  std::map<std::string, json> done;
  if (options.resume) {
    std::vector<std::filesystem::path> sources = {runs_path};
    for (const auto& file : rank_runs_files()) sources.push_back(file);
    for (const auto& source : sources) {
      std::ifstream in(source);
      std::string line;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        try {
          json run = json::parse(line);
          done[run.at("key").get<std::string>() + "#" + run.at("fingerprint").get<std::string>()] = run;
        } catch (const json::exception&) {
          spdlog::warn("{}: ignoring a damaged line (an interrupted write)", source.string());
        }
      }
    }
  }
  world.barrier();  // every rank has read the files before rank 0 rewrites them
  if (world.is_root()) {
    std::string kept;
    for (const auto& [key, run] : done) kept += run.dump() + "\n";
    write_file_atomic(runs_path, kept);
    for (const auto& file : rank_runs_files()) std::filesystem::remove(file);  // their runs are in runs.jsonl now
  }
  world.barrier();
  std::ofstream append(world.distributed() ? rank_runs_path(world.rank()) : runs_path, std::ios::app);

  const std::string dataset_fingerprint = fingerprint_file(std::filesystem::path(inputs.dataset_path) / "manifest.json") +
                                          fingerprint_file(std::filesystem::path(inputs.dataset_path) / "split.json");
  // Every run of the experiment, in the order of the report.
  struct RunSpec {
    std::string experiment, key, fingerprint;
    Variant variant;
    double rate;
    std::uint64_t seed;
    CtrSettings settings;
  };
  std::vector<RunSpec> specs;
  for (const auto& experiment : experiments) {
    const std::vector<double> rates =
        compare.learning_rates.empty() ? std::vector<double>{settings[experiment].train.learning_rate} : compare.learning_rates;
    for (auto variant : compare.variants) {
      for (double rate : rates) {
        for (int s = 0; s < compare.seeds; ++s) {
          RunSpec spec{experiment, "", "", variant, rate, compare.seed_base + static_cast<std::uint64_t>(s),
                       settings[experiment]};
          spec.settings.train.seed = spec.seed;
          spec.settings.train.learning_rate = rate;
          spec.settings.features.profile = variant == Variant::base    ? ProfileInput::none
                                           : variant == Variant::dense ? ProfileInput::dense
                                                                       : ProfileInput::codes;
          spec.key = run_key(experiment, variant, spec.seed);
          if (rates.size() > 1) spec.key += fmt::format("/lr={}", rate);
          spec.fingerprint = hex64(fnv1a64(
              spec.settings.to_json().dump() + dataset_fingerprint + compare.to_json().dump() +
              (variant == Variant::codes || variant == Variant::dense ? inputs.userip_fingerprint : std::string())));
          specs.push_back(std::move(spec));
        }
      }
    }
  }

  // The groups are described from the first run trained (in the report's order), as one process does.
  json groups_description;
  std::size_t groups_from = specs.size();
  std::map<std::size_t, json> finished;  // this rank's runs, by index in `specs`
  for (std::size_t index = 0; index < specs.size(); ++index) {
    if (static_cast<int>(index % static_cast<std::size_t>(world.size())) != world.rank()) continue;
    const RunSpec& spec = specs[index];
    const std::string& key = spec.key;
    const std::size_t total = specs.size();
    auto cached = done.find(key + "#" + spec.fingerprint);
    if (cached != done.end()) {
      spdlog::info("[{}/{}] {}: unchanged, reusing the earlier run", index + 1, total, key);
      finished[index] = cached->second;
      continue;
    }
    spdlog::info("[{}/{}] {}: training", index + 1, total, key);
    TrainOptions train_options = options.train;
    train_options.world = nullptr;  // one run, one process
    TrainedModel t = train_on_dataset(dataset, spec.settings, tables[spec.variant], train_options);
    const Groups groups = user_groups(dataset, t.examples, compare.sparse_quantile);
    if (groups_description.is_null()) groups_description = groups.description, groups_from = index;
    json epochs = json::array();
    for (const auto& e : t.result.epochs) epochs.push_back(e.to_json());
    json run = {{"key", key},
                {"fingerprint", spec.fingerprint},
                {"experiment", spec.experiment.empty() ? "base" : spec.experiment},
                {"model", to_string(spec.settings.model.kind)},
                {"variant", to_string(spec.variant)},
                {"seed", spec.seed},
                {"groups",
                 {{"all", group_metrics(t.test_scores, t.examples.test, {})},
                  {"sparse", group_metrics(t.test_scores, t.examples.test, groups.sparse_user)},
                  {"cold", group_metrics(t.cold_test_scores, t.examples.cold_test, {})}}},
                {"learning_rate", spec.rate},
                {"best_valid_auc", number_or_null(t.result.best_valid.auc)},
                {"best_epoch", t.result.best_epoch},
                {"epochs", epochs},
                {"samples_per_second", t.result.samples_per_second},
                {"seconds", t.result.seconds}};
    spdlog::info("[{}/{}] {}: test AUC {:.4f}, cold AUC {:.4f}", index + 1, total, key,
                 run["groups"]["all"]["auc"].is_number() ? run["groups"]["all"]["auc"].get<double>() : NAN,
                 run["groups"]["cold"]["auc"].is_number() ? run["groups"]["cold"]["auc"].get<double>() : NAN);
    append << run.dump() << "\n";
    append.flush();
    finished[index] = std::move(run);
  }
  append.close();

  // Every rank's runs to every rank, as JSON text, once the slowest rank has finished its share.
  if (world.distributed()) {
    world.wait_for_all("the experiment's runs");
    json mine = {{"runs", json::object()}, {"groups_from", groups_from}, {"groups", groups_description}};
    for (const auto& [index, run] : finished) mine["runs"][std::to_string(index)] = run;
    const std::string text = mine.dump();
    auto bytes = torch::from_blob(const_cast<char*>(text.data()), {static_cast<std::int64_t>(text.size())}, torch::kUInt8)
                     .clone();
    for (const auto& part : world.all_gather_rows(bytes)) {
      const std::string other(reinterpret_cast<const char*>(part.data_ptr<std::uint8_t>()),
                              static_cast<std::size_t>(part.numel()));
      const json theirs = json::parse(other);
      for (auto it = theirs["runs"].begin(); it != theirs["runs"].end(); ++it) finished[std::stoul(it.key())] = it.value();
      const auto from = theirs["groups_from"].get<std::size_t>();
      if (from < groups_from) groups_from = from, groups_description = theirs["groups"];
    }
  }
  json runs = json::array();
  for (std::size_t index = 0; index < specs.size(); ++index) runs.push_back(finished.at(index));
  if (world.distributed() && world.is_root()) {
    std::string all;
    for (const auto& run : runs) all += run.dump() + "\n";
    write_file_atomic(runs_path, all);
    for (const auto& file : rank_runs_files()) std::filesystem::remove(file);
  }

  // The rate each variant reports: the best mean validation AUC over its seeds. Test metrics play
  // no part, so the comparison with base stays a held-out one.
  json chosen_rates = json::object();
  for (std::size_t first_run = 0; first_run < specs.size();) {
    std::size_t end = first_run;
    while (end < specs.size() && specs[end].experiment == specs[first_run].experiment &&
           specs[end].variant == specs[first_run].variant)
      ++end;
    const std::vector<double> rates =
        compare.learning_rates.empty() ? std::vector<double>{specs[first_run].rate} : compare.learning_rates;
    std::map<double, std::vector<double>> valid_by_rate;
    for (std::size_t r = first_run; r < end; ++r) {
      // Runs from before rates were recorded are reused only with one rate, which needs no comparison.
      const json& auc = runs[r].value("best_valid_auc", json());
      valid_by_rate[runs[r].value("learning_rate", rates.front())].push_back(auc.is_number() ? auc.get<double>() : -1);
    }
    double chosen = rates.front(), best_mean = -1;
    for (double rate : rates) {
      const double m = mean_std(valid_by_rate[rate]).mean;
      if (m > best_mean) best_mean = m, chosen = rate;
    }
    for (std::size_t r = first_run; r < end; ++r) {
      runs[r]["selected"] = runs[r].value("learning_rate", rates.front()) == chosen;
    }
    const std::string& experiment = specs[first_run].experiment;
    chosen_rates[experiment.empty() ? "base" : experiment][to_string(specs[first_run].variant)] = chosen;
    first_run = end;
  }
  if (groups_description.is_null()) {
    // Every run came from runs.jsonl: describe the groups from one encoding of the data.
    const FeatureEncoder encoder = FeatureEncoder::fit(dataset, dataset.training_view(), FeatureConfig{});
    groups_description = user_groups(dataset, encode_splits(encoder, dataset, {}), compare.sparse_quantile).description;
  }

  std::vector<std::string> names;
  for (const auto& e : experiments) names.push_back(e.empty() ? "base" : e);
  std::vector<std::string> variant_names;
  for (auto v : compare.variants) variant_names.push_back(to_string(v));
  std::vector<std::uint64_t> seeds;
  for (int s = 0; s < compare.seeds; ++s) seeds.push_back(compare.seed_base + static_cast<std::uint64_t>(s));
  json result = {{"format", "userip-experiment"},
                 {"version", 1},
                 {"created_at", utc_now()},
                 {"dataset", inputs.dataset_path},
                 {"config", inputs.config_path},
                 {"compare", compare.to_json()},
                 {"seeds", seeds},
                 {"experiments", names},
                 {"variants", variant_names},
                 {"groups", groups_description},
                 {"learning_rates", chosen_rates},
                 {"runs", runs},
                 {"summary", summarize(runs, names, compare.variants)}};
  if (world.is_root()) {
    write_file_atomic(out / "experiment.json", result.dump(1) + "\n");
    write_file_atomic(out / "results.md", results_table(result));
  }
  world.barrier();  // the files are written when any rank returns
  return result;
}

std::string results_table(const json& experiment) {
  auto cell = [](const json& row) {
    if (!row["mean"].is_number()) return std::string("n/a");
    return fmt::format("{:.4f} ± {:.4f}", row["mean"].get<double>(), row["std"].is_number() ? row["std"].get<double>() : 0.0);
  };
  auto diff = [](const json& row) {
    if (!row["diff_mean"].is_number()) return std::string("");
    std::string text = fmt::format("{:+.4f}", row["diff_mean"].get<double>());
    if (row["p_value"].is_number()) text += fmt::format(" (p={:.3f})", row["p_value"].get<double>());
    return text;
  };
  std::string text;
  const json& groups = experiment["groups"];
  text += fmt::format("Seeds: {}. Test examples: all {} ({} users), sparse {} ({} users, at most {} training "
                      "interactions), cold {} ({} users).\n\n",
                      experiment["seeds"].size(), groups["all"]["examples"].dump(), groups["all"]["users"].dump(),
                      groups["sparse"]["examples"].dump(), groups["sparse"]["users"].dump(),
                      groups["sparse"]["max_history"].dump(), groups["cold"]["examples"].dump(),
                      groups["cold"]["users"].dump());
  for (const char* metric : {"auc", "log_loss"}) {
    text += fmt::format("{} (mean ± std over seeds; paired difference to base, t-test p-value)\n\n",
                        std::string(metric) == "auc" ? "AUC" : "LogLoss");
    text += "| model | variant | all | Δ all | sparse | Δ sparse | cold | Δ cold |\n";
    text += "|---|---|---|---|---|---|---|---|\n";
    for (const auto& e : experiment["experiments"]) {
      for (const auto& v : experiment["variants"]) {
        std::string line = fmt::format("| {} | {} |", e.get<std::string>(), v.get<std::string>());
        for (const char* group : kGroups) {
          for (const auto& row : experiment["summary"]) {
            if (row["experiment"] == e && row["variant"] == v && row["group"] == group && row["metric"] == metric) {
              line += fmt::format(" {} | {} |", cell(row), diff(row));
            }
          }
        }
        text += line + "\n";
      }
    }
    text += "\n";
  }
  const json& tried = experiment["compare"].value("learning_rates", json::array());
  if (tried.size() > 1) {
    std::vector<std::string> tried_text;
    for (const auto& r : tried) tried_text.push_back(fmt::format("{}", r.get<double>()));
    text += fmt::format("Learning rate of each model and variant, the best mean validation AUC of {}:\n\n",
                        join(tried_text, ", "));
    text += "| model | " + join(experiment["variants"].get<std::vector<std::string>>(), " | ") + " |\n|---|";
    for (std::size_t i = 0; i < experiment["variants"].size(); ++i) text += "---|";
    text += "\n";
    for (const auto& e : experiment["experiments"]) {
      text += "| " + e.get<std::string>() + " |";
      for (const auto& v : experiment["variants"]) {
        const json& rate = experiment["learning_rates"][e.get<std::string>()][v.get<std::string>()];
        text += " " + (rate.is_number() ? fmt::format("{}", rate.get<double>()) : std::string("?")) + " |";
      }
      text += "\n";
    }
    text += "\n";
  }
  return text;
}

}  // namespace userip::ctr
