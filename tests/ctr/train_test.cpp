#include <gtest/gtest.h>

#include <map>
#include <torch/nn/module.h>
#include <torch/optim/adam.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <fstream>

#include "ctr/ctr_test_support.h"
#include "support/temp_dir.h"
#include "userip/ctr/controls.h"
#include "userip/ctr/experiment.h"
#include "userip/ctr/pipeline.h"
#include "userip/store/feature_bank.h"
#include "userip/util/fs.h"

namespace userip::ctr {
namespace {

using testing::expect_error;

const data::Dataset& world() {
  static const data::Dataset d = testing::preference_dataset();
  return d;
}

CtrSettings quick_settings(ModelKind kind) {
  CtrSettings s;
  s.model.kind = kind;
  s.train.max_epochs = 6;
  s.train.batch_size = 128;
  s.train.learning_rate = 0.02;
  return s;
}

TrainOptions quiet() {
  TrainOptions o;
  o.show_progress = false;
  return o;
}

TEST(CtrTrain, EveryModelLearnsThePreferenceWorld) {
  for (ModelKind kind : {ModelKind::lr, ModelKind::fm, ModelKind::deepfm, ModelKind::dcn, ModelKind::dcnv2}) {
    CtrSettings settings = quick_settings(kind);
    settings.train.max_epochs = 12;
    const TrainedModel t = train_on_dataset(world(), settings, {}, quiet());
    // LR sees only the items' quality (user and item biases). FM and DeepFM learn which category each
    // user prefers from a few thousand rows; DCN's low-rank crosses and small MLP need more data than
    // this world has, so they are only required to beat LR's level.
    const double floor = kind == ModelKind::lr ? 0.54 : (kind == ModelKind::fm || kind == ModelKind::deepfm) ? 0.72 : 0.57;
    EXPECT_GT(t.result.best_valid.auc, floor) << to_string(kind);
    EXPECT_GT(t.test.auc, floor) << to_string(kind);
    EXPECT_GE(t.result.best_epoch, 1);
    EXPECT_EQ(t.test_scores.size(), static_cast<std::size_t>(t.examples.test.size()));
    EXPECT_GT(t.result.samples_per_second, 0);
  }
}

TEST(CtrTrain, SameSeedSameScoresOnTheCpu) {
  const TrainedModel a = train_on_dataset(world(), quick_settings(ModelKind::deepfm), {}, quiet());
  const TrainedModel b = train_on_dataset(world(), quick_settings(ModelKind::deepfm), {}, quiet());
  EXPECT_EQ(a.test_scores, b.test_scores);
  auto other = quick_settings(ModelKind::deepfm);
  other.train.seed = 43;
  const TrainedModel c = train_on_dataset(world(), other, {}, quiet());
  EXPECT_NE(a.test_scores, c.test_scores);
}

TEST(CtrTrain, EarlyStoppingKeepsTheBestEpoch) {
  auto s = quick_settings(ModelKind::dcn);
  s.train.max_epochs = 12;
  s.train.patience = 2;
  s.train.learning_rate = 0.05;  // overfits fast, so validation AUC turns down
  const TrainedModel t = train_on_dataset(world(), s, {}, quiet());
  double best = -1;
  for (const auto& e : t.result.epochs) best = std::max(best, e.valid.auc);
  EXPECT_DOUBLE_EQ(t.result.best_valid.auc, best);
  // The restored model is the best epoch's: scoring validation again reproduces its AUC.
  const Evaluation again = evaluate(predict(*t.model, t.examples.valid), t.examples.valid);
  EXPECT_NEAR(again.auc, best, 1e-9);
  // Learning rate decays after an epoch without gain.
  for (std::size_t i = 1; i < t.result.epochs.size(); ++i) {
    EXPECT_LE(t.result.epochs[i].learning_rate, t.result.epochs[i - 1].learning_rate);
  }
}

TEST(CtrTrain, SavedModelScoresExactlyAsAtTheEndOfTraining) {
  const TrainedModel t = train_on_dataset(world(), quick_settings(ModelKind::dcnv2), {}, quiet());
  testing::TempDir dir;
  save_model(dir.path(), *t.model, quick_settings(ModelKind::dcnv2).model, quick_settings(ModelKind::dcnv2).train,
             t.encoder, {{"seed", 42}});
  SavedModel saved = load_model(dir.path());
  const data::SplitView test = world().view({data::SplitPart::test});
  std::vector<std::string> users, items;
  for (std::size_t i = 0; i < test.size(); ++i) {
    users.push_back(world().user_ids[test.user(i)]);
    items.push_back(world().item_ids[test.item(i)]);
  }
  const std::vector<float> scores = predict(*saved.model, saved.encoder.encode_pairs(users, items, nullptr, nullptr));
  ASSERT_EQ(scores.size(), t.test_scores.size());
  for (std::size_t i = 0; i < scores.size(); ++i) EXPECT_NEAR(scores[i], t.test_scores[i], 1e-6) << i;
  EXPECT_EQ(saved.record["seed"], 42);
}

TEST(CtrTrain, MismatchedModelFilesAreRefused) {
  testing::TempDir dir;
  auto save = [&](const std::string& name, ModelKind kind, std::int64_t min_count) {
    CtrSettings s = quick_settings(kind);
    s.train.max_epochs = 1;
    s.features.min_count = min_count;
    const TrainedModel t = train_on_dataset(world(), s, {}, quiet());
    save_model(dir / name, *t.model, s.model, s.train, t.encoder, nlohmann::json::object());
  };
  save("a", ModelKind::dcn, 2);
  save("b", ModelKind::dcn, 5);
  std::filesystem::copy_file(dir / "b" / "features.json", dir / "a" / "features.json",
                             std::filesystem::copy_options::overwrite_existing);
  expect_error([&] { load_model(dir / "a"); }, {"features.json", "does not belong"});

  save("c", ModelKind::lr, 2);
  save("d", ModelKind::dcn, 2);
  std::filesystem::copy_file(dir / "c" / "weights.safetensors", dir / "d" / "weights.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  expect_error([&] { load_model(dir / "d"); }, {"weights.safetensors", "missing"});
  expect_error([&] { load_model(dir / "nothing"); }, {"nothing", "not a trained CTR model"});
  std::filesystem::create_directories(dir / "e");
  dir.write("e/ctr_model.json", "{not json");
  expect_error([&] { load_model(dir / "e"); }, {"ctr_model.json", "not valid JSON"});
}

TEST(CtrSettings, BaseAndExperimentOverridesMerge) {
  const nlohmann::json config = nlohmann::json::parse(R"({
    "base": {"model": {"embedding_dim": 4, "mlp": [8]}, "train": {"max_epochs": 2}},
    "experiments": {"wide": {"model": {"kind": "deepfm", "mlp": [32, 16]}}, "plain": {}}
  })");
  const CtrSettings base = settings_for(config, "", "test.json");
  EXPECT_EQ(base.model.kind, ModelKind::dcn);
  EXPECT_EQ(base.model.embedding_dim, 4);
  const CtrSettings wide = settings_for(config, "wide", "test.json");
  EXPECT_EQ(wide.model.kind, ModelKind::deepfm);
  EXPECT_EQ(wide.model.embedding_dim, 4);
  EXPECT_EQ(wide.model.mlp, (std::vector<std::int64_t>{32, 16}));
  EXPECT_EQ(wide.train.max_epochs, 2);
  EXPECT_EQ(experiment_names(config), (std::vector<std::string>{"plain", "wide"}));
}

TEST(CtrSettings, EmbeddingOptimizerRoundTripsAndDefaultsToLazyAdam) {
  EXPECT_EQ(TrainConfig().embedding_optimizer, EmbeddingOptimizer::lazy_adam);
  EXPECT_FALSE(TrainConfig().embedding_learning_rate.has_value());
  EXPECT_DOUBLE_EQ(TrainConfig().optimizer_settings().embedding_learning_rate, TrainConfig().learning_rate);
  TrainConfig c;
  c.embedding_optimizer = EmbeddingOptimizer::adagrad;
  c.embedding_learning_rate = 0.05;
  const TrainConfig back = TrainConfig::from_json(c.to_json());
  EXPECT_EQ(back.embedding_optimizer, EmbeddingOptimizer::adagrad);
  EXPECT_EQ(back.embedding_learning_rate, 0.05);
  EXPECT_DOUBLE_EQ(back.optimizer_settings().embedding_learning_rate, 0.05);
  // null means "as learning_rate", and a record written before the key existed reads as the default.
  EXPECT_FALSE(TrainConfig::from_json(TrainConfig().to_json()).embedding_learning_rate.has_value());
  EXPECT_EQ(TrainConfig::from_json(nlohmann::json{{"learning_rate", 0.01}}).embedding_optimizer,
            EmbeddingOptimizer::lazy_adam);
}

// Every embedding optimizer trains: FM on the preference world beats the floor that
// EveryModelLearnsThePreferenceWorld sets for it (Adagrad with its usual 10× learning rate).
TEST(CtrTrain, EveryEmbeddingOptimizerLearns) {
  for (auto kind : {EmbeddingOptimizer::adam, EmbeddingOptimizer::lazy_adam, EmbeddingOptimizer::adagrad}) {
    CtrSettings settings = quick_settings(ModelKind::fm);
    settings.train.max_epochs = 12;
    settings.train.embedding_optimizer = kind;
    if (kind == EmbeddingOptimizer::adagrad) settings.train.embedding_learning_rate = 0.2;
    const TrainedModel t = train_on_dataset(world(), settings, {}, quiet());
    EXPECT_GT(t.test.auc, 0.72) << to_string(kind);
  }
}

TEST(CtrSettings, BadValuesNameFileSectionAndKey) {
  auto parse = [](const char* text) { return nlohmann::json::parse(text); };
  expect_error([&] { settings_for(parse(R"({"base": {"train": {"batch_size": 0}}})"), "", "c.json"); },
               {"c.json", "batch_size"});
  expect_error([&] { settings_for(parse(R"({"base": {"train": {"learning_rate": "fast"}}})"), "", "c.json"); },
               {"c.json", "learning_rate", "number"});
  expect_error([&] { settings_for(parse(R"({"base": {"modle": {}}})"), "", "c.json"); }, {"c.json", "modle"});
  expect_error([&] { settings_for(parse(R"({"base": {}, "experiments": {"a": {}}})"), "b", "c.json"); },
               {"c.json", "'b'", "a"});
  expect_error([&] { settings_for(parse(R"({"bsae": {}})"), "", "c.json"); }, {"c.json", "bsae"});
  expect_error([&] { settings_for(parse(R"({"base": {"model": {"kind": "xgboost"}}})"), "", "c.json"); },
               {"c.json", "xgboost"});
  expect_error([&] { settings_for(parse(R"({"base": {"train": {"embedding_optimizer": "sgd"}}})"), "", "c.json"); },
               {"c.json", "embedding_optimizer", "sgd", "lazy_adam"});
  expect_error([&] { settings_for(parse(R"({"base": {"train": {"embedding_learning_rate": -1}}})"), "", "c.json"); },
               {"c.json", "embedding_learning_rate"});
  expect_error([&] { CompareConfig::from_json(parse(R"({"seeds": 0})"), {}); }, {"seeds"});
  expect_error([&] { CompareConfig::from_json(parse(R"({"variants": ["base", "llm"]})"), {}); }, {"llm"});
}

TEST(CtrExperiment, RunsEveryVariantAndSeedComparesWithBaseAndResumes) {
  testing::TempDir dir;
  const data::Dataset& d = world();
  d.save(dir / "dataset");
  const data::Dataset loaded = data::Dataset::load(dir / "dataset");

  testing::write_control_bank(loaded, 4, dir / "bank.sqlite");

  ExperimentInputs inputs;
  inputs.dataset = &loaded;
  inputs.dataset_path = (dir / "dataset").string();
  inputs.config = nlohmann::json::parse(R"({
    "base": {"train": {"max_epochs": 2, "batch_size": 256, "learning_rate": 0.01}},
    "experiments": {"dcn": {"model": {"kind": "dcn"}}, "fm": {"model": {"kind": "fm"}}}})");
  inputs.config_path = "inline";
  inputs.userip.codes = UserCodeTable::from_banks({dir / "bank.sqlite"});
  inputs.userip_fingerprint = fingerprint_file(dir / "bank.sqlite");
  CompareConfig compare;
  compare.seeds = 2;
  compare.control_codes = 4;
  compare.variants = {Variant::base, Variant::codes, Variant::control_genres, Variant::control_cf};
  ExperimentOptions options;
  options.train = quiet();

  const nlohmann::json first = run_experiment(inputs, compare, dir / "out", options);
  ASSERT_EQ(first["runs"].size(), 2u * 4u * 2u);
  EXPECT_EQ(first["summary"].size(), 2u * 4u * 3u * 3u);  // experiments x variants x groups x metrics
  for (const auto& row : first["summary"]) {
    if (row["variant"] == "base") {
      EXPECT_TRUE(row["diff_mean"].is_null());
    } else if (row["mean"].is_number()) {
      EXPECT_TRUE(row["p_value"].is_number()) << row.dump();
    }
  }
  EXPECT_GT(first["groups"]["cold"]["examples"].get<int>(), 0);
  EXPECT_GT(first["groups"]["sparse"]["users"].get<int>(), 0);
  EXPECT_TRUE(std::filesystem::exists(dir / "out" / "results.md"));
  EXPECT_NE(read_file(dir / "out" / "results.md").find("| dcn | control-cf |"), std::string::npos);

  // Cold users have codes in every code variant, so profiles reach the cold group.
  for (const auto& [user, codes] : histogram_control_codes(loaded, "", 4, 1).codes) EXPECT_EQ(codes.size(), 1u);

  // A second invocation reuses every run: identical results, nothing retrained.
  const nlohmann::json second = run_experiment(inputs, compare, dir / "out", options);
  EXPECT_EQ(second["runs"], first["runs"]);
  EXPECT_EQ(second["summary"], first["summary"]);
}

// With several learning rates, each model and variant reports the rate whose seeds have the best mean
// validation AUC; the summary and the paired tests use that rate's runs only.
TEST(CtrExperiment, EachVariantReportsTheLearningRateBestOnValidation) {
  testing::TempDir dir;
  const data::Dataset& d = world();
  testing::write_control_bank(d, 4, dir / "bank.sqlite");
  ExperimentInputs inputs;
  inputs.dataset = &d;
  inputs.dataset_path = (dir / "dataset").string();
  d.save(dir / "dataset");
  inputs.config = nlohmann::json::parse(R"({"base": {"model": {"kind": "fm"}, "train": {"max_epochs": 2, "batch_size": 256}}})");
  inputs.config_path = "inline";
  inputs.userip.codes = UserCodeTable::from_banks({dir / "bank.sqlite"});
  inputs.userip_fingerprint = fingerprint_file(dir / "bank.sqlite");
  CompareConfig compare;
  compare.seeds = 2;
  compare.variants = {Variant::base, Variant::codes};
  // A rate too small to move the weights in two epochs, and a working one.
  compare.learning_rates = {1e-7, 0.01};
  ExperimentOptions options;
  options.train = quiet();

  const nlohmann::json result = run_experiment(inputs, compare, dir / "out", options);
  ASSERT_EQ(result["runs"].size(), 2u * 2u * 2u);  // variants x rates x seeds
  for (const char* variant : {"base", "codes"}) {
    std::map<double, double> valid_sum;
    for (const auto& run : result["runs"]) {
      if (run["variant"] != variant) continue;
      valid_sum[run["learning_rate"].get<double>()] += run["best_valid_auc"].get<double>();
    }
    const double best = valid_sum[0.01] > valid_sum[1e-7] ? 0.01 : 1e-7;
    EXPECT_EQ(result["learning_rates"]["base"][variant].get<double>(), best) << variant;
    for (const auto& run : result["runs"]) {
      if (run["variant"] == variant) {
        EXPECT_EQ(run["selected"].get<bool>(), run["learning_rate"].get<double>() == best);
      }
    }
    // The summary's mean over seeds is the chosen rate's.
    double test_sum = 0;
    for (const auto& run : result["runs"]) {
      if (run["variant"] == variant && run["selected"].get<bool>()) test_sum += run["groups"]["all"]["auc"].get<double>();
    }
    for (const auto& row : result["summary"]) {
      if (row["variant"] == variant && row["group"] == "all" && row["metric"] == "auc") {
        EXPECT_EQ(row["n"].get<int>(), 2);
        EXPECT_NEAR(row["mean"].get<double>(), test_sum / 2, 1e-12);
      }
    }
  }
  EXPECT_NE(read_file(dir / "out" / "results.md").find("best mean validation AUC of 1e-07, 0.01"), std::string::npos);

  expect_error([&] { CompareConfig::from_json(nlohmann::json::parse(R"({"learning_rates": [0.01, 0]})"), {}); },
               {"learning_rates", "positive"});
  expect_error([&] { CompareConfig::from_json(nlohmann::json::parse(R"({"learning_rates": [0.01, 0.01]})"), {}); },
               {"0.01", "twice"});
}

TEST(CtrExperiment, VariantsWithoutTheirInputsAreRefused) {
  testing::TempDir dir;
  ExperimentInputs inputs;
  inputs.dataset = &world();
  CompareConfig compare;
  compare.variants = {Variant::base, Variant::dense};
  expect_error([&] { run_experiment(inputs, compare, dir / "out", {}); }, {"dense", "--profiles"});
}

TEST(CtrControls, CollaborativeCodesCoverWarmAndColdUsers) {
  const data::Dataset& d = world();
  const UserCodeTable t = collaborative_control_codes(d, 8, 5, 3);
  std::size_t users_with_rows = 0;
  const data::SplitView train = d.training_view(), cold_history = d.view({data::SplitPart::cold_history});
  for (std::uint32_t u = 0; u < d.num_users(); ++u) {
    const bool warm = train.user_count(u) > 0;
    const bool cold = cold_history.user_count(u) > 0;
    if (warm || cold) {
      ++users_with_rows;
      ASSERT_TRUE(t.codes.count(d.user_ids[u])) << d.user_ids[u];
      const auto code = t.codes.at(d.user_ids[u])[0];
      EXPECT_GE(code, 0);
      EXPECT_LT(code, 5);
    }
  }
  EXPECT_EQ(t.codes.size(), users_with_rows);
  EXPECT_EQ(t.fields[0].cardinality, 5);
  // Deterministic for a seed.
  EXPECT_EQ(collaborative_control_codes(d, 8, 5, 3).codes, t.codes);
}

TEST(CtrControls, HistoryCodesSeparateUsersByTheirPositiveShareWarmAndCold) {
  const data::Dataset& d = world();
  const UserCodeTable t = history_control_codes(d, "", 4, 3);
  EXPECT_EQ(t.source, "control-history");
  EXPECT_EQ(t.fields[0].cardinality, 4);
  const data::SplitView train = d.training_view(), cold_history = d.view({data::SplitPart::cold_history});
  // Each code's members, warm users (training rows) and cold users (cold_history) apart.
  std::map<std::int32_t, std::vector<double>> warm_rates, cold_rates;
  auto rate = [](const data::SplitView& v, std::uint32_t u) {
    double likes = 0;
    for (std::size_t i = v.user_begin(u); i < v.user_end(u); ++i) likes += v.label(i);
    return likes / static_cast<double>(v.user_count(u));
  };
  for (std::uint32_t u = 0; u < d.num_users(); ++u) {
    const bool warm = train.user_count(u) > 0, cold = cold_history.user_count(u) > 0;
    if (!warm && !cold) continue;
    ASSERT_TRUE(t.codes.count(d.user_ids[u])) << d.user_ids[u];
    const auto code = t.codes.at(d.user_ids[u])[0];
    ASSERT_GE(code, 0);
    ASSERT_LT(code, 4);
    (warm ? warm_rates : cold_rates)[code].push_back(warm ? rate(train, u) : rate(cold_history, u));
  }
  ASSERT_FALSE(cold_rates.empty());
  // The positive share is one of the four statistics: the codes' mean shares spread far wider than the noise of
  // a random partition would, for warm users and for the cold users placed by their cold history.
  auto spread = [](const std::map<std::int32_t, std::vector<double>>& by_code) {
    double lo = 1, hi = 0;
    for (const auto& [code, rates] : by_code) {
      if (rates.size() < 3) continue;
      double mean = 0;
      for (double r : rates) mean += r / static_cast<double>(rates.size());
      lo = std::min(lo, mean), hi = std::max(hi, mean);
    }
    return hi - lo;
  };
  EXPECT_GT(spread(warm_rates), 0.15);
  EXPECT_GT(spread(cold_rates), 0.1);
  EXPECT_EQ(history_control_codes(d, "", 4, 3).codes, t.codes);  // deterministic for a seed
  expect_error([&] { history_control_codes(d, "", 0, 3); }, {"control-history"});
  EXPECT_EQ(variant_from_string("control-history"), Variant::control_history);
  expect_error([] { variant_from_string("control-x"); }, {"control-x", "control-history"});
}

}  // namespace
}  // namespace userip::ctr
