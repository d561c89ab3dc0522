#include "userip/ctr/models.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <limits>

#include "userip/ctr/fused_layers.h"
#include "userip/dist/world.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/random.h"

namespace userip::ctr {
namespace {

using nlohmann::json;

// Embedding rows start small so that the first logits sit near the bias and the FM pairwise
// products (of order k · std^2) are negligible until training moves them: the usual CTR choice.
constexpr double kEmbeddingInitStd = 0.01;

constexpr EnumName<ModelKind> kModelNames[] = {{ModelKind::lr, "lr"}, {ModelKind::fm, "fm"}, {ModelKind::deepfm, "deepfm"},
                                                {ModelKind::dcn, "dcn"}, {ModelKind::dcnv2, "dcnv2"}};

bool uses_cross(ModelKind kind) { return kind == ModelKind::dcn || kind == ModelKind::dcnv2; }

// ---- shared building blocks ----------------------------------------------------------------

// The hidden layers of a deep part: Linear -> ReLU -> dropout for each size. Registered on the
// model as "mlp" so that the parameters are "mlp.<i>.weight" and "mlp.<i>.bias", i counting
// hidden layers (no slots for the parameter-free ReLU and dropout).
struct Mlp {
  torch::nn::ModuleList list;
  std::vector<torch::nn::Linear> layers;
  std::int64_t output_size = 0;

  Mlp(std::int64_t input_size, const std::vector<std::int64_t>& sizes) {
    output_size = input_size;
    for (const auto size : sizes) {
      layers.emplace_back(torch::nn::LinearOptions(output_size, size));
      list->push_back(layers.back());
      output_size = size;
    }
  }

  torch::Tensor forward(torch::Tensor x, double dropout, bool training) {
    for (auto& layer : layers) x = ctr::inverted_dropout(torch::relu(layer->forward(x)), dropout, training);
    return x;
  }
};

// What every model shares: input checks, the k-dimensional field embedding and the first-order
// (linear) part. A subclass calls add_embedding() and/or add_first_order() in its constructor, so
// a model registers only what it uses and every registered parameter receives a gradient.
//
// Parameter names (the trainer saves by them, the reference test loads by them):
//   embedding.weight         [V, k]  one row per global index of every categorical and multi-hot field
//   dense_projection.weight  [k, D]  the dense input as one more field (only when D > 0)
//   dense_projection.bias    [k]
//   linear.weight            [V, 1]  first-order weight of each global index
//   linear_dense.weight      [1, D]  first-order weights of the dense input (only when D > 0)
//   bias                     [1]     the global bias
// Tables are left out when the layout has no categorical or multi-hot field (V = 0).
class FieldModel : public CtrModel {
 public:
  std::vector<torch::Tensor> embedding_parameters() override {
    std::vector<torch::Tensor> tables;
    if (embedding_) tables.push_back(embedding_->weight);
    if (linear_) tables.push_back(linear_->weight);
    return tables;
  }
  void set_sparse_gradients(bool sparse) override { sparse_gradients_ = sparse; }

 protected:
  FieldModel(const ModelConfig& config, const FieldLayout& layout, const std::optional<TableShard>& shard)
      : config_(config),
        categorical_fields_(static_cast<std::int64_t>(layout.categorical.size())),
        multi_fields_(static_cast<std::int64_t>(layout.multi_hot.size())),
        max_values_(layout.max_values),
        dense_dim_(layout.dense_dim),
        vocabulary_(layout.vocabulary_size()),
        fields_(layout.num_fields()) {
    shard_ = shard;
  }

  std::int64_t flat_size() const { return fields_ * config_.embedding_dim; }

  void add_embedding() {
    if (vocabulary_ > 0) {
      embedding_ = register_module("embedding", torch::nn::Embedding(table_options(config_.embedding_dim)));
      initialise_table(embedding_->weight, 0);
    }
    if (dense_dim_ > 0) {
      dense_projection_ = register_module(
          "dense_projection", torch::nn::Linear(torch::nn::LinearOptions(dense_dim_, config_.embedding_dim)));
    }
  }

  void add_first_order() {
    if (vocabulary_ > 0) {
      linear_ = register_module("linear", torch::nn::Embedding(table_options(1)));
      initialise_table(linear_->weight, 1);
    }
    if (dense_dim_ > 0) {
      // No bias of its own: the global bias below already is one.
      linear_dense_ = register_module("linear_dense", torch::nn::Linear(torch::nn::LinearOptions(dense_dim_, 1).bias(false)));
    }
    bias_ = register_parameter("bias", torch::zeros({1}));
  }

  // The batch must match the layout the model was built for; a mismatch is the caller's input
  // error, reported here in the layout's terms rather than as an opaque shape error deep in torch.
  void check_batch(const FeatureBatch& batch) const {
    const auto rows = batch.size();
    const auto check = [&](const torch::Tensor& t, const char* name, std::vector<std::int64_t> shape,
                           bool required) {
      if (!t.defined()) {
        USERIP_CHECK(!required, "CTR batch: \"{}\" is missing but the layout has such fields", name);
        return;
      }
      USERIP_CHECK(t.sizes() == torch::IntArrayRef(shape), "CTR batch: \"{}\" has shape [{}], the model's layout needs [{}]",
                   name, fmt::join(t.sizes().begin(), t.sizes().end(), ", "), fmt::join(shape, ", "));
    };
    check(batch.categorical, "categorical", {rows, categorical_fields_}, categorical_fields_ > 0);
    check(batch.multi_index, "multi_index", {rows, multi_fields_, max_values_}, multi_fields_ > 0);
    check(batch.multi_weight, "multi_weight", {rows, multi_fields_, max_values_}, multi_fields_ > 0);
    check(batch.dense, "dense", {rows, dense_dim_}, dense_dim_ > 0);
  }

  // [B, n, k]: categorical fields, then multi-hot fields, then the dense field.
  torch::Tensor embed(const FeatureBatch& batch) {
    check_batch(batch);
    std::vector<torch::Tensor> parts;
    if (vocabulary_ > 0) parts.push_back(lookup_fields(embedding_, batch));
    if (dense_projection_) parts.push_back(dense_projection_->forward(batch.dense).unsqueeze(1));
    return parts.size() == 1 ? parts.front() : torch::cat(parts, 1);
  }

  // [B]: bias + the first-order weight of every present index (mean pooled for multi-hot fields)
  // + the dense input's linear term.
  torch::Tensor first_order(const FeatureBatch& batch) {
    check_batch(batch);
    auto logit = bias_.expand({batch.size()});
    if (vocabulary_ > 0) logit = logit + lookup_fields(linear_, batch).sum({1, 2});
    if (linear_dense_) logit = logit + linear_dense_->forward(batch.dense).squeeze(1);
    return logit;
  }

  ModelConfig config_;

 private:
  torch::Tensor lookup_fields(torch::nn::Embedding& table, const FeatureBatch& batch) const {
    if (table_override_.empty()) {
      USERIP_CHECK(!shard_, "a CTR model with row-sharded tables reads its rows through ShardedTables "
                   "(ctr/sharded_tables.h), not from its own share");
      return ctr::lookup_fields(table->weight, batch, categorical_fields_, multi_fields_, sparse_gradients_);
    }
    // The override lists the tables as embedding_parameters() does: the first-order one second,
    // or first where there is no embedding (LR).
    const std::size_t which = embedding_ && table.get() != embedding_.get() ? 1 : 0;
    USERIP_ASSERT(which < table_override_.size());
    return ctr::lookup_fields(table_override_[which], batch, categorical_fields_, multi_fields_, sparse_gradients_);
  }

  // A whole table is drawn by torch's Embedding, then again below (which runs have always done). A
  // shard is handed its storage, so that it draws nothing from torch's generator: the layers built
  // after it start from the same draws whatever share this rank holds.
  torch::nn::EmbeddingOptions table_options(std::int64_t width) const {
    if (!shard_) return torch::nn::EmbeddingOptions(vocabulary_, width);
    const std::int64_t rows = shard_->rows_of(vocabulary_);
    return torch::nn::EmbeddingOptions(rows, width)._weight(torch::empty({rows, width}));
  }

  // Whole tables draw from torch's generator. A shard's rows each come from their own generator
  // (seed, table, row), so that rank r's share holds the values that the same rows have at any world size.
  void initialise_table(torch::Tensor& weight, int table) const {
    torch::NoGradGuard no_grad;
    if (!shard_) {
      torch::nn::init::normal_(weight, 0.0, kEmbeddingInitStd);
      return;
    }
    USERIP_ASSERT(weight.scalar_type() == torch::kFloat32 && weight.device().is_cpu() && weight.is_contiguous());
    float* out = weight.data_ptr<float>();
    const std::int64_t width = weight.size(1);
    const auto index = static_cast<std::int64_t>(shard_->index()), count = static_cast<std::int64_t>(shard_->count());
    for (std::int64_t local = 0; local < weight.size(0); ++local) {
      const auto global = static_cast<std::uint64_t>(local * count + index);
      Rng row = Rng::derive(shard_->seed, global * 2 + static_cast<std::uint64_t>(table));
      for (std::int64_t j = 0; j < width; ++j) out[local * width + j] = static_cast<float>(row.normal(0.0, kEmbeddingInitStd));
    }
  }

  std::int64_t categorical_fields_;
  std::int64_t multi_fields_;
  std::int64_t max_values_;
  std::int64_t dense_dim_;
  std::int64_t vocabulary_;
  std::int64_t fields_;

  torch::nn::Embedding embedding_{nullptr};
  torch::nn::Linear dense_projection_{nullptr};
  torch::nn::Embedding linear_{nullptr};
  torch::nn::Linear linear_dense_{nullptr};
  torch::Tensor bias_;
  bool sparse_gradients_ = false;
};

// 0.5 · Σ_k ((Σ_i v_ik)^2 - Σ_i v_ik^2) = Σ_{i<j} <v_i, v_j>, in O(n k) (Rendle 2010). [B, n, k] -> [B]
torch::Tensor fm_pairwise(const torch::Tensor& v) {
  const auto square_of_sum = v.sum(1).pow(2);
  const auto sum_of_squares = v.pow(2).sum(1);
  return 0.5 * (square_of_sum - sum_of_squares).sum(1);
}

// Logistic regression: the first-order part alone.
class LrModel : public FieldModel {
 public:
  LrModel(const ModelConfig& config, const FieldLayout& layout, const std::optional<TableShard>& shard)
      : FieldModel(config, layout, shard) { add_first_order(); }
  torch::Tensor forward(const FeatureBatch& batch) override { return first_order(batch); }
};

// Factorization machine: first order + every pairwise field interaction <v_i, v_j>.
class FmModel : public FieldModel {
 public:
  FmModel(const ModelConfig& config, const FieldLayout& layout, const std::optional<TableShard>& shard)
      : FieldModel(config, layout, shard) {
    add_embedding();
    add_first_order();
  }
  torch::Tensor forward(const FeatureBatch& batch) override {
    return first_order(batch) + fm_pairwise(embed(batch));
  }
};

// DeepFM (Guo et al. 2017): the FM logit plus an MLP over the same embeddings, flattened.
// Extra parameters: mlp.<i>.weight/bias, output.weight [1, last hidden] (no bias: the FM part's
// global bias is the model's one bias).
class DeepFmModel : public FieldModel {
 public:
  DeepFmModel(const ModelConfig& config, const FieldLayout& layout, const std::optional<TableShard>& shard)
      : FieldModel(config, layout, shard), mlp_(flat_size(), config.mlp) {
    add_embedding();
    add_first_order();
    register_module("mlp", mlp_.list);
    output_ = register_module("output", torch::nn::Linear(torch::nn::LinearOptions(mlp_.output_size, 1).bias(false)));
  }
  torch::Tensor forward(const FeatureBatch& batch) override {
    const auto v = embed(batch);
    const auto deep = output_->forward(mlp_.forward(v.flatten(1), config_.dropout, is_training())).squeeze(1);
    return first_order(batch) + fm_pairwise(v) + deep;
  }

 private:
  Mlp mlp_;
  torch::nn::Linear output_{nullptr};
};

// The parameters of one cross layer of DCN (Wang et al. 2017): x_{l+1} = x0 · (x_l · w) + b + x_l,
// with w and b vectors of the flattened embedding's size d: "weight" [d] and "bias" [d]. The layers
// run together as vector_cross_network (fused_layers.h).
class VectorCrossImpl : public torch::nn::Module {
 public:
  explicit VectorCrossImpl(std::int64_t size) {
    // Xavier-normal for a d × 1 kernel, zero bias, as DCN implementations commonly start.
    weight = register_parameter("weight", torch::randn({size}) * std::sqrt(2.0 / static_cast<double>(size + 1)));
    bias = register_parameter("bias", torch::zeros({size}));
  }
  torch::Tensor weight;
  torch::Tensor bias;
};

// DCN and DCN-V2 (Wang et al. 2021, full-rank "matrix" cross, parallel structure): a cross network
// and the MLP both read x0 = the flattened embeddings; output = Linear(concat(cross, deep)).
// DCN-V2's layer is x_{l+1} = x0 ⊙ (W x_l + b) + x_l with W [d, d] ("cross.<l>.weight") and
// b [d] ("cross.<l>.bias"); DCN's keeps the same names for its vectors w and b.
// Extra parameters: mlp.<i>.weight/bias, output.weight [1, d + last hidden], output.bias [1].
class DcnModel : public FieldModel {
 public:
  DcnModel(const ModelConfig& config, const FieldLayout& layout, const std::optional<TableShard>& shard)
      : FieldModel(config, layout, shard), mlp_(flat_size(), config.mlp) {
    add_embedding();
    const auto d = flat_size();
    for (int l = 0; l < config.cross_layers; ++l) {
      if (config.kind == ModelKind::dcnv2) {
        torch::nn::Linear layer(torch::nn::LinearOptions(d, d));
        torch::NoGradGuard no_grad;
        torch::nn::init::xavier_normal_(layer->weight);
        torch::nn::init::zeros_(layer->bias);
        matrix_cross_.push_back(layer);
        cross_->push_back(layer);
      } else {
        auto layer = std::make_shared<VectorCrossImpl>(d);
        vector_cross_.push_back(layer);
        cross_->push_back(layer);
      }
    }
    register_module("cross", cross_);
    register_module("mlp", mlp_.list);
    // With no hidden layers the deep part is absent, and concat(cross, deep) is the cross output.
    const auto deep_size = config.mlp.empty() ? 0 : mlp_.output_size;
    output_ = register_module("output", torch::nn::Linear(torch::nn::LinearOptions(d + deep_size, 1)));
  }

  torch::Tensor forward(const FeatureBatch& batch) override {
    const auto x0 = embed(batch).flatten(1);
    auto x = x0;
    if (!vector_cross_.empty()) {
      std::vector<torch::Tensor> weights, biases;
      for (const auto& layer : vector_cross_) {
        weights.push_back(layer->weight);
        biases.push_back(layer->bias);
      }
      x = vector_cross_network(x0, weights, biases);
    }
    for (auto& layer : matrix_cross_) x = x0 * layer->forward(x) + x;
    auto combined = x;
    if (!config_.mlp.empty()) combined = torch::cat({x, mlp_.forward(x0, config_.dropout, is_training())}, 1);
    return output_->forward(combined).squeeze(1);
  }

 private:
  Mlp mlp_;
  torch::nn::ModuleList cross_;
  std::vector<std::shared_ptr<VectorCrossImpl>> vector_cross_;
  std::vector<torch::nn::Linear> matrix_cross_;
  torch::nn::Linear output_{nullptr};
};

}  // namespace

std::string to_string(ModelKind kind) { return enum_name(kModelNames, kind); }

ModelKind model_kind_from_string(std::string_view name) { return enum_from_name(kModelNames, name, "model"); }

const OptionTable<ModelConfig>& ModelConfig::table() {
  static const OptionTable<ModelConfig> table = [] {
    using C = ModelConfig;
    OptionTable<C> t("model", /*flags_by_default=*/false);
    t.add_enum("kind", &C::kind, kModelNames, "model", "The CTR model").flag("kind");
    t.add("embedding_dim", &C::embedding_dim, "k, the size of each field's vector").at_least(1);
    t.add("mlp", &C::mlp, "Hidden sizes of the deep part of deepfm, dcn, dcnv2 (each >= 1; may be empty)");
    t.add("dropout", &C::dropout, "Dropout after each hidden layer, training only").range(0, 1).open_above();
    t.add("cross_layers", &C::cross_layers, "L, cross layers of dcn and dcnv2 (>= 1 for them)").at_least(0);
    return t;
  }();
  return table;
}

void ModelConfig::validate() const {
  table().check(*this, Spelling::key, "model config");
  for (std::size_t i = 0; i < mlp.size(); ++i) {
    USERIP_CHECK(mlp[i] >= 1, "model config: \"mlp\"[{}] must be >= 1, got {}", i, mlp[i]);
  }
  USERIP_CHECK(!uses_cross(kind) || cross_layers >= 1, "model config: \"cross_layers\" must be >= 1 for {}, got {}",
               to_string(kind), cross_layers);
}

nlohmann::json ModelConfig::to_json() const { return table().to_json(*this); }

ModelConfig ModelConfig::from_json(const nlohmann::json& json, const ModelConfig& defaults) {
  ModelConfig config = defaults;
  table().read(json, config, "model config", Absent::keep);
  config.validate();
  return config;
}

bool CtrModel::is_table(const torch::Tensor& tensor) {
  for (const auto& table : embedding_parameters())
    if (table.unsafeGetTensorImpl() == tensor.unsafeGetTensorImpl()) return true;
  return false;
}

int TableShard::index() const { return world ? world->rank() : 0; }
int TableShard::count() const { return world ? world->size() : 1; }
std::int64_t TableShard::rows_of(std::int64_t vocabulary) const {
  const std::int64_t n = count(), i = index();
  return vocabulary > i ? (vocabulary - i + n - 1) / n : 0;
}

std::shared_ptr<CtrModel> make_model(const ModelConfig& config, const FieldLayout& layout,
                                     const std::optional<TableShard>& shard) {
  config.validate();
  USERIP_CHECK(layout.num_fields() >= 1, "CTR model: the field layout has no fields (no categorical, multi-hot "
               "or dense input)");
  switch (config.kind) {
    case ModelKind::lr: return std::make_shared<LrModel>(config, layout, shard);
    case ModelKind::fm: return std::make_shared<FmModel>(config, layout, shard);
    case ModelKind::deepfm: return std::make_shared<DeepFmModel>(config, layout, shard);
    case ModelKind::dcn:
    case ModelKind::dcnv2: return std::make_shared<DcnModel>(config, layout, shard);
  }
  USERIP_ASSERT_MSG(false, "unknown ModelKind {}", static_cast<int>(config.kind));
  return nullptr;
}

}  // namespace userip::ctr
