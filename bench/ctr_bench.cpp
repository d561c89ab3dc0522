// Micro-benchmarks of CTR training: one DCN step (forward + BCE + backward + optimizer) on a batch
// of 512, with ml-latest-small's field layout or the 20M set's, and the step's parts, to see where a
// training pass spends its time (docs/BENCHMARKS.md "CTR training throughput"). sparse = 1: lazy
// Adam on sparse embedding gradients (the default of `ctr train`); 0: dense gradients and Adam over
// every row (`--embedding-optimizer adam`).
//   build/bench/ctr_bench [--benchmark_filter=...]     USERIP_BENCH_THREADS=N (default: all cores)
#include <benchmark/benchmark.h>
#include <torch/nn/module.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "userip/ctr/features.h"
#include "userip/ctr/models.h"
#include "userip/ctr/optimizer.h"
#include "userip/util/allocator.h"
#include "userip/util/log.h"
#include "userip/tensor/threads.h"
#include "support/bench_main.h"

namespace {

using namespace userip::ctr;

constexpr std::int64_t kBatch = 512;
// As many rows as ml-latest-small's training split, so the gather reads from a table of the real size.
constexpr std::int64_t kRows = 70734;

// Shaped like ml-latest-small as `ctr train` lays it out: user_id (604 users + OOV), item_id (about
// 4,000 ids + OOV; the real run has 4,742), year (9 boundaries -> 11 buckets), genres (20 values +
// OOV, multi-hot 8 wide; the real catalogue's widest list has 10).
FieldLayout movielens_layout() {
  FieldLayout layout;
  std::int64_t offset = 0;
  for (auto [name, size] : {std::pair<const char*, std::int64_t>{"user_id", 605}, {"item_id", 4001}, {"year", 11}}) {
    layout.categorical.push_back({name, FieldKind::categorical, offset, size});
    offset += size;
  }
  layout.multi_hot.push_back({"genres", FieldKind::multi_hot, offset, 21});
  layout.max_values = 8;
  return layout;
}

// The layout `ctr train` builds for the 20-million-interaction synthetic set (docs/BENCHMARKS.md):
// 32 times the embedding rows of the MovieLens one, for the cost of the optimizer step.
FieldLayout large_layout() {
  FieldLayout layout;
  std::int64_t offset = 0;
  for (auto [name, size] : {std::pair<const char*, std::int64_t>{"user_id", 124645}, {"item_id", 26745}, {"price", 4},
                            {"year", 11}}) {
    layout.categorical.push_back({name, FieldKind::categorical, offset, size});
    offset += size;
  }
  layout.multi_hot.push_back({"categories", FieldKind::multi_hot, offset, 13});
  layout.max_values = 3;
  return layout;
}

// Encoded examples in the trainer's compact form (int32 indices), 1-3 genres each as in MovieLens.
Examples random_examples(const FieldLayout& layout, std::int64_t rows) {
  torch::manual_seed(7);
  Examples ex;
  std::vector<torch::Tensor> columns;
  for (const auto& f : layout.categorical) columns.push_back(torch::randint(f.offset, f.offset + f.size, {rows, 1}));
  ex.categorical = torch::cat(columns, 1).to(torch::kInt32);
  const auto& genres = layout.multi_hot.front();
  const auto width = layout.max_values;
  const auto count = torch::randint(1, 4, {rows, 1});
  const auto present = torch::arange(width).unsqueeze(0) < count;  // [rows, width]
  const auto values = torch::randint(genres.offset + 1, genres.offset + genres.size, {rows, width});
  ex.multi_index = torch::where(present, values, torch::full_like(values, genres.offset)).unsqueeze(1).to(torch::kInt32);
  ex.multi_weight = (present.to(torch::kFloat32) / count.to(torch::kFloat32)).unsqueeze(1);
  ex.label = torch::randint(0, 2, {rows}).to(torch::kFloat32);
  ex.user.assign(static_cast<std::size_t>(rows), 0);
  return ex;
}

// The model and optimizer as ctr::train builds them: weight decay on the embedding only.
struct Setup {
  FieldLayout layout;
  Examples examples;
  std::shared_ptr<CtrModel> model;
  std::unique_ptr<CtrOptimizer> optimizer;
  FeatureBatch batch;

  Setup(bool large, bool sparse)
      : layout(large ? large_layout() : movielens_layout()), examples(random_examples(layout, kRows)) {
    torch::manual_seed(42);
    model = make_model(ModelConfig{}, layout);  // dcn, k = 8, 3 cross layers, MLP 16-16, dropout 0.2
    model->train();
    std::vector<torch::Tensor> embedding = model->embedding_parameters(), others;
    for (const auto& p : model->parameters()) {
      if (!p.is_same(embedding.front())) others.push_back(p);
    }
    OptimizerSettings settings;
    settings.embedding = sparse ? EmbeddingOptimizer::lazy_adam : EmbeddingOptimizer::adam;
    settings.embedding_l2 = 1e-6;
    model->set_sparse_gradients(uses_sparse_gradients(settings.embedding));
    optimizer = std::make_unique<CtrOptimizer>(embedding, others, settings);
    batch = examples.batch(0, kBatch, torch::kCPU);
  }

  double step(const FeatureBatch& b) {
    optimizer->zero_grad();
    const torch::Tensor loss = torch::binary_cross_entropy_with_logits(model->forward(b), b.label);
    loss.backward();
    optimizer->step();
    return loss.item<double>();
  }
};

// gather = 1: the batch's rows are gathered from the encoded examples each step (index_select and
// widening to int64), as the training loop does; 0: one prebuilt batch, the step alone.
// aten1 = 1: ATen's pool single-threaded for the step while OpenBLAS keeps its threads
// (ScopedSingleThreadedAten, the LM loops' policy); 0: both pools at the configured count, which is
// what `ctr train` runs with. The two show how much of a step is thread hand-off, not arithmetic.
// large = 1: the 20M set's layout.
void BM_DcnTrainStep(benchmark::State& state) {
  Setup s(state.range(2) == 1, state.range(3) == 1);
  const bool gather = state.range(0) == 1;
  userip::ScopedSingleThreadedAten single_aten(state.range(1) == 1);
  const torch::Tensor order = torch::randperm(kRows, torch::kLong);
  std::int64_t at = 0;
  for (auto _ : state) {
    if (gather) {
      if (at + kBatch > kRows) at = 0;
      s.batch = s.examples.batch(order.slice(0, at, at + kBatch), torch::kCPU);
      at += kBatch;
    }
    benchmark::DoNotOptimize(s.step(s.batch));
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_DcnTrainStep)
    ->ArgNames({"gather", "aten1", "large", "sparse"})
    ->ArgsProduct({{0, 1}, {0, 1}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MinTime(2);

// The parts of a step, each alone: the gather, the forward pass, forward + backward, the Adam update.
void BM_DcnGather(benchmark::State& state) {
  Setup s(false, true);
  const torch::Tensor order = torch::randperm(kRows, torch::kLong);
  std::int64_t at = 0;
  for (auto _ : state) {
    if (at + kBatch > kRows) at = 0;
    benchmark::DoNotOptimize(s.examples.batch(order.slice(0, at, at + kBatch), torch::kCPU));
    at += kBatch;
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_DcnGather)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(1);

void BM_DcnForward(benchmark::State& state) {
  Setup s(false, true);
  for (auto _ : state) {
    torch::Tensor loss = torch::binary_cross_entropy_with_logits(s.model->forward(s.batch), s.batch.label);
    benchmark::DoNotOptimize(loss.item<double>());
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_DcnForward)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(1);

void BM_DcnForwardBackward(benchmark::State& state) {
  Setup s(state.range(0) == 1, state.range(1) == 1);
  for (auto _ : state) {
    s.optimizer->zero_grad();
    torch::Tensor loss = torch::binary_cross_entropy_with_logits(s.model->forward(s.batch), s.batch.label);
    loss.backward();
    benchmark::DoNotOptimize(loss.item<double>());
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_DcnForwardBackward)
    ->ArgNames({"large", "sparse"})
    ->ArgsProduct({{0, 1}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MinTime(1);

// The optimizer step alone. With dense gradients Adam updates all V rows of the [V, 8] embedding
// each step; lazy Adam only the batch's rows. large = 1: the 20M set's layout.
void BM_DcnAdamStep(benchmark::State& state) {
  Setup s(state.range(0) == 1, state.range(1) == 1);
  s.step(s.batch);  // gradients and Adam state exist from here on
  for (auto _ : state) s.optimizer->step();
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["embedding_rows"] = static_cast<double>(s.layout.vocabulary_size());
}
BENCHMARK(BM_DcnAdamStep)
    ->ArgNames({"large", "sparse"})
    ->ArgsProduct({{0, 1}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MinTime(1);

}  // namespace

int main(int argc, char** argv) { return userip::bench::run_benchmarks(argc, argv); }
