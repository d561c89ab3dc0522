#pragma once
// Descriptive statistics of a dataset: sizes, sparsity, activity quantiles, ratings, click rates.
#include <nlohmann/json.hpp>

#include <string>

#include "userip/data/dataset.h"

namespace userip::data {

// Everything `userip data stats` shows, as JSON.
nlohmann::json dataset_stats(const Dataset& dataset);
// The same as a human-readable report.
std::string format_stats(const nlohmann::json& stats);

}  // namespace userip::data
