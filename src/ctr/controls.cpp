#include "userip/ctr/controls.h"

#include <torch/torch.h>

#include "userip/profile/clustering.h"
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
  const profile::KMeansResult result = profile::kmeans(warm, codes, seed);
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

}  // namespace

UserCodeTable histogram_control_codes(const data::Dataset& dataset, const std::string& field, std::int64_t codes,
                                      std::uint64_t seed) {
  std::string chosen = field;
  if (chosen.empty()) {
    for (const auto& f : dataset.item_fields) {
      if (f.kind == data::FieldKind::category_list) { chosen = f.name; break; }
    }
    for (const auto& f : dataset.item_fields) {
      if (chosen.empty() && f.kind == data::FieldKind::category) chosen = f.name;
    }
    USERIP_CHECK(!chosen.empty(), "control-genres: the dataset has no category or category_list item field");
  }
  const data::SplitView train = dataset.training_view();
  const data::SplitView cold = dataset.view({data::SplitPart::cold_history});
  const auto warm_users = train.users();
  const auto cold_users = cold.users();
  const auto warm_hist = profile::category_histograms(train, warm_users, chosen);
  // Cold users' histograms live in the warm users' columns: the centroids' space.
  const auto cold_hist = profile::category_histograms_with_columns(cold, cold_users, chosen, warm_hist.columns);
  return cluster_users(dataset, warm_hist.matrix, warm_users, cold_hist.matrix, cold_users, codes, seed,
                       "control-genres");
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
