// Conformance of the CTR models with an implementation this project's C++ did not produce:
// tests/ctr/reference/ctr_reference.py writes every model's formula in PyTorch (Python, float64)
// with fixed parameters and inputs, and stores the logits, the BCE loss and every gradient in
// ctr_reference.json. Here each model is built from the same config and layout, the parameters
// are copied in by name (a name missing on either side fails: the names are the checkpoint
// format), and forward + backward in float32 must agree within 1e-5 relative + 1e-6 absolute.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/nn/functional/loss.h>
#include <torch/types.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "userip/ctr/batch.h"
#include "userip/ctr/models.h"
#include "userip/util/fs.h"

namespace userip::ctr {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kRelativeTolerance = 1e-5;
constexpr double kAbsoluteTolerance = 1e-6;

const json& reference() {
  static const json doc =
      json::parse(read_file(fs::path(USERIP_SOURCE_DIR) / "tests" / "ctr" / "reference" / "ctr_reference.json"));
  return doc;
}

// A nested list of numbers -> tensor of `dtype` with the list's shape.
torch::Tensor nested_tensor(const json& nested, torch::Dtype dtype) {
  std::vector<std::int64_t> shape;
  for (const json* level = &nested; level->is_array(); level = &level->front()) shape.push_back(level->size());
  std::vector<double> values;
  const std::function<void(const json&)> collect = [&](const json& node) {
    if (node.is_array()) {
      for (const auto& child : node) collect(child);
    } else {
      values.push_back(node.get<double>());
    }
  };
  collect(nested);
  return torch::tensor(values, torch::kDouble).reshape(shape).to(dtype);
}

// {"shape": [...], "values": [flat]} -> tensor of `dtype`.
torch::Tensor shaped_tensor(const json& entry, torch::Dtype dtype) {
  const auto shape = entry.at("shape").get<std::vector<std::int64_t>>();
  const auto values = entry.at("values").get<std::vector<double>>();
  return torch::tensor(values, torch::kDouble).reshape(shape).to(dtype);
}

FeatureBatch reference_batch() {
  const json& b = reference().at("batch");
  FeatureBatch batch;
  batch.categorical = nested_tensor(b.at("categorical"), torch::kLong);
  batch.multi_index = nested_tensor(b.at("multi_index"), torch::kLong);
  batch.multi_weight = nested_tensor(b.at("multi_weight"), torch::kFloat);
  batch.dense = nested_tensor(b.at("dense"), torch::kFloat);
  batch.label = nested_tensor(b.at("label"), torch::kFloat);
  return batch;
}

const json& reference_case(const std::string& name) {
  for (const auto& c : reference().at("cases")) {
    if (c.at("name") == name) return c;
  }
  throw std::runtime_error("ctr_reference.json has no case " + name);
}

// Every element of `actual` within tolerance of `expected` (float64); reports the worst one.
void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const auto a = actual.detach().to(torch::kDouble);
  const auto e = expected.to(torch::kDouble);
  const auto excess = (a - e).abs() - (kAbsoluteTolerance + kRelativeTolerance * e.abs());
  const auto worst = excess.numel() == 0 ? 0.0 : excess.max().item<double>();
  EXPECT_LE(worst, 0.0) << what << ": max |difference| " << (a - e).abs().max().item<double>() << " beyond tolerance"
                        << "\nactual:   " << a.flatten() << "\nexpected: " << e.flatten();
}

void check_against_pytorch(const std::string& name) {
  const json& c = reference_case(name);
  const auto layout = FieldLayout::from_json(reference().at("layout"));
  const auto config = ModelConfig::from_json(c.at("config"));
  ASSERT_EQ(to_string(config.kind), name);
  auto model = make_model(config, layout);
  model->eval();

  const json& parameters = c.at("parameters");
  std::set<std::string> model_names;
  {
    torch::NoGradGuard no_grad;
    for (auto& item : model->named_parameters()) {
      model_names.insert(item.key());
      ASSERT_TRUE(parameters.contains(item.key())) << name << ": the reference has no parameter " << item.key();
      const auto value = shaped_tensor(parameters.at(item.key()), torch::kFloat);
      ASSERT_EQ(item.value().sizes(), value.sizes()) << name << ": shape of " << item.key();
      item.value().copy_(value);
    }
  }
  for (const auto& [key, value] : parameters.items()) {
    EXPECT_TRUE(model_names.count(key)) << name << ": the C++ model has no parameter " << key;
  }

  const auto batch = reference_batch();
  const auto logits = model->forward(batch);
  const auto loss = torch::nn::functional::binary_cross_entropy_with_logits(logits, batch.label);
  loss.backward();

  expect_close(logits, torch::tensor(c.at("logits").get<std::vector<double>>(), torch::kDouble), name + " logits");
  expect_close(loss, torch::tensor(c.at("loss").get<double>(), torch::kDouble), name + " loss");
  const json& gradients = c.at("gradients");
  for (auto& item : model->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << name << ": no gradient reached " << item.key();
    expect_close(item.value().grad(), shaped_tensor(gradients.at(item.key()), torch::kDouble),
                 name + " gradient of " + item.key());
  }
}

TEST(CtrReference, LrMatchesPyTorch) { check_against_pytorch("lr"); }
TEST(CtrReference, FmMatchesPyTorch) { check_against_pytorch("fm"); }
TEST(CtrReference, DeepFmMatchesPyTorch) { check_against_pytorch("deepfm"); }
TEST(CtrReference, DcnMatchesPyTorch) { check_against_pytorch("dcn"); }
TEST(CtrReference, DcnV2MatchesPyTorch) { check_against_pytorch("dcnv2"); }

// The reference layout and config read back through the project's own JSON, unchanged.
TEST(CtrReference, LayoutRoundTrips) {
  const auto layout = FieldLayout::from_json(reference().at("layout"));
  EXPECT_EQ(layout.vocabulary_size(), 9);
  EXPECT_EQ(layout.num_fields(), 4);
  EXPECT_EQ(layout.to_json(), reference().at("layout"));
}

}  // namespace
}  // namespace userip::ctr
