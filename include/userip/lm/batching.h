#pragma once
// Length bucketing: batches of sequences of similar length, so that padding never goes beyond
// the longest sequence of each batch and little is wasted below it.
#include <cstdint>
#include <vector>

namespace userip::lm {

struct BatchingOptions {
  std::int64_t max_tokens = 4096;    // per batch, counting padding (rows × longest row)
  std::int64_t max_sequences = 64;   // per batch
};

// Indices into `lengths`, grouped into batches: sorted by length (ties by index, so the result
// is deterministic), then cut greedily whenever adding a sequence would exceed a limit. A single
// sequence longer than max_tokens still gets a batch of its own.
std::vector<std::vector<std::size_t>> bucket_by_length(const std::vector<std::int64_t>& lengths,
                                                       const BatchingOptions& options);

// Padding tokens the batches spend (sum over batches of rows × longest - real tokens).
std::int64_t padding_tokens(const std::vector<std::int64_t>& lengths,
                            const std::vector<std::vector<std::size_t>>& batches);

}  // namespace userip::lm
