// Peak memory of loading a large checkpoint through the project's readers.
//
// Writes a synthetic Llama-shaped checkpoint with the project's streaming writers (one tensor in
// memory at a time), then loads every tensor in a fresh child process (so that writing does not
// count) and reports the child's peak resident set (getrusage ru_maxrss) against the size of the
// loaded weights. The target is at most 1.2x. Files are deleted afterwards unless --keep.
//
//   checkpoint_load_bench --dir /tmp/ckpt                       # 7B shape, bf16 file, bf16 load
//   checkpoint_load_bench --dir /tmp/ckpt --preset 1b --load-dtype f32 --format gguf
//
// Not a Google Benchmark: one measurement of one process, printed as a markdown table row.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "userip/tensor/gguf.h"
#include "userip/tensor/tensor_file.h"

namespace fs = std::filesystem;
using namespace userip::tensor;

namespace {

struct Shape {
  int layers, hidden, ffn, vocab, heads, kv_heads;
};

const std::map<std::string, Shape> kPresets = {
    {"7b", {32, 4096, 11008, 32000, 32, 32}},  // Llama-2-7B
    {"1b", {22, 2048, 5632, 32000, 32, 4}},    // TinyLlama-1.1B
    {"tiny", {2, 256, 688, 1000, 4, 2}},       // smoke test
};

struct Options {
  fs::path dir = "/tmp/userip-ckpt-bench";
  std::string preset = "7b";
  std::string file_dtype = "bf16";
  std::string load_dtype = "bf16";
  std::string format = "safetensors";
  std::uint64_t shard_mb = 4096;
  bool keep = false;
  bool load_only = false;  // internal: the child process
};

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "f32") return torch::kFloat32;
  if (name == "f16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  std::fprintf(stderr, "unknown dtype '%s' (f32, f16, bf16)\n", name.c_str());
  std::exit(2);
}

StoredType stored(torch::ScalarType dtype) { return *stored_type_of(dtype); }

// HF Llama tensor names and shapes, in the order a converter writes them.
std::vector<TensorSpec> llama_specs(const Shape& s, torch::ScalarType dtype) {
  const std::int64_t h = s.hidden, kv = static_cast<std::int64_t>(s.hidden) / s.heads * s.kv_heads;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", dtype, {s.vocab, h}});
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    specs.push_back({p + "self_attn.q_proj.weight", dtype, {h, h}});
    specs.push_back({p + "self_attn.k_proj.weight", dtype, {kv, h}});
    specs.push_back({p + "self_attn.v_proj.weight", dtype, {kv, h}});
    specs.push_back({p + "self_attn.o_proj.weight", dtype, {h, h}});
    specs.push_back({p + "mlp.gate_proj.weight", dtype, {s.ffn, h}});
    specs.push_back({p + "mlp.up_proj.weight", dtype, {s.ffn, h}});
    specs.push_back({p + "mlp.down_proj.weight", dtype, {h, s.ffn}});
    specs.push_back({p + "input_layernorm.weight", dtype, {h}});
    specs.push_back({p + "post_attention_layernorm.weight", dtype, {h}});
  }
  specs.push_back({"model.norm.weight", dtype, {h}});
  specs.push_back({"lm_head.weight", dtype, {s.vocab, h}});
  return specs;
}

// GGUF tensor names must fit in 63 bytes; an index-based name keeps the benchmark format-neutral.
std::string gguf_name(std::size_t index) { return "t" + std::to_string(index); }

// Every tensor is filled with one value derived from its index, so the loader can spot-check it.
float fill_value(std::size_t index) { return 0.001f * static_cast<float>(index % 997 + 1); }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0;  // Linux reports KiB
}

fs::path checkpoint_path(const Options& o) { return o.format == "gguf" ? o.dir / "model.gguf" : o.dir; }

void write_checkpoint(const Options& o, const std::vector<TensorSpec>& specs) {
  fs::create_directories(o.dir);
  std::size_t index = 0;
  auto produce = [&](const TensorSpec& spec) {
    return torch::full(spec.shape, fill_value(index++), torch::TensorOptions(spec.dtype));
  };
  if (o.format == "gguf") {
    GgufWriter writer;
    writer.set("general.architecture", GgufValue::string("llama"));
    for (std::size_t i = 0; i < specs.size(); ++i) {
      writer.add_tensor(gguf_name(i), specs[i].shape, stored(specs[i].dtype), [&, i] { return produce(specs[i]); });
    }
    writer.write(checkpoint_path(o));
  } else {
    write_safetensors_sharded(o.dir, specs, produce, o.shard_mb << 20);
  }
}

// The child: load everything, keep it alive, report.
int load_all(const Options& o, const std::vector<TensorSpec>& specs) {
  const torch::ScalarType dtype = parse_dtype(o.load_dtype);
  const double rss_before = peak_rss_bytes();
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<TensorSource> source;
  if (o.format == "gguf") {
    source = open_gguf(checkpoint_path(o));
  } else {
    source = open_safetensors(checkpoint_path(o));
  }
  std::vector<torch::Tensor> weights;
  weights.reserve(specs.size());
  double weight_bytes = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const std::string name = o.format == "gguf" ? gguf_name(i) : specs[i].name;
    torch::Tensor t = source->load(name, dtype);
    const float expected =
        torch::full({1}, fill_value(i), torch::TensorOptions(specs[i].dtype)).to(dtype).item<float>();
    if (t.sizes().vec() != specs[i].shape || t.flatten()[t.numel() - 1].item<float>() != expected) {
      std::fprintf(stderr, "tensor %s came back wrong\n", name.c_str());
      return 1;
    }
    weight_bytes += static_cast<double>(t.nbytes());
    weights.push_back(std::move(t));
  }
  const double elapsed = seconds_since(start);
  const double peak = peak_rss_bytes();
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::printf("| %s | %s | %s -> %s | %.2f GiB | %.2f GiB | %.2f GiB | %.3f | %.1f s |\n", o.preset.c_str(),
              o.format.c_str(), o.file_dtype.c_str(), o.load_dtype.c_str(), weight_bytes / gib, rss_before / gib,
              peak / gib, peak / weight_bytes, elapsed);
  return peak <= 1.2 * weight_bytes ? 0 : 3;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--dir")
      o.dir = value();
    else if (arg == "--preset")
      o.preset = value();
    else if (arg == "--file-dtype")
      o.file_dtype = value();
    else if (arg == "--load-dtype")
      o.load_dtype = value();
    else if (arg == "--format")
      o.format = value();
    else if (arg == "--shard-mb")
      o.shard_mb = std::stoull(value());
    else if (arg == "--keep")
      o.keep = true;
    else if (arg == "--load-only")
      o.load_only = true;
    else {
      std::fprintf(
          stderr,
          "usage: %s [--dir DIR] [--preset 7b|1b|tiny] [--file-dtype bf16|f16|f32] [--load-dtype bf16|f16|f32]\n"
          "          [--format safetensors|gguf] [--shard-mb N] [--keep]\n",
          argv[0]);
      std::exit(2);
    }
  }
  if (!kPresets.count(o.preset) || (o.format != "safetensors" && o.format != "gguf")) {
    std::fprintf(stderr, "unknown preset or format\n");
    std::exit(2);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  const auto specs = llama_specs(kPresets.at(o.preset), parse_dtype(o.file_dtype));
  if (o.load_only) return load_all(o, specs);

  if (fs::exists(o.dir) && !fs::is_empty(o.dir)) {
    std::fprintf(stderr, "%s exists and is not empty; refusing to write into it\n", o.dir.c_str());
    return 2;
  }
  double file_bytes = 0;
  for (const auto& s : specs) {
    double n = static_cast<double>(c10::elementSize(s.dtype));
    for (auto d : s.shape) n *= static_cast<double>(d);
    file_bytes += n;
  }
  std::fprintf(stderr, "writing %zu tensors, %.2f GiB, to %s\n", specs.size(), file_bytes / (1 << 30), o.dir.c_str());
  auto start = std::chrono::steady_clock::now();
  write_checkpoint(o, specs);
  std::fprintf(stderr, "written in %.1f s (writer peak RSS %.2f GiB); loading in a child process\n",
               seconds_since(start), peak_rss_bytes() / (1 << 30));

  std::printf(
      "| shape | format | file -> loaded dtype | weights | RSS before load | peak RSS | peak / weights | load time "
      "|\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  std::vector<std::string> args(argv, argv + argc);
  args.push_back("--load-only");
  std::vector<char*> child_argv;
  for (auto& a : args) child_argv.push_back(a.data());
  child_argv.push_back(nullptr);
  const pid_t child = fork();
  if (child == 0) {
    execv("/proc/self/exe", child_argv.data());
    std::perror("execv");
    _exit(127);
  }
  int status = 0;
  waitpid(child, &status, 0);
  if (!o.keep) fs::remove_all(o.dir);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  if (code == 3) std::fprintf(stderr, "peak RSS above 1.2x the weights\n");
  return code;
}
