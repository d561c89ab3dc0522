#include "userip/ctr/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include "support/temp_dir.h"
#include "userip/util/random.h"

namespace userip::ctr {
namespace {

using userip::testing::expect_error;

const double kPi = std::acos(-1.0);

// The definition itself: over every (positive, negative) pair, 1 for a win and 1/2 for a tie.
double pairwise_auc(const std::vector<float>& scores, const std::vector<float>& labels) {
  double wins = 0, pairs = 0;
  for (std::size_t i = 0; i < scores.size(); ++i) {
    if (labels[i] != 1.0f) continue;
    for (std::size_t j = 0; j < scores.size(); ++j) {
      if (labels[j] != 0.0f) continue;
      pairs += 1;
      wins += scores[i] > scores[j] ? 1.0 : scores[i] == scores[j] ? 0.5 : 0.0;
    }
  }
  return wins / pairs;
}

// Scores on a grid of 21 values, so that ties are common, and labels with P(1) = 0.3.
struct Sample {
  std::vector<float> scores, labels;
};
Sample random_sample(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  Sample s;
  for (std::size_t i = 0; i < n; ++i) {
    s.scores.push_back(static_cast<float>(rng.below(21)) / 20.0f);
    s.labels.push_back(rng.bernoulli(0.3) ? 1.0f : 0.0f);
  }
  return s;
}

TEST(CtrMetrics, AucHandExample) {
  // Positives 0.35 and 0.8, negatives 0.1 and 0.4: 0.35 beats 0.1 but not 0.4, 0.8 beats both,
  // so 3 of the 4 pairs are won.
  EXPECT_DOUBLE_EQ(auc({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1}), 0.75);
  // The same through mid-ranks: ranks 1 (0.1), 3 (0.4), 2 (0.35), 4 (0.8); the positives' rank
  // sum is 6, U = 6 - 2·3/2 = 3, AUC = 3 / (2·2).
}

TEST(CtrMetrics, AucTies) {
  // Every pair tied: each counts one half.
  EXPECT_DOUBLE_EQ(auc({0.3f, 0.3f, 0.3f, 0.3f, 0.3f}, {1, 0, 0, 1, 0}), 0.5);
  // Partial ties. Negatives 0.2, 0.5; positives 0.5, 0.5, 0.9. Each positive 0.5 beats 0.2 and
  // ties 0.5 (1.5 each), 0.9 beats both (2): (1.5 + 1.5 + 2) / (3·2) = 5/6. Mid-ranks agree:
  // 0.2 → 1, the three 0.5s → 3, 0.9 → 5; positives' sum 3 + 3 + 5 = 11, U = 11 - 3·4/2 = 5.
  EXPECT_DOUBLE_EQ(auc({0.2f, 0.5f, 0.5f, 0.5f, 0.9f}, {0, 1, 0, 1, 1}), 5.0 / 6.0);
  // A tie block at the top with two negatives and one positive, and one below it:
  // positive 0.7 ties both 0.7 negatives (0.5 + 0.5) and beats 0.1 (1); positive 0.1 ties 0.1
  // (0.5): (2 + 0.5) / (2·3) = 5/12.
  EXPECT_DOUBLE_EQ(auc({0.7f, 0.7f, 0.7f, 0.1f, 0.1f}, {1, 0, 0, 0, 1}), 5.0 / 12.0);
}

TEST(CtrMetrics, AucPerfectAndInverted) {
  EXPECT_DOUBLE_EQ(auc({0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(auc({0.1f, 0.2f, 0.8f, 0.9f}, {1, 1, 0, 0}), 0.0);
  // Extreme scores are ordinary values to a ranking.
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_DOUBLE_EQ(auc({-inf, 0.0f, inf}, {0, 1, 1}), 1.0);
}

TEST(CtrMetrics, AucInvariantToMonotoneTransforms) {
  const auto s = random_sample(300, 7);
  const double base = auc(s.scores, s.labels);
  // The grid is coarse enough that no transform below merges two distinct scores in float.
  std::vector<float> exp_scores, affine, cubed, reciprocal;
  for (float v : s.scores) {
    exp_scores.push_back(static_cast<float>(std::exp(3.0 * v)));
    affine.push_back(static_cast<float>(10.0 * v - 4.0));
    cubed.push_back(static_cast<float>(std::pow(v - 0.5, 3.0)));
    reciprocal.push_back(static_cast<float>(-1.0 / (v + 1.0)));
  }
  EXPECT_DOUBLE_EQ(auc(exp_scores, s.labels), base);
  EXPECT_DOUBLE_EQ(auc(affine, s.labels), base);
  EXPECT_DOUBLE_EQ(auc(cubed, s.labels), base);
  EXPECT_DOUBLE_EQ(auc(reciprocal, s.labels), base);
  // A decreasing transform turns every win into a loss and keeps the ties.
  std::vector<float> negated;
  for (float v : s.scores) negated.push_back(-v);
  EXPECT_NEAR(auc(negated, s.labels), 1.0 - base, 1e-15);
}

TEST(CtrMetrics, AucMatchesPairwiseCount) {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    const auto s = random_sample(500, seed);
    // Both count the same half-integers exactly; only the final division rounds.
    EXPECT_DOUBLE_EQ(auc(s.scores, s.labels), pairwise_auc(s.scores, s.labels)) << "seed " << seed;
  }
}

TEST(CtrMetrics, AucErrors) {
  expect_error([] { auc({0.1f, 0.2f, 0.3f}, {0, 1, 0, 1}); }, {"AUC", "3 scores but 4 labels"});
  expect_error([] { auc({}, {}); }, {"AUC", "empty"});
  expect_error([] { auc({0.1f, 0.2f, 0.3f}, {1, 1, 1}); }, {"AUC", "all 3 labels are 1", "both"});
  expect_error([] { auc({0.1f, 0.2f}, {0, 0}); }, {"AUC", "all 2 labels are 0"});
  expect_error([] { auc({0.1f, 0.2f, 0.3f}, {0, 2, 1}); }, {"AUC", "label 2 at position 1", "not 0 or 1"});
  expect_error([] { auc({0.1f, 0.2f}, {0, 0.5f}); }, {"label 0.5 at position 1"});
  expect_error([] { auc({0.1f, std::nanf(""), 0.3f}, {0, 1, 1}); }, {"AUC", "score at position 1 is NaN"});
}

TEST(CtrMetrics, LogLossHandExample) {
  // Exactly representable probabilities. Per example -ln of the probability given to the true
  // label: p = 0.75, y = 1 → -ln 0.75; p = 0.25, y = 0 → -ln 0.75; p = 0.5, y = 1 → -ln 0.5;
  // p = 0.125, y = 0 → -ln 0.875. Mean = (0.2876821 + 0.2876821 + 0.6931472 + 0.1335314) / 4
  // = 0.3505107.
  const double loss = log_loss({0.75f, 0.25f, 0.5f, 0.125f}, {1, 0, 1, 0});
  EXPECT_NEAR(loss, -(2 * std::log(0.75) + std::log(0.5) + std::log(0.875)) / 4, 1e-12);
  EXPECT_NEAR(loss, 0.3505107, 1e-7);
  // A single class is fine for log loss.
  EXPECT_NEAR(log_loss({0.5f, 0.5f}, {1, 1}), std::log(2.0), 1e-12);
}

TEST(CtrMetrics, LogLossClipsAtEpsilon) {
  // A confident miss costs -ln(1e-7) = 16.1181 instead of infinity; a confident hit costs
  // -ln(1 - 1e-7) ≈ 1e-7 instead of 0.
  EXPECT_NEAR(log_loss({0.0f}, {1}), -std::log(1e-7), 1e-6);
  EXPECT_NEAR(log_loss({1.0f}, {0}), 16.1180957, 1e-6);
  EXPECT_NEAR(log_loss({1.0f}, {1}), 1e-7, 1e-12);
  EXPECT_NEAR(log_loss({0.0f}, {0}), 1e-7, 1e-12);
  EXPECT_TRUE(std::isfinite(log_loss({0.0f, 1.0f}, {1, 0})));
}

TEST(CtrMetrics, LogLossErrors) {
  expect_error([] { log_loss({0.1f, 0.2f}, {0}); }, {"log loss", "2 probabilities but 1 labels"});
  expect_error([] { log_loss({}, {}); }, {"log loss", "empty"});
  expect_error([] { log_loss({0.1f, 0.2f}, {0, -1}); }, {"log loss", "label -1 at position 1", "not 0 or 1"});
  expect_error([] { log_loss({std::nanf(""), 0.2f}, {0, 1}); }, {"log loss", "probability at position 0 is NaN"});
  // A logit instead of a probability.
  expect_error([] { log_loss({0.5f, 2.5f}, {0, 1}); }, {"log loss", "probability 2.5 at position 1", "[0, 1]"});
}

TEST(CtrMetrics, GroupedAucHandExample) {
  // Group 7 (4 examples): the AucHandExample data, AUC 0.75.
  // Group 3 (2 examples): positive 0.9 above negative 0.2, AUC 1.
  // Group 5 (3 examples): only positives, skipped.
  // Weighted by size over the used groups: (4·0.75 + 2·1) / (4 + 2) = 5/6.
  // The groups are interleaved and unsorted on purpose.
  const std::vector<float> scores = {0.1f, 0.9f, 0.5f, 0.4f, 0.6f, 0.35f, 0.2f, 0.7f, 0.8f};
  const std::vector<float> labels = {0, 1, 1, 0, 1, 1, 0, 1, 1};
  const std::vector<std::int64_t> groups = {7, 3, 5, 7, 5, 7, 3, 5, 7};
  const auto g = grouped_auc(scores, labels, groups);
  EXPECT_DOUBLE_EQ(g.value, 5.0 / 6.0);
  EXPECT_EQ(g.groups_used, 2);
  EXPECT_EQ(g.groups_skipped, 1);

  // A group of ties: 0.5 for it, weighted 3 against group 3's 1 weighted 2: (1.5 + 2) / 5 = 0.7.
  const auto tied = grouped_auc({0.4f, 0.4f, 0.4f, 0.9f, 0.2f}, {1, 0, 1, 1, 0}, {-1, -1, -1, 3, 3});
  EXPECT_DOUBLE_EQ(tied.value, 0.7);
  EXPECT_EQ(tied.groups_used, 2);
  EXPECT_EQ(tied.groups_skipped, 0);
}

TEST(CtrMetrics, GroupedAucAllSkippedIsNaN) {
  const auto g = grouped_auc({0.1f, 0.2f, 0.3f}, {1, 0, 1}, {1, 2, 3});
  EXPECT_TRUE(std::isnan(g.value));
  EXPECT_EQ(g.groups_used, 0);
  EXPECT_EQ(g.groups_skipped, 3);
}

TEST(CtrMetrics, GroupedAucMatchesPerGroupAuc) {
  Rng rng(11);
  const auto s = random_sample(600, 5);
  std::vector<std::int64_t> groups;
  for (std::size_t i = 0; i < s.scores.size(); ++i) groups.push_back(static_cast<std::int64_t>(rng.below(40)) * 13 - 200);
  std::map<std::int64_t, Sample> by_group;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    by_group[groups[i]].scores.push_back(s.scores[i]);
    by_group[groups[i]].labels.push_back(s.labels[i]);
  }
  double weighted = 0, weight = 0;
  std::int64_t used = 0, skipped = 0;
  for (const auto& [id, group] : by_group) {
    double positives = 0;
    for (float y : group.labels) positives += y;
    if (positives == 0 || positives == static_cast<double>(group.labels.size())) {
      ++skipped;
      continue;
    }
    const auto size = static_cast<double>(group.labels.size());
    weighted += size * pairwise_auc(group.scores, group.labels);
    weight += size;
    ++used;
  }
  const auto g = grouped_auc(s.scores, s.labels, groups);
  EXPECT_NEAR(g.value, weighted / weight, 1e-12);
  EXPECT_EQ(g.groups_used, used);
  EXPECT_EQ(g.groups_skipped, skipped);
  EXPECT_EQ(used + skipped, static_cast<std::int64_t>(by_group.size()));
}

TEST(CtrMetrics, GroupedAucErrors) {
  expect_error([] { grouped_auc({0.1f, 0.2f}, {0, 1}, {1}); }, {"grouped AUC", "2 scores but 1 group ids"});
  expect_error([] { grouped_auc({0.1f, 0.2f}, {0}, {1, 1}); }, {"grouped AUC", "2 scores but 1 labels"});
  expect_error([] { grouped_auc({}, {}, {}); }, {"grouped AUC", "empty"});
  expect_error([] { grouped_auc({0.1f, 0.2f}, {0, 3}, {1, 1}); }, {"grouped AUC", "label 3 at position 1"});
  expect_error([] { grouped_auc({std::nanf(""), 0.2f}, {0, 1}, {1, 1}); }, {"score at position 0 is NaN"});
}

TEST(CtrMetrics, MeanStd) {
  // Mean 5; squared deviations 9, 1, 1, 1, 0, 0, 4, 16 sum to 32; sample variance 32/7.
  const auto m = mean_std({2, 4, 4, 4, 5, 5, 7, 9});
  EXPECT_DOUBLE_EQ(m.mean, 5.0);
  EXPECT_NEAR(m.std, std::sqrt(32.0 / 7.0), 1e-14);
  EXPECT_EQ(m.n, 8);
  const auto one = mean_std({0.731});
  EXPECT_EQ(one.mean, 0.731);
  EXPECT_EQ(one.std, 0.0);
  EXPECT_EQ(one.n, 1);
  // Constant values keep their exact mean and no spread.
  const auto constant = mean_std({0.1, 0.1, 0.1});
  EXPECT_EQ(constant.mean, 0.1);
  EXPECT_EQ(constant.std, 0.0);
  // Close values far from zero, like AUCs over seeds: 1e9 + {1, 2, 3} has std 1 exactly, which
  // E[x^2] - E[x]^2 would lose entirely.
  const auto shifted = mean_std({1e9 + 1, 1e9 + 2, 1e9 + 3});
  EXPECT_DOUBLE_EQ(shifted.mean, 1e9 + 2);
  EXPECT_NEAR(shifted.std, 1.0, 1e-12);
  const auto empty = mean_std({});
  EXPECT_EQ(empty.n, 0);
  EXPECT_TRUE(std::isnan(empty.mean));
}

TEST(CtrMetrics, PairedTTestHandExample) {
  // Differences a - b = 1, 2, 3, 4, 5: mean 3, sample variance (4 + 1 + 0 + 1 + 4) / 4 = 2.5,
  // standard error sqrt(2.5 / 5) = sqrt(0.5), t = 3 / sqrt(0.5) = 3·sqrt(2) = 4.2426, df = 4.
  // With 4 degrees of freedom the t CDF is closed form,
  //   F(t) = 1/2 + 3/8 · t / sqrt(1 + t²/4) · (1 - t² / (12 (1 + t²/4))),
  // and p = 2 (1 - F(|t|)); at t² = 18 that is 1 - 3/4 · 1.809068 · 0.727273 = 0.0132356.
  const auto test = paired_t_test({3, 5, 7, 9, 11}, {2, 3, 4, 5, 6});
  EXPECT_DOUBLE_EQ(test.mean_difference, 3.0);
  EXPECT_NEAR(test.std_difference, std::sqrt(2.5), 1e-14);
  EXPECT_NEAR(test.t, 3 * std::sqrt(2.0), 1e-12);
  EXPECT_EQ(test.n, 5);
  const double t = 3 * std::sqrt(2.0), s = 1 + t * t / 4;
  EXPECT_NEAR(test.p_value, 1 - 0.75 * t / std::sqrt(s) * (1 - t * t / (12 * s)), 1e-12);
  EXPECT_NEAR(test.p_value, 0.0132356, 1e-7);

  // The other direction flips the sign of t, not the two-sided p-value.
  const auto reversed = paired_t_test({2, 3, 4, 5, 6}, {3, 5, 7, 9, 11});
  EXPECT_NEAR(reversed.t, -test.t, 1e-12);
  EXPECT_NEAR(reversed.p_value, test.p_value, 1e-14);
}

TEST(CtrMetrics, PairedTTestDegenerate) {
  const auto same = paired_t_test({0.7, 0.8, 0.9}, {0.7, 0.8, 0.9});
  EXPECT_EQ(same.t, 0.0);
  EXPECT_EQ(same.p_value, 1.0);
  EXPECT_EQ(same.std_difference, 0.0);
  // A constant gap of exactly 0.5 (in binary) between every pair.
  const auto gap = paired_t_test({1.5, 2.5, 3.5}, {1, 2, 3});
  EXPECT_EQ(gap.t, std::numeric_limits<double>::infinity());
  EXPECT_EQ(gap.p_value, 0.0);
  EXPECT_EQ(paired_t_test({1, 2, 3}, {1.5, 2.5, 3.5}).t, -std::numeric_limits<double>::infinity());
}

TEST(CtrMetrics, PairedTTestErrors) {
  expect_error([] { paired_t_test({1, 2, 3}, {1, 2}); }, {"paired t-test", "3 values", "2 in the second"});
  expect_error([] { paired_t_test({1}, {2}); }, {"paired t-test", "at least 2 pairs", "got 1"});
  expect_error([] { paired_t_test({}, {}); }, {"at least 2 pairs", "got 0"});
  expect_error([] { paired_t_test({1, std::nan("")}, {1, 2}); }, {"paired t-test", "pair 1 is not finite"});
}

// The two-sided Student t p-value, through the same path as paired_t_test uses.
double t_p_value(double t, double df) { return regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t)); }

TEST(CtrMetrics, StudentTPValueAgainstTables) {
  // t tables, df = 4: 2.776 is the two-sided 5% critical value, 4.604 the 1% one. More digits
  // (2.7764451, 4.6040949) pin the p-value down further.
  EXPECT_NEAR(t_p_value(2.776, 4), 0.05, 1e-4);
  EXPECT_NEAR(t_p_value(4.604, 4), 0.01, 1e-5);
  EXPECT_NEAR(t_p_value(2.7764451051977987, 4), 0.05, 1e-12);
  EXPECT_NEAR(t_p_value(4.604094871415897, 4), 0.01, 1e-11);
  // df = 9: 2.262 is the 5% value; df = 30: 2.042.
  EXPECT_NEAR(t_p_value(2.262157162740992, 9), 0.05, 1e-10);
  EXPECT_NEAR(t_p_value(2.042, 30), 0.05, 1e-4);
  // df = 1 is the Cauchy distribution: p = 1 - 2/π · atan|t|.
  for (double t : {0.1, 1.0, 3.0, 12.706, 100.0}) {
    EXPECT_NEAR(t_p_value(t, 1), 1 - 2 / kPi * std::atan(t), 1e-13) << "t = " << t;
  }
  EXPECT_NEAR(t_p_value(12.706, 1), 0.05, 1e-5);
  // df = 2 is closed form too: p = 1 - |t| / sqrt(2 + t²).
  for (double t : {0.5, 1.5, 4.303, 20.0}) {
    EXPECT_NEAR(t_p_value(t, 2), 1 - t / std::sqrt(2 + t * t), 1e-13) << "t = " << t;
  }
  EXPECT_EQ(t_p_value(0, 5), 1.0);
}

TEST(CtrMetrics, RegularizedIncompleteBetaKnownValues) {
  for (double x : {0.0, 0.01, 0.25, 0.5, 0.9, 0.999, 1.0}) {
    // The uniform distribution's CDF.
    EXPECT_NEAR(regularized_incomplete_beta(1, 1, x), x, 1e-14) << "x = " << x;
    // Beta(a, 1) has CDF x^a; Beta(1, b) has CDF 1 - (1 - x)^b.
    for (double a : {0.5, 2.0, 7.5}) {
      EXPECT_NEAR(regularized_incomplete_beta(a, 1, x), std::pow(x, a), 1e-13) << "a = " << a << ", x = " << x;
      EXPECT_NEAR(regularized_incomplete_beta(1, a, x), 1 - std::pow(1 - x, a), 1e-13) << "b = " << a << ", x = " << x;
    }
    // The arcsine distribution: I_x(1/2, 1/2) = 2/π · asin(sqrt x).
    EXPECT_NEAR(regularized_incomplete_beta(0.5, 0.5, x), 2 / kPi * std::asin(std::sqrt(x)), 1e-13) << "x = " << x;
  }
  // Symmetric distributions put half their mass below 1/2.
  for (double a : {0.3, 1.0, 2.5, 10.0, 400.0}) {
    EXPECT_NEAR(regularized_incomplete_beta(a, a, 0.5), 0.5, 1e-12) << "a = " << a;
  }
  // Integer a, b: I_x(a, b) = P(Binomial(a + b - 1, x) >= a). For a = 5, b = 3, x = 0.7:
  // C(7,5)·0.7^5·0.3^2 + C(7,6)·0.7^6·0.3 + 0.7^7 = 0.3176523 + 0.2470629 + 0.0823543 = 0.6470695.
  EXPECT_NEAR(regularized_incomplete_beta(5, 3, 0.7), 0.6470695, 1e-12);
  // The symmetry I_x(a, b) = 1 - I_{1-x}(b, a), across the branch the implementation switches at.
  for (double x : {0.05, 0.3, 0.6, 0.95}) {
    EXPECT_NEAR(regularized_incomplete_beta(2.5, 7, x), 1 - regularized_incomplete_beta(7, 2.5, 1 - x), 1e-13);
  }
}

TEST(CtrMetrics, RegularizedIncompleteBetaErrors) {
  expect_error([] { regularized_incomplete_beta(0, 1, 0.5); }, {"incomplete beta", "a = 0"});
  expect_error([] { regularized_incomplete_beta(1, -2, 0.5); }, {"incomplete beta", "b = -2"});
  expect_error([] { regularized_incomplete_beta(1, 1, 1.5); }, {"incomplete beta", "[0, 1]", "1.5"});
  expect_error([] { regularized_incomplete_beta(1, 1, std::nan("")); }, {"incomplete beta", "x must be in [0, 1]"});
}

}  // namespace
}  // namespace userip::ctr
