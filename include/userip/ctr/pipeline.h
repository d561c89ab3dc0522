#pragma once
// One CTR model trained on a dataset's split: features fitted on the training part, early
// stopping on the validation part, scores and metrics on the test part (warm users) and the
// cold_test part (held-out users, whose profiles come from fold-in). `ctr train` and every run of
// `userip experiment` go through here.
#include <memory>
#include <optional>
#include <vector>

#include "userip/ctr/features.h"
#include "userip/ctr/settings.h"
#include "userip/ctr/train.h"
#include "userip/data/dataset.h"

namespace userip::ctr {

struct ProfileTables {
  std::optional<UserCodeTable> codes;
  std::optional<UserVectorTable> vectors;
  const UserCodeTable* code_table() const { return codes ? &*codes : nullptr; }
  const UserVectorTable* vector_table() const { return vectors ? &*vectors : nullptr; }
};

struct SplitExamples {
  Examples train, valid, test, cold_test;
  EncodeCounts train_counts, valid_counts, test_counts, cold_test_counts;
};
SplitExamples encode_splits(const FeatureEncoder& encoder, const data::Dataset& dataset, const ProfileTables& tables);

struct TrainedModel {
  FeatureEncoder encoder;
  std::shared_ptr<CtrModel> model;
  TrainResult result;
  SplitExamples examples;
  std::vector<float> test_scores, cold_test_scores;
  Evaluation test, cold_test;
};

// Seeds torch with settings.train.seed before building the model, so a run is reproducible on the CPU.
// With settings.train.shard_tables the tables are row-sharded over options.world, and on return
// `model` is the whole model on rank 0, on the CPU, and null on the other ranks.
TrainedModel train_on_dataset(const data::Dataset& dataset, const CtrSettings& settings, const ProfileTables& tables,
                              const TrainOptions& options);

}  // namespace userip::ctr
