#pragma once
// The optimizers of CTR training. The embedding tables hold almost all parameters (one row per
// user, item and field value) while a batch touches a few thousand rows, so how the tables are
// updated decides the cost of a step on a large vocabulary (docs/BENCHMARKS.md, "CTR training").
//
// The dense layers always take Adam. The tables take one of:
//   adam       dense gradients and Adam over every row, every step: each step costs O(V).
//              Rows absent from a batch still move (their moments decay and weight decay pulls them).
//   lazy_adam  sparse gradients and Adam applied to the rows present in the batch only, with one
//              step count per table (as torch.optim.SparseAdam): a step costs O(rows in the batch).
//              A row absent from a batch keeps its value and its moments; weight decay (L2 added to
//              the gradient, as torch's Adam does) applies to the batch's rows only.
//   adagrad    sparse gradients and row-wise Adagrad on the batch's rows (accumulated squared
//              gradients, no momentum), with the same lazy weight decay. It usually wants a learning
//              rate 10-100× Adam's: see TrainConfig::embedding_learning_rate.
// The rules are torch's Adam and Adagrad (tests/ctr/optimizer_test.cpp compares them). On float32
// CPU tensors each parameter, and each row of a sparse gradient, is updated by one loop: as tensor
// ops the update cost more than the rest of a CTR step (docs/BENCHMARKS.md). Other devices and
// dtypes take tensor ops with the same rule.
#include <torch/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "userip/util/enum_names.h"

namespace userip::ctr {

enum class EmbeddingOptimizer { adam, lazy_adam, adagrad };
inline constexpr EnumName<EmbeddingOptimizer> kEmbeddingOptimizerNames[] = {
    {EmbeddingOptimizer::adam, "adam"},
    {EmbeddingOptimizer::lazy_adam, "lazy_adam"},
    {EmbeddingOptimizer::adagrad, "adagrad"},
};
std::string to_string(EmbeddingOptimizer kind);
EmbeddingOptimizer embedding_optimizer_from_string(std::string_view name);  // error lists the valid names
// Whether the tables' gradients are sparse for this optimizer (the model is told so).
bool uses_sparse_gradients(EmbeddingOptimizer kind);

struct OptimizerSettings {
  EmbeddingOptimizer embedding = EmbeddingOptimizer::lazy_adam;
  double learning_rate = 1e-3;            // Adam of the dense layers
  double embedding_learning_rate = 1e-3;  // the tables' optimizer
  double embedding_l2 = 0;                // weight decay of the tables only
};

// Adam on `dense`, the chosen optimizer on `tables`. step() expects dense gradients on `dense` and,
// for lazy_adam and adagrad, sparse COO gradients on `tables` (undefined gradients are skipped: a
// parameter that the batch did not reach).
class CtrOptimizer {
 public:
  CtrOptimizer(std::vector<torch::Tensor> tables, std::vector<torch::Tensor> dense, const OptimizerSettings& settings);
  ~CtrOptimizer();
  CtrOptimizer(const CtrOptimizer&) = delete;
  CtrOptimizer& operator=(const CtrOptimizer&) = delete;

  // Drops the gradients of every parameter (sparse gradients accumulate by concatenation, so they
  // are reset to undefined rather than zeroed).
  void zero_grad();
  void step();
  // Multiplies both learning rates by `factor` (the plateau decay).
  void scale_learning_rates(double factor);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace userip::ctr
