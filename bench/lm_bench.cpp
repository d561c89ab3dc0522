// Throughput of the frozen LM's forward + backward to the input embeddings (the soft-prompt
// training step), with achieved GFLOP/s against this machine's single-precision GEMM peak
// measured in the same run. Random weights; batches of varied lengths bucketed by length.
//   build/bench/lm_bench [--benchmark_filter=default|gpt2|1b|gemm|bf16]   USERIP_BENCH_THREADS=N (default: all cores)
// Each LM shape runs twice: aten1:0 with both thread pools at all cores, aten1:1 with ATen
// single-threaded beside OpenBLAS. The _bf16 rows run the same step with bfloat16 weights and
// activations (the models' --dtype bf16), beside a bfloat16 GEMM peak.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/autograd.h>

#include <cstdlib>

#include "userip/lm/batching.h"
#include "userip/lm/model.h"
#include "userip/lm/pretrain.h"
#include "userip/util/allocator.h"
#include "userip/util/log.h"
#include "userip/util/random.h"
#include "userip/tensor/threads.h"
#include "support/bench_main.h"

namespace {

using userip::lm::Architecture;
using userip::lm::ModelConfig;

ModelConfig llama_shape(std::int64_t hidden, std::int64_t layers, std::int64_t heads, std::int64_t kv_heads,
                        std::int64_t ffn, std::int64_t vocab) {
  ModelConfig c;
  c.architecture = Architecture::llama;
  c.model_type = "llama";
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.intermediate_size = ffn;
  c.vocab_size = vocab;
  c.max_position_embeddings = 2048;
  return c;
}

ModelConfig gpt2_small() {
  ModelConfig c;
  c.architecture = Architecture::gpt2;
  c.model_type = "gpt2";
  c.activation = userip::lm::Activation::gelu_tanh;
  c.hidden_size = 768;
  c.num_layers = 12;
  c.num_heads = 12;
  c.num_kv_heads = 12;
  c.head_dim = 64;
  c.intermediate_size = 3072;
  c.vocab_size = 50257;
  c.max_position_embeddings = 1024;
  c.tie_word_embeddings = true;
  c.norm_eps = 1e-5;
  return c;
}

// The default LM's shape: what `userip lm pretrain` builds with its default options.
ModelConfig default_lm() {
  userip::lm::PretrainOptions o;
  return llama_shape(o.hidden_size, o.num_layers, o.num_heads, o.num_heads, o.intermediate_size, o.vocab_size);
}
// TinyLlama-1.1B's shape.
ModelConfig llama_1b() { return llama_shape(2048, 22, 32, 4, 5632, 32000); }

// Multiply-adds × 2 of one forward pass over a batch of `rows` × `length` tokens with `targets`
// target positions going through the LM head, as the implementation computes it (full T×T
// attention scores, which the causal mask then discards).
double forward_flops(const ModelConfig& c, std::int64_t rows, std::int64_t length, std::int64_t targets) {
  double tokens = static_cast<double>(rows * length);
  double d = static_cast<double>(c.hidden_size), f = static_cast<double>(c.intermediate_size);
  double q = static_cast<double>(c.q_dim()), kv = static_cast<double>(c.kv_dim());
  double projections = 2.0 * d * (q + 2 * kv) + 2.0 * q * d;
  double mlp = c.architecture == Architecture::llama ? 2.0 * d * 2 * f + 2.0 * f * d : 2.0 * d * f + 2.0 * f * d;
  double attention = 2.0 * 2.0 * static_cast<double>(length) * q;  // scores and weighted values, per token
  double head = 2.0 * d * static_cast<double>(c.vocab_size) * static_cast<double>(targets);
  return static_cast<double>(c.num_layers) * tokens * (projections + mlp + attention) + head;
}

double g_gemm_peak_gflops = 0;

// USERIP_BENCH_DEVICE=cuda runs the LM benchmarks on a GPU (scripts/gpu_check.sh); default cpu.
torch::Device bench_device() {
  const char* name = std::getenv("USERIP_BENCH_DEVICE");
  return torch::Device(name && *name ? name : "cpu");
}

void gemm_peak(benchmark::State& state, at::ScalarType dtype) {
  const std::int64_t n = state.range(0);
  const auto on = at::TensorOptions().device(bench_device()).dtype(dtype);
  auto a = at::randn({n, n}, on), b = at::randn({n, n}, on);
  for (auto _ : state) {
    auto c = at::mm(a, b);
    benchmark::DoNotOptimize(c.sum().item<float>());  // .item() waits for a GPU to finish
  }
  double flops = 2.0 * n * n * n * static_cast<double>(state.iterations());
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsRate);
}
void BM_GemmPeak(benchmark::State& state) { gemm_peak(state, at::kFloat); }
void BM_GemmPeak_bf16(benchmark::State& state) { gemm_peak(state, at::kBFloat16); }
BENCHMARK(BM_GemmPeak)->Arg(1024)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_GemmPeak_bf16)->Arg(1024)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

// state.range(0): 0 = both pools at --threads, 1 = ATen single-threaded beside OpenBLAS (the
// policy of the training loops, see ScopedSingleThreadedAten); the two rows side by side are
// that policy's evidence.
void run_forward_backward(benchmark::State& state, const ModelConfig& config, std::int64_t sequences,
                          std::int64_t max_tokens, std::int64_t min_length, std::int64_t max_length,
                          at::ScalarType dtype = at::kFloat) {
  userip::ScopedSingleThreadedAten thread_policy(state.range(0) == 1);
  torch::NoGradGuard no_grad_during_setup;
  const torch::Device device = bench_device();
  const auto on = at::TensorOptions().device(device);
  userip::lm::CausalLM model(config, userip::lm::random_weights(config, 1, dtype, device));
  // Sequence lengths like profile samples: a prompt plus a short behaviour text.
  userip::Rng rng(7);
  std::vector<std::int64_t> lengths(sequences);
  for (auto& l : lengths) l = min_length + static_cast<std::int64_t>(rng.below(max_length - min_length + 1));
  userip::lm::BatchingOptions batching;
  batching.max_tokens = max_tokens;
  auto batches = userip::lm::bucket_by_length(lengths, batching);
  std::int64_t real_tokens = 0;
  for (auto l : lengths) real_tokens += l;
  double flops_per_epoch = 0;
  for (const auto& batch : batches) {
    std::int64_t longest = 0;
    for (auto i : batch) longest = std::max(longest, lengths[i]);
    flops_per_epoch += 2.0 * forward_flops(config, static_cast<std::int64_t>(batch.size()), longest, 16 * batch.size());
  }
  for (auto _ : state) {
    for (const auto& batch : batches) {
      std::int64_t rows = static_cast<std::int64_t>(batch.size()), longest = 0;
      for (auto i : batch) longest = std::max(longest, lengths[i]);
      auto mask = at::zeros({rows, longest}, on.dtype(at::kLong));
      for (std::int64_t r = 0; r < rows; ++r) mask[r].narrow(0, 0, lengths[batch[r]]).fill_(1);
      auto ids = at::randint(config.vocab_size, {rows, longest}, on.dtype(at::kLong));
      auto targets = at::full({rows, longest}, userip::lm::kIgnoreIndex, on.dtype(at::kLong));
      // The last 16 real positions of each row are labels, as a behaviour text would be.
      for (std::int64_t r = 0; r < rows; ++r) {
        std::int64_t len = lengths[batch[r]];
        targets[r].narrow(0, len - 17, 16).copy_(ids[r].narrow(0, len - 16, 16));
      }
      torch::autograd::GradMode::set_enabled(true);
      auto embeds = model.embed(ids).detach().requires_grad_(true);
      auto nll = model.token_nll(embeds, mask, targets);
      nll.sum().backward();
      benchmark::DoNotOptimize(embeds.grad().sum().item<float>());
      torch::autograd::GradMode::set_enabled(false);
    }
  }
  double iterations = static_cast<double>(state.iterations());
  state.counters["tokens/s"] = benchmark::Counter(real_tokens * iterations, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flops_per_epoch * iterations / 1e9, benchmark::Counter::kIsRate);
  state.counters["padding%"] = 100.0 * userip::lm::padding_tokens(lengths, batches) / real_tokens;
  state.counters["params(M)"] = model.num_parameters() / 1e6;
}

void BM_ForwardBackward_default(benchmark::State& state) { run_forward_backward(state, default_lm(), 256, 4096, 40, 96); }
void BM_ForwardBackward_gpt2_small(benchmark::State& state) { run_forward_backward(state, gpt2_small(), 64, 1024, 40, 96); }
void BM_ForwardBackward_llama_1b(benchmark::State& state) { run_forward_backward(state, llama_1b(), 4, 512, 40, 96); }
void BM_ForwardBackward_default_bf16(benchmark::State& state) {
  run_forward_backward(state, default_lm(), 256, 4096, 40, 96, at::kBFloat16);
}
void BM_ForwardBackward_gpt2_small_bf16(benchmark::State& state) {
  run_forward_backward(state, gpt2_small(), 64, 1024, 40, 96, at::kBFloat16);
}
void BM_ForwardBackward_llama_1b_bf16(benchmark::State& state) {
  run_forward_backward(state, llama_1b(), 4, 512, 40, 96, at::kBFloat16);
}
BENCHMARK(BM_ForwardBackward_default)->ArgName("aten1")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5);
BENCHMARK(BM_ForwardBackward_gpt2_small)->ArgName("aten1")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5);
BENCHMARK(BM_ForwardBackward_llama_1b)->ArgName("aten1")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK(BM_ForwardBackward_default_bf16)->ArgName("aten1")->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5);
BENCHMARK(BM_ForwardBackward_gpt2_small_bf16)->ArgName("aten1")->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5);
BENCHMARK(BM_ForwardBackward_llama_1b_bf16)->ArgName("aten1")->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

}  // namespace

int main(int argc, char** argv) { return userip::bench::run_benchmarks(argc, argv); }
