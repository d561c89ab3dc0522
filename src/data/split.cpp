#include "userip/data/split.h"

#include <cmath>
#include <numeric>

#include "data/storage.h"
#include "userip/util/error.h"
#include "userip/util/random.h"

namespace userip::data {

namespace {
std::size_t round_count(double x) { return static_cast<std::size_t>(std::llround(x)); }
}  // namespace

Split make_split(const Dataset& dataset, const SplitConfig& config) {
  config.validate();
  std::size_t n_users = dataset.num_users();
  std::vector<std::uint32_t> users(n_users);
  std::iota(users.begin(), users.end(), 0u);
  Rng rng(config.seed);
  rng.shuffle(users);
  std::vector<bool> cold(n_users, false);
  std::size_t n_cold = round_count(config.cold_fraction * static_cast<double>(n_users));
  if (n_cold >= n_users && n_users > 0) n_cold = n_users - 1;  // someone must remain to train on
  for (std::size_t i = 0; i < n_cold; ++i) cold[users[i]] = true;

  Split split;
  split.config = config;
  split.part.assign(dataset.num_interactions(), SplitPart::train);
  const auto order = chronological_order(dataset.interactions, n_users);
  std::size_t begin = 0;
  while (begin < order.size()) {
    std::uint32_t user = dataset.interactions.user[order[begin]];
    std::size_t end = begin;
    while (end < order.size() && dataset.interactions.user[order[end]] == user) ++end;
    double n = static_cast<double>(end - begin);
    std::size_t train_end = std::max<std::size_t>(1, round_count(n * config.train_ratio));
    std::size_t valid_end = std::max(train_end, round_count(n * (config.train_ratio + config.valid_ratio)));
    for (std::size_t k = 0; k < end - begin; ++k) {
      SplitPart part;
      if (cold[user]) {
        part = k < train_end ? SplitPart::cold_history : SplitPart::cold_test;
      } else {
        part = k < train_end ? SplitPart::train : (k < valid_end ? SplitPart::valid : SplitPart::test);
      }
      split.part[order[begin + k]] = part;
    }
    begin = end;
  }
  return split;
}

void save_split(const std::filesystem::path& dir, const Dataset& dataset) {
  USERIP_CHECK(std::filesystem::exists(dir / kManifestFile), "{} is not a userip dataset", dir.string());
  USERIP_CHECK(dataset.split.part.size() == dataset.num_interactions(), "the split does not cover the dataset");
  write_split(dir, dataset.split, dataset.num_users());
}

std::vector<bool> cold_users(const Dataset& dataset) {
  std::vector<bool> cold(dataset.num_users(), false);
  for (std::size_t i = 0; i < dataset.split.part.size(); ++i) {
    auto p = dataset.split.part[i];
    if (p == SplitPart::cold_history || p == SplitPart::cold_test) cold[dataset.interactions.user[i]] = true;
  }
  return cold;
}

}  // namespace userip::data
