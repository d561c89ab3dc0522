#pragma once
// Per-user chronological train/validation/test split plus held-out cold users.
#include <filesystem>
#include <vector>

#include "userip/data/dataset.h"

namespace userip::data {

// Each warm user's history, ordered by (timestamp, file row), is cut at round(n·train) and
// round(n·(train+valid)) (at least one training interaction per user). A seeded shuffle of the
// users picks round(cold_fraction · users) cold users; their first round(n·train) interactions
// become cold_history (what fold-in may read), the rest cold_test.
Split make_split(const Dataset& dataset, const SplitConfig& config);

// Stores `dataset.split` in the dataset directory `dir`, replacing any previous split.
void save_split(const std::filesystem::path& dir, const Dataset& dataset);

// Per user: true if held out as a cold user.
std::vector<bool> cold_users(const Dataset& dataset);

}  // namespace userip::data
