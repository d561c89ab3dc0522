// Micro-benchmarks of the data layer: loading a dataset and parsing CSV.
//   build/bench/dataset_bench [--benchmark_filter=...]
// Load of a real dataset: USERIP_BENCH_DATASET=runs/movielens/dataset build/bench/dataset_bench
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "userip/data/dataset.h"
#include "userip/data/import.h"
#include "userip/data/records.h"
#include "userip/data/split.h"
#include "userip/data/synth.h"
#include "userip/util/log.h"

namespace {

namespace fs = std::filesystem;

// A synthetic dataset of ml-latest-small's size (≈100k interactions), made once per process.
const fs::path& synthetic_dataset() {
  static fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / "userip-bench-dataset";
    userip::data::SynthOptions o;
    o.users = 700;
    o.items = 9000;
    o.mean_interactions = 125;
    o.show_progress = false;
    auto world = userip::data::generate_synthetic(o);
    world.dataset.split = userip::data::make_split(world.dataset, {});
    world.dataset.save(d);
    return d;
  }();
  return dir;
}

void BM_DatasetLoad(benchmark::State& state) {
  const char* env = std::getenv("USERIP_BENCH_DATASET");
  fs::path dir = env ? fs::path(env) : synthetic_dataset();
  std::size_t rows = 0;
  for (auto _ : state) {
    auto d = userip::data::Dataset::load(dir);
    rows = d.num_interactions();
    benchmark::DoNotOptimize(d);
  }
  state.counters["interactions"] = static_cast<double>(rows);
  state.SetLabel(dir.string());
}
BENCHMARK(BM_DatasetLoad)->Unit(benchmark::kMillisecond);

void BM_TrainingView(benchmark::State& state) {
  auto d = userip::data::Dataset::load(synthetic_dataset());
  for (auto _ : state) benchmark::DoNotOptimize(d.training_view());
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(d.num_interactions()));
}
BENCHMARK(BM_TrainingView)->Unit(benchmark::kMillisecond);

void BM_CsvParse(benchmark::State& state) {
  fs::path path = fs::temp_directory_path() / "userip-bench-rows.csv";
  const int rows = 200000;
  {
    std::ofstream out(path);
    out << "user,item,rating,timestamp\n";
    for (int i = 0; i < rows; ++i) out << "u" << i % 5000 << ",i" << (i * 7919) % 20000 << ",3.5," << 1400000000 + i << "\n";
  }
  for (auto _ : state) {
    auto reader = userip::data::open_records(path);
    std::size_t n = 0;
    while (reader->next()) n += reader->field(0)->size();
    benchmark::DoNotOptimize(n);
  }
  state.SetItemsProcessed(state.iterations() * rows);
  fs::remove(path);
}
BENCHMARK(BM_CsvParse)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  userip::log_init("warn");
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
