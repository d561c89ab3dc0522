// Micro-benchmarks of the server's request path without HTTP: parsing a /v1/score body, encoding
// the (user, candidate) pairs (with the feature-bank lookup), the model's forward pass, and the
// whole handler, for the DCN with profile codes and the same DCN without them (docs/BENCHMARKS.md
// "Serving"). The models are trained by scripts/bench/serve_latency.sh (from MovieLens, so they
// live outside the repository):
//   USERIP_SERVE_BENCH_DIR=/tmp/userip-serve-bench [USERIP_SERVE_BENCH_RUN_DIR=runs/main] build/bench/serve_bench
// USERIP_SERVE_BENCH_RUN_DIR is the main-job run directory whose feature banks the codes model reads
// (default: runs/movielens in the source tree).
// Single-threaded, as each request runs in the server.
#include <benchmark/benchmark.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "userip/serve/requests.h"
#include "userip/serve/service.h"
#include "userip/util/log.h"
#include "userip/tensor/threads.h"

namespace {

using namespace userip;

std::filesystem::path bench_dir() {
  const char* dir = std::getenv("USERIP_SERVE_BENCH_DIR");
  return dir ? dir : "/tmp/userip-serve-bench";
}

std::vector<std::string> lines(const std::filesystem::path& file) {
  std::vector<std::string> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

struct Fixture {
  std::shared_ptr<const serve::ServingState> codes, base;
  std::vector<std::string> users, items;
  static Fixture& get() {
    static Fixture f = [] {
      configure_threads(1);
      Fixture x;
      const auto dir = bench_dir();
      const char* run_dir = std::getenv("USERIP_SERVE_BENCH_RUN_DIR");
      const auto run = std::filesystem::path(run_dir ? run_dir : USERIP_BENCH_RUN_DIR);
      serve::StateSource s;
      s.model = dir / "codes";
      s.banks = {run / "bank.sqlite", run / "bank-cold.sqlite"};
      x.codes = serve::load_state(s, 1);
      s.model = dir / "base";
      s.banks.clear();
      x.base = serve::load_state(s, 1);
      x.users = lines(dir / "users.txt");
      x.items = lines(dir / "items.txt");
      return x;
    }();
    return f;
  }
  std::string body(std::size_t candidates, std::size_t seed) const {
    std::mt19937_64 rng(seed);
    nlohmann::json items_json = nlohmann::json::array();
    for (std::size_t i = 0; i < candidates; ++i) items_json.push_back(items[rng() % items.size()]);
    return nlohmann::json{{"user", users[rng() % users.size()]}, {"items", items_json}}.dump();
  }
};

void BM_ParseScoreRequest(benchmark::State& state) {
  const auto body = Fixture::get().body(static_cast<std::size_t>(state.range(0)), 1);
  serve::RequestLimits limits;
  for (auto _ : state) benchmark::DoNotOptimize(serve::parse_score_request(body, limits));
}
BENCHMARK(BM_ParseScoreRequest)->ArgName("candidates")->Arg(1)->Arg(100)->Unit(benchmark::kMicrosecond);

// The feature-bank lookup alone: one user's codes by original id.
void BM_BankLookup(benchmark::State& state) {
  const auto& f = Fixture::get();
  const auto& table = *f.codes->codes;
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(table.codes.find(f.users[i++ % f.users.size()]));
  }
}
BENCHMARK(BM_BankLookup)->Unit(benchmark::kNanosecond);

void encode(benchmark::State& state, bool with_codes) {
  const auto& f = Fixture::get();
  const auto& s = with_codes ? *f.codes : *f.base;
  auto request = serve::parse_score_request(f.body(static_cast<std::size_t>(state.range(0)), 2), serve::RequestLimits{});
  const std::vector<std::string> users(request.items.size(), request.user);
  const auto* table = s.codes ? &*s.codes : nullptr;
  for (auto _ : state) benchmark::DoNotOptimize(s.model.encoder.encode_pairs(users, request.items, table, nullptr));
}
void BM_EncodeBase(benchmark::State& state) { encode(state, false); }
void BM_EncodeCodes(benchmark::State& state) { encode(state, true); }
BENCHMARK(BM_EncodeBase)->ArgName("candidates")->Arg(1)->Arg(100)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EncodeCodes)->ArgName("candidates")->Arg(1)->Arg(100)->Unit(benchmark::kMicrosecond);

void forward(benchmark::State& state, bool with_codes) {
  const auto& f = Fixture::get();
  const auto& s = with_codes ? *f.codes : *f.base;
  auto request = serve::parse_score_request(f.body(static_cast<std::size_t>(state.range(0)), 3), serve::RequestLimits{});
  const std::vector<std::string> users(request.items.size(), request.user);
  auto examples = s.model.encoder.encode_pairs(users, request.items, s.codes ? &*s.codes : nullptr, nullptr);
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    auto batch = examples.batch(0, examples.size(), torch::kCPU);
    benchmark::DoNotOptimize(torch::sigmoid(s.model.model->forward(batch)));
  }
}
// The same forward under c10::InferenceMode instead of NoGradGuard.
void BM_ForwardCodesInferenceMode(benchmark::State& state) {
  const auto& f = Fixture::get();
  const auto& s = *f.codes;
  auto request = serve::parse_score_request(f.body(static_cast<std::size_t>(state.range(0)), 3), serve::RequestLimits{});
  const std::vector<std::string> users(request.items.size(), request.user);
  auto examples = s.model.encoder.encode_pairs(users, request.items, &*s.codes, nullptr);
  c10::InferenceMode inference;
  for (auto _ : state) {
    auto batch = examples.batch(0, examples.size(), torch::kCPU);
    benchmark::DoNotOptimize(torch::sigmoid(s.model.model->forward(batch)));
  }
}
BENCHMARK(BM_ForwardCodesInferenceMode)->ArgName("candidates")->Arg(1)->Arg(100)->Unit(benchmark::kMicrosecond);
void BM_ForwardBase(benchmark::State& state) { forward(state, false); }
void BM_ForwardCodes(benchmark::State& state) { forward(state, true); }
BENCHMARK(BM_ForwardBase)->ArgName("candidates")->Arg(1)->Arg(100)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ForwardCodes)->ArgName("candidates")->Arg(1)->Arg(100)->Unit(benchmark::kMicrosecond);

// What a /v1/score handler does between reading the body and writing the response.
void handler(benchmark::State& state, bool with_codes) {
  const auto& f = Fixture::get();
  const auto& s = with_codes ? *f.codes : *f.base;
  std::vector<std::string> bodies;
  for (std::size_t b = 0; b < 64; ++b) bodies.push_back(f.body(static_cast<std::size_t>(state.range(0)), 100 + b));
  serve::RequestLimits limits;
  std::size_t i = 0;
  for (auto _ : state) {
    auto request = serve::parse_score_request(bodies[i++ % bodies.size()], limits);
    serve::ScoringCounts counts;
    auto result = serve::score(s, request, &counts);
    benchmark::DoNotOptimize(nlohmann::json{{"user", request.user}, {"scores", result.scores}}.dump());
  }
}
void BM_HandlerBase(benchmark::State& state) { handler(state, false); }
void BM_HandlerCodes(benchmark::State& state) { handler(state, true); }
BENCHMARK(BM_HandlerBase)->ArgName("candidates")->Arg(1)->Arg(100)->Unit(benchmark::kMicrosecond)->MinTime(2);
BENCHMARK(BM_HandlerCodes)->ArgName("candidates")->Arg(1)->Arg(100)->Unit(benchmark::kMicrosecond)->MinTime(2);

}  // namespace

BENCHMARK_MAIN();
