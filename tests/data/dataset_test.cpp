#include <gtest/gtest.h>

#include <fstream>

#include "support/temp_dir.h"
#include "userip/data/dataset.h"
#include "userip/data/split.h"
#include "userip/data/stats.h"
#include "userip/data/synth.h"
#include "userip/util/error.h"

namespace userip::data {
namespace {

Dataset small_synthetic(std::size_t users = 200, std::uint64_t seed = 3) {
  SynthOptions o;
  o.users = users;
  o.items = 300;
  o.seed = seed;
  o.show_progress = false;
  return generate_synthetic(o).dataset;
}

TEST(Dataset, SaveLoadRoundTripsEverything) {
  testing::TempDir dir;
  Dataset d = small_synthetic();
  d.split = make_split(d, SplitConfig{});
  d.save(dir / "ds");
  Dataset e = Dataset::load(dir / "ds");
  EXPECT_EQ(e.user_ids, d.user_ids);
  EXPECT_EQ(e.item_ids, d.item_ids);
  EXPECT_EQ(e.interactions.user, d.interactions.user);
  EXPECT_EQ(e.interactions.item, d.interactions.item);
  EXPECT_EQ(e.interactions.rating, d.interactions.rating);
  EXPECT_EQ(e.interactions.timestamp, d.interactions.timestamp);
  ASSERT_EQ(e.item_fields.size(), d.item_fields.size());
  for (std::size_t f = 0; f < d.item_fields.size(); ++f) {
    EXPECT_EQ(e.item_fields[f].name, d.item_fields[f].name);
    EXPECT_EQ(e.item_fields[f].kind, d.item_fields[f].kind);
    EXPECT_EQ(e.item_fields[f].values, d.item_fields[f].values);
  }
  EXPECT_EQ(e.split.part, d.split.part);
  EXPECT_EQ(e.split.config.seed, d.split.config.seed);
}

TEST(Dataset, DamagedFilesAreNamed) {
  testing::TempDir dir;
  Dataset d = small_synthetic(20);
  d.split = make_split(d, SplitConfig{});
  d.save(dir / "ds");
  std::filesystem::resize_file(dir / "ds" / "interactions.item.u32", 8);
  try {
    Dataset::load(dir / "ds");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("interactions.item.u32"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "ds" / "manifest.json") << "{ not json";
  EXPECT_THROW(Dataset::load(dir / "ds"), Error);
  EXPECT_THROW(Dataset::load(dir / "nowhere"), Error);
}

TEST(Dataset, SplitColumnOutOfStepWithItsDescriptionIsDetected) {
  testing::TempDir dir;
  Dataset d = small_synthetic(20);
  d.split = make_split(d, SplitConfig{});
  d.save(dir / "ds");
  std::fstream f(dir / "ds" / "split.u8", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(0);
  f.put(static_cast<char>(d.split.part[0] == SplitPart::train ? 2 : 0));
  f.close();
  EXPECT_THROW(Dataset::load(dir / "ds"), Error);
}

TEST(Split, IsChronologicalPerUserAndRespectsRatios) {
  Dataset d = small_synthetic();
  SplitConfig config;
  config.cold_fraction = 0.0;
  d.split = make_split(d, config);
  auto all = d.view({SplitPart::train, SplitPart::valid, SplitPart::test});
  std::size_t counts[3] = {};
  for (std::uint32_t u : all.users()) {
    int last_part = 0;
    for (std::size_t i = all.user_begin(u); i < all.user_end(u); ++i) {
      int part = static_cast<int>(d.split.part[all.row(i)]);
      EXPECT_GE(part, last_part) << "user " << u << ": a later interaction landed in an earlier part";
      last_part = part;
      counts[part]++;
      if (i > all.user_begin(u)) {
        EXPECT_LE(all.timestamp(i - 1), all.timestamp(i));
      }
    }
  }
  double n = static_cast<double>(d.num_interactions());
  EXPECT_NEAR(counts[0] / n, 0.8, 0.02);
  EXPECT_NEAR(counts[1] / n, 0.1, 0.02);
  EXPECT_NEAR(counts[2] / n, 0.1, 0.02);
}

TEST(Split, TrainingViewShowsNoValidationTestOrColdInteraction) {
  Dataset d = small_synthetic();
  d.split = make_split(d, SplitConfig{});
  auto train = d.training_view();
  auto cold = cold_users(d);
  std::size_t train_rows = 0;
  for (std::size_t i = 0; i < d.num_interactions(); ++i) train_rows += d.split.part[i] == SplitPart::train;
  EXPECT_EQ(train.size(), train_rows);
  std::vector<bool> visible(d.num_interactions(), false);
  for (std::size_t i = 0; i < train.size(); ++i) {
    EXPECT_EQ(d.split.part[train.row(i)], SplitPart::train);
    EXPECT_FALSE(cold[train.user(i)]) << "cold user " << train.user(i) << " is visible in training";
    visible[train.row(i)] = true;
  }
  for (std::size_t i = 0; i < d.num_interactions(); ++i) {
    if (d.split.part[i] != SplitPart::train) {
      EXPECT_FALSE(visible[i]);
    }
  }
  for (std::uint32_t u = 0; u < d.num_users(); ++u) {
    if (cold[u]) {
      EXPECT_EQ(train.user_count(u), 0u);
    }
  }
}

TEST(Split, ColdUsersAreASeededFractionAndTheSplitIsDeterministic) {
  Dataset d = small_synthetic(400);
  SplitConfig config;
  config.seed = 11;
  Split a = make_split(d, config), b = make_split(d, config);
  EXPECT_EQ(a.part, b.part);
  d.split = a;
  auto cold_a = cold_users(d);
  EXPECT_EQ(std::count(cold_a.begin(), cold_a.end(), true), 40);
  config.seed = 12;
  d.split = make_split(d, config);
  EXPECT_NE(cold_users(d), cold_a);
}

TEST(Split, TiesAreBrokenByFileOrder) {
  Dataset d;
  d.user_ids = {"u"};
  d.item_ids = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
  for (std::uint32_t i = 0; i < 10; ++i) {
    d.interactions.user.push_back(0);
    d.interactions.item.push_back(9 - i);
    d.interactions.rating.push_back(4);
    d.interactions.timestamp.push_back(i < 5 ? 7 : 3);  // two groups of equal timestamps
  }
  SplitConfig config;
  config.cold_fraction = 0;
  d.split = make_split(d, config);
  // Chronological order: rows 5..9 (t=3), then rows 0..4 (t=7); the last two go to valid and test.
  EXPECT_EQ(d.split.part[3], SplitPart::valid);
  EXPECT_EQ(d.split.part[4], SplitPart::test);
  EXPECT_EQ(d.split.part[9], SplitPart::train);
}

TEST(Split, RejectsBadRatios) {
  SplitConfig config;
  config.train_ratio = 0.9;
  EXPECT_THROW(config.validate(), Error);
  config = SplitConfig{};
  config.cold_fraction = 1.0;
  EXPECT_THROW(config.validate(), Error);
}

TEST(Labels, FollowTheThreshold) {
  Dataset d = small_synthetic(50);
  SplitConfig config;
  config.label_threshold = 3.5;
  d.split = make_split(d, config);
  for (std::size_t i = 0; i < d.num_interactions(); ++i) {
    EXPECT_EQ(d.label(i), d.interactions.rating[i] >= 3.5f);
  }
}

TEST(Synth, IsDeterministicUnderASeed) {
  Dataset a = small_synthetic(100, 5), b = small_synthetic(100, 5), c = small_synthetic(100, 6);
  EXPECT_EQ(a.interactions.item, b.interactions.item);
  EXPECT_EQ(a.interactions.rating, b.interactions.rating);
  EXPECT_NE(a.interactions.item, c.interactions.item);
}

TEST(Synth, GroundTruthIsConsistentWithTheData) {
  SynthOptions o;
  o.users = 600;
  o.items = 600;
  o.noise = 0.1;
  o.show_progress = false;
  SynthWorld world = generate_synthetic(o);
  const Dataset& d = world.dataset;
  const auto& categories = d.field("categories")->values;
  const auto& names = synth_category_names();
  std::vector<double> interactions_by_background(3), users_by_background(3);
  std::size_t favoured = 0;
  double liked_rating = 0, other_rating = 0;
  std::size_t liked_n = 0, other_n = 0;
  for (std::size_t i = 0; i < d.num_interactions(); ++i) {
    int taste = world.truth.taste[d.interactions.user[i]];
    const std::string& cats = categories[d.interactions.item[i]];
    bool hit = cats.find(names[2 * taste]) != std::string::npos || cats.find(names[2 * taste + 1]) != std::string::npos;
    favoured += hit;
    (hit ? liked_rating : other_rating) += d.interactions.rating[i];
    (hit ? liked_n : other_n)++;
    interactions_by_background[world.truth.background[d.interactions.user[i]]]++;
  }
  for (std::size_t u = 0; u < d.num_users(); ++u) users_by_background[world.truth.background[u]]++;
  // Taste drives choice: most interactions fall in the user's favoured categories.
  EXPECT_GT(static_cast<double>(favoured) / d.num_interactions(), 0.8);
  // ... and liking.
  EXPECT_GT(liked_rating / liked_n, other_rating / other_n + 0.5);
  // Background drives activity: class 0 < class 1 < class 2 interactions per user.
  double a0 = interactions_by_background[0] / users_by_background[0];
  double a1 = interactions_by_background[1] / users_by_background[1];
  double a2 = interactions_by_background[2] / users_by_background[2];
  EXPECT_LT(a0, a1);
  EXPECT_LT(a1, a2);
}

TEST(Synth, NoiseHidesTasteFromCategoryHistograms) {
  auto favoured_share = [](double noise) {
    SynthOptions o;
    o.users = 300;
    o.items = 400;
    o.noise = noise;
    o.show_progress = false;
    SynthWorld w = generate_synthetic(o);
    const auto& names = synth_category_names();
    const auto& categories = w.dataset.field("categories")->values;
    std::size_t hits = 0;
    for (std::size_t i = 0; i < w.dataset.num_interactions(); ++i) {
      int t = w.truth.taste[w.dataset.interactions.user[i]];
      const auto& c = categories[w.dataset.interactions.item[i]];
      hits += c.find(names[2 * t]) != std::string::npos || c.find(names[2 * t + 1]) != std::string::npos;
    }
    return static_cast<double>(hits) / w.dataset.num_interactions();
  };
  EXPECT_GT(favoured_share(0.0), favoured_share(0.5) + 0.2);
  EXPECT_GT(favoured_share(0.5), favoured_share(1.0) + 0.1);
}

TEST(Synth, SavesAndReloadsGroundTruth) {
  testing::TempDir dir;
  SynthOptions o;
  o.users = 30;
  o.items = 50;
  o.show_progress = false;
  SynthWorld w = generate_synthetic(o);
  save_synthetic(w, dir / "ds");
  Dataset d = Dataset::load(dir / "ds");
  SynthGroundTruth truth = load_ground_truth(d, dir / "ds");
  EXPECT_EQ(truth.taste, w.truth.taste);
  EXPECT_EQ(truth.background, w.truth.background);
}

TEST(Synth, RejectsOutOfRangeOptions) {
  SynthOptions o;
  o.noise = 1.5;
  EXPECT_THROW(generate_synthetic(o), Error);
  o = SynthOptions{};
  o.taste_classes = 50;
  EXPECT_THROW(generate_synthetic(o), Error);
}

TEST(Stats, CountsMatchTheDataset) {
  Dataset d = small_synthetic(100);
  d.split = make_split(d, SplitConfig{});
  auto s = dataset_stats(d);
  EXPECT_EQ(s["users"], 100);
  EXPECT_EQ(s["interactions"], d.num_interactions());
  std::size_t total = 0;
  for (auto& [name, part] : s["split"].items()) total += part["interactions"].get<std::size_t>();
  EXPECT_EQ(total, d.num_interactions());
  EXPECT_EQ(s["cold_users"], 10);
  EXPECT_NE(format_stats(s).find("cold_test"), std::string::npos);
}

}  // namespace
}  // namespace userip::data
