#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <iostream>

#include "commands.h"
#include "model_options.h"
#include "option_flags.h"
#include "userip/dist/world.h"
#include "userip/ctr/experiment.h"
#include "userip/ctr/pipeline.h"
#include "userip/data/records.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/log.h"

namespace userip::cli {

namespace {

using nlohmann::json;

// Options that choose a profile input for a CTR model: the feature bank(s) for codes, or profile
// run directories for dense vectors.
struct ProfileSourceOptions {
  std::vector<std::filesystem::path> banks;
  std::vector<std::filesystem::path> profile_dirs;
};

void add_profile_source_options(CLI::App* cmd, ProfileSourceOptions& o) {
  cmd->add_option("--bank", o.banks,
                  "Feature bank(s) with the users' profile codes (repeat for warm and fold-in banks); "
                  "makes the model read profile codes");
  cmd->add_option("--profiles", o.profile_dirs,
                  "Profile run directories (profile fit / profile infer outputs) whose dense vectors the "
                  "model reads instead of codes");
}

ctr::ProfileTables load_tables(const ProfileSourceOptions& o) {
  ctr::ProfileTables tables;
  if (!o.banks.empty()) tables.codes = ctr::UserCodeTable::from_banks(o.banks);
  if (!o.profile_dirs.empty()) tables.vectors = ctr::UserVectorTable::from_profile_dirs(o.profile_dirs);
  return tables;
}

std::string number(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : std::string("n/a"); }

void write_scores(const std::filesystem::path& path, const std::vector<std::string>& users,
                  const std::vector<std::string>& items, const std::vector<float>& scores) {
  std::string text = "user,item,score\n";
  for (std::size_t i = 0; i < scores.size(); ++i) {
    text += fmt::format("{},{},{:.9g}\n", users[i], items[i], scores[i]);
  }
  write_file_atomic(path, text);
}

// Settings given on the command line, by section and key: they override the configuration file's.
struct SettingFlags {
  ctr::CtrSettings shown;  // the defaults --help prints (a flag's value lands here too)
  nlohmann::json model = json::object(), train = json::object(), features = json::object();

  void add_to(CLI::App* cmd) {
    add_option_flags(cmd, ctr::ModelConfig::table(), shown.model, &model);
    add_option_flags(cmd, ctr::TrainConfig::table(), shown.train, &train);
    add_option_flags(cmd, ctr::FeatureConfig::table(), shown.features, &features);
  }
  void apply(ctr::CtrSettings& s) const {
    ctr::ModelConfig::table().read(model, s.model, "command line", Absent::keep);
    ctr::TrainConfig::table().read(train, s.train, "command line", Absent::keep);
    ctr::FeatureConfig::table().read(features, s.features, "command line", Absent::keep);
    s.model.validate();
    s.train.validate();
    s.features.validate();
  }
};

struct TrainCommand {
  std::filesystem::path dataset, out, config;
  std::string experiment, device = "cpu";
  ProfileSourceOptions sources;
  SettingFlags flags;

  void run() const {
    const data::Dataset ds = data::Dataset::load(dataset);
    ctr::CtrSettings settings;
    if (!config.empty()) {
      settings = ctr::settings_for(ctr::read_config_file(config), experiment, config.string());
    } else {
      USERIP_CHECK(experiment.empty(), "--experiment needs --config");
    }
    flags.apply(settings);
    const std::uint64_t seed = settings.train.seed;
    // The profile input follows what was given unless the configuration or --profile-input says.
    if (!flags.features.contains("profile") && settings.features.profile == ctr::ProfileInput::none) {
      if (!sources.banks.empty()) settings.features.profile = ctr::ProfileInput::codes;
      if (!sources.profile_dirs.empty()) settings.features.profile = ctr::ProfileInput::dense;
    }
    USERIP_CHECK(sources.banks.empty() || sources.profile_dirs.empty(),
                 "give --bank (profile codes) or --profiles (dense vectors), not both");
    const ctr::ProfileTables tables = load_tables(sources);

    ctr::TrainOptions options;
    options.device = device_of(device);
    // Under `userip launch` the ranks train the one model data-parallel; rank 0 saves it.
    options.world = &dist::World::get();
    ctr::TrainedModel t = ctr::train_on_dataset(ds, settings, tables, options);
    if (!options.world->is_root()) return;

    json result = {{"command", "ctr train"},
                   {"dataset", std::filesystem::absolute(dataset).string()},
                   {"seed", seed},
                   {"model", ctr::to_string(settings.model.kind)},
                   {"profile", ctr::to_string(settings.features.profile)},
                   {"profile_source", tables.codes ? tables.codes->source : tables.vectors ? tables.vectors->source : ""},
                   {"settings", settings.to_json()},
                   {"best_epoch", t.result.best_epoch},
                   {"valid", t.result.best_valid.to_json()},
                   {"test", t.test.to_json()},
                   {"cold_test", t.cold_test.to_json()},
                   {"samples_per_second", t.result.samples_per_second},
                   {"seconds", t.result.seconds}};
    ctr::save_model(out, *t.model, settings.model, settings.train, t.encoder,
                    {{"seed", seed}, {"result", result}, {"training", t.result.to_json()}});
    std::string log;
    for (const auto& e : t.result.epochs) log += e.to_json().dump() + "\n";
    write_file_atomic(out / "log.jsonl", log);

    // The test scores as `ctr predict` would produce them for the same pairs.
    const data::SplitView test = ds.view({data::SplitPart::test});
    std::vector<std::string> users, items;
    for (std::size_t i = 0; i < test.size(); ++i) {
      users.push_back(ds.user_ids[test.user(i)]);
      items.push_back(ds.item_ids[test.item(i)]);
    }
    write_scores(out / "test_scores.csv", users, items, t.test_scores);

    std::cerr << fmt::format("{} ({} profile): best epoch {} of {}; test AUC {} LogLoss {} gAUC {}; cold users AUC {} "
                             "LogLoss {}; {:.0f} samples/s\nmodel saved in {}\n",
                             ctr::to_string(settings.model.kind), ctr::to_string(settings.features.profile),
                             t.result.best_epoch, t.result.epochs.size(), number(t.test.auc), number(t.test.log_loss),
                             number(t.test.gauc), number(t.cold_test.auc), number(t.cold_test.log_loss),
                             t.result.samples_per_second, out.string());
    std::cout << result.dump() << "\n";
  }
};

struct PredictCommand {
  std::filesystem::path model_dir, input, output;
  std::string user_column = "user", item_column = "item", device = "cpu";
  ProfileSourceOptions sources;

  void run() const {
    ctr::SavedModel saved = ctr::load_model(model_dir, device_of(device));
    const ctr::ProfileTables tables = load_tables(sources);

    data::RecordOptions options;
    auto reader = data::open_records(input, options);
    const int user_index = reader->column_index(user_column);
    const int item_index = reader->column_index(item_column);
    USERIP_CHECK(user_index >= 0, "{}: no column '{}' (use --user-column)", input.string(), user_column);
    USERIP_CHECK(item_index >= 0, "{}: no column '{}' (use --item-column)", input.string(), item_column);
    std::vector<std::string> users, items;
    while (reader->next()) {
      auto user = reader->field(user_index);
      auto item = reader->field(item_index);
      USERIP_CHECK(user && !user->empty(), "{}: empty '{}'", reader->where(), user_column);
      USERIP_CHECK(item && !item->empty(), "{}: empty '{}'", reader->where(), item_column);
      users.emplace_back(*user);
      items.emplace_back(*item);
    }
    ctr::EncodeCounts counts;
    const ctr::Examples examples =
        saved.encoder.encode_pairs(users, items, tables.code_table(), tables.vector_table(), &counts);
    const std::vector<float> scores = ctr::predict(*saved.model, examples, device_of(device));
    if (output.empty()) {
      std::cout << "user,item,score\n";
      for (std::size_t i = 0; i < scores.size(); ++i) std::cout << fmt::format("{},{},{:.9g}\n", users[i], items[i], scores[i]);
    } else {
      write_scores(output, users, items, scores);
    }
    spdlog::info("scored {} pairs: {} unknown users, {} unknown items, {} without a profile", counts.examples,
                 counts.unknown_users, counts.unknown_items, counts.missing_profiles);
  }
};

struct ExperimentCommand {
  std::filesystem::path dataset, config, out;
  ProfileSourceOptions sources;
  ctr::CompareConfig shown;  // the defaults --help prints
  nlohmann::json compare_flags = json::object();  // "compare" options given on the command line
  std::string device = "cpu";
  bool fresh = false;

  void run() const {
    const data::Dataset ds = data::Dataset::load(dataset);
    ctr::ExperimentInputs inputs;
    inputs.dataset = &ds;
    inputs.dataset_path = std::filesystem::absolute(dataset).string();
    if (!config.empty()) {
      inputs.config = ctr::read_config_file(config);
      inputs.config_path = config.string();
    }
    ctr::CompareConfig compare;
    if (inputs.config.contains("compare")) {
      compare = ctr::CompareConfig::from_json(inputs.config["compare"], compare);
    }
    ctr::CompareConfig::table().read(compare_flags, compare, "command line", Absent::keep);
    compare.validate();
    inputs.userip = load_tables(sources);
    if (inputs.userip.codes) inputs.userip_fingerprint += inputs.userip.codes->fingerprint();
    for (const auto& dir : sources.profile_dirs) inputs.userip_fingerprint += fingerprint_file(dir / "profiles.safetensors");

    ctr::ExperimentOptions options;
    options.train.device = device_of(device);
    options.train.show_progress = false;  // one line per run is the progress here
    options.resume = !fresh;
    // Under `userip launch` the runs are dealt out to the ranks; rank 0 writes and prints the results.
    options.world = &dist::World::get();
    const nlohmann::json result = ctr::run_experiment(inputs, compare, out, options);
    if (!options.world->is_root()) return;
    std::cout << ctr::results_table(result);
    std::cerr << "results in " << (out / "experiment.json").string() << " and " << (out / "results.md").string() << "\n";
  }
};

}  // namespace

void add_ctr_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* ctr = app.add_subcommand("ctr", "CTR models over dataset fields and profile IDs: train, predict");
  ctr->require_subcommand(1);

  {
    auto o = std::make_shared<TrainCommand>();
    auto* cmd = ctr->add_subcommand(
        "train", "Train one CTR model on a dataset's training split (early stopping on validation AUC); "
                 "prints one JSON result line with validation, test and cold-user metrics");
    cmd->add_option("--dataset", o->dataset, "Dataset directory (with a split)")->required();
    cmd->add_option("--out", o->out, "Output directory for the model (ctr_model.json, features.json, weights)")->required();
    cmd->add_option("--config", o->config, "Configuration file (JSON: base section + experiments, docs/CTR.md)");
    cmd->add_option("--experiment", o->experiment, "Named experiment of the configuration file to train");
    add_profile_source_options(cmd, o->sources);
    o->flags.add_to(cmd);
    cmd->add_option("--device", o->device, "cpu or cuda[:N]")->capture_default_str();
    on_run(cmd, [o] { o->run(); });
  }
  {
    auto o = std::make_shared<PredictCommand>();
    auto* cmd = ctr->add_subcommand("predict", "Score (user, item) pairs of a CSV with a trained model");
    cmd->add_option("--model", o->model_dir, "Trained model directory (ctr train --out)")->required();
    cmd->add_option("--input", o->input, "CSV or JSON-lines file of pairs")->required();
    cmd->add_option("--out", o->output, "Output CSV (user,item,score); default: standard output");
    cmd->add_option("--user-column", o->user_column, "Column of user ids")->capture_default_str();
    cmd->add_option("--item-column", o->item_column, "Column of item ids")->capture_default_str();
    add_profile_source_options(cmd, o->sources);
    cmd->add_option("--device", o->device, "cpu or cuda[:N]")->capture_default_str();
    on_run(cmd, [o] { o->run(); });
  }
  {
    auto o = std::make_shared<ExperimentCommand>();
    auto* cmd = app.add_subcommand(
        "experiment",
        "Compare variants (base, UserIP codes, UserIP dense profiles, three no-LM controls) for each CTR model over "
        "several seeds: mean ± std and paired t-tests for all, sparse and cold users");
    cmd->add_option("--dataset", o->dataset, "Dataset directory (with a split)")->required();
    cmd->add_option("--config", o->config, "Configuration file (base, experiments, compare; docs/CTR.md)");
    cmd->add_option("--out", o->out, "Output directory (runs.jsonl, experiment.json, results.md)")->required();
    add_profile_source_options(cmd, o->sources);
    add_option_flags(cmd, ctr::CompareConfig::table(), o->shown, &o->compare_flags);
    cmd->add_flag("--fresh", o->fresh, "Ignore runs of an earlier invocation instead of reusing unchanged ones");
    cmd->add_option("--device", o->device, "cpu or cuda[:N]")->capture_default_str();
    on_run(cmd, [o] { o->run(); });
  }
}

}  // namespace userip::cli
