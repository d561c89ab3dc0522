#include "userip/data/synth.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "data/storage.h"
#include "userip/data/records.h"
#include "userip/util/error.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"
#include "userip/util/strings.h"

namespace userip::data {

namespace {

// Activity, price preference and rating generosity of each background class, cycled when J > 3.
constexpr double kActivity[] = {0.5, 1.0, 2.0};
constexpr double kGenerosity[] = {-0.3, 0.0, 0.3};
constexpr double kLikedBonus = 1.2;
constexpr double kPriceMatchBonus = 0.4;
constexpr double kPriceAffinity = 3.0;
constexpr std::int64_t kEpochStart = 1420070400;  // 2015-01-01
constexpr double kMeanGapSeconds = 86400.0;

const std::vector<std::vector<std::string>>& category_words() {
  static const std::vector<std::vector<std::string>> words = {
      {"Galaxy", "Orbit", "Android", "Nebula"},  {"Dragon", "Kingdom", "Sword", "Wizard"},
      {"Murder", "Detective", "Alibi", "Clue"},  {"Love", "Wedding", "Heart", "Kiss"},
      {"Laugh", "Prank", "Buddies", "Chaos"},    {"Haunted", "Curse", "Shadow", "Scream"},
      {"Mission", "Chase", "Explosion", "Agent"}, {"Ocean", "Planet", "Wildlife", "Journey"},
      {"Song", "Melody", "Stage", "Rhythm"},     {"Battle", "Soldier", "Empire", "Front"},
      {"Family", "Puppy", "Magic", "Friends"},   {"Heist", "Gang", "Vault", "Double"},
  };
  return words;
}

const std::vector<std::string>& generic_words() {
  static const std::vector<std::string> words = {"The", "Last", "Secret", "Night", "Return", "City",
                                                 "Story", "Lost", "Golden", "Dark", "Summer", "Road"};
  return words;
}

struct Item {
  std::vector<int> categories;  // primary first
  int price;
  double popularity;
};

}  // namespace

const std::vector<std::string>& synth_category_names() {
  static const std::vector<std::string> names = {"SciFi", "Fantasy", "Mystery", "Romance", "Comedy", "Horror",
                                                 "Action", "Documentary", "Musical", "War", "Children", "Crime"};
  return names;
}

const std::vector<std::string>& synth_price_levels() {
  static const std::vector<std::string> levels = {"budget", "standard", "premium"};
  return levels;
}

void SynthOptions::validate() const {
  USERIP_CHECK(users >= 1 && users <= 100'000'000, "--users must be in [1, 1e8], got {}", users);
  USERIP_CHECK(items >= 1 && items <= 100'000'000, "--items must be in [1, 1e8], got {}", items);
  int max_categories = static_cast<int>(synth_category_names().size());
  USERIP_CHECK(categories >= 2 && categories <= max_categories, "--categories must be in [2, {}], got {}",
               max_categories, categories);
  USERIP_CHECK(taste_classes >= 1 && taste_classes <= categories, "--taste-classes must be in [1, categories={}], got {}",
               categories, taste_classes);
  USERIP_CHECK(background_classes >= 1 && background_classes <= 3, "--background-classes must be in [1, 3], got {}",
               background_classes);
  USERIP_CHECK(mean_interactions >= 1 && mean_interactions <= 1e5, "--mean-interactions must be in [1, 1e5], got {}",
               mean_interactions);
  USERIP_CHECK(noise >= 0.0 && noise <= 1.0, "--noise must be in [0, 1], got {}", noise);
}

nlohmann::json SynthOptions::to_json() const {
  return {{"users", users},
          {"items", items},
          {"taste_classes", taste_classes},
          {"background_classes", background_classes},
          {"categories", categories},
          {"mean_interactions", mean_interactions},
          {"noise", noise},
          {"seed", seed}};
}

SynthWorld generate_synthetic(const SynthOptions& o) {
  o.validate();
  const auto& category_names = synth_category_names();
  const auto& price_levels = synth_price_levels();
  const int n_prices = static_cast<int>(price_levels.size());
  Rng rng(o.seed);

  // Items: a primary category (round robin, so every category has items), up to two more,
  // a price level, a Zipf-like popularity and a title made of category-specific words.
  std::vector<Item> items(o.items);
  SynthWorld world;
  Dataset& dataset = world.dataset;
  std::vector<std::string> titles(o.items), category_text(o.items), price_text(o.items), year_text(o.items);
  for (std::size_t i = 0; i < o.items; ++i) {
    Item& item = items[i];
    item.categories.push_back(static_cast<int>(i % static_cast<std::size_t>(o.categories)));
    int extra = static_cast<int>(rng.below(3));
    for (int e = 0; e < extra; ++e) {
      int c = static_cast<int>(rng.below(static_cast<std::uint64_t>(o.categories)));
      if (std::find(item.categories.begin(), item.categories.end(), c) == item.categories.end()) {
        item.categories.push_back(c);
      }
    }
    item.price = static_cast<int>(rng.below(static_cast<std::uint64_t>(n_prices)));
    item.popularity = 1.0 / std::pow(static_cast<double>(rng.below(o.items) + 1), 0.6);
    const auto& own = category_words()[item.categories[0]];
    const auto& generic = generic_words();
    titles[i] = fmt::format("{} {} {}", generic[rng.below(generic.size())], own[rng.below(own.size())],
                            own[rng.below(own.size())]);
    std::vector<std::string> names;
    for (int c : item.categories) names.push_back(category_names[c]);
    category_text[i] = join(names, "|");
    price_text[i] = price_levels[item.price];
    year_text[i] = std::to_string(1970 + rng.below(46));
    dataset.item_ids.push_back(fmt::format("i{}", i + 1));
  }
  dataset.item_fields = {{"title", FieldKind::text, std::move(titles)},
                         {"categories", FieldKind::category_list, std::move(category_text)},
                         {"price", FieldKind::category, std::move(price_text)},
                         {"year", FieldKind::number, std::move(year_text)}};

  // Per (category, background) the cumulative choice weights over the items of that category.
  std::vector<std::vector<std::size_t>> members(o.categories);
  for (std::size_t i = 0; i < o.items; ++i) {
    for (int c : items[i].categories) members[c].push_back(i);
  }
  std::vector<std::vector<std::vector<double>>> cdf(
      o.categories, std::vector<std::vector<double>>(o.background_classes));
  for (int c = 0; c < o.categories; ++c) {
    for (int b = 0; b < o.background_classes; ++b) {
      double total = 0;
      for (std::size_t i : members[c]) {
        double affinity = items[i].price == b % n_prices ? 1.0 + kPriceAffinity * (1.0 - o.noise) : 1.0;
        total += items[i].popularity * affinity;
        cdf[c][b].push_back(total);
      }
    }
  }

  // Taste class k favours categories 2k and 2k+1 (mod C).
  auto favoured = [&](int taste, int category) {
    return category == (2 * taste) % o.categories || category == (2 * taste + 1) % o.categories;
  };
  std::vector<double> category_weights(o.categories);

  world.truth.taste.resize(o.users);
  world.truth.background.resize(o.users);
  ProgressBar progress("synth", o.show_progress ? o.users : 0, "users");
  if (!o.show_progress) progress.disable();
  std::unordered_set<std::size_t> seen;
  for (std::size_t u = 0; u < o.users; ++u) {
    Rng user_rng = Rng::derive(o.seed, u + 1);
    int taste = static_cast<int>(user_rng.below(static_cast<std::uint64_t>(o.taste_classes)));
    int background = static_cast<int>(user_rng.below(static_cast<std::uint64_t>(o.background_classes)));
    world.truth.taste[u] = taste;
    world.truth.background[u] = background;
    dataset.user_ids.push_back(fmt::format("u{}", u + 1));

    double activity = kActivity[background % 3];
    double scale = std::exp(user_rng.normal(0.0, 0.5) - 0.125);  // log-normal with mean 1
    std::size_t n = std::max<std::size_t>(
        5, static_cast<std::size_t>(std::llround(o.mean_interactions * activity * scale)));
    n = std::min(n, o.items);
    for (int c = 0; c < o.categories; ++c) {
      double profile = favoured(taste, c) ? 0.5 : 0.0;
      category_weights[c] = (1.0 - o.noise) * profile + o.noise / o.categories;
    }
    seen.clear();
    std::int64_t time = kEpochStart + static_cast<std::int64_t>(user_rng.uniform(0, 2.0 * 365 * 86400));
    for (std::size_t k = 0; k < n; ++k) {
      std::size_t item = 0;
      bool found = false;
      for (int attempt = 0; attempt < 50 && !found; ++attempt) {
        int c = static_cast<int>(user_rng.categorical(category_weights));
        const auto& weights = cdf[c][background];
        if (weights.empty()) continue;
        double r = user_rng.uniform() * weights.back();
        std::size_t pos = static_cast<std::size_t>(std::upper_bound(weights.begin(), weights.end(), r) - weights.begin());
        item = members[c][std::min(pos, members[c].size() - 1)];
        found = seen.insert(item).second;
      }
      if (!found) break;  // the user has exhausted what they would choose
      bool liked = std::any_of(items[item].categories.begin(), items[item].categories.end(),
                               [&](int c) { return favoured(taste, c); });
      double mean = 3.0 + (liked ? kLikedBonus : -0.5 * kLikedBonus) +
                    (items[item].price == background % n_prices ? kPriceMatchBonus : 0.0) + kGenerosity[background % 3];
      // Noise weakens the profile's effect on ratings as well as on choices.
      mean = (1.0 - o.noise) * mean + o.noise * 3.0;
      double rating = std::clamp(std::round(2.0 * user_rng.normal(mean, 0.3 + o.noise)) / 2.0, 0.5, 5.0);
      time += 1 + static_cast<std::int64_t>(-std::log(1.0 - user_rng.uniform()) * kMeanGapSeconds);
      dataset.interactions.user.push_back(static_cast<std::uint32_t>(u));
      dataset.interactions.item.push_back(static_cast<std::uint32_t>(item));
      dataset.interactions.rating.push_back(static_cast<float>(rating));
      dataset.interactions.timestamp.push_back(time);
    }
    progress.advance();
  }
  progress.finish();
  dataset.label_kind = LabelKind::rating;
  dataset.provenance = {{"source", "synthetic"}, {"options", o.to_json()}};
  return world;
}

void save_synthetic(const SynthWorld& world, const std::filesystem::path& dir) {
  const Dataset& d = world.dataset;
  d.validate();
  std::string truth = "user,taste,background\n";
  for (std::size_t u = 0; u < d.num_users(); ++u) {
    truth += fmt::format("{},{},{}\n", d.user_ids[u], world.truth.taste[u], world.truth.background[u]);
  }
  DatasetWriter writer(dir);
  writer.append(d.interactions);
  writer.add_file("ground_truth.csv", truth);
  writer.commit(d);
}

SynthGroundTruth load_ground_truth(const Dataset& dataset, const std::filesystem::path& dir) {
  auto path = dir / "ground_truth.csv";
  USERIP_CHECK(std::filesystem::exists(path), "{}: no ground truth (only `userip data synth` datasets have one)",
               path.string());
  SynthGroundTruth truth;
  truth.taste.assign(dataset.num_users(), -1);
  truth.background.assign(dataset.num_users(), -1);
  auto reader = open_records(path);
  int user_col = reader->column_index("user"), taste_col = reader->column_index("taste"),
      background_col = reader->column_index("background");
  USERIP_CHECK(user_col >= 0 && taste_col >= 0 && background_col >= 0, "{}: expected columns user,taste,background",
               path.string());
  while (reader->next()) {
    auto user = dataset.find_user(reader->field(user_col).value_or(""));
    auto taste = parse_int64(reader->field(taste_col).value_or(""));
    auto background = parse_int64(reader->field(background_col).value_or(""));
    USERIP_CHECK(user && taste && background, "{}: malformed row", reader->where());
    truth.taste[*user] = static_cast<int>(*taste);
    truth.background[*user] = static_cast<int>(*background);
  }
  return truth;
}

}  // namespace userip::data
