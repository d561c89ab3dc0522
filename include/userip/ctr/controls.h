#pragma once
// Control profiles that use no language model, for the experiment's comparison (METHOD.md §3):
// does the LM add anything over clustering what the user did? Each gives every warm user (from the
// training split) and every cold user (from cold_history) one code, as a feature-bank-like table.
// There are three: genre histograms, collaborative embeddings, and plain history statistics.
#include <cstdint>
#include <string>

#include "userip/ctr/features.h"
#include "userip/data/dataset.h"

namespace userip::ctr {

// k-means codes of each user's normalised histogram of an item category field (genres). Centroids
// are fitted on the warm users; cold users take the nearest centroid of their cold_history.
// `field` empty = the dataset's first category_list or category field.
UserCodeTable histogram_control_codes(const data::Dataset& dataset, const std::string& field, std::int64_t codes,
                                      std::uint64_t seed);

// k-means codes of collaborative user embeddings: a rank-`dim` truncated SVD of the training
// user-item matrix (1 for each interaction, rows scaled to unit length) gives item factors; a user's
// embedding is the normalised mean of the factors of the items in their history, so warm and cold
// users are embedded the same way (fold-in). Centroids from the warm users.
UserCodeTable collaborative_control_codes(const data::Dataset& dataset, std::int64_t dim, std::int64_t codes,
                                          std::uint64_t seed);

// k-means codes of plain statistics of each user's history: the share of positive labels, the mean
// rating (rating data), the activity (log of the count) and the histogram of a category field
// (`field` as in histogram_control_codes; none when the dataset has no category field). Each number is standardised over the warm users and the
// histogram scaled to unit total variance, so that each of the four weighs alike. Warm users are
// described by their training rows, cold users by their cold_history (what fold-in reads), and
// cold users take the nearest warm centroid: what simple statistics give without any LM.
UserCodeTable history_control_codes(const data::Dataset& dataset, const std::string& field, std::int64_t codes,
                                    std::uint64_t seed);

}  // namespace userip::ctr
