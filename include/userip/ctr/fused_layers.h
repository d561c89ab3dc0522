#pragma once
// Two layers of the CTR models as single kernels on float32 CPU tensors. A training step on a batch
// of 512 is a few hundred tiny ops, and their dispatch and autograd bookkeeping cost more than the
// arithmetic: DCN's three cross layers took ~280 µs forward + backward as tensor ops against ~30 µs
// as one loop, and torch's CPU dropout draws each mask element through the locked generator (~65 µs
// for a [512, 16] activation). docs/BENCHMARKS.md, "CTR training throughput", has the figures.
// Other devices and dtypes take the tensor ops, with the same results up to rounding (and, for
// dropout, other random draws).
#include <torch/types.h>

#include <vector>

#include "userip/ctr/batch.h"

namespace userip::ctr {

// [B, F + M, k]: the rows of `table` [V, k] for the batch's F categorical fields, then for each of
// its M multi-hot fields the sum of its values' rows × multi_weight. Entries of weight 0 (padding)
// are skipped: they add nothing and get no gradient. The gradient of `table` is sparse (the looked-up
// rows, one entry per lookup) when `sparse_gradient`, else dense [V, k]. Float32 CPU tables take
// one loop each way; others take torch's embedding and embedding_bag with the same values (the
// latter's sparse gradients list padding rows with zeros).
torch::Tensor lookup_fields(const torch::Tensor& table, const FeatureBatch& batch, std::int64_t categorical_fields,
                            std::int64_t multi_fields, bool sparse_gradient);

// DCN's cross network (Wang et al. 2017): x_{l+1} = x0 · (x_l · w_l) + b_l + x_l for l < L, from
// x_0 = x0 [B, d]; weights and biases are L vectors [d]. Returns x_L, differentiable with respect
// to x0, every weight and every bias (first derivatives only).
torch::Tensor vector_cross_network(const torch::Tensor& x0, const std::vector<torch::Tensor>& weights,
                                   const std::vector<torch::Tensor>& biases);

// Inverted dropout: while training, each element is zeroed with probability p and the others are
// scaled by 1 / (1 - p). On the CPU the mask comes from a SplitMix64 stream seeded by one draw of
// torch's default generator, so runs are reproducible under torch::manual_seed.
torch::Tensor inverted_dropout(const torch::Tensor& x, double p, bool training);

}  // namespace userip::ctr
