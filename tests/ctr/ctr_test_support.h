#pragma once
// Small datasets for the CTR tests: a hand-made one whose vocabularies can be counted by eye, and
// a seeded synthetic world with a split.
#include <filesystem>

#include "userip/ctr/controls.h"
#include "userip/data/dataset.h"
#include "userip/data/split.h"
#include "userip/data/synth.h"
#include "userip/store/feature_bank.h"
#include "userip/util/random.h"

namespace userip::testing {

// Users u1..u3 (train), item catalogue i1..i4 with genres (category_list), year (number) and
// a studio (category). Every row's part is set by hand.
inline data::Dataset hand_dataset() {
  data::Dataset d;
  d.user_ids = {"u1", "u2", "u3", "u4"};
  d.item_ids = {"i1", "i2", "i3", "i4"};
  d.item_fields = {{"title", data::FieldKind::text, {"A", "B", "C", "D"}},
                   {"genres", data::FieldKind::category_list, {"Drama|Comedy", "Drama", "Horror", ""}},
                   {"year", data::FieldKind::number, {"1990", "2000", "2010", "x"}},
                   {"studio", data::FieldKind::category, {"s1", "s1", "s2", "s3"}}};
  using P = data::SplitPart;
  struct Row {
    std::uint32_t user, item;
    float rating;
    P part;
  };
  const std::vector<Row> rows = {{0, 0, 5, P::train}, {0, 1, 2, P::train}, {0, 2, 4, P::valid}, {0, 1, 5, P::test},
                                 {1, 0, 4, P::train}, {1, 0, 1, P::train}, {1, 1, 5, P::valid}, {1, 2, 2, P::test},
                                 {2, 2, 5, P::train}, {2, 1, 3, P::valid}, {2, 0, 4, P::test},
                                 {3, 3, 4, P::cold_history}, {3, 0, 2, P::cold_test}};
  std::int64_t t = 0;
  for (const auto& r : rows) {
    d.interactions.user.push_back(r.user);
    d.interactions.item.push_back(r.item);
    d.interactions.rating.push_back(r.rating);
    d.interactions.timestamp.push_back(t++);
    d.split.part.push_back(r.part);
  }
  d.split.config = data::SplitConfig{};
  d.validate();
  return d;
}

// A synthetic world with its default split, small enough for a CTR model to train in a second.
inline data::Dataset synthetic_dataset(std::size_t users = 300, std::uint64_t seed = 7) {
  data::SynthOptions o;
  o.users = users;
  o.items = 200;
  o.mean_interactions = 30;
  o.seed = seed;
  o.show_progress = false;
  data::Dataset d = data::generate_synthetic(o).dataset;
  data::SplitConfig split;
  split.seed = seed;
  d.split = data::make_split(d, split);
  return d;
}

// A world where a click depends on whether the item's category is the user's favourite (one of
// three) and on the item's quality: interaction models can learn it well, LR only the item part.
// A quarter of the users are cold (held out), enough to measure what profiles do for them.
inline data::Dataset preference_dataset(std::uint64_t seed = 5) {
  data::Dataset d;
  const int users = 240, items = 60, per_user = 30;
  for (int u = 0; u < users; ++u) d.user_ids.push_back("user" + std::to_string(u));
  data::ItemField category{"category", data::FieldKind::category, {}};
  for (int i = 0; i < items; ++i) {
    d.item_ids.push_back("item" + std::to_string(i));
    category.values.push_back(std::string(1, static_cast<char>('A' + i % 3)));
  }
  d.item_fields = {category};
  d.label_kind = data::LabelKind::click;
  Rng rng(seed);
  std::int64_t t = 0;
  for (int u = 0; u < users; ++u) {
    for (int k = 0; k < per_user; ++k) {
      // Users also pick their favourite category more often, as real users do: their histories
      // reveal the taste that their clicks follow.
      int i = static_cast<int>(rng.uniform() * items) % items;
      if (rng.uniform() < 0.5) i = (i / 3) * 3 + u % 3;
      const double quality = (i % 5) / 4.0;
      const double p = 0.1 + 0.6 * (i % 3 == u % 3 ? 1.0 : 0.0) + 0.25 * quality;
      d.interactions.user.push_back(static_cast<std::uint32_t>(u));
      d.interactions.item.push_back(static_cast<std::uint32_t>(i));
      d.interactions.rating.push_back(rng.uniform() < p ? 1.0f : 0.0f);
      d.interactions.timestamp.push_back(t++);
    }
  }
  data::SplitConfig split;
  split.seed = seed;
  split.cold_fraction = 0.25;
  d.split = data::make_split(d, split);
  d.validate();
  return d;
}

// A stand-in for a UserIP feature bank with real signal: the genre control's codes of every warm
// and cold user, published as one field "taste" and read back like any bank.
inline void write_control_bank(const data::Dataset& dataset, std::int64_t codes, const std::filesystem::path& path) {
  const ctr::UserCodeTable control = ctr::histogram_control_codes(dataset, "", codes, 1);
  store::BankContents contents;
  contents.fields = {{"taste", static_cast<std::int32_t>(codes)}};
  contents.codebook_fingerprint = "test";
  for (const auto& [user, user_codes] : control.codes) {
    contents.users.push_back(user);
    contents.codes.push_back(user_codes[0]);
  }
  store::write_bank(path, contents);
}

}  // namespace userip::testing
