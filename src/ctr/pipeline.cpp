#include "userip/ctr/pipeline.h"

#include <torch/types.h>
#include <torch/utils.h>

#include "userip/ctr/sharded_tables.h"
#include "userip/util/error.h"
#include "userip/util/log.h"

namespace userip::ctr {

SplitExamples encode_splits(const FeatureEncoder& encoder, const data::Dataset& dataset, const ProfileTables& tables) {
  using data::SplitPart;
  SplitExamples s;
  auto encode = [&](SplitPart part, EncodeCounts& counts) {
    return encoder.encode(dataset, dataset.view({part}), tables.code_table(), tables.vector_table(), &counts);
  };
  s.train = encode(SplitPart::train, s.train_counts);
  s.valid = encode(SplitPart::valid, s.valid_counts);
  s.test = encode(SplitPart::test, s.test_counts);
  s.cold_test = encode(SplitPart::cold_test, s.cold_test_counts);
  return s;
}

TrainedModel train_on_dataset(const data::Dataset& dataset, const CtrSettings& settings, const ProfileTables& tables,
                              const TrainOptions& options) {
  USERIP_CHECK(dataset.has_split(), "the dataset has no split (import it with a split, see `userip data split`)");
  TrainedModel t{FeatureEncoder::fit(dataset, dataset.training_view(), settings.features, tables.code_table(),
                                     tables.vector_table()),
                 nullptr, {}, {}, {}, {}, {}, {}};
  t.examples = encode_splits(t.encoder, dataset, tables);
  if (settings.features.profile != ProfileInput::none && t.examples.train_counts.missing_profiles > 0) {
    spdlog::warn("{} of {} training examples have no profile (users absent from {})",
                 t.examples.train_counts.missing_profiles, t.examples.train.size(),
                 tables.codes ? tables.codes->source : tables.vectors->source);
  }
  torch::manual_seed(settings.train.seed);
  std::optional<TableShard> shard;
  if (settings.train.shard_tables) shard = TableShard{options.world, settings.train.seed};
  t.model = make_model(settings.model, t.encoder.layout(), shard);
  t.result = train(*t.model, t.examples.train, t.examples.valid, settings.train, options);
  t.test_scores = predict(*t.model, t.examples.test, options.device);
  t.test = evaluate(t.test_scores, t.examples.test);
  t.cold_test_scores = predict(*t.model, t.examples.cold_test, options.device);
  t.cold_test = evaluate(t.cold_test_scores, t.examples.cold_test);
  if (shard) t.model = assemble_on_root(*t.model, settings.model, t.encoder.layout());
  return t;
}

}  // namespace userip::ctr
