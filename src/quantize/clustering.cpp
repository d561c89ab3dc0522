#include "userip/quantize/clustering.h"

#include <ATen/ATen.h>
#include <torch/types.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <map>
#include <unordered_map>
#include <utility>

#include "userip/quantize/codebook.h"
#include "userip/util/error.h"
#include "userip/util/random.h"
#include "userip/util/strings.h"

namespace userip::quantize {
namespace {

struct LloydRun {
  ResidualCodebook book;
  torch::Tensor codes;  // [N, 1]
  double inertia = 0;
  int iterations = 0;
};

// One seeded Lloyd run on a one-level codebook, which already has k-means++ seeding, nearest
// assignment and the M-step with empty-cluster re-seeding.
LloydRun lloyd(const torch::Tensor& x, std::int64_t k, std::uint64_t seed, int max_iterations) {
  LloydRun run{ResidualCodebook(x.size(1), k, 1), {}, 0, 0};
  run.book.init_kmeanspp(x, seed);
  run.codes = run.book.assign(x);
  for (int iteration = 1; iteration <= max_iterations; ++iteration) {
    auto stats = run.book.update_means(x, run.codes);
    auto next = run.book.assign(x);
    run.iterations = iteration;
    // The centroids are the means of stats.codes; if that assignment is also the nearest one,
    // neither step can change anything any more.
    const bool converged = at::equal(next, stats.codes);
    run.codes = std::move(next);
    if (converged) break;
  }
  run.inertia = run.book.quantization_error(x) * static_cast<double>(x.size(0));
  return run;
}

const data::ItemField& categorical_field(const data::Dataset& dataset, const std::string& field) {
  const data::ItemField* found = dataset.field(field);
  if (found == nullptr) {
    std::vector<std::string> names;
    for (const auto& f : dataset.item_fields) names.push_back(f.name);
    fail("item field '{}' not found (the dataset has: {})", field, join(names, ", "));
  }
  USERIP_CHECK(found->kind == data::FieldKind::category || found->kind == data::FieldKind::category_list,
               "item field '{}' is of kind {}; a histogram needs a category or category_list field", field,
               data::to_string(found->kind));
  USERIP_CHECK(found->values.size() == dataset.num_items(), "item field '{}' has {} values for {} items", field,
               found->values.size(), dataset.num_items());
  return *found;
}

// The values of each item's field, parsed once per item that the view touches.
class ItemValues {
 public:
  explicit ItemValues(const data::ItemField& field)
      : field_(field), parsed_(field.values.size()), done_(field.values.size()) {}
  const std::vector<std::string>& of(std::uint32_t item) {
    if (!done_[item]) {
      const auto& raw = field_.values[item];
      if (field_.kind == data::FieldKind::category_list) {
        parsed_[item] = data::list_values(raw);
      } else if (!raw.empty()) {
        parsed_[item] = {raw};
      }
      done_[item] = true;
    }
    return parsed_[item];
  }

 private:
  const data::ItemField& field_;
  std::vector<std::vector<std::string>> parsed_;
  std::vector<bool> done_;
};

UserHistograms fill_histograms(const data::SplitView& view, const std::vector<std::uint32_t>& users,
                               const std::string& field_name, ItemValues& values, std::vector<std::string> columns) {
  const auto& dataset = view.dataset();
  std::unordered_map<std::string, std::int64_t> column_of;
  for (std::size_t c = 0; c < columns.size(); ++c) column_of.emplace(columns[c], static_cast<std::int64_t>(c));
  const auto width = static_cast<std::int64_t>(columns.size());
  auto matrix = torch::zeros({static_cast<std::int64_t>(users.size()), width}, torch::kFloat);
  auto rows = matrix.accessor<float, 2>();
  std::vector<double> counts(columns.size());
  for (std::size_t u = 0; u < users.size(); ++u) {
    const auto user = users[u];
    USERIP_CHECK(user < dataset.num_users(),
                 "histogram of '{}': user index {} (position {}) is out of range ({} users)", field_name, user, u,
                 dataset.num_users());
    std::fill(counts.begin(), counts.end(), 0.0);
    double total = 0;
    for (std::size_t i = view.user_begin(user); i < view.user_end(user); ++i) {
      for (const auto& value : values.of(view.item(i))) {
        auto found = column_of.find(value);
        if (found == column_of.end()) continue;
        counts[static_cast<std::size_t>(found->second)] += 1;
        total += 1;
      }
    }
    if (total == 0) continue;
    for (std::int64_t c = 0; c < width; ++c) {
      rows[static_cast<std::int64_t>(u)][c] = static_cast<float>(counts[static_cast<std::size_t>(c)] / total);
    }
  }
  return {matrix, std::move(columns)};
}

}  // namespace

KMeansResult kmeans(const torch::Tensor& x, std::int64_t k, std::uint64_t seed, int max_iterations, int restarts) {
  USERIP_CHECK(x.defined() && x.dim() == 2 && x.size(0) > 0 && x.size(1) > 0,
               "k-means: tensor 'x' must be a non-empty 2-D [N, dim] tensor");
  USERIP_CHECK(k >= 1, "k-means: k must be >= 1, got {}", k);
  USERIP_CHECK(max_iterations >= 1, "k-means: max_iterations must be >= 1, got {}", max_iterations);
  USERIP_CHECK(restarts >= 1, "k-means: restarts must be >= 1, got {}", restarts);
  LloydRun best;
  bool have_best = false;
  for (int run = 0; run < restarts; ++run) {
    const auto run_seed = Rng::derive(seed, static_cast<std::uint64_t>(run)).next_u64();
    auto candidate = lloyd(x, k, run_seed, max_iterations);
    if (!have_best || candidate.inertia < best.inertia) {
      best = std::move(candidate);
      have_best = true;
    }
  }
  KMeansResult result;
  result.centroids = best.book.codewords()[0];
  const auto codes = best.codes.select(1, 0).to(torch::kCPU).contiguous();
  const auto* data = codes.data_ptr<std::int64_t>();
  result.assignment.assign(data, data + codes.numel());
  result.inertia = best.inertia;
  result.iterations = best.iterations;
  return result;
}

double normalized_mutual_information(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b) {
  USERIP_CHECK(a.size() == b.size(), "NMI: the labelings have different sizes ({} and {})", a.size(), b.size());
  std::map<std::int32_t, double> count_a, count_b;
  std::map<std::pair<std::int32_t, std::int32_t>, double> joint;
  for (std::size_t i = 0; i < a.size(); ++i) {
    count_a[a[i]] += 1;
    count_b[b[i]] += 1;
    joint[{a[i], b[i]}] += 1;
  }
  // scikit-learn's convention: two constant labelings agree perfectly.
  if (count_a.size() <= 1 && count_b.size() <= 1) return 1.0;
  const auto n = static_cast<double>(a.size());
  auto entropy = [n](const std::map<std::int32_t, double>& counts) {
    double h = 0;
    for (const auto& entry : counts) h -= entry.second / n * std::log(entry.second / n);
    return h;
  };
  double mutual = 0;
  for (const auto& entry : joint) {
    const double nij = entry.second;
    mutual += nij / n * (std::log(nij) + std::log(n) - std::log(count_a[entry.first.first]) -
                         std::log(count_b[entry.first.second]));
  }
  mutual = std::max(mutual, 0.0);  // rounding can leave -1e-17 for independent labelings
  const double normaliser = (entropy(count_a) + entropy(count_b)) / 2;
  return mutual / std::max(normaliser, DBL_EPSILON);
}

UserHistograms category_histograms(const data::SplitView& view, const std::vector<std::uint32_t>& users,
                                   const std::string& field, const std::vector<std::string>& extra_columns) {
  const auto& item_field = categorical_field(view.dataset(), field);
  ItemValues values(item_field);
  std::vector<std::string> columns = extra_columns;
  for (std::size_t i = 0; i < view.size(); ++i) {
    const auto& item_values = values.of(view.item(i));
    columns.insert(columns.end(), item_values.begin(), item_values.end());
  }
  std::sort(columns.begin(), columns.end());
  columns.erase(std::unique(columns.begin(), columns.end()), columns.end());
  return fill_histograms(view, users, field, values, std::move(columns));
}

UserHistograms category_histograms_with_columns(const data::SplitView& view, const std::vector<std::uint32_t>& users,
                                                const std::string& field, const std::vector<std::string>& columns) {
  const auto& item_field = categorical_field(view.dataset(), field);
  auto sorted = columns;
  std::sort(sorted.begin(), sorted.end());
  const auto duplicate = std::adjacent_find(sorted.begin(), sorted.end());
  USERIP_CHECK(duplicate == sorted.end(), "histogram of '{}': column '{}' is given twice", field,
               duplicate == sorted.end() ? std::string() : *duplicate);
  ItemValues values(item_field);
  return fill_histograms(view, users, field, values, columns);
}

}  // namespace userip::quantize
