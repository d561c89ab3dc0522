// The `userip data` commands as a user runs them.
#include <gtest/gtest.h>

#include "support/temp_dir.h"
#include "userip/data/dataset.h"

namespace userip::data {
namespace {

using userip::testing::run_cli;

TEST(DataCli, MovieLensExportHasThePublishedCounts) {
  if (!std::filesystem::exists("/usr/lib/R/site-library/dslabs/data/Rdata.rdb")) {
    GTEST_SKIP() << "r-cran-dslabs is not installed (scripts/setup.sh installs it)";
  }
  testing::TempDir dir;
  std::string output;
  ASSERT_EQ(run_cli("--threads 1 data movielens --out " + (dir / "ml").string(), &output), 0) << output;
  Dataset d = Dataset::load(dir / "ml");
  EXPECT_EQ(d.num_users(), 671u);
  EXPECT_EQ(d.num_items(), 9066u);
  EXPECT_EQ(d.num_interactions(), 100004u);
  EXPECT_TRUE(d.has_split());
  ASSERT_EQ(run_cli("data stats --dataset " + (dir / "ml").string(), &output), 0) << output;
  EXPECT_NE(output.find("100004"), std::string::npos) << output;
  EXPECT_NE(output.find("9066"), std::string::npos) << output;
}

TEST(DataCli, MissingDslabsNamesTheSetupStep) {
  testing::TempDir dir;
  std::string output;
  EXPECT_NE(run_cli("data movielens --dslabs-dir /nonexistent --out " + (dir / "ml").string(), &output), 0);
  EXPECT_NE(output.find("error: "), std::string::npos) << output;
  EXPECT_NE(output.find("scripts/setup.sh"), std::string::npos) << output;
}

TEST(DataCli, BrokenRowFailsWithFileLineAndSkipReportsTheCount) {
  testing::TempDir dir;
  auto csv = dir.write("log.csv", "user,item,rating,timestamp\nu1,i1,4,1\nu2,i2,4,2\nu3,i3,oops,3\nu1,i2,1,4\n");
  std::string output;
  std::string base = "data import --interactions " + csv.string() + " --out " + (dir / "ds").string();
  EXPECT_EQ(run_cli(base, &output), 1);
  EXPECT_NE(output.find("error: " + csv.string() + ":4"), std::string::npos) << output;
  ASSERT_EQ(run_cli(base + " --skip-bad-rows", &output), 0) << output;
  EXPECT_NE(output.find("skipped 1 bad rows"), std::string::npos) << output;
  EXPECT_NE(output.find("log.csv:4"), std::string::npos) << output;
}

TEST(DataCli, SynthStatsAndExportRoundTrip) {
  testing::TempDir dir;
  std::string output;
  auto ds = (dir / "syn").string();
  ASSERT_EQ(run_cli("data synth --users 50 --items 80 --out " + ds, &output), 0) << output;
  EXPECT_TRUE(std::filesystem::exists(dir / "syn" / "ground_truth.csv"));
  ASSERT_EQ(run_cli("data stats --json --dataset " + ds, &output), 0) << output;
  EXPECT_NE(output.find("\"users\": 50"), std::string::npos) << output;
  ASSERT_EQ(run_cli("data export --dataset " + ds + " --out " + (dir / "csv").string(), &output), 0) << output;
  ASSERT_EQ(run_cli("data import --interactions " + (dir / "csv" / "interactions.csv").string() + " --items " +
                        (dir / "csv" / "items.csv").string() + " --out " + (dir / "again").string(),
                    &output),
            0)
      << output;
  Dataset a = Dataset::load(dir / "syn"), b = Dataset::load(dir / "again");
  EXPECT_EQ(a.user_ids, b.user_ids);
  EXPECT_EQ(a.interactions.rating, b.interactions.rating);
  EXPECT_EQ(a.interactions.timestamp, b.interactions.timestamp);
  EXPECT_EQ(a.split.part, b.split.part);
  EXPECT_EQ(a.field("categories")->values, b.field("categories")->values);
}

TEST(DataCli, OutOfRangeOptionsAreRejected) {
  std::string output;
  EXPECT_NE(run_cli("data synth --noise 2 --out /tmp/never", &output), 0);
  EXPECT_NE(output.find("noise"), std::string::npos) << output;
  EXPECT_NE(run_cli("data split --dataset /tmp/never --train-ratio 0.5", &output), 0);
  EXPECT_NE(run_cli("--threads -3 data stats --dataset /tmp/never", &output), 0);
}

}  // namespace
}  // namespace userip::data
