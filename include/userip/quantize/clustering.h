#pragma once
// Plain clustering and its evaluation: k-means (for the controls that use no LM), normalised
// mutual information (to compare codes with the synthetic ground truth), and the control
// profile itself, a per-user histogram of an item category field.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "userip/data/dataset.h"

namespace userip::quantize {

struct KMeansResult {
  torch::Tensor centroids;                // [k, dim] float32 on x's device
  std::vector<std::int32_t> assignment;   // per point, nearest centroid
  double inertia = 0;                     // sum over points of the squared distance to its centroid
  int iterations = 0;                     // Lloyd iterations of the kept run
};

// Lloyd's algorithm with k-means++ seeding on x [N, dim] float32 (any device). Runs `restarts`
// independently seeded runs (Rng::derive(seed, run)) and keeps the lowest inertia (ties: the
// earlier run). A run stops when the assignment no longer changes or after max_iterations.
// Empty clusters are re-seeded as ResidualCodebook::update_means does. Deterministic on the CPU.
KMeansResult kmeans(const torch::Tensor& x, std::int64_t k, std::uint64_t seed, int max_iterations = 100,
                    int restarts = 3);

// Normalised mutual information with arithmetic-mean normalisation (scikit-learn's default):
// NMI = MI / ((H(a) + H(b)) / 2), natural logs. 1.0 when both labelings are constant (or empty),
// 0.0 when exactly one is. Throws when the sizes differ.
double normalized_mutual_information(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b);

// The no-LM control profile: for each user in `users` (that order), the normalised histogram of
// the item field `field` over the user's interactions in `view`. The field must be of kind
// category (one value per item) or category_list (values split on '|', each counted once per
// interaction); missing values ("") are skipped. Columns are the distinct values seen anywhere
// in the view, plus `extra_columns` (e.g. the training view's columns, when building rows for
// cold users), sorted. A user with nothing to count gets a zero row. Throws naming the field when
// it is missing or not categorical, and naming the user when out of range.
struct UserHistograms {
  torch::Tensor matrix;              // [users, columns] float32, CPU; each non-empty row sums to 1
  std::vector<std::string> columns;  // sorted
};
UserHistograms category_histograms(const data::SplitView& view, const std::vector<std::uint32_t>& users,
                                   const std::string& field, const std::vector<std::string>& extra_columns = {});

// The same with the columns fixed by the caller (e.g. exactly the training columns, so that cold
// users' rows live in the space the training centroids were fitted in). Values not among
// `columns` are ignored; rows are normalised over what remains. `columns` must be distinct.
UserHistograms category_histograms_with_columns(const data::SplitView& view, const std::vector<std::uint32_t>& users,
                                                const std::string& field, const std::vector<std::string>& columns);

}  // namespace userip::quantize
