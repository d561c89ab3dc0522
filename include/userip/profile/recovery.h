#pragma once
// How well profile codes recover known latent classes (synthetic worlds), beside a control that
// uses no LM: k-means of each user's category histogram.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/data/synth.h"
#include "userip/profile/fit.h"

namespace userip::profile {

struct RecoveryReport {
  // Per attribute (level-0 codes): NMI with the taste classes and with the background classes.
  std::vector<std::string> attributes;
  std::vector<double> taste_nmi, background_nmi;
  // Per attribute: users per (code, taste class) and per (code, background class), which NMI
  // alone hides: whether a code mixes two classes, or a class is split over two codes.
  std::vector<std::vector<std::vector<std::int64_t>>> taste_table, background_table;
  // The control: k-means (K = number of taste classes, resp. background classes) of the users'
  // normalised histograms of `field` over their history rows.
  double control_taste_nmi = 0, control_background_nmi = 0;
  std::int64_t users = 0;
  nlohmann::json to_json() const;
};

RecoveryReport ground_truth_recovery(const Profiles& profiles, const data::SynthGroundTruth& truth,
                                     const data::SplitView& history, const std::string& field, std::uint64_t seed);

}  // namespace userip::profile
