#pragma once
// Synthetic worlds with known latent profiles, the ground truth that real logs never have.
// Each user has a latent taste class (which item categories they choose and like) and a latent
// background class (which price level they prefer, how active and how generous they are).
// `noise` blends every choice and rating with profile-free randomness: at high noise the classes
// can no longer be read off simple statistics such as a user's category histogram.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "userip/data/dataset.h"

namespace userip::data {

struct SynthOptions {
  std::size_t users = 2000;
  std::size_t items = 1000;
  int taste_classes = 6;        // K
  int background_classes = 3;   // J
  int categories = 12;          // item categories; each taste class favours two of them
  double mean_interactions = 40;  // per user, before the background's activity factor
  double noise = 0.3;           // 0 = fully determined by the profile, 1 = profile-free
  std::uint64_t seed = 42;
  bool show_progress = true;
  void validate() const;
  nlohmann::json to_json() const;
};

struct SynthGroundTruth {
  std::vector<int> taste;       // per user (dense id)
  std::vector<int> background;  // per user
};

struct SynthWorld {
  Dataset dataset;  // no split yet
  SynthGroundTruth truth;
};

SynthWorld generate_synthetic(const SynthOptions& options);

// Saves the dataset with `ground_truth.csv` (user,taste,background, original user ids) inside.
void save_synthetic(const SynthWorld& world, const std::filesystem::path& dir);
// Reads `ground_truth.csv` of a synthetic dataset (indexed by dense user id).
SynthGroundTruth load_ground_truth(const Dataset& dataset, const std::filesystem::path& dir);

// Names used in the item text, exposed so templates and tests can refer to them.
const std::vector<std::string>& synth_category_names();
const std::vector<std::string>& synth_price_levels();

}  // namespace userip::data
