// `userip ctr train`, `ctr predict` and `experiment` as a user runs them.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "ctr/ctr_test_support.h"
#include "support/temp_dir.h"
#include "userip/ctr/controls.h"
#include "userip/store/feature_bank.h"
#include "userip/util/fs.h"

namespace userip::ctr {
namespace {

using userip::testing::run_cli;
using userip::testing::TempDir;

// The last line of the output that parses as a JSON object (the result line of ctr train).
nlohmann::json result_line(const std::string& output) {
  std::istringstream in(output);
  std::string line;
  nlohmann::json found;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '{') continue;
    try {
      found = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
    }
  }
  return found;
}

std::vector<std::pair<std::string, double>> read_scores(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "user,item,score");
  std::vector<std::pair<std::string, double>> rows;
  while (std::getline(in, line)) {
    const auto last = line.rfind(',');
    rows.emplace_back(line.substr(0, last), std::stod(line.substr(last + 1)));
  }
  return rows;
}

class CtrCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dataset_ = (dir_ / "dataset").string();
    testing::preference_dataset().save(dataset_);
    testing::write_control_bank(data::Dataset::load(dataset_), 3, dir_ / "bank.sqlite");
    config_ = dir_.write("ctr.json", R"({
      "base": {"train": {"max_epochs": 4, "batch_size": 128, "learning_rate": 0.02}},
      "experiments": {"dcn": {"model": {"kind": "dcn"}}, "fm": {"model": {"kind": "fm"}}},
      "compare": {"seeds": 2, "variants": ["base", "codes", "control-genres"], "control_codes": 3}})").string();
  }
  // `command` (a userip command line) run by `ranks` one-thread ranks of `userip launch`.
  static int launch(int ranks, const std::string& command, std::string* output) {
    return run_cli("launch --nproc-per-node " + std::to_string(ranks) + " --threads-per-rank 1 -- userip " + command,
                   output);
  }
  TempDir dir_;
  std::string dataset_, config_;
};

TEST_F(CtrCli, TrainThenPredictReproducesTheTrainingScores) {
  std::string output;
  const std::string model = (dir_ / "model").string();
  ASSERT_EQ(run_cli("--threads 1 ctr train --dataset " + dataset_ + " --config " + config_ +
                        " --experiment fm --bank " + (dir_ / "bank.sqlite").string() + " --out " + model,
                    &output),
            0)
      << output;
  const nlohmann::json result = result_line(output);
  ASSERT_TRUE(result.is_object()) << output;
  EXPECT_EQ(result["model"], "fm");
  EXPECT_EQ(result["profile"], "codes");
  EXPECT_EQ(result["seed"], 42);
  EXPECT_GT(result["test"]["auc"].get<double>(), 0.7);
  EXPECT_TRUE(result["cold_test"]["auc"].is_number());
  for (const char* file : {"ctr_model.json", "features.json", "weights.safetensors", "log.jsonl", "test_scores.csv"}) {
    EXPECT_TRUE(std::filesystem::exists(dir_ / "model" / file)) << file;
  }

  const std::string predicted = (dir_ / "predicted.csv").string();
  ASSERT_EQ(run_cli("ctr predict --model " + model + " --input " + model + "/test_scores.csv --bank " +
                        (dir_ / "bank.sqlite").string() + " --out " + predicted,
                    &output),
            0)
      << output;
  const auto trained = read_scores(dir_ / "model" / "test_scores.csv");
  const auto scored = read_scores(predicted);
  ASSERT_EQ(trained.size(), scored.size());
  ASSERT_FALSE(trained.empty());
  for (std::size_t i = 0; i < trained.size(); ++i) {
    EXPECT_EQ(trained[i].first, scored[i].first);
    EXPECT_NEAR(trained[i].second, scored[i].second, 1e-6) << trained[i].first;
  }

  // Unknown users and items are scored through the OOV buckets, and counted.
  const auto pairs = dir_.write("pairs.csv", "user,item\nnobody,item1\nuser1,no-such-item\n");
  ASSERT_EQ(run_cli("ctr predict --model " + model + " --input " + pairs.string() + " --bank " +
                        (dir_ / "bank.sqlite").string(),
                    &output),
            0)
      << output;
  EXPECT_NE(output.find("nobody,item1,"), std::string::npos) << output;
  EXPECT_NE(output.find("1 unknown users, 1 unknown items, 1 without a profile"), std::string::npos) << output;

  // A codes model without its bank is refused with the reason.
  EXPECT_NE(run_cli("ctr predict --model " + model + " --input " + pairs.string(), &output), 0);
  EXPECT_NE(output.find("feature bank"), std::string::npos) << output;
}

TEST_F(CtrCli, ErrorsNameTheFileAndTheProblem) {
  std::string output;
  const auto bad_value = dir_.write("bad.json", R"({"base": {"train": {"batch_size": -1}}})");
  EXPECT_NE(run_cli("ctr train --dataset " + dataset_ + " --config " + bad_value.string() + " --out " +
                        (dir_ / "m").string(),
                    &output),
            0);
  EXPECT_NE(output.find("bad.json"), std::string::npos) << output;
  EXPECT_NE(output.find("batch_size"), std::string::npos) << output;

  const auto bad_json = dir_.write("broken.json", R"({"base": )");
  EXPECT_NE(run_cli("experiment --dataset " + dataset_ + " --config " + bad_json.string() + " --out " +
                        (dir_ / "e").string(),
                    &output),
            0);
  EXPECT_NE(output.find("broken.json: not valid JSON"), std::string::npos) << output;

  EXPECT_NE(run_cli("ctr train --dataset " + dataset_ + " --bank " + (dir_ / "missing.sqlite").string() + " --out " +
                        (dir_ / "m").string(),
                    &output),
            0);
  EXPECT_NE(output.find("missing.sqlite"), std::string::npos) << output;

  EXPECT_NE(run_cli("ctr train --dataset " + dataset_ + " --kind gbdt --out " + (dir_ / "m").string(), &output), 0);
  EXPECT_NE(output.find("gbdt"), std::string::npos) << output;

  EXPECT_NE(run_cli("ctr predict --model " + (dir_ / "nothing").string() + " --input " + config_, &output), 0);
  EXPECT_NE(output.find("not a trained CTR model"), std::string::npos) << output;

  EXPECT_NE(run_cli("experiment --dataset " + dataset_ + " --variants base,dense --out " + (dir_ / "e").string(), &output),
            0);
  EXPECT_NE(output.find("--profiles"), std::string::npos) << output;
}

TEST_F(CtrCli, ExperimentPrintsTheTableAndReusesFinishedRuns) {
  std::string output;
  const std::string out = (dir_ / "experiment").string();
  const std::string command = "--threads 1 experiment --dataset " + dataset_ + " --config " + config_ + " --bank " +
                              (dir_ / "bank.sqlite").string() + " --out " + out;
  ASSERT_EQ(run_cli(command, &output), 0) << output;
  EXPECT_NE(output.find("| fm | control-genres |"), std::string::npos) << output;
  EXPECT_NE(output.find("[12/12]"), std::string::npos) << output;  // 2 models x 3 variants x 2 seeds
  const auto experiment = nlohmann::json::parse(read_file(dir_ / "experiment" / "experiment.json"));
  EXPECT_EQ(experiment["runs"].size(), 12u);
  // The preference world's clicks follow each user's favourite category, which the codes carry:
  // cold users (unknown ids) gain from them.
  for (const auto& row : experiment["summary"]) {
    if (row["variant"] == "codes" && row["group"] == "cold" && row["metric"] == "auc") {
      EXPECT_GT(row["diff_mean"].get<double>(), 0.05) << row.dump();
    }
  }

  ASSERT_EQ(run_cli(command, &output), 0) << output;
  EXPECT_NE(output.find("unchanged, reusing"), std::string::npos) << output;
  EXPECT_EQ(output.find(": training"), std::string::npos) << output;
}

}  // namespace
}  // namespace userip::ctr

namespace userip::ctr {
namespace {

// Data-parallel training (docs/DISTRIBUTED.md): with fixed slices the DCN (with dropout and lazy
// Adam's sparse gradients) comes out byte for byte the same at world sizes 1, 2 and 3.
TEST_F(CtrCli, DataParallelTrainingWithFixedSlicesIsTheSameAtEveryWorldSize) {
  std::string output;
  const std::string common = "ctr train --dataset " + dataset_ + " --config " + config_ +
                             " --experiment dcn --bank " + (dir_ / "bank.sqlite").string() + " --shards 3 --epochs 2";
  ASSERT_EQ(run_cli("--threads 1 " + common + " --out " + (dir_ / "one").string(), &output), 0) << output;
  for (int ranks : {2, 3}) {
    const auto out = dir_ / ("ranks" + std::to_string(ranks));
    ASSERT_EQ(launch(ranks, common + " --out " + out.string(), &output), 0) << output;
    EXPECT_EQ(read_file(dir_ / "one" / "weights.safetensors"), read_file(out / "weights.safetensors")) << ranks;
    EXPECT_EQ(read_file(dir_ / "one" / "test_scores.csv"), read_file(out / "test_scores.csv")) << ranks;
  }
  // The slices are a different computation from one whole batch, but the same model: it learns.
  ASSERT_EQ(run_cli("--threads 1 " + common + " --out " + (dir_ / "again").string(), &output), 0) << output;
  EXPECT_EQ(read_file(dir_ / "one" / "weights.safetensors"), read_file(dir_ / "again" / "weights.safetensors"));
  EXPECT_GT(result_line(output)["test"]["auc"].get<double>(), 0.6) << output;
}

// Row-sharded tables (each rank holds a third or half of every table's rows and their Adam state):
// the saved DCN (cross layers, MLP and dropout built after the tables), assembled on rank 0, is byte
// for byte the same at world sizes 1, 2 and 3.
TEST_F(CtrCli, RowShardedTablesGiveTheSameModelAtEveryWorldSize) {
  std::string output;
  const std::string common = "ctr train --dataset " + dataset_ + " --config " + config_ + " --experiment dcn --bank " +
                             (dir_ / "bank.sqlite").string() + " --shards 3 --epochs 2 --shard-tables";
  ASSERT_EQ(run_cli("--threads 1 " + common + " --out " + (dir_ / "one").string(), &output), 0) << output;
  EXPECT_GT(result_line(output)["test"]["auc"].get<double>(), 0.6) << output;
  for (int ranks : {2, 3}) {
    const auto out = dir_ / ("ranks" + std::to_string(ranks));
    ASSERT_EQ(launch(ranks, common + " --out " + out.string(), &output), 0) << output;
    EXPECT_EQ(read_file(dir_ / "one" / "weights.safetensors"), read_file(out / "weights.safetensors")) << ranks;
    EXPECT_EQ(read_file(dir_ / "one" / "test_scores.csv"), read_file(out / "test_scores.csv")) << ranks;
  }
  // The configuration is recorded with the model.
  const auto record = nlohmann::json::parse(read_file(dir_ / "ranks3" / "ctr_model.json"));
  EXPECT_EQ(record["train"]["shard_tables"], true) << record["train"].dump();
  // Adam over every row cannot be sharded: the error says what to use.
  ASSERT_NE(run_cli(common + " --embedding-optimizer adam --out " + (dir_ / "adam").string(), &output), 0);
  EXPECT_NE(output.find("lazy_adam or adagrad"), std::string::npos) << output;
}

// The experiment's runs dealt out to the ranks: each run is trained whole by one rank, so every
// figure equals one process's (with one thread per rank); rank 0 writes the files.
TEST_F(CtrCli, ExperimentAcrossRanksGivesTheResultsOfOneProcess) {
  std::string output;
  const std::string common = "experiment --dataset " + dataset_ + " --config " + config_ + " --bank " +
                             (dir_ / "bank.sqlite").string() + " --experiments dcn";
  ASSERT_EQ(run_cli("--threads 1 " + common + " --out " + (dir_ / "one").string(), &output), 0) << output;
  const auto one = nlohmann::json::parse(read_file(dir_ / "one" / "experiment.json"));
  for (int ranks : {2, 3}) {
    const auto out = dir_ / ("ranks" + std::to_string(ranks));
    ASSERT_EQ(launch(ranks, common + " --out " + out.string(), &output), 0) << output;
    EXPECT_EQ(read_file(dir_ / "one" / "results.md"), read_file(out / "results.md")) << ranks;
    const auto many = nlohmann::json::parse(read_file(out / "experiment.json"));
    ASSERT_EQ(many["runs"].size(), one["runs"].size());
    for (std::size_t r = 0; r < one["runs"].size(); ++r) {
      EXPECT_EQ(many["runs"][r]["key"], one["runs"][r]["key"]);
      EXPECT_EQ(many["runs"][r]["groups"], one["runs"][r]["groups"]) << ranks << " " << one["runs"][r]["key"];
      EXPECT_EQ(many["runs"][r]["epochs"].size(), one["runs"][r]["epochs"].size());
    }
    EXPECT_EQ(many["summary"], one["summary"]) << ranks;
    // One runs.jsonl with every run; the ranks' own files are gone.
    std::ifstream lines(out / "runs.jsonl");
    std::string line;
    std::size_t count = 0;
    while (std::getline(lines, line)) count += !line.empty();
    EXPECT_EQ(count, one["runs"].size());
    EXPECT_FALSE(std::filesystem::exists(out / "runs-rank0.jsonl"));
    EXPECT_FALSE(std::filesystem::exists(out / "runs-rank1.jsonl"));
  }
  // Resumed at another world size: every run is reused.
  ASSERT_EQ(launch(2, common + " --out " + (dir_ / "ranks3").string(), &output), 0) << output;
  EXPECT_NE(output.find("unchanged, reusing the earlier run"), std::string::npos) << output;
  EXPECT_EQ(output.find(": training"), std::string::npos) << output;
  EXPECT_EQ(read_file(dir_ / "one" / "results.md"), read_file(dir_ / "ranks3" / "results.md"));
}

}  // namespace
}  // namespace userip::ctr
