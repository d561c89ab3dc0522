#pragma once
// Training a CTR model (early stopping on validation AUC, best checkpoint restored, learning-rate
// decay on plateau), scoring, evaluation, and the saved model directory that `ctr predict` and the
// server load.
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/dist/world.h"
#include "userip/ctr/features.h"
#include "userip/ctr/models.h"
#include "userip/ctr/optimizer.h"
#include "userip/util/option_table.h"

namespace userip::ctr {

struct TrainConfig {
  double learning_rate = 1e-3;  // Adam of the dense layers (and of the tables, unless set below)
  double l2 = 1e-6;             // weight decay of the embedding tables only
  // How the tables are updated (ctr/optimizer.h): lazy Adam touches only the rows of the batch, so
  // a step's cost does not grow with the vocabulary.
  EmbeddingOptimizer embedding_optimizer = EmbeddingOptimizer::lazy_adam;
  std::optional<double> embedding_learning_rate;  // unset: learning_rate
  std::int64_t batch_size = 512;
  int max_epochs = 20;
  int patience = 3;              // epochs without a better validation AUC before stopping
  double plateau_decay = 0.5;    // learning rate multiplier after an epoch without improvement
  std::uint64_t seed = 42;
  // Data-parallel exactness (docs/DISTRIBUTED.md): > 0 computes each batch's gradient as this many
  // fixed slices, each with its own dropout seed, summed in slice order; the ranks of a launched run
  // share the slices out, so the model is the same at every world size (and equal to one process
  // with the same value). 0: one slice in one process, one per rank across ranks (results then
  // depend on the world size).
  int shards = 0;
  // Row-shard the embedding tables across the ranks (TableShard, ctr/sharded_tables.h): for tables
  // too large for one process. The model is the same at every world size with fixed `shards`.
  bool shard_tables = false;

  // Every option above, declared once: JSON key (the configuration's "train" section), meaning, range.
  static const OptionTable<TrainConfig>& table();
  void validate() const;
  nlohmann::json to_json() const;
  static TrainConfig from_json(const nlohmann::json& json, const TrainConfig& defaults);
  static TrainConfig from_json(const nlohmann::json& json) { return from_json(json, TrainConfig()); }
  OptimizerSettings optimizer_settings() const;
};

struct Evaluation {
  double auc = 0;
  double log_loss = 0;
  double gauc = 0;       // NaN when no user has both classes
  std::int64_t examples = 0;
  std::int64_t positives = 0;
  nlohmann::json to_json() const;
};
// Metrics of `probabilities` against the examples' labels, gAUC grouped by Examples::user.
// AUC is NaN (not an error) when the examples hold only one class.
Evaluation evaluate(const std::vector<float>& probabilities, const Examples& examples);

struct EpochLog {
  int epoch = 0;
  double train_loss = 0;
  double learning_rate = 0;
  Evaluation valid;
  double seconds = 0;
  double samples_per_second = 0;
  nlohmann::json to_json() const;
};

struct TrainResult {
  int best_epoch = 0;
  Evaluation best_valid;
  std::vector<EpochLog> epochs;
  double seconds = 0;
  double samples_per_second = 0;  // training examples per second of the training passes
  nlohmann::json to_json() const;
};

struct TrainOptions {
  torch::Device device = torch::kCPU;
  bool show_progress = true;
  // The ranks that train this model together (data-parallel); null: this process alone.
  dist::World* world = nullptr;
};

// Trains `model` in place; on return it holds the parameters of the best validation epoch.
TrainResult train(CtrModel& model, const Examples& train, const Examples& valid, const TrainConfig& config,
                  const TrainOptions& options = {});

// Click probabilities, in example order, with the model in evaluation mode.
std::vector<float> predict(CtrModel& model, const Examples& examples, torch::Device device = torch::kCPU,
                           std::int64_t batch_size = 4096);

// A trained model on disk: ctr_model.json (configs, seed, layout, result, fingerprints),
// features.json (the encoder), weights.safetensors.
struct SavedModel {
  ModelConfig model_config;
  TrainConfig train_config;
  FeatureEncoder encoder;
  std::shared_ptr<CtrModel> model;
  nlohmann::json record;  // ctr_model.json
};
void save_model(const std::filesystem::path& dir, CtrModel& model, const ModelConfig& model_config,
                const TrainConfig& train_config, const FeatureEncoder& encoder, const nlohmann::json& extra);
// Errors name the file: missing files, a features.json that does not belong to these weights, a
// tensor missing or of the wrong shape.
SavedModel load_model(const std::filesystem::path& dir, torch::Device device = torch::kCPU);

}  // namespace userip::ctr
