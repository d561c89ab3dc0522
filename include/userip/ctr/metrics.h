#pragma once
// Offline CTR metrics and the statistics that compare variants over seeds.
#include <cstdint>
#include <vector>

namespace userip::ctr {

// Area under the ROC curve, exact: the probability that a random positive scores above a random
// negative, ties counting one half (the Mann-Whitney statistic with mid-ranks). Throws
// userip::Error when the sizes differ or when only one class is present.
double auc(const std::vector<float>& scores, const std::vector<float>& labels);

// Mean binary cross-entropy of probabilities, each clipped to [eps, 1 - eps] (eps = 1e-7).
double log_loss(const std::vector<float>& probabilities, const std::vector<float>& labels);

// User-grouped AUC: the AUC of each group (user) weighted by its number of examples; groups with
// only one class are skipped. Returns NaN when every group is skipped.
struct GroupedAuc {
  double value = 0;
  std::int64_t groups_used = 0;
  std::int64_t groups_skipped = 0;
};
GroupedAuc grouped_auc(const std::vector<float>& scores, const std::vector<float>& labels,
                       const std::vector<std::int64_t>& groups);

// Mean and sample standard deviation (n - 1; 0 for a single value).
struct MeanStd {
  double mean = 0;
  double std = 0;
  std::int64_t n = 0;
};
MeanStd mean_std(const std::vector<double>& values);

// Paired two-sided Student t-test of a[i] - b[i]: the mean difference, its standard deviation,
// t and the two-sided p-value with n - 1 degrees of freedom. p = 1 when every difference is
// zero; t = ±inf and p = 0 when the differences are equal and non-zero. Throws when the sizes
// differ or n < 2.
struct PairedTest {
  double mean_difference = 0;
  double std_difference = 0;
  double t = 0;
  double p_value = 1;
  std::int64_t n = 0;
};
PairedTest paired_t_test(const std::vector<double>& a, const std::vector<double>& b);

// The regularised incomplete beta function I_x(a, b), for the t distribution's tail. Exposed for tests.
double regularized_incomplete_beta(double a, double b, double x);

}  // namespace userip::ctr
