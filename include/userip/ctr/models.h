#pragma once
// CTR models in libtorch: LR, FM, DeepFM, DCN and DCN-V2 over one shared field embedding.
// Each maps a FeatureBatch to logits [B]. Hyperparameters and their defaults are documented in
// docs/CTR.md; the defaults follow METHOD.md §2 (embedding 8, 3 cross layers, MLP 16-16,
// dropout 0.2).
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/ctr/batch.h"
#include "userip/util/option_table.h"

namespace userip::dist {
class World;
}

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

// A model whose embedding tables are row-sharded across the ranks of a run (docs/DISTRIBUTED.md,
// "Tables larger than one process"): global row g of every table lives on rank g mod count, as
// local row g div count, so the rows of a field (users, items) are spread over every rank. A
// sharded table's rows start from a generator keyed by (seed, table, row): the same values
// whatever the number of ranks. The model reads the rows a batch needs through ShardedTables
// (ctr/sharded_tables.h), which brings them from their ranks; `world` is the ranks it is shared by.
struct TableShard {
  dist::World* world = nullptr;
  std::uint64_t seed = 0;
  int index() const;  // this rank
  int count() const;  // the ranks sharing the tables
  // Rows of a table of `vocabulary` rows held here.
  std::int64_t rows_of(std::int64_t vocabulary) const;
};

class CtrModel : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const FeatureBatch& batch) = 0;  // logits [B]
  // Parameters that weight decay (L2) applies to: the embedding tables.
  virtual std::vector<torch::Tensor> embedding_parameters() = 0;
  // Whether `tensor` is one of embedding_parameters() (the same storage, not equal values).
  bool is_table(const torch::Tensor& tensor);
  // Whether the tables' gradients are sparse (only the looked-up rows, for a row-wise optimizer,
  // ctr/optimizer.h) or dense [V, k]. Off after construction. The forward values are the same.
  virtual void set_sparse_gradients(bool sparse) = 0;
  // Row-sharded tables (TableShard): null when this model holds whole tables.
  const TableShard* table_shard() const { return shard_ ? &*shard_ : nullptr; }
  // For the forwards that follow, one tensor per table (embedding_parameters() order) to read in place
  // of the tables, with the batch's indices already renumbered into them; none: the model's own
  // tables again. A sharded model's forward needs them (its own rows are only this rank's share).
  void read_tables_from(std::vector<torch::Tensor> tables) { table_override_ = std::move(tables); }

 protected:
  std::optional<TableShard> shard_;
  std::vector<torch::Tensor> table_override_;
};

// Builds the model for the layout, parameters initialised from the current torch seed. With a
// `shard`, each table holds only this rank's rows (TableShard), initialised from shard->seed.
std::shared_ptr<CtrModel> make_model(const ModelConfig& config, const FieldLayout& layout,
                                     const std::optional<TableShard>& shard = std::nullopt);

}  // namespace userip::ctr
