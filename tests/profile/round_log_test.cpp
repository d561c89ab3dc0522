// The fit log's records read back as they were written (checkpoints carry them; resume rewrites log.jsonl).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "userip/profile/fit.h"
#include "support/temp_dir.h"

namespace userip::profile {
namespace {

std::vector<AttributeSpec> two_attributes() {
  AttributeSpec taste, background;
  taste.name = "taste";
  background.name = "background";
  return {taste, background};
}

TEST(RoundLog, FromJsonIsTheInverseOfToJson) {
  const auto attributes = two_attributes();
  RoundLog r;
  r.round = 7;
  r.lambda = 0.5857864376269049;
  r.refinement = true;
  r.train_nll = 0.1 + 0.2;  // not exactly representable in few digits
  r.valid_nll = -1;
  r.quantization_error = {0.25, 1.0 / 3.0};
  r.code_perplexity = {{3.5}, {1.75}};
  r.dead_codes = {{0}, {2}};
  r.code_counts = {{{10, 0, 5}}, {{7, 8}}};
  r.code_margins = {{0.125, std::numeric_limits<double>::quiet_NaN(), 0.5}, {0.0625, 0.03125}};
  r.moves.push_back({1, 0, 0.44, 1, 3, 8});
  r.seconds = 12.75;
  r.tokens = 123456789012;
  const auto j = r.to_json(attributes);
  const auto back = RoundLog::from_json(j, attributes, "log.jsonl line 1");
  EXPECT_EQ(back.to_json(attributes).dump(), j.dump());
  EXPECT_EQ(back.round, 7);
  EXPECT_TRUE(back.refinement);
  EXPECT_EQ(back.train_nll, r.train_nll);
  EXPECT_EQ(back.valid_nll, -1.0);
  ASSERT_EQ(back.code_margins.size(), 2u);
  EXPECT_TRUE(std::isnan(back.code_margins[0][1]));
  ASSERT_EQ(back.moves.size(), 1u);
  EXPECT_EQ(back.moves[0].attribute, 1u);
  EXPECT_EQ(back.moves[0].split_members, 8);

  // A round before the codebooks exist has no per-attribute statistics.
  RoundLog first;
  first.round = 1;
  first.valid_nll = 1.5;
  const auto j1 = first.to_json(attributes);
  EXPECT_EQ(RoundLog::from_json(j1, attributes, "x").to_json(attributes).dump(), j1.dump());
}

TEST(RoundLog, FromJsonNamesItsSourceOnBadInput) {
  const auto attributes = two_attributes();
  testing::expect_error([&] { RoundLog::from_json(nlohmann::json::parse(R"({"round": 1})"), attributes, "state.json"); },
                        {"state.json", "not a round of the fit log"});
  RoundLog r;
  r.moves.push_back({0, 0, 0.4, 1, 3, 8});
  auto j = r.to_json(attributes);
  j["split_merge"][0]["attribute"] = "mood";
  testing::expect_error([&] { RoundLog::from_json(j, attributes, "state.json"); }, {"state.json", "'mood'"});
}

}  // namespace
}  // namespace userip::profile
