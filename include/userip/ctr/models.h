#pragma once
// CTR models in libtorch: LR, FM, DeepFM, DCN and DCN-V2 over one shared field embedding.
// Each maps a FeatureBatch to logits [B]. Hyperparameters and their defaults are documented in
// docs/CTR.md; the defaults follow METHOD.md §2 (embedding 8, 3 cross layers, MLP 16-16,
// dropout 0.2).
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/ctr/batch.h"
#include "userip/util/option_table.h"

namespace userip::ctr {

enum class ModelKind { lr, fm, deepfm, dcn, dcnv2 };
std::string to_string(ModelKind kind);
ModelKind model_kind_from_string(std::string_view name);  // error lists the valid names

struct ModelConfig {
  ModelKind kind = ModelKind::dcn;
  std::int64_t embedding_dim = 8;
  std::vector<std::int64_t> mlp = {16, 16};  // hidden sizes of the deep part (DeepFM, DCN, DCN-V2)
  double dropout = 0.2;                       // after each hidden layer, training only
  int cross_layers = 3;                       // DCN, DCN-V2

  // Every option above, declared once: JSON key (the configuration's "model" section), meaning, range.
  static const OptionTable<ModelConfig>& table();
  void validate() const;  // throws userip::Error naming the bad field
  nlohmann::json to_json() const;
  // Reads the keys present over the defaults; unknown keys and wrong types are errors naming the key.
  static ModelConfig from_json(const nlohmann::json& json, const ModelConfig& defaults);
  static ModelConfig from_json(const nlohmann::json& json) { return from_json(json, ModelConfig()); }
};

class CtrModel : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const FeatureBatch& batch) = 0;  // logits [B]
  // Parameters that weight decay (L2) applies to: the embedding tables.
  virtual std::vector<torch::Tensor> embedding_parameters() = 0;
  // Whether the tables' gradients are sparse (only the looked-up rows, for a row-wise optimizer,
  // ctr/optimizer.h) or dense [V, k]. Off after construction. The forward values are the same.
  virtual void set_sparse_gradients(bool sparse) = 0;
};

// Builds the model for the layout, parameters initialised from the current torch seed.
std::shared_ptr<CtrModel> make_model(const ModelConfig& config, const FieldLayout& layout);

}  // namespace userip::ctr
