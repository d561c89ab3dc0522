#include <gtest/gtest.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "ctr/ctr_test_support.h"
#include "support/temp_dir.h"
#include "userip/ctr/features.h"
#include "userip/util/fs.h"

namespace userip::ctr {
namespace {

using testing::expect_error;
using testing::hand_dataset;

std::vector<std::int32_t> row_of(const torch::Tensor& t, std::int64_t row) {
  torch::Tensor r = t[row].flatten().contiguous();
  return std::vector<std::int32_t>(r.data_ptr<std::int32_t>(), r.data_ptr<std::int32_t>() + r.numel());
}

// Counted by hand from hand_dataset()'s training rows: u1 x2, u2 x2, u3 x1; i1 x3, i2 x1, i3 x1;
// genres Drama 4, Comedy 3, Horror 1; studio s1 4, s2 1; years of the trained items 1990, 2000, 2010.
TEST(CtrFeatures, VocabulariesComeFromTheTrainingSplitWithMinCount) {
  const auto d = hand_dataset();
  const auto e = FeatureEncoder::fit(d, d.training_view(), FeatureConfig{});
  const FieldLayout& l = e.layout();
  ASSERT_EQ(l.categorical.size(), 4u);
  EXPECT_EQ(l.categorical[0].name, "user_id");
  EXPECT_EQ(l.categorical[0].size, 3);  // OOV, u1, u2 (u3 has one row, under min_count 2)
  EXPECT_EQ(l.categorical[1].name, "item_id");
  EXPECT_EQ(l.categorical[1].size, 2);  // OOV, i1
  EXPECT_EQ(l.categorical[2].name, "year");
  EXPECT_EQ(l.categorical[2].size, 4);  // OOV and three buckets split at 1990 and 2000
  EXPECT_EQ(l.categorical[3].name, "studio");
  EXPECT_EQ(l.categorical[3].size, 2);  // OOV, s1
  ASSERT_EQ(l.multi_hot.size(), 1u);
  EXPECT_EQ(l.multi_hot[0].name, "genres");
  EXPECT_EQ(l.multi_hot[0].size, 3);  // OOV, Comedy, Drama
  EXPECT_EQ(l.max_values, 2);
  EXPECT_EQ(l.vocabulary_size(), 3 + 2 + 4 + 2 + 3);
  EXPECT_EQ(l.multi_hot[0].offset, 11);
}

TEST(CtrFeatures, EncodesRowsIntoGlobalIndicesWithOutOfVocabularyBuckets) {
  const auto d = hand_dataset();
  const auto e = FeatureEncoder::fit(d, d.training_view(), FeatureConfig{});
  EncodeCounts counts;
  const Examples test = e.encode(d, d.view({data::SplitPart::test}), nullptr, nullptr, &counts);
  ASSERT_EQ(test.size(), 3);
  // Row 0: u1 watched i2 (2000, Drama, s1), rated 5. user 0+1, item 3+OOV, year 5+2, studio 9+1.
  EXPECT_EQ(row_of(test.categorical, 0), (std::vector<std::int32_t>{1, 3, 7, 10}));
  EXPECT_EQ(row_of(test.multi_index, 0), (std::vector<std::int32_t>{13, 11}));
  EXPECT_FLOAT_EQ(test.multi_weight[0][0][0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(test.multi_weight[0][0][1].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(test.label[0].item<float>(), 1.0f);
  // Row 1: u2, i3 (2010, Horror: below min_count, s2: below min_count), rated 2.
  EXPECT_EQ(row_of(test.categorical, 1), (std::vector<std::int32_t>{2, 3, 8, 9}));
  EXPECT_EQ(row_of(test.multi_index, 1), (std::vector<std::int32_t>{11, 11}));
  EXPECT_FLOAT_EQ(test.label[1].item<float>(), 0.0f);
  // Row 2: u3 (under min_count) watched i1 (1990, Drama|Comedy: two values weighted 1/2).
  EXPECT_EQ(row_of(test.categorical, 2), (std::vector<std::int32_t>{0, 4, 6, 10}));
  EXPECT_EQ(row_of(test.multi_index, 2), (std::vector<std::int32_t>{13, 12}));
  EXPECT_FLOAT_EQ(test.multi_weight[2][0][1].item<float>(), 0.5f);
  EXPECT_EQ(test.user, (std::vector<std::uint32_t>{0, 1, 2}));
  EXPECT_EQ(counts.examples, 3);
  EXPECT_EQ(counts.unknown_users, 1);
  EXPECT_EQ(counts.unknown_items, 0);
}

TEST(CtrFeatures, UnknownUsersAndItemsGoToTheOutOfVocabularyBucket) {
  const auto d = hand_dataset();
  const auto e = FeatureEncoder::fit(d, d.training_view(), FeatureConfig{});
  EncodeCounts counts;
  const Examples pairs = e.encode_pairs({"u1", "nobody"}, {"i4", "no-such-item"}, nullptr, nullptr, &counts);
  // i4 is in the catalogue (studio s3 unseen, year "x" unparseable, no genres): every field OOV.
  EXPECT_EQ(row_of(pairs.categorical, 0), (std::vector<std::int32_t>{1, 3, 5, 9}));
  EXPECT_EQ(row_of(pairs.categorical, 1), (std::vector<std::int32_t>{0, 3, 5, 9}));
  EXPECT_EQ(row_of(pairs.multi_index, 1), (std::vector<std::int32_t>{11, 11}));
  EXPECT_FLOAT_EQ(pairs.multi_weight[1][0][0].item<float>(), 1.0f);
  EXPECT_EQ(counts.unknown_users, 1);
  EXPECT_EQ(counts.unknown_items, 1);
}

TEST(CtrFeatures, ProfileCodesAreFieldsWithABucketForUsersMissingFromTheBank) {
  const auto d = hand_dataset();
  UserCodeTable codes;
  codes.source = "test bank";
  codes.fields = {{"taste", 3}, {"background", 2}};
  codes.codes = {{"u1", {2, 0}}, {"u2", {0, 1}}};
  FeatureConfig config;
  config.profile = ProfileInput::codes;
  const auto e = FeatureEncoder::fit(d, d.training_view(), config, &codes);
  ASSERT_EQ(e.layout().categorical.size(), 6u);
  EXPECT_EQ(e.layout().categorical[4].name, "profile:taste");
  EXPECT_EQ(e.layout().categorical[4].size, 4);
  EncodeCounts counts;
  const Examples test = e.encode(d, d.view({data::SplitPart::test}), &codes, nullptr, &counts);
  const std::int64_t taste = e.layout().categorical[4].offset, background = e.layout().categorical[5].offset;
  EXPECT_EQ(test.categorical[0][4].item<std::int32_t>(), taste + 3);
  EXPECT_EQ(test.categorical[0][5].item<std::int32_t>(), background + 1);
  EXPECT_EQ(test.categorical[2][4].item<std::int32_t>(), taste + 0);  // u3 is not in the bank
  EXPECT_EQ(counts.missing_profiles, 1);

  UserCodeTable other = codes;
  other.fields[0].cardinality = 5;
  other.source = "newer bank";
  expect_error([&] { e.encode(d, d.training_view(), &other, nullptr); },
               {"newer bank", "taste(5)", "taste(3)"});
  expect_error([&] { e.encode(d, d.training_view(), nullptr, nullptr); }, {"feature bank"});
}

TEST(CtrFeatures, DenseProfilesAreCopiedAndMissingUsersGetZeros) {
  const auto d = hand_dataset();
  UserVectorTable vectors;
  vectors.source = "test vectors";
  vectors.vectors = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2});
  vectors.row = {{"u2", 0}, {"u1", 1}};
  FeatureConfig config;
  config.profile = ProfileInput::dense;
  const auto e = FeatureEncoder::fit(d, d.training_view(), config, nullptr, &vectors);
  EXPECT_EQ(e.layout().dense_dim, 2);
  const Examples test = e.encode(d, d.view({data::SplitPart::test}), nullptr, &vectors);
  EXPECT_TRUE(torch::equal(test.dense, torch::tensor({3.0f, 4.0f, 1.0f, 2.0f, 0.0f, 0.0f}).reshape({3, 2})));
}

TEST(CtrFeatures, SavedEncoderEncodesExactlyAsTheOriginal) {
  const auto d = hand_dataset();
  const auto e = FeatureEncoder::fit(d, d.training_view(), FeatureConfig{});
  testing::TempDir dir;
  e.save(dir / "features.json");
  const auto loaded = FeatureEncoder::load(dir / "features.json");
  EXPECT_EQ(loaded.layout().to_json(), e.layout().to_json());
  const Examples a = e.encode(d, d.view({data::SplitPart::test}), nullptr, nullptr);
  const Examples b = loaded.encode(d, d.view({data::SplitPart::test}), nullptr, nullptr);
  EXPECT_TRUE(torch::equal(a.categorical, b.categorical));
  EXPECT_TRUE(torch::equal(a.multi_index, b.multi_index));
  EXPECT_TRUE(torch::equal(a.multi_weight, b.multi_weight));

  // A hand-edited vocabulary would shift indices under the trained weights: refused.
  auto j = e.to_json();
  j["users"].push_back("u9");
  const auto edited = dir.write("edited.json", j.dump());
  expect_error([&] { FeatureEncoder::load(edited); }, {"edited.json", "layout"});
  const auto broken = dir.write("broken.json", "{\"format\": ");
  expect_error([&] { FeatureEncoder::load(broken); }, {"broken.json", "not valid JSON"});
}

TEST(CtrFeatures, ConfigErrorsNameTheKeyOrField) {
  const auto d = hand_dataset();
  expect_error([] { FeatureConfig::from_json(nlohmann::json{{"min_cout", 2}}); }, {"features", "min_cout"});
  expect_error([] { FeatureConfig::from_json(nlohmann::json{{"min_count", "2"}}); }, {"min_count", "integer"});
  expect_error([] { FeatureConfig::from_json(nlohmann::json{{"min_count", 0}}); }, {"min_count"});
  expect_error([] { FeatureConfig::from_json(nlohmann::json{{"profile", "sparse"}}); }, {"sparse", "codes"});
  FeatureConfig config;
  config.item_fields = std::vector<std::string>{"title"};
  expect_error([&] { FeatureEncoder::fit(d, d.training_view(), config); }, {"title", "free text"});
  config.item_fields = std::vector<std::string>{"genre"};
  expect_error([&] { FeatureEncoder::fit(d, d.training_view(), config); }, {"genre", "genres, year, studio"});
  config.item_fields.reset();
  config.profile = ProfileInput::codes;
  expect_error([&] { FeatureEncoder::fit(d, d.training_view(), config); }, {"feature bank"});
}

TEST(CtrFeatures, ChosenItemFieldsOnlyAndIdsCanBeLeftOut) {
  const auto d = hand_dataset();
  FeatureConfig config;
  config.item_fields = std::vector<std::string>{"studio"};
  config.user_id = false;
  const auto e = FeatureEncoder::fit(d, d.training_view(), config);
  ASSERT_EQ(e.layout().categorical.size(), 2u);
  EXPECT_EQ(e.layout().categorical[0].name, "item_id");
  EXPECT_EQ(e.layout().categorical[1].name, "studio");
  EXPECT_TRUE(e.layout().multi_hot.empty());
  const Examples test = e.encode(d, d.view({data::SplitPart::test}), nullptr, nullptr);
  EXPECT_EQ(test.multi_index.size(1), 0);
}

}  // namespace
}  // namespace userip::ctr
