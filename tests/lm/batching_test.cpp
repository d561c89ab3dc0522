#include <gtest/gtest.h>

#include "userip/lm/batching.h"
#include "userip/util/error.h"

namespace userip::lm {
namespace {

TEST(Batching, NoBatchPadsBeyondItsLongestAndLimitsHold) {
  std::vector<std::int64_t> lengths = {5, 40, 7, 39, 6, 41, 12, 100, 38, 8};
  BatchingOptions options;
  options.max_tokens = 120;
  options.max_sequences = 3;
  auto batches = bucket_by_length(lengths, options);
  std::vector<int> seen(lengths.size(), 0);
  for (const auto& batch : batches) {
    std::int64_t longest = 0;
    for (auto i : batch) {
      longest = std::max(longest, lengths[i]);
      seen[i]++;
    }
    EXPECT_LE(static_cast<std::int64_t>(batch.size()), options.max_sequences);
    if (batch.size() > 1) {
      EXPECT_LE(longest * static_cast<std::int64_t>(batch.size()), options.max_tokens);
    }
  }
  for (int count : seen) EXPECT_EQ(count, 1);
  // Sorted greedy buckets {5,6,7} {8,12,38} {39,40} {41} {100} pad 3 + 56 + 1 = 60 tokens; the
  // same limits in input order would spend 223.
  EXPECT_EQ(padding_tokens(lengths, batches), 60);
  std::vector<std::vector<std::size_t>> in_order = {{0, 1, 2}, {3, 4, 5}, {6, 7}, {8, 9}};
  EXPECT_LT(padding_tokens(lengths, batches), padding_tokens(lengths, in_order));
}

TEST(Batching, IsDeterministicAndRejectsBadLimits) {
  std::vector<std::int64_t> lengths = {3, 3, 3, 2, 2};
  BatchingOptions options;
  options.max_sequences = 2;
  auto a = bucket_by_length(lengths, options), b = bucket_by_length(lengths, options);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.front(), (std::vector<std::size_t>{3, 4}));
  options.max_tokens = 0;
  EXPECT_THROW(bucket_by_length(lengths, options), Error);
}

}  // namespace
}  // namespace userip::lm
