// The `userip bank` commands as a user runs them, on a small hand-written profile directory.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sstream>

#include "support/temp_dir.h"
#include "userip/store/feature_bank.h"
#include "userip/util/fs.h"

namespace userip::store {
namespace {

using userip::testing::run_cli;
using userip::testing::TempDir;

// As `bank export --format csv` writes it: quotes only where needed, so export reproduces it.
const char* const kCodesCsv =
    "user,taste,background\n"
    "u1,3,1\n"
    "\"a,b\",7,0\n"
    "\"say \"\"hi\"\"\",0,2\n"
    "名前,5,1\n";

std::filesystem::path make_profile(const TempDir& dir, const std::string& name, const std::string& csv = kCodesCsv) {
  std::filesystem::create_directories(dir / name);
  dir.write(name + "/profile.json",
            R"({"fields": [{"name": "taste", "cardinality": 8}, {"name": "background", "cardinality": 3}],
                "codebook_fingerprint": "c0ffee", "seed": 7, "model_fingerprint": "m-42",
                "template": "default", "dataset": "synth-50", "loss": 1.5})");
  dir.write(name + "/codes.csv", csv);
  return dir / name;
}

TEST(BankCli, BuildInfoGetAndExportRoundTrip) {
  TempDir dir;
  auto profile = make_profile(dir, "fit");
  auto bank = (dir / "bank.sqlite").string();
  std::string output;
  ASSERT_EQ(run_cli("bank build --profile " + profile.string() + " --out " + bank, &output), 0) << output;
  EXPECT_NE(output.find("version 1 (4 users, 2 fields)"), std::string::npos) << output;

  ASSERT_EQ(run_cli("bank info " + bank, &output), 0) << output;
  EXPECT_NE(output.find("version:              1"), std::string::npos) << output;
  EXPECT_NE(output.find("c0ffee"), std::string::npos) << output;
  EXPECT_NE(output.find("users:                4"), std::string::npos) << output;
  EXPECT_NE(output.find("taste                8 codes"), std::string::npos) << output;

  ASSERT_EQ(run_cli("bank info --json " + bank, &output), 0) << output;
  auto info = nlohmann::json::parse(output);
  EXPECT_EQ(info["version"], 1);
  EXPECT_EQ(info["users"], 4);
  EXPECT_EQ(info["codebook_fingerprint"], "c0ffee");
  EXPECT_EQ(info["fields"], nlohmann::json::parse(R"([{"name": "taste", "cardinality": 8},
                                                      {"name": "background", "cardinality": 3}])"));
  // The provenance keys are copied; anything else in profile.json ("loss") is not.
  EXPECT_EQ(info["extra"], nlohmann::json::parse(
                               R"({"seed": 7, "model_fingerprint": "m-42", "template": "default", "dataset": "synth-50"})"));

  ASSERT_EQ(run_cli("bank get " + bank + " u1", &output), 0) << output;
  EXPECT_EQ(output, "{\"user\":\"u1\",\"codes\":{\"taste\":3,\"background\":1},\"version\":1}\n");
  ASSERT_EQ(run_cli("bank get " + bank + " 'a,b'", &output), 0) << output;
  EXPECT_EQ(nlohmann::json::parse(output)["codes"], nlohmann::json::parse(R"({"taste": 7, "background": 0})"));

  auto exported = dir / "exported.csv";
  ASSERT_EQ(run_cli("bank export " + bank + " --format csv --out " + exported.string(), &output), 0) << output;
  EXPECT_EQ(read_file(exported), kCodesCsv);

  ASSERT_EQ(run_cli("bank export " + bank + " --format jsonl", &output), 0) << output;
  std::istringstream lines(output);
  std::vector<nlohmann::json> records;
  for (std::string line; std::getline(lines, line);) records.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(records[2], nlohmann::json::parse(R"({"user": "say \"hi\"", "codes": {"taste": 0, "background": 2}})"));

  // The export builds the same bank again.
  auto again = make_profile(dir, "again", read_file(exported));
  auto bank2 = (dir / "bank2.sqlite").string();
  ASSERT_EQ(run_cli("bank build --profile " + again.string() + " --out " + bank2, &output), 0) << output;
  FeatureBank original = FeatureBank::open(bank);
  FeatureBank rebuilt = FeatureBank::open(bank2);
  EXPECT_EQ(rebuilt.users(), original.users());
  for (std::size_t i = 0; i < original.size(); ++i) {
    EXPECT_EQ(rebuilt.codes_at(i)[0], original.codes_at(i)[0]);
    EXPECT_EQ(rebuilt.codes_at(i)[1], original.codes_at(i)[1]);
  }
}

TEST(BankCli, UnknownUserBadInputsAndACrashedWriterLeaveTheBankAlone) {
  TempDir dir;
  auto bank = (dir / "bank.sqlite").string();
  std::string output;
  ASSERT_EQ(run_cli("bank build --profile " + make_profile(dir, "fit").string() + " --out " + bank, &output), 0)
      << output;
  EXPECT_EQ(run_cli("bank get " + bank + " ghost", &output), 1);
  EXPECT_EQ(output, "error: user 'ghost' is not in the feature bank " + bank + " (4 users)\n");

  EXPECT_EQ(run_cli("bank export " + bank + " --format parquet", &output), 1);
  EXPECT_NE(output.find("error: --format: unknown export format 'parquet' (expected one of: csv, jsonl)"), std::string::npos) << output;

  auto out_of_range = make_profile(dir, "range", "user,taste,background\nu1,3,1\nu2,8,0\n");
  EXPECT_EQ(run_cli("bank build --profile " + out_of_range.string() + " --out " + bank, &output), 1);
  EXPECT_NE(output.find((out_of_range / "codes.csv").string() + ":3: field 'taste' of user \"u2\" is \"8\""),
            std::string::npos)
      << output;

  auto wrong_header = make_profile(dir, "header", "user,background,taste\nu1,1,3\n");
  EXPECT_EQ(run_cli("bank build --profile " + wrong_header.string() + " --out " + bank, &output), 1);
  EXPECT_NE(output.find("codes.csv:1: header is 'user,background,taste'"), std::string::npos) << output;

  // None of the failures touched the bank; a writer killed mid-write does not either.
  EXPECT_EQ(run_cli("bank build --profile " + (dir / "fit").string() + " --out " + bank, &output,
                    std::string(kCrashAfterRowsEnv) + "=2"),
            128 + 9)
      << output;
  ASSERT_EQ(run_cli("bank get " + bank + " u1", &output), 0) << output;
  EXPECT_NE(output.find("\"version\":1"), std::string::npos) << output;
}

}  // namespace
}  // namespace userip::store
