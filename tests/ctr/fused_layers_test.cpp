// The fused float32 CPU kernels against the tensor-op path (float64, which always takes the ops):
// same values and same gradients, so the speed-up cannot change what a model learns beyond
// rounding. The models' own conformance with an independent implementation is reference_test.cpp.
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <vector>

#include "userip/ctr/fused_layers.h"
#include "userip/util/error.h"

namespace userip::ctr {
namespace {

constexpr double kTolerance = 1e-5;

bool close(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::allclose(a.to(torch::kFloat64), b.to(torch::kFloat64), kTolerance, kTolerance);
}

TEST(CtrFusedLayers, CrossNetworkMatchesTheTensorOpsWithGradients) {
  torch::manual_seed(11);
  const std::int64_t rows = 9, width = 13;  // not multiples of the kernel's 8 lanes
  const torch::Tensor x0_value = torch::randn({rows, width}, torch::kFloat64);
  std::vector<torch::Tensor> w_values, b_values;
  for (int l = 0; l < 3; ++l) {
    w_values.push_back(torch::randn({width}, torch::kFloat64) * 0.3);
    b_values.push_back(torch::randn({width}, torch::kFloat64) * 0.1);
  }
  const torch::Tensor upstream = torch::randn({rows, width}, torch::kFloat64);
  auto run = [&](torch::Dtype dtype) {
    std::vector<torch::Tensor> inputs{x0_value.to(dtype).detach().clone().requires_grad_(true)}, w, b;
    for (int l = 0; l < 3; ++l) {
      w.push_back(w_values[l].to(dtype).detach().clone().requires_grad_(true));
      b.push_back(b_values[l].to(dtype).detach().clone().requires_grad_(true));
    }
    inputs.insert(inputs.end(), w.begin(), w.end());
    inputs.insert(inputs.end(), b.begin(), b.end());
    const torch::Tensor out = vector_cross_network(inputs[0], w, b);
    std::vector<torch::Tensor> result{out.detach()};
    for (const auto& g : torch::autograd::grad({(out * upstream.to(dtype)).sum()}, inputs)) result.push_back(g);
    return result;
  };
  const auto fused = run(torch::kFloat32), ops = run(torch::kFloat64);
  ASSERT_EQ(fused.size(), ops.size());
  for (std::size_t i = 0; i < fused.size(); ++i) EXPECT_TRUE(close(fused[i], ops[i])) << "output/gradient " << i;
}

TEST(CtrFusedLayers, CrossNetworkOfNoLayersIsItsInput) {
  const torch::Tensor x0 = torch::randn({2, 3});
  EXPECT_TRUE(torch::equal(vector_cross_network(x0, {}, {}), x0));
}

// Two categorical fields and two multi-hot fields of width 3, with padding (weight 0) and a row
// named twice in one example.
FeatureBatch lookup_batch() {
  FeatureBatch b;
  b.categorical = torch::tensor({0, 5, 1, 6, 2, 5}, torch::kLong).reshape({3, 2});
  b.multi_index = torch::tensor({7, 8, 7, 9, 9, 9,  //
                                 8, 7, 7, 9, 7, 7,  //
                                 7, 7, 7, 8, 9, 7},
                                torch::kLong)
                      .reshape({3, 2, 3});
  const float third = 1.0f / 3;
  b.multi_weight = torch::tensor({0.5f, 0.5f, 0.0f, 1.0f, 0.0f, 0.0f,  //
                                  third, third, third, 0.5f, 0.5f, 0.0f,  //
                                  0.0f, 0.0f, 0.0f, third, third, third})
                       .reshape({3, 2, 3});
  return b;
}

TEST(CtrFusedLayers, FieldLookupMatchesEmbeddingBagWithDenseAndSparseGradients) {
  torch::manual_seed(12);
  const torch::Tensor table_value = torch::randn({10, 4}, torch::kFloat64);
  const torch::Tensor upstream = torch::randn({3, 4, 4}, torch::kFloat64);
  const FeatureBatch batch = lookup_batch();
  for (bool sparse : {false, true}) {
    auto run = [&](torch::Dtype dtype) {
      torch::Tensor table = table_value.to(dtype).detach().clone().requires_grad_(true);
      FeatureBatch b = batch;
      b.multi_weight = b.multi_weight.to(dtype);
      const torch::Tensor out = lookup_fields(table, b, 2, 2, sparse);
      (out * upstream.to(dtype)).sum().backward();
      EXPECT_EQ(table.grad().is_sparse(), sparse);
      const torch::Tensor grad = table.grad().is_sparse() ? table.grad().to_dense() : table.grad();
      return std::make_pair(out.detach(), grad);
    };
    const auto [fused_out, fused_grad] = run(torch::kFloat32);
    const auto [ops_out, ops_grad] = run(torch::kFloat64);
    EXPECT_TRUE(close(fused_out, ops_out)) << "sparse " << sparse;
    EXPECT_TRUE(close(fused_grad, ops_grad)) << "sparse " << sparse;
    // Rows 3 and 4 are never looked up: no gradient at all.
    EXPECT_EQ(fused_grad[3].abs().sum().item<double>(), 0);
  }
}

TEST(CtrFusedLayers, FieldLookupOfOneKindOfField) {
  torch::manual_seed(13);
  const torch::Tensor table = torch::randn({10, 4});
  const FeatureBatch batch = lookup_batch();
  FeatureBatch categorical_only;
  categorical_only.categorical = batch.categorical;
  EXPECT_TRUE(close(lookup_fields(table, categorical_only, 2, 0, true),
                    lookup_fields(table.to(torch::kFloat64), categorical_only, 2, 0, true)));
  FeatureBatch multi_only;
  multi_only.multi_index = batch.multi_index;
  multi_only.multi_weight = batch.multi_weight;
  EXPECT_TRUE(close(lookup_fields(table, multi_only, 0, 2, true),
                    lookup_fields(table.to(torch::kFloat64), multi_only, 0, 2, true)));
}

TEST(CtrFusedLayers, FieldLookupRejectsAnIndexOutsideTheTable) {
  FeatureBatch batch = lookup_batch();
  batch.categorical[1][1] = 10;
  try {
    lookup_fields(torch::randn({10, 4}), batch, 2, 2, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("index 10 outside the embedding's 10 rows"), std::string::npos) << e.what();
  }
}

TEST(CtrFusedLayers, DropoutKeepsOneMinusPScaledAndIsReproducibleUnderTheSeed) {
  const torch::Tensor x = torch::ones({200, 50});
  torch::manual_seed(1);
  const torch::Tensor a = inverted_dropout(x, 0.2, true);
  torch::manual_seed(1);
  const torch::Tensor b = inverted_dropout(x, 0.2, true);
  EXPECT_TRUE(torch::equal(a, b));
  const torch::Tensor c = inverted_dropout(x, 0.2, true);  // the generator moved on: another mask
  EXPECT_FALSE(torch::equal(a, c));
  const double kept = (a > 0).to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(kept, 0.8, 0.02);  // 10,000 draws: the standard error is 0.004
  EXPECT_TRUE(torch::allclose(a.masked_select(a > 0), torch::full({1}, 1.25f)));
  EXPECT_TRUE(torch::equal(inverted_dropout(x, 0.2, false), x));
  EXPECT_TRUE(torch::equal(inverted_dropout(x, 0.0, true), x));
}

TEST(CtrFusedLayers, DropoutPassesGradientThroughTheKeptElementsOnly) {
  torch::manual_seed(2);
  torch::Tensor x = torch::randn({30, 7}).requires_grad_(true);
  const torch::Tensor y = inverted_dropout(x, 0.5, true);
  y.sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), (y != 0).to(torch::kFloat32) * 2));
}

}  // namespace
}  // namespace userip::ctr
