#include "userip/ctr/controls.h"

#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "userip/quantize/clustering.h"
#include "userip/util/error.h"
#include "userip/util/log.h"

namespace userip::ctr {
namespace {

// Codes of `warm` rows by k-means, and of `cold` rows by the nearest of those centroids.
UserCodeTable cluster_users(const data::Dataset& dataset, const torch::Tensor& warm, const std::vector<std::uint32_t>& warm_users,
                            const torch::Tensor& cold, const std::vector<std::uint32_t>& cold_users, std::int64_t codes,
                            std::uint64_t seed, const std::string& name) {
  USERIP_CHECK(codes >= 1, "{}: the number of codes must be at least 1, got {}", name, codes);
  USERIP_CHECK(warm.size(0) >= codes, "{}: {} warm users are fewer than the {} codes asked for", name, warm.size(0), codes);
  const quantize::KMeansResult result = quantize::kmeans(warm, codes, seed);
  UserCodeTable table;
  table.source = name;
  table.fields = {{name, static_cast<std::int32_t>(codes)}};
  for (std::size_t i = 0; i < warm_users.size(); ++i) {
    table.codes.emplace(dataset.user_ids[warm_users[i]], std::vector<std::int32_t>{result.assignment[i]});
  }
  if (!cold_users.empty()) {
    const torch::Tensor nearest = torch::cdist(cold, result.centroids).argmin(1).to(torch::kInt32).contiguous();
    for (std::size_t i = 0; i < cold_users.size(); ++i) {
      table.codes.emplace(dataset.user_ids[cold_users[i]], std::vector<std::int32_t>{nearest.data_ptr<std::int32_t>()[i]});
    }
  }
  return table;
}

// The category field of a control: the one asked for, else the dataset's first category_list field, else its first
// category field; nullopt when there is none.
std::optional<std::string> category_field(const data::Dataset& dataset, const std::string& field) {
  if (!field.empty()) return field;
  for (const auto& f : dataset.item_fields)
    if (f.kind == data::FieldKind::category_list) return f.name;
  for (const auto& f : dataset.item_fields)
    if (f.kind == data::FieldKind::category) return f.name;
  return std::nullopt;
}

// Positive share, mean rating (rating data) and log activity of each user's rows in `view`: [users, 2 or 3].
torch::Tensor history_statistics(const data::SplitView& view, const std::vector<std::uint32_t>& users, bool ratings) {
  const std::int64_t columns = ratings ? 3 : 2;
  torch::Tensor out = torch::zeros({static_cast<std::int64_t>(users.size()), columns}, torch::kFloat32);
  auto* data = out.data_ptr<float>();
  for (std::size_t r = 0; r < users.size(); ++r) {
    double likes = 0, rating = 0;
    const auto n = view.user_count(users[r]);
    for (std::size_t i = view.user_begin(users[r]); i < view.user_end(users[r]); ++i) {
      likes += view.label(i) ? 1 : 0;
      rating += view.rating(i);
    }
    const double count = std::max<double>(static_cast<double>(n), 1.0);
    float* row = data + static_cast<std::int64_t>(r) * columns;
    row[0] = static_cast<float>(likes / count);
    row[1] = static_cast<float>(std::log1p(static_cast<double>(n)));
    if (ratings) row[2] = static_cast<float>(rating / count);
  }
  return out;
}

}  // namespace

UserCodeTable histogram_control_codes(const data::Dataset& dataset, const std::string& field, std::int64_t codes,
                                      std::uint64_t seed) {
  const auto found = category_field(dataset, field);
  USERIP_CHECK(found, "control-genres: the dataset has no category or category_list item field");
  const std::string chosen = *found;
  const data::SplitView train = dataset.training_view();
  const data::SplitView cold = dataset.view({data::SplitPart::cold_history});
  const auto warm_users = train.users();
  const auto cold_users = cold.users();
  const auto warm_hist = quantize::category_histograms(train, warm_users, chosen);
  // Cold users' histograms live in the warm users' columns: the centroids' space.
  const auto cold_hist = quantize::category_histograms_with_columns(cold, cold_users, chosen, warm_hist.columns);
  return cluster_users(dataset, warm_hist.matrix, warm_users, cold_hist.matrix, cold_users, codes, seed,
                       "control-genres");
}

UserCodeTable history_control_codes(const data::Dataset& dataset, const std::string& field, std::int64_t codes,
                                    std::uint64_t seed) {
  // Without a category field, the statistics alone.
  const auto chosen = category_field(dataset, field);
  const data::SplitView train = dataset.training_view();
  const data::SplitView cold = dataset.view({data::SplitPart::cold_history});
  const auto warm_users = train.users();
  const auto cold_users = cold.users();
  USERIP_CHECK(!warm_users.empty(), "control-history: the training split has no users");
  const bool ratings = dataset.label_kind == data::LabelKind::rating;
  quantize::UserHistograms warm_hist, cold_hist;
  if (chosen) {
    warm_hist = quantize::category_histograms(train, warm_users, *chosen);
    cold_hist = quantize::category_histograms_with_columns(cold, cold_users, *chosen, warm_hist.columns);
  } else {
    warm_hist.matrix = torch::zeros({static_cast<std::int64_t>(warm_users.size()), 0});
    cold_hist.matrix = torch::zeros({static_cast<std::int64_t>(cold_users.size()), 0});
  }

  // Scales come from the warm users alone, and apply to the cold users unchanged.
  const torch::Tensor warm_stats = history_statistics(train, warm_users, ratings);
  const torch::Tensor mean = warm_stats.mean(0, true);
  const torch::Tensor std = warm_stats.std(0, /*unbiased=*/false, /*keepdim=*/true).clamp_min(1e-6);
  const torch::Tensor hist_mean = warm_hist.matrix.mean(0, true);
  const double hist_scale = warm_hist.matrix.size(1) == 0
                                ? 1.0
                                : std::sqrt(std::max((warm_hist.matrix - hist_mean).pow(2).sum(1).mean().item<double>(), 1e-12));
  auto describe = [&](const torch::Tensor& stats, const torch::Tensor& hist) {
    return torch::cat({(stats - mean) / std, (hist - hist_mean) / hist_scale}, 1);
  };
  const torch::Tensor cold_stats = history_statistics(cold, cold_users, ratings);
  return cluster_users(dataset, describe(warm_stats, warm_hist.matrix), warm_users,
                       cold_users.empty() ? torch::zeros({0, warm_hist.matrix.size(1) + mean.size(1)})
                                          : describe(cold_stats, cold_hist.matrix),
                       cold_users, codes, seed, "control-history");
}

UserCodeTable collaborative_control_codes(const data::Dataset& dataset, std::int64_t dim, std::int64_t codes,
                                          std::uint64_t seed) {
  USERIP_CHECK(dim >= 1, "control-cf: the embedding dimension must be at least 1, got {}", dim);
  const data::SplitView train = dataset.training_view();
  const data::SplitView cold = dataset.view({data::SplitPart::cold_history});
  const auto warm_users = train.users();
  const auto cold_users = cold.users();
  const auto items = static_cast<std::int64_t>(dataset.num_items());
  const auto rows = static_cast<std::int64_t>(warm_users.size());
  USERIP_CHECK(rows > dim, "control-cf: {} warm users are too few for a rank-{} factorisation", rows, dim);

  // Row-normalised interaction matrix, dense: users x items of the training part.
  torch::Tensor x = torch::zeros({rows, items}, torch::kFloat32);
  auto* data = x.data_ptr<float>();
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::uint32_t u = warm_users[static_cast<std::size_t>(r)];
    for (std::size_t i = train.user_begin(u); i < train.user_end(u); ++i) data[r * items + train.item(i)] = 1.0f;
  }
  x = x / x.norm(2, 1, true).clamp_min(1e-12);

  // Randomised range finder with two power iterations (Halko et al.): the top item factors without
  // a full SVD of a users x items matrix.
  torch::manual_seed(seed);
  const std::int64_t width = std::min<std::int64_t>(dim + 10, std::min(rows, items));
  torch::Tensor q = std::get<0>(torch::linalg_qr(torch::matmul(x, torch::randn({items, width}))));
  for (int i = 0; i < 2; ++i) {
    q = std::get<0>(torch::linalg_qr(torch::matmul(x.t(), q)));
    q = std::get<0>(torch::linalg_qr(torch::matmul(x, q)));
  }
  const torch::Tensor b = torch::matmul(q.t(), x);  // [width, items]
  auto [u, s, vh] = torch::linalg_svd(b, /*full_matrices=*/false);
  const std::int64_t rank = std::min(dim, vh.size(0));
  const torch::Tensor item_factors = (vh.slice(0, 0, rank).t() * s.slice(0, 0, rank)).contiguous();  // [items, rank]

  auto embed = [&](const data::SplitView& view, const std::vector<std::uint32_t>& users) {
    torch::Tensor e = torch::zeros({static_cast<std::int64_t>(users.size()), rank}, torch::kFloat32);
    for (std::size_t r = 0; r < users.size(); ++r) {
      std::vector<std::int64_t> history;
      for (std::size_t i = view.user_begin(users[r]); i < view.user_end(users[r]); ++i) history.push_back(view.item(i));
      if (history.empty()) continue;
      e[static_cast<std::int64_t>(r)] = item_factors.index_select(0, torch::tensor(history, torch::kLong)).mean(0);
    }
    return e / e.norm(2, 1, true).clamp_min(1e-12);
  };
  return cluster_users(dataset, embed(train, warm_users), warm_users, embed(cold, cold_users), cold_users, codes, seed,
                       "control-cf");
}

}  // namespace userip::ctr
