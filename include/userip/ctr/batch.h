#pragma once
// What a CTR model reads: examples already turned into indices of one shared embedding table.
// The feature pipeline (features.h) produces it; the models (models.h) consume it. Keeping the
// tensor layout here, apart from both, lets either side change without the other.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace userip::ctr {

// How the encoded fields are laid out. Every field owns a contiguous range [offset, offset + size)
// of the shared embedding table; local index 0 of each field is its out-of-vocabulary bucket.
enum class FieldKind { categorical, multi_hot };
std::string to_string(FieldKind kind);

struct FieldInfo {
  std::string name;
  FieldKind kind = FieldKind::categorical;
  std::int64_t offset = 0;  // first global index
  std::int64_t size = 0;    // values including the OOV bucket (>= 1)
};

struct FieldLayout {
  std::vector<FieldInfo> categorical;  // one index per example each
  std::vector<FieldInfo> multi_hot;    // up to max_values indices per example each, mean-pooled
  std::int64_t max_values = 1;         // width of the multi-hot index tensor
  std::int64_t dense_dim = 0;          // width of the dense input (profile vectors); 0 = none
  std::string dense_name;              // what the dense input is, for messages and reports

  std::int64_t vocabulary_size() const;  // sum of all field sizes
  // Fields a model embeds: categorical + multi-hot + (1 if dense_dim > 0).
  std::int64_t num_fields() const;
  nlohmann::json to_json() const;
  static FieldLayout from_json(const nlohmann::json& json);  // throws userip::Error on bad input
};

// A batch of B examples. Tensors live on the model's device.
struct FeatureBatch {
  torch::Tensor categorical;   // [B, F] int64 global indices (F = layout.categorical.size(), may be 0)
  torch::Tensor multi_index;   // [B, M, max_values] int64 global indices (padding: the field's OOV index)
  torch::Tensor multi_weight;  // [B, M, max_values] float32: 1/count for present values, 0 for padding
  torch::Tensor dense;         // [B, D] float32, undefined when dense_dim == 0
  torch::Tensor label;         // [B] float32 0/1 (undefined at prediction time)
  std::int64_t size() const;
};

}  // namespace userip::ctr
