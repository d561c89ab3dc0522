#include "userip/ctr/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>

#include "userip/util/error.h"

namespace userip::ctr {
namespace {

constexpr double kLogLossEps = 1e-7;

// The checks that auc, log_loss and grouped_auc share; `what` names the metric in messages,
// `value` and `values` the first vector's elements ("score", "scores").
void check_inputs(const char* what, const char* value, const char* values, const std::vector<float>& scores,
                  const std::vector<float>& labels) {
  USERIP_CHECK(scores.size() == labels.size(), "{}: {} {} but {} labels", what, scores.size(), values,
               labels.size());
  USERIP_CHECK(!scores.empty(), "{}: the input is empty (no {} and no labels)", what, values);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    USERIP_CHECK(labels[i] == 0.0f || labels[i] == 1.0f, "{}: label {} at position {} is not 0 or 1", what,
                 labels[i], i);
    USERIP_CHECK(!std::isnan(scores[i]), "{}: the {} at position {} is NaN", what, value, i);
  }
}

// Mann-Whitney U of one run of examples already sorted by score: positives above negatives, ties
// counting one half. Counting per tie block instead of summing mid-ranks keeps every partial sum
// an exact multiple of 1/2, so the result is exact in doubles up to 2^52 pairs.
struct RankCount {
  double u = 0;
  double positives = 0;
  double negatives = 0;
};

template <typename ScoreOf, typename LabelOf>
RankCount count_pairs(std::size_t begin, std::size_t end, ScoreOf score_of, LabelOf label_of) {
  RankCount count;
  std::size_t i = begin;
  while (i < end) {
    const float score = score_of(i);
    double block_positives = 0, block_negatives = 0;
    for (; i < end && score_of(i) == score; ++i) {
      if (label_of(i) == 1.0f) {
        block_positives += 1;
      } else {
        block_negatives += 1;
      }
    }
    // Every negative seen so far scores strictly lower than this block.
    count.u += block_positives * (count.negatives + 0.5 * block_negatives);
    count.positives += block_positives;
    count.negatives += block_negatives;
  }
  return count;
}

// I_x(a, b) = x^a y^b / (a B(a, b)) / (1 + d1 / (1 + d2 / (1 + ...))) with y = 1 - x, the
// continued fraction evaluated forwards by the modified Lentz method. It converges quickly only
// for x <= (a + 1) / (a + b + 2); the caller moves other x there by symmetry.
double incomplete_beta_fraction(double a, double b, double x, double y) {
  const double log_front = a * std::log(x) + b * std::log(y) + std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b);
  // Lentz replaces a zero denominator by a tiny number instead of dividing by zero; the value
  // does not depend on it as long as it is far below every real partial value.
  constexpr double tiny = 1e-300;
  constexpr double tolerance = 1e-15;
  constexpr int max_terms = 100000;
  double f = 1, c = 1, d = 0;
  for (int j = 1; j <= max_terms; ++j) {
    double numerator;
    if (j % 2 == 1) {
      const double m = (j - 1) / 2;  // d_{2m+1}
      numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1));
    } else {
      const double m = j / 2;  // d_{2m}
      numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m));
    }
    d = 1 + numerator * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1 + numerator / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    const double delta = c * d;
    f *= delta;
    if (std::fabs(delta - 1) < tolerance) return std::exp(log_front) / (a * f);
  }
  fail("incomplete beta I_x(a, b): the continued fraction did not converge in {} terms (a = {}, b = {}, x = {})",
       max_terms, a, b, x);
}

// `y` is 1 - x, passed separately so that a caller who has it exactly (the t test's
// t^2 / (df + t^2)) does not lose it to cancellation when x is close to 1.
double incomplete_beta(double a, double b, double x, double y) {
  if (x <= 0) return 0;
  if (y <= 0) return 1;
  if (x <= (a + 1) / (a + b + 2)) return incomplete_beta_fraction(a, b, x, y);
  return 1 - incomplete_beta_fraction(b, a, y, x);
}

}  // namespace

double auc(const std::vector<float>& scores, const std::vector<float>& labels) {
  check_inputs("AUC", "score", "scores", scores, labels);
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t l, std::size_t r) { return scores[l] < scores[r]; });
  const auto count = count_pairs(
      0, order.size(), [&](std::size_t i) { return scores[order[i]]; },
      [&](std::size_t i) { return labels[order[i]]; });
  USERIP_CHECK(count.positives > 0 && count.negatives > 0,
               "AUC: all {} labels are {}; AUC needs both positives and negatives", labels.size(),
               count.positives > 0 ? 1 : 0);
  return count.u / (count.positives * count.negatives);
}

double log_loss(const std::vector<float>& probabilities, const std::vector<float>& labels) {
  check_inputs("log loss", "probability", "probabilities", probabilities, labels);
  double total = 0;
  for (std::size_t i = 0; i < probabilities.size(); ++i) {
    // A value outside [0, 1] is almost always a logit passed by mistake; clipping it would hide that.
    USERIP_CHECK(probabilities[i] >= 0.0f && probabilities[i] <= 1.0f,
                 "log loss: probability {} at position {} is outside [0, 1]", probabilities[i], i);
    const double p = std::clamp(static_cast<double>(probabilities[i]), kLogLossEps, 1 - kLogLossEps);
    total -= labels[i] == 1.0f ? std::log(p) : std::log1p(-p);
  }
  return total / static_cast<double>(probabilities.size());
}

GroupedAuc grouped_auc(const std::vector<float>& scores, const std::vector<float>& labels,
                       const std::vector<std::int64_t>& groups) {
  USERIP_CHECK(groups.size() == scores.size(), "grouped AUC: {} scores but {} group ids", scores.size(),
               groups.size());
  check_inputs("grouped AUC", "score", "scores", scores, labels);
  // One sort by (group, score) lays every group out as a run already in score order.
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t l, std::size_t r) {
    return groups[l] != groups[r] ? groups[l] < groups[r] : scores[l] < scores[r];
  });
  GroupedAuc result;
  double weighted = 0, weight = 0;
  std::size_t begin = 0;
  while (begin < order.size()) {
    const auto group = groups[order[begin]];
    std::size_t end = begin;
    while (end < order.size() && groups[order[end]] == group) ++end;
    const auto count = count_pairs(
        begin, end, [&](std::size_t i) { return scores[order[i]]; },
        [&](std::size_t i) { return labels[order[i]]; });
    if (count.positives > 0 && count.negatives > 0) {
      const auto size = static_cast<double>(end - begin);
      weighted += size * count.u / (count.positives * count.negatives);
      weight += size;
      ++result.groups_used;
    } else {
      ++result.groups_skipped;
    }
    begin = end;
  }
  result.value = result.groups_used > 0 ? weighted / weight : std::numeric_limits<double>::quiet_NaN();
  return result;
}

MeanStd mean_std(const std::vector<double>& values) {
  MeanStd result;
  result.n = static_cast<std::int64_t>(values.size());
  if (values.empty()) {
    // The mean of nothing is undefined; NaN shows up in a report where 0 would pass for a result.
    result.mean = result.std = std::numeric_limits<double>::quiet_NaN();
    return result;
  }
  // Constant values get exactly that mean and a zero spread (summing and dividing could round
  // them to a neighbour and a spread of 1e-17), which paired_t_test relies on.
  if (std::all_of(values.begin(), values.end(), [&](double v) { return v == values[0]; })) {
    result.mean = values[0];
    return result;
  }
  const auto n = static_cast<double>(values.size());
  double sum = 0;
  for (double v : values) sum += v;
  result.mean = sum / n;
  // Two passes: squared deviations from the mean instead of E[x^2] - E[x]^2, which cancels badly
  // for metrics like AUC that differ between seeds only in the fourth digit. The second sum
  // corrects the mean's rounding error.
  double squares = 0, deviations = 0;
  for (double v : values) {
    squares += (v - result.mean) * (v - result.mean);
    deviations += v - result.mean;
  }
  result.std = std::sqrt(std::max(0.0, (squares - deviations * deviations / n) / (n - 1)));
  return result;
}

PairedTest paired_t_test(const std::vector<double>& a, const std::vector<double>& b) {
  USERIP_CHECK(a.size() == b.size(), "paired t-test: {} values in the first sample but {} in the second", a.size(),
               b.size());
  USERIP_CHECK(a.size() >= 2, "paired t-test: needs at least 2 pairs, got {}", a.size());
  std::vector<double> differences(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    USERIP_CHECK(std::isfinite(a[i]) && std::isfinite(b[i]), "paired t-test: pair {} is not finite ({} and {})", i,
                 a[i], b[i]);
    differences[i] = a[i] - b[i];
  }
  const auto stats = mean_std(differences);
  PairedTest result;
  result.n = stats.n;
  result.mean_difference = stats.mean;
  result.std_difference = stats.std;
  if (stats.std == 0) {
    // No spread: identical variants are not different at all, a constant non-zero gap is as
    // different as it gets.
    result.t = stats.mean == 0 ? 0 : std::copysign(std::numeric_limits<double>::infinity(), stats.mean);
    result.p_value = stats.mean == 0 ? 1 : 0;
    return result;
  }
  const auto n = static_cast<double>(stats.n);
  result.t = stats.mean / (stats.std / std::sqrt(n));
  const double df = n - 1;
  const double t2 = result.t * result.t;
  result.p_value = std::isinf(t2) ? 0.0 : incomplete_beta(df / 2, 0.5, df / (df + t2), t2 / (df + t2));
  return result;
}

double regularized_incomplete_beta(double a, double b, double x) {
  USERIP_CHECK(a > 0 && b > 0 && std::isfinite(a) && std::isfinite(b),
               "incomplete beta I_x(a, b): a and b must be positive and finite, got a = {}, b = {}", a, b);
  USERIP_CHECK(x >= 0 && x <= 1, "incomplete beta I_x(a, b): x must be in [0, 1], got {}", x);
  return incomplete_beta(a, b, x, 1 - x);
}

}  // namespace userip::ctr
