// The CTR optimizers against torch's own (torch::optim::Adam and Adagrad, the implementations
// PyTorch users train with): lazy Adam and row-wise Adagrad must equal them on the rows a batch
// touches and leave every other row alone; the float32 CPU loops must equal the tensor-op path that
// other devices and dtypes take.
#include <gtest/gtest.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <vector>

#include "userip/ctr/optimizer.h"
#include "userip/util/error.h"

namespace userip::ctr {
namespace {

constexpr std::int64_t kRows = 10, kWidth = 4;
const std::vector<std::int64_t> kLookups = {1, 3, 3, 7};  // row 3 twice: its gradients add up
const std::vector<std::int64_t> kTouched = {1, 3, 7};

// A sparse gradient for the lookups: one entry per lookup (uncoalesced, as autograd gives it).
torch::Tensor sparse_gradient(const torch::Tensor& values, torch::Dtype dtype) {
  const torch::Tensor index = torch::tensor(kLookups, torch::kLong).unsqueeze(0);
  return torch::sparse_coo_tensor(index, values.to(dtype), {kRows, kWidth});
}

// The gradient values of step t for the lookups [4, width]: different every step and every row.
torch::Tensor step_values(int t) {
  return torch::linspace(-1.0, 1.0, static_cast<std::int64_t>(kLookups.size()) * kWidth, torch::kFloat64)
      .reshape({-1, kWidth})
      .mul(0.5 + 0.25 * t)
      .add(0.1 * t);
}

// Per touched row, the sum of its lookups' gradient values.
torch::Tensor summed_rows(const torch::Tensor& values) {
  return torch::stack({values[0], values[1] + values[2], values[3]});
}

struct Result {
  torch::Tensor ours;      // the whole table after our optimizer
  torch::Tensor reference; // torch's optimizer on the touched rows only
};

Result run_rows(EmbeddingOptimizer kind, torch::Dtype dtype, double l2, int steps) {
  torch::manual_seed(3);
  const torch::Tensor start = torch::randn({kRows, kWidth}, torch::kFloat64);
  torch::Tensor table = start.to(dtype).clone().requires_grad_(true);
  OptimizerSettings settings;
  settings.embedding = kind;
  settings.embedding_learning_rate = 0.05;
  settings.embedding_l2 = l2;
  CtrOptimizer ours({table}, {}, settings);

  const torch::Tensor rows_index = torch::tensor(kTouched, torch::kLong);
  torch::Tensor rows = start.index_select(0, rows_index).clone().requires_grad_(true);
  std::unique_ptr<torch::optim::Optimizer> reference;
  if (kind == EmbeddingOptimizer::adagrad) {
    reference = std::make_unique<torch::optim::Adagrad>(
        std::vector<torch::Tensor>{rows}, torch::optim::AdagradOptions(0.05).weight_decay(l2));
  } else {
    reference = std::make_unique<torch::optim::Adam>(std::vector<torch::Tensor>{rows},
                                                     torch::optim::AdamOptions(0.05).weight_decay(l2));
  }
  for (int t = 0; t < steps; ++t) {
    ours.zero_grad();
    table.mutable_grad() = sparse_gradient(step_values(t), dtype);
    ours.step();
    reference->zero_grad();
    rows.mutable_grad() = summed_rows(step_values(t));
    reference->step();
  }
  return {table.detach().to(torch::kFloat64), rows.detach()};
}

void expect_rows_follow_torch(EmbeddingOptimizer kind, torch::Dtype dtype, double l2) {
  torch::manual_seed(3);
  const torch::Tensor start = torch::randn({kRows, kWidth}, torch::kFloat64);
  const Result r = run_rows(kind, dtype, l2, 5);
  const double tolerance = dtype == torch::kFloat64 ? 1e-12 : 1e-5;
  const torch::Tensor touched = torch::tensor(kTouched, torch::kLong);
  EXPECT_TRUE(torch::allclose(r.ours.index_select(0, touched), r.reference, tolerance, tolerance))
      << to_string(kind) << " " << r.ours.index_select(0, touched) << r.reference;
  for (std::int64_t row = 0; row < kRows; ++row) {
    if (std::find(kTouched.begin(), kTouched.end(), row) != kTouched.end()) continue;
    EXPECT_TRUE(torch::allclose(r.ours[row], start[row].to(dtype).to(torch::kFloat64), 0, 0))
        << "row " << row << " was not in any batch but moved";
  }
}

TEST(CtrOptimizer, LazyAdamIsTorchAdamOnTheBatchRowsAndLeavesTheOthers) {
  expect_rows_follow_torch(EmbeddingOptimizer::lazy_adam, torch::kFloat32, 0);       // the CPU loop
  expect_rows_follow_torch(EmbeddingOptimizer::lazy_adam, torch::kFloat64, 0);       // the tensor ops
  expect_rows_follow_torch(EmbeddingOptimizer::lazy_adam, torch::kFloat32, 1e-2);    // L2 on the rows
  expect_rows_follow_torch(EmbeddingOptimizer::lazy_adam, torch::kFloat64, 1e-2);
}

TEST(CtrOptimizer, AdagradIsTorchAdagradOnTheBatchRowsAndLeavesTheOthers) {
  expect_rows_follow_torch(EmbeddingOptimizer::adagrad, torch::kFloat32, 0);
  expect_rows_follow_torch(EmbeddingOptimizer::adagrad, torch::kFloat64, 0);
  expect_rows_follow_torch(EmbeddingOptimizer::adagrad, torch::kFloat32, 1e-2);
}

// Dense parameters (the layers, and the tables under `adam`) follow torch's Adam: the small ones
// through the loop, a large one through the tensor ops.
TEST(CtrOptimizer, DenseParametersFollowTorchAdam) {
  for (std::int64_t size : {std::int64_t{37}, std::int64_t{40000}}) {
    torch::manual_seed(5);
    const torch::Tensor start = torch::randn({size});
    torch::Tensor ours_table = start.clone().requires_grad_(true);
    torch::Tensor ours_layer = start.clone().requires_grad_(true);
    torch::Tensor theirs_table = start.clone().requires_grad_(true);
    torch::Tensor theirs_layer = start.clone().requires_grad_(true);
    OptimizerSettings settings;
    settings.embedding = EmbeddingOptimizer::adam;
    settings.learning_rate = 0.01;
    settings.embedding_learning_rate = 0.02;
    settings.embedding_l2 = 1e-3;
    CtrOptimizer ours({ours_table}, {ours_layer}, settings);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{theirs_table},
                        std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(0.02).weight_decay(1e-3)));
    groups.emplace_back(std::vector<torch::Tensor>{theirs_layer}, std::make_unique<torch::optim::AdamOptions>(0.01));
    torch::optim::Adam theirs(groups, torch::optim::AdamOptions(0.01));
    for (int t = 0; t < 4; ++t) {
      const torch::Tensor g = torch::sin(start * (t + 1));
      ours.zero_grad();
      ours_table.mutable_grad() = g.clone();
      ours_layer.mutable_grad() = g.clone();
      ours.step();
      theirs.zero_grad();
      theirs_table.mutable_grad() = g.clone();
      theirs_layer.mutable_grad() = g.clone();
      theirs.step();
      if (t == 1) {
        ours.scale_learning_rates(0.5);
        for (auto& group : theirs.param_groups()) {
          auto& o = static_cast<torch::optim::AdamOptions&>(group.options());
          o.lr(o.lr() * 0.5);
        }
      }
    }
    EXPECT_TRUE(torch::allclose(ours_table, theirs_table, 1e-5, 1e-6)) << size;
    EXPECT_TRUE(torch::allclose(ours_layer, theirs_layer, 1e-5, 1e-6)) << size;
  }
}

TEST(CtrOptimizer, ParametersWithoutAGradientAreLeftAlone) {
  torch::Tensor table = torch::ones({4, 2}).requires_grad_(true);
  torch::Tensor layer = torch::ones({3}).requires_grad_(true);
  OptimizerSettings settings;
  CtrOptimizer optimizer({table}, {layer}, settings);
  optimizer.zero_grad();
  optimizer.step();
  EXPECT_TRUE(torch::equal(table, torch::ones({4, 2})));
  EXPECT_TRUE(torch::equal(layer, torch::ones({3})));
}

TEST(CtrOptimizer, ADenseTableGradientUnderASparseOptimizerIsAnError) {
  torch::Tensor table = torch::ones({4, 2}).requires_grad_(true);
  CtrOptimizer optimizer({table}, {}, OptimizerSettings{});
  table.mutable_grad() = torch::ones({4, 2});
  try {
    optimizer.step();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dense gradient under lazy_adam"), std::string::npos) << e.what();
  }
}

TEST(CtrOptimizer, NamesRoundTripAndUnknownNamesListTheValidOnes) {
  for (auto kind : {EmbeddingOptimizer::adam, EmbeddingOptimizer::lazy_adam, EmbeddingOptimizer::adagrad}) {
    EXPECT_EQ(embedding_optimizer_from_string(to_string(kind)), kind);
  }
  EXPECT_FALSE(uses_sparse_gradients(EmbeddingOptimizer::adam));
  EXPECT_TRUE(uses_sparse_gradients(EmbeddingOptimizer::lazy_adam));
  try {
    embedding_optimizer_from_string("sgd");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("adam, lazy_adam, adagrad"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace userip::ctr
