#include "userip/lm/batching.h"

#include <algorithm>
#include <numeric>

#include "userip/util/error.h"

namespace userip::lm {

std::vector<std::vector<std::size_t>> bucket_by_length(const std::vector<std::int64_t>& lengths,
                                                       const BatchingOptions& options) {
  USERIP_CHECK(options.max_tokens >= 1 && options.max_sequences >= 1,
               "batch limits must be positive (max tokens {}, max sequences {})", options.max_tokens,
               options.max_sequences);
  std::vector<std::size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return lengths[a] < lengths[b]; });
  std::vector<std::vector<std::size_t>> batches;
  std::vector<std::size_t> current;
  std::int64_t longest = 0;
  for (std::size_t index : order) {
    std::int64_t next_longest = std::max(longest, lengths[index]);  // sorted: always lengths[index]
    bool full = !current.empty() && (static_cast<std::int64_t>(current.size()) + 1 > options.max_sequences ||
                                     next_longest * static_cast<std::int64_t>(current.size() + 1) > options.max_tokens);
    if (full) {
      batches.push_back(std::move(current));
      current.clear();
      next_longest = lengths[index];
    }
    current.push_back(index);
    longest = next_longest;
  }
  if (!current.empty()) batches.push_back(std::move(current));
  return batches;
}

std::int64_t padding_tokens(const std::vector<std::int64_t>& lengths,
                            const std::vector<std::vector<std::size_t>>& batches) {
  std::int64_t padding = 0;
  for (const auto& batch : batches) {
    std::int64_t longest = 0, real = 0;
    for (auto i : batch) {
      longest = std::max(longest, lengths[i]);
      real += lengths[i];
    }
    padding += longest * static_cast<std::int64_t>(batch.size()) - real;
  }
  return padding;
}

}  // namespace userip::lm
