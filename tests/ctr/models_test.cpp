#include "userip/ctr/models.h"

#include <gtest/gtest.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/init.h>
#include <torch/types.h>

#include <set>
#include <string>
#include <vector>

#include "userip/ctr/batch.h"
#include "userip/util/error.h"

namespace userip::ctr {
namespace {

using nlohmann::json;

const std::vector<ModelKind> kAllKinds = {ModelKind::lr, ModelKind::fm, ModelKind::deepfm, ModelKind::dcn,
                                          ModelKind::dcnv2};

// Two categorical fields, one multi-hot field and, when `dense_dim` > 0, a dense input.
FieldLayout test_layout(std::int64_t categorical = 2, std::int64_t multi_hot = 1, std::int64_t dense_dim = 2) {
  FieldLayout layout;
  std::int64_t offset = 0;
  for (std::int64_t i = 0; i < categorical; ++i) {
    layout.categorical.push_back({"cat" + std::to_string(i), FieldKind::categorical, offset, 5 + i});
    offset += 5 + i;
  }
  for (std::int64_t i = 0; i < multi_hot; ++i) {
    layout.multi_hot.push_back({"multi" + std::to_string(i), FieldKind::multi_hot, offset, 6});
    offset += 6;
  }
  layout.max_values = 3;
  layout.dense_dim = dense_dim;
  layout.dense_name = dense_dim > 0 ? "profile" : "";
  return layout;
}

// B examples with indices inside each field's range; each multi-hot field holds 1 to max_values
// values, padded with the field's OOV index at weight 0.
FeatureBatch random_batch(const FieldLayout& layout, std::int64_t rows, std::uint64_t seed = 7) {
  torch::manual_seed(seed);
  const auto fields = static_cast<std::int64_t>(layout.categorical.size());
  const auto multi = static_cast<std::int64_t>(layout.multi_hot.size());
  FeatureBatch batch;
  batch.categorical = torch::empty({rows, fields}, torch::kLong);
  for (std::int64_t f = 0; f < fields; ++f) {
    const auto& info = layout.categorical[f];
    batch.categorical.select(1, f).copy_(torch::randint(info.offset, info.offset + info.size, {rows}, torch::kLong));
  }
  batch.multi_index = torch::empty({rows, multi, layout.max_values}, torch::kLong);
  batch.multi_weight = torch::zeros({rows, multi, layout.max_values});
  for (std::int64_t m = 0; m < multi; ++m) {
    const auto& info = layout.multi_hot[m];
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto count = torch::randint(1, layout.max_values + 1, {1}).item<std::int64_t>();
      for (std::int64_t v = 0; v < layout.max_values; ++v) {
        const bool present = v < count;
        batch.multi_index[r][m][v] =
            present ? torch::randint(info.offset, info.offset + info.size, {1}).item<std::int64_t>() : info.offset;
        batch.multi_weight[r][m][v] = present ? 1.0 / static_cast<double>(count) : 0.0;
      }
    }
  }
  if (layout.dense_dim > 0) batch.dense = torch::randn({rows, layout.dense_dim});
  batch.label = torch::randint(0, 2, {rows}).to(torch::kFloat);
  return batch;
}

ModelConfig config_of(ModelKind kind, double dropout = 0.0) {
  ModelConfig config;
  config.kind = kind;
  config.embedding_dim = 4;
  config.mlp = {8, 5};
  config.dropout = dropout;
  config.cross_layers = 2;
  return config;
}

std::set<std::string> parameter_names(CtrModel& model) {
  std::set<std::string> names;
  for (const auto& item : model.named_parameters()) names.insert(item.key());
  return names;
}

torch::Tensor parameter(CtrModel& model, const std::string& name) {
  auto params = model.named_parameters();
  auto* found = params.find(name);
  if (found == nullptr) throw std::runtime_error("no parameter " + name);
  return *found;
}

// Expects `fn` to throw userip::Error whose message contains `needle`.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an error mentioning: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// ---- ModelKind and ModelConfig --------------------------------------------------------------

TEST(CtrModelConfig, KindNamesRoundTrip) {
  const std::vector<std::string> names = {"lr", "fm", "deepfm", "dcn", "dcnv2"};
  for (std::size_t i = 0; i < kAllKinds.size(); ++i) {
    EXPECT_EQ(to_string(kAllKinds[i]), names[i]);
    EXPECT_EQ(model_kind_from_string(names[i]), kAllKinds[i]);
  }
  expect_error([] { model_kind_from_string("xgboost"); }, "lr, fm, deepfm, dcn, dcnv2");
}

TEST(CtrModelConfig, DefaultsFollowTheMethod) {
  const ModelConfig config;
  EXPECT_EQ(config.kind, ModelKind::dcn);
  EXPECT_EQ(config.embedding_dim, 8);
  EXPECT_EQ(config.mlp, (std::vector<std::int64_t>{16, 16}));
  EXPECT_DOUBLE_EQ(config.dropout, 0.2);
  EXPECT_EQ(config.cross_layers, 3);
  EXPECT_NO_THROW(config.validate());
}

TEST(CtrModelConfig, JsonRoundTrip) {
  ModelConfig config;
  config.kind = ModelKind::dcnv2;
  config.embedding_dim = 12;
  config.mlp = {32, 8, 4};
  config.dropout = 0.35;
  config.cross_layers = 1;
  const auto back = ModelConfig::from_json(json::parse(config.to_json().dump()));
  EXPECT_EQ(back.kind, config.kind);
  EXPECT_EQ(back.embedding_dim, config.embedding_dim);
  EXPECT_EQ(back.mlp, config.mlp);
  EXPECT_DOUBLE_EQ(back.dropout, config.dropout);
  EXPECT_EQ(back.cross_layers, config.cross_layers);
  EXPECT_EQ(back.to_json(), config.to_json());
}

TEST(CtrModelConfig, ReadsOnlyThePresentKeysOverTheDefaults) {
  ModelConfig defaults;
  defaults.kind = ModelKind::fm;
  defaults.embedding_dim = 6;
  const auto config = ModelConfig::from_json(json{{"mlp", json::array()}, {"dropout", 0}}, defaults);
  EXPECT_EQ(config.kind, ModelKind::fm);
  EXPECT_EQ(config.embedding_dim, 6);
  EXPECT_TRUE(config.mlp.empty());
  EXPECT_DOUBLE_EQ(config.dropout, 0.0);
  EXPECT_EQ(ModelConfig::from_json(json::object()).to_json(), ModelConfig{}.to_json());
}

TEST(CtrModelConfig, JsonErrorsNameTheKey) {
  expect_error([] { ModelConfig::from_json(json{{"mlpp", json::array({16})}}); },
               "model config: unknown key \"mlpp\"");
  expect_error([] { ModelConfig::from_json(json{{"embedding_dim", "8"}}); }, "\"embedding_dim\" must be an integer");
  expect_error([] { ModelConfig::from_json(json{{"embedding_dim", 8.5}}); }, "\"embedding_dim\" must be an integer");
  expect_error([] { ModelConfig::from_json(json{{"mlp", 16}}); }, "\"mlp\" must be a list");
  expect_error([] { ModelConfig::from_json(json{{"mlp", json::array({16, "x"})}}); }, "\"mlp\" must be an integer");
  expect_error([] { ModelConfig::from_json(json{{"dropout", "0.1"}}); }, "\"dropout\" must be a number");
  expect_error([] { ModelConfig::from_json(json{{"cross_layers", true}}); }, "\"cross_layers\" must be an integer");
  expect_error([] { ModelConfig::from_json(json{{"kind", 3}}); }, "\"kind\" must be a string");
  expect_error([] { ModelConfig::from_json(json{{"kind", "dcn3"}}); }, "\"kind\": unknown model 'dcn3'");
  expect_error([] { ModelConfig::from_json(json::array()); }, "expected a JSON object");
  // Values that parse but are invalid are caught by validate().
  expect_error([] { ModelConfig::from_json(json{{"embedding_dim", 0}}); }, "\"embedding_dim\" must be >= 1");
}

TEST(CtrModelConfig, ValidateNamesTheBadField) {
  const auto invalid = [](auto change, const std::string& needle) {
    ModelConfig config;
    change(config);
    expect_error([&] { config.validate(); }, needle);
  };
  invalid([](ModelConfig& c) { c.embedding_dim = 0; }, "embedding_dim");
  invalid([](ModelConfig& c) { c.mlp = {16, 0}; }, "\"mlp\"[1]");
  invalid([](ModelConfig& c) { c.dropout = 1.0; }, "dropout");
  invalid([](ModelConfig& c) { c.dropout = -0.1; }, "dropout");
  invalid([](ModelConfig& c) { c.cross_layers = -1; }, "cross_layers");
  invalid([](ModelConfig& c) { c.kind = ModelKind::dcn; c.cross_layers = 0; }, "cross_layers\" must be >= 1 for dcn");
  invalid([](ModelConfig& c) { c.kind = ModelKind::dcnv2; c.cross_layers = 0; }, "for dcnv2");

  ModelConfig no_cross;  // cross layers mean nothing to the models without a cross network
  no_cross.kind = ModelKind::deepfm;
  no_cross.cross_layers = 0;
  no_cross.mlp = {};
  EXPECT_NO_THROW(no_cross.validate());
}

// ---- shapes and layouts ---------------------------------------------------------------------

TEST(CtrModels, EveryKindGivesOneFiniteLogitPerExample) {
  const auto layout = test_layout();
  const auto batch = random_batch(layout, 6);
  for (const auto kind : kAllKinds) {
    torch::manual_seed(1);
    auto model = make_model(config_of(kind), layout);
    const auto logits = model->forward(batch);
    EXPECT_EQ(logits.sizes(), torch::IntArrayRef({6})) << to_string(kind);
    EXPECT_EQ(logits.dtype(), torch::kFloat) << to_string(kind);
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>()) << to_string(kind);
  }
}

TEST(CtrModels, LayoutsWithoutSomeKindsOfField) {
  struct Case {
    const char* what;
    FieldLayout layout;
  };
  const std::vector<Case> cases = {
      {"categorical only (M = 0, no dense)", test_layout(2, 0, 0)},
      {"multi-hot only (F = 0, no dense)", test_layout(0, 2, 0)},
      {"categorical and dense (M = 0)", test_layout(1, 0, 3)},
      {"dense only (no embedding table)", test_layout(0, 0, 3)},
      {"a single categorical field", test_layout(1, 0, 0)},
  };
  for (const auto& c : cases) {
    auto batch = random_batch(c.layout, 5);
    for (const auto kind : kAllKinds) {
      auto model = make_model(config_of(kind), c.layout);
      const auto logits = model->forward(batch);
      EXPECT_EQ(logits.sizes(), torch::IntArrayRef({5})) << c.what << ", " << to_string(kind);
      EXPECT_TRUE(torch::isfinite(logits).all().item<bool>()) << c.what << ", " << to_string(kind);
    }
  }
  // Tensors of the absent kinds may also be left undefined.
  const auto categorical_only = test_layout(2, 0, 0);
  auto batch = random_batch(categorical_only, 3);
  batch.multi_index = torch::Tensor();
  batch.multi_weight = torch::Tensor();
  EXPECT_EQ(make_model(config_of(ModelKind::dcn), categorical_only)->forward(batch).size(0), 3);
  const auto multi_only = test_layout(0, 1, 0);
  batch = random_batch(multi_only, 3);
  batch.categorical = torch::Tensor();
  EXPECT_EQ(make_model(config_of(ModelKind::deepfm), multi_only)->forward(batch).size(0), 3);
}

TEST(CtrModels, EmptyBatchGivesNoLogits) {
  const auto layout = test_layout();
  const auto batch = random_batch(layout, 0);
  for (const auto kind : kAllKinds) {
    EXPECT_EQ(make_model(config_of(kind), layout)->forward(batch).sizes(), torch::IntArrayRef({0})) << to_string(kind);
  }
}

TEST(CtrModels, RejectsALayoutWithoutFieldsAndABatchThatDoesNotMatch) {
  expect_error([] { make_model(config_of(ModelKind::lr), FieldLayout{}); }, "no fields");
  ModelConfig bad = config_of(ModelKind::dcn);
  bad.cross_layers = 0;
  expect_error([&] { make_model(bad, test_layout()); }, "cross_layers");

  auto model = make_model(config_of(ModelKind::fm), test_layout());
  auto batch = random_batch(test_layout(3, 1, 2), 4);  // one categorical field too many
  expect_error([&] { model->forward(batch); }, "\"categorical\" has shape [4, 3], the model's layout needs [4, 2]");
  batch = random_batch(test_layout(), 4);
  batch.dense = torch::Tensor();
  expect_error([&] { model->forward(batch); }, "\"dense\" is missing");
}

// ---- parameters -----------------------------------------------------------------------------

TEST(CtrModels, ParameterNamesAreStable) {
  const auto layout = test_layout();
  const std::set<std::string> field = {"embedding.weight", "dense_projection.weight", "dense_projection.bias"};
  const std::set<std::string> first_order = {"linear.weight", "linear_dense.weight", "bias"};
  const std::set<std::string> mlp = {"mlp.0.weight", "mlp.0.bias", "mlp.1.weight", "mlp.1.bias"};
  const std::set<std::string> cross = {"cross.0.weight", "cross.0.bias", "cross.1.weight", "cross.1.bias"};
  const auto join = [](std::initializer_list<std::set<std::string>> parts) {
    std::set<std::string> all;
    for (const auto& part : parts) all.insert(part.begin(), part.end());
    return all;
  };
  EXPECT_EQ(parameter_names(*make_model(config_of(ModelKind::lr), layout)), first_order);
  EXPECT_EQ(parameter_names(*make_model(config_of(ModelKind::fm), layout)), join({field, first_order}));
  EXPECT_EQ(parameter_names(*make_model(config_of(ModelKind::deepfm), layout)),
            join({field, first_order, mlp, {"output.weight"}}));
  EXPECT_EQ(parameter_names(*make_model(config_of(ModelKind::dcn), layout)),
            join({field, mlp, cross, {"output.weight", "output.bias"}}));
  EXPECT_EQ(parameter_names(*make_model(config_of(ModelKind::dcnv2), layout)),
            join({field, mlp, cross, {"output.weight", "output.bias"}}));

  // Shapes: V = 5 + 6 + 6 = 17 rows, n = 4 fields of k = 4, so d = 16.
  auto dcn = make_model(config_of(ModelKind::dcn), layout);
  EXPECT_EQ(parameter(*dcn, "embedding.weight").sizes(), torch::IntArrayRef({17, 4}));
  EXPECT_EQ(parameter(*dcn, "dense_projection.weight").sizes(), torch::IntArrayRef({4, 2}));
  EXPECT_EQ(parameter(*dcn, "cross.1.weight").sizes(), torch::IntArrayRef({16}));
  EXPECT_EQ(parameter(*dcn, "mlp.0.weight").sizes(), torch::IntArrayRef({8, 16}));
  EXPECT_EQ(parameter(*dcn, "output.weight").sizes(), torch::IntArrayRef({1, 16 + 5}));
  auto dcnv2 = make_model(config_of(ModelKind::dcnv2), layout);
  EXPECT_EQ(parameter(*dcnv2, "cross.0.weight").sizes(), torch::IntArrayRef({16, 16}));
  auto fm = make_model(config_of(ModelKind::fm), layout);
  EXPECT_EQ(parameter(*fm, "linear.weight").sizes(), torch::IntArrayRef({17, 1}));
  EXPECT_EQ(parameter(*fm, "linear_dense.weight").sizes(), torch::IntArrayRef({1, 2}));
  EXPECT_EQ(parameter(*fm, "bias").sizes(), torch::IntArrayRef({1}));

  // Without dense input and without hidden layers the corresponding parameters are absent.
  auto bare = config_of(ModelKind::dcn);
  bare.mlp = {};
  auto cross_only = make_model(bare, test_layout(2, 1, 0));
  EXPECT_EQ(parameter_names(*cross_only), join({{"embedding.weight", "output.weight", "output.bias"}, cross}));
  EXPECT_EQ(parameter(*cross_only, "output.weight").sizes(), torch::IntArrayRef({1, 12}));
}

TEST(CtrModels, EmbeddingParametersAreTheTables) {
  const auto layout = test_layout();
  for (const auto kind : kAllKinds) {
    auto model = make_model(config_of(kind), layout);
    std::set<const void*> expected;
    for (const auto& item : model->named_parameters()) {
      if (item.key() == "embedding.weight" || item.key() == "linear.weight") expected.insert(item.value().data_ptr());
    }
    std::set<const void*> tables;
    for (const auto& t : model->embedding_parameters()) tables.insert(t.data_ptr());
    EXPECT_EQ(tables, expected) << to_string(kind);
    EXPECT_FALSE(tables.empty()) << to_string(kind);
  }
  EXPECT_TRUE(make_model(config_of(ModelKind::fm), test_layout(0, 0, 2))->embedding_parameters().empty());
}

TEST(CtrModels, InitialisationFollowsTheTorchSeed) {
  const auto layout = test_layout();
  for (const auto kind : kAllKinds) {
    torch::manual_seed(42);
    auto a = make_model(config_of(kind), layout);
    torch::manual_seed(42);
    auto b = make_model(config_of(kind), layout);
    torch::manual_seed(43);
    auto c = make_model(config_of(kind), layout);
    bool any_differs = false;
    for (const auto& name : parameter_names(*a)) {
      EXPECT_TRUE(torch::equal(parameter(*a, name), parameter(*b, name))) << to_string(kind) << " " << name;
      any_differs = any_differs || !torch::equal(parameter(*a, name), parameter(*c, name));
    }
    EXPECT_TRUE(any_differs) << to_string(kind);
  }
  // Embedding rows start small (std 0.01).
  torch::manual_seed(0);
  auto fm = make_model(config_of(ModelKind::fm), test_layout(3, 2, 0));
  const auto spread = parameter(*fm, "embedding.weight").std().item<double>();
  EXPECT_GT(spread, 0.005);
  EXPECT_LT(spread, 0.02);
}

TEST(CtrModels, GradientReachesEveryParameter) {
  const auto layout = test_layout();
  const auto batch = random_batch(layout, 16);
  for (const auto kind : kAllKinds) {
    torch::manual_seed(3);
    auto model = make_model(config_of(kind), layout);
    model->train();
    const auto loss = torch::nn::functional::binary_cross_entropy_with_logits(model->forward(batch), batch.label);
    loss.backward();
    for (const auto& item : model->named_parameters()) {
      const auto grad = item.value().grad();
      ASSERT_TRUE(grad.defined()) << to_string(kind) << ": no gradient for " << item.key();
      EXPECT_GT(grad.abs().sum().item<double>(), 0.0) << to_string(kind) << ": zero gradient for " << item.key();
    }
  }
}

// ---- what the models compute ----------------------------------------------------------------

// FM logit = bias + Σ first-order weights + dense linear term + Σ_{i<j} <v_i, v_j>, each part
// computed here by hand from the named parameters, the pairs as an explicit double loop.
TEST(CtrModels, FmIsFirstOrderPlusEveryPairwiseInteraction) {
  const auto layout = test_layout();
  const auto batch = random_batch(layout, 5);
  torch::manual_seed(5);
  auto model = make_model(config_of(ModelKind::fm), layout);
  {
    // Larger embeddings than the initial std 0.01, so the pairwise term is not negligible.
    torch::NoGradGuard no_grad;
    torch::nn::init::normal_(parameter(*model, "embedding.weight"), 0.0, 0.5);
  }
  const auto logits = model->forward(batch).detach().to(torch::kDouble);

  const auto emb = parameter(*model, "embedding.weight").detach().to(torch::kDouble);
  const auto lin = parameter(*model, "linear.weight").detach().to(torch::kDouble);
  const auto proj_w = parameter(*model, "dense_projection.weight").detach().to(torch::kDouble);
  const auto proj_b = parameter(*model, "dense_projection.bias").detach().to(torch::kDouble);
  const auto dense_w = parameter(*model, "linear_dense.weight").detach().to(torch::kDouble);
  const auto bias = parameter(*model, "bias").item<double>();
  const auto dense = batch.dense.to(torch::kDouble);
  for (std::int64_t r = 0; r < batch.size(); ++r) {
    std::vector<torch::Tensor> v;  // one [k] vector per field
    double expected = bias;
    for (std::int64_t f = 0; f < batch.categorical.size(1); ++f) {
      const auto index = batch.categorical[r][f].item<std::int64_t>();
      v.push_back(emb[index]);
      expected += lin[index][0].item<double>();
    }
    for (std::int64_t m = 0; m < batch.multi_index.size(1); ++m) {
      auto pooled = torch::zeros({emb.size(1)}, torch::kDouble);
      for (std::int64_t j = 0; j < batch.multi_index.size(2); ++j) {
        const auto index = batch.multi_index[r][m][j].item<std::int64_t>();
        const auto weight = batch.multi_weight[r][m][j].item<double>();
        pooled = pooled + emb[index] * weight;
        expected += lin[index][0].item<double>() * weight;
      }
      v.push_back(pooled);
    }
    v.push_back(proj_w.matmul(dense[r]) + proj_b);
    expected += dense_w.matmul(dense[r]).item<double>();
    double pairs = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      for (std::size_t j = i + 1; j < v.size(); ++j) pairs += v[i].dot(v[j]).item<double>();
    }
    EXPECT_GT(std::abs(pairs), 1e-3) << "the test needs a pairwise term that matters";
    EXPECT_NEAR(logits[r].item<double>(), expected + pairs, 1e-5) << "row " << r;
  }
}

// A multi-hot field is the weighted mean of its values' rows: padding (weight 0) adds nothing,
// and the order of the values does not matter.
TEST(CtrModels, MultiHotFieldsAreMeanPooled) {
  const auto layout = test_layout(0, 1, 0);
  auto model = make_model(config_of(ModelKind::lr), layout);
  const auto o = layout.multi_hot[0].offset;  // also the padding index (the OOV bucket)
  FeatureBatch batch;
  batch.multi_index = torch::tensor({o + 1, o + 3, o, o + 3, o + 1, o}, torch::kLong).reshape({2, 1, 3});
  batch.multi_weight = torch::tensor({0.5f, 0.5f, 0.0f, 0.5f, 0.5f, 0.0f}).reshape({2, 1, 3});
  const auto logits = model->forward(batch);
  const auto lin = parameter(*model, "linear.weight").detach();
  const auto expected = 0.5 * (lin[o + 1][0] + lin[o + 3][0]) + parameter(*model, "bias")[0];
  EXPECT_NEAR(logits[0].item<double>(), expected.item<double>(), 1e-7);
  EXPECT_NEAR(logits[1].item<double>(), expected.item<double>(), 1e-7);
}

TEST(CtrModels, DropoutOnlyWhileTraining) {
  const auto layout = test_layout();
  const auto batch = random_batch(layout, 8);
  for (const auto kind : {ModelKind::deepfm, ModelKind::dcn, ModelKind::dcnv2}) {
    torch::manual_seed(9);
    auto model = make_model(config_of(kind, /*dropout=*/0.5), layout);
    model->eval();
    const auto first = model->forward(batch);
    const auto second = model->forward(batch);
    EXPECT_TRUE(torch::equal(first, second)) << to_string(kind);
    model->train();
    torch::manual_seed(10);
    const auto a = model->forward(batch);
    torch::manual_seed(11);
    const auto b = model->forward(batch);
    EXPECT_FALSE(torch::equal(a, b)) << to_string(kind) << ": dropout should act in training mode";
  }
}

// The models make no tensors of their own dtype: converted to float64 they run on float64 input.
TEST(CtrModels, FollowTheParametersDtype) {
  const auto layout = test_layout();
  auto batch = random_batch(layout, 4);
  for (const auto kind : kAllKinds) {
    torch::manual_seed(2);
    auto model = make_model(config_of(kind), layout);
    model->eval();
    const auto single = model->forward(batch).detach();
    model->to(torch::kDouble);
    auto wide = batch;
    wide.multi_weight = batch.multi_weight.to(torch::kDouble);
    wide.dense = batch.dense.to(torch::kDouble);
    const auto dbl = model->forward(wide);
    EXPECT_EQ(dbl.dtype(), torch::kDouble) << to_string(kind);
    EXPECT_TRUE(torch::allclose(dbl.to(torch::kFloat), single, 1e-5, 1e-6)) << to_string(kind);
  }
}

// ---- the field layout -----------------------------------------------------------------------

TEST(CtrFieldLayout, CountsAndJsonRoundTrip) {
  const auto layout = test_layout();
  EXPECT_EQ(layout.vocabulary_size(), 5 + 6 + 6);
  EXPECT_EQ(layout.num_fields(), 4);
  EXPECT_EQ(test_layout(2, 1, 0).num_fields(), 3);
  EXPECT_EQ(to_string(FieldKind::categorical), "categorical");
  EXPECT_EQ(to_string(FieldKind::multi_hot), "multi_hot");

  const auto back = FieldLayout::from_json(json::parse(layout.to_json().dump()));
  EXPECT_EQ(back.to_json(), layout.to_json());
  ASSERT_EQ(back.multi_hot.size(), 1u);
  EXPECT_EQ(back.multi_hot[0].name, "multi0");
  EXPECT_EQ(back.multi_hot[0].kind, FieldKind::multi_hot);
  EXPECT_EQ(back.multi_hot[0].offset, 11);
  EXPECT_EQ(back.max_values, 3);
  EXPECT_EQ(back.dense_dim, 2);
  EXPECT_EQ(back.dense_name, "profile");
  EXPECT_EQ(FieldLayout::from_json(json::object()).to_json(), FieldLayout{}.to_json());
}

TEST(CtrFieldLayout, JsonErrorsNameTheKey) {
  const auto with = [](const std::string& pointer, const json& value) {
    auto doc = test_layout().to_json();
    doc[json::json_pointer(pointer)] = value;
    return doc;
  };
  expect_error([&] { FieldLayout::from_json(with("/dense_dimm", 2)); }, "unknown key \"dense_dimm\"");
  expect_error([&] { FieldLayout::from_json(with("/dense_dim", "2")); }, "\"dense_dim\" must be an integer");
  expect_error([&] { FieldLayout::from_json(with("/max_values", 0)); }, "\"max_values\" must be >= 1");
  expect_error([&] { FieldLayout::from_json(with("/categorical", json::object())); }, "\"categorical\" must be a list");
  expect_error([&] { FieldLayout::from_json(with("/categorical/1/size", 0)); }, "\"size\" must be >= 1");
  expect_error([&] { FieldLayout::from_json(with("/categorical/0/offset", "0")); }, "\"offset\" must be an integer");
  expect_error([&] { FieldLayout::from_json(with("/categorical/0/colour", 1)); }, "unknown key \"colour\"");
  expect_error([&] { FieldLayout::from_json(with("/multi_hot/0/kind", "categorical")); }, "listed under \"multi_hot\"");
  expect_error([&] { FieldLayout::from_json(with("/multi_hot/0/kind", "dense")); }, "\"kind\" must be");
  auto missing = test_layout().to_json();
  missing["categorical"][0].erase("name");
  expect_error([&] { FieldLayout::from_json(missing); }, "missing key \"name\"");
  expect_error([&] { FieldLayout::from_json(with("/multi_hot/0/offset", 10)); }, "ranges must be contiguous");
}

TEST(CtrFieldLayout, BatchSizeFromAnyInput) {
  const auto layout = test_layout();
  auto batch = random_batch(layout, 7);
  EXPECT_EQ(batch.size(), 7);
  batch.categorical = torch::Tensor();
  EXPECT_EQ(batch.size(), 7);
  batch.multi_index = torch::Tensor();
  EXPECT_EQ(batch.size(), 7);  // from dense
  EXPECT_EQ(FeatureBatch{}.size(), 0);
  FeatureBatch no_fields;
  no_fields.categorical = torch::empty({3, 0}, torch::kLong);
  EXPECT_EQ(no_fields.size(), 3);
}

}  // namespace
}  // namespace userip::ctr
