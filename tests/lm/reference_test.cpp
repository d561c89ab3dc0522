// Conformance with implementations this project did not write.
//
// 1. ../shared/reference (copied into tests/data/reference, except the 8 MB tiny-gpt2.gguf): small
//    random Llama (GQA) and GPT-2 checkpoints as Hugging Face directories and as GGUF files made by
//    llama.cpp's converter, with the logits that llama.cpp and an independent float64
//    implementation computed. Every file must reproduce the float64 logits within 1e-4 in f32.
// 2. Architectures that reference lacks (Qwen2's q/k/v biases, tied embeddings in Llama configs,
//    Llama 3 / linear / dynamic RoPE scaling, Mistral's sliding window): checkpoints written here,
//    checked against a per-token float64 implementation in this file whose RoPE frequencies are
//    numbers computed by hand from the published formulas.
// 3. Round trips through the project's own writers, and f16/bf16 against f32.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "support/temp_dir.h"
#include "userip/tensor/gguf.h"
#include "userip/lm/loader.h"
#include "userip/tensor/tensor_file.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "lm/lm_test_support.h"

namespace userip::lm {
namespace {

using namespace test_support;

namespace fs = std::filesystem;
using nlohmann::json;

fs::path shared_reference() { return fs::path(USERIP_SOURCE_DIR) / ".." / "shared" / "reference"; }

struct ReferencePrompt {
  std::vector<std::int64_t> tokens;
  std::int64_t first_position = 0;
  std::int64_t positions = 0;
  std::int64_t vocab = 0;
  std::string exact_file;
  std::string llama_cpp_file;
};

std::vector<ReferencePrompt> read_prompts(const fs::path& json_file) {
  json doc = json::parse(read_file(json_file));
  std::vector<ReferencePrompt> prompts;
  for (const auto& item : doc) {
    ReferencePrompt p;
    p.tokens = item.at("tokens").get<std::vector<std::int64_t>>();
    p.first_position = item.at("first_position").get<std::int64_t>();
    p.positions = item.at("shape").at(0).get<std::int64_t>();
    p.vocab = item.at("shape").at(1).get<std::int64_t>();
    p.exact_file = item.at("logits_exact").get<std::string>();
    p.llama_cpp_file = item.at("logits_llama_cpp").get<std::string>();
    prompts.push_back(p);
  }
  return prompts;
}

at::Tensor read_logits(const fs::path& file, std::int64_t positions, std::int64_t vocab) {
  std::string bytes = read_file(file);
  EXPECT_EQ(bytes.size(), static_cast<size_t>(positions * vocab * 4)) << file;
  return at::from_blob(bytes.data(), {positions, vocab}, at::TensorOptions().dtype(at::kFloat)).clone();
}

// Logits of `model` at the prompt's reference positions.
at::Tensor model_logits(const CausalLM& model, const ReferencePrompt& p) {
  at::NoGradGuard no_grad;
  auto ids = at::tensor(p.tokens, at::TensorOptions().dtype(at::kLong)).view({1, -1});
  return model.forward_tokens(ids)[0].narrow(0, p.first_position, p.positions).to(at::kFloat);
}


// Worst |model - reference| over every prompt of `name` (tiny-llama / tiny-gpt2).
double worst_difference(const CausalLM& model, const fs::path& logits_dir, const std::string& name, bool llama_cpp) {
  double worst = 0;
  for (const auto& p : read_prompts(logits_dir / (name + ".json"))) {
    auto expected = read_logits(logits_dir / (llama_cpp ? p.llama_cpp_file : p.exact_file), p.positions, p.vocab);
    worst = std::max(worst, max_abs_diff(model_logits(model, p), expected));
  }
  return worst;
}

constexpr double kExactTolerance = 1e-4;  // float32 forward vs float64 reference

TEST(Reference, TinyLlamaHfMatchesExactLogits) {
  CausalLM model = load_model(repo_reference() / "tiny-llama-hf");
  EXPECT_EQ(model.config().num_kv_heads, 2);
  EXPECT_LT(worst_difference(model, repo_reference() / "logits", "tiny-llama", false), kExactTolerance);
  // llama.cpp's own numbers agree to the same level for this model (reference README).
  EXPECT_LT(worst_difference(model, repo_reference() / "logits", "tiny-llama", true), kExactTolerance);
}

TEST(Reference, TinyLlamaGgufMatchesExactLogits) {
  CausalLM model = load_model(repo_reference() / "tiny-llama.gguf");
  EXPECT_EQ(model.config().model_type, "llama");
  EXPECT_EQ(model.config().bos_token_id, 1);
  EXPECT_LT(worst_difference(model, repo_reference() / "logits", "tiny-llama", false), kExactTolerance);
}

TEST(Reference, TinyLlamaGgufAndHfHaveIdenticalWeights) {
  // Proves the q/k row permutation of llama.cpp's converter is undone exactly.
  CausalLM hf = load_model(repo_reference() / "tiny-llama-hf");
  CausalLM gguf = load_model(repo_reference() / "tiny-llama.gguf");
  auto a = hf.weights().named(), b = gguf.weights().named();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
  }
  EXPECT_EQ(hf.config().to_json(), gguf.config().to_json());
}

TEST(Reference, TinyGpt2HfMatchesExactLogits) {
  CausalLM model = load_model(repo_reference() / "tiny-gpt2-hf");
  EXPECT_TRUE(model.config().tie_word_embeddings);
  EXPECT_LT(worst_difference(model, repo_reference() / "logits", "tiny-gpt2", false), kExactTolerance);
}

TEST(Reference, TinyGpt2GgufMatchesExactLogits) {
  const fs::path file = shared_reference() / "tiny-gpt2.gguf";
  if (!fs::exists(file)) GTEST_SKIP() << file << " is absent (only the shared reference folder has it)";
  CausalLM model = load_model(file);
  EXPECT_EQ(model.config().architecture, Architecture::gpt2);
  EXPECT_LT(worst_difference(model, repo_reference() / "logits", "tiny-gpt2", false), kExactTolerance);
  // llama.cpp's GELU goes through a float16 table: agreement with it is ~1e-2 (reference README).
  EXPECT_LT(worst_difference(model, shared_reference() / "logits", "tiny-gpt2", true), 1e-2);
  CausalLM hf = load_model(repo_reference() / "tiny-gpt2-hf");
  for (size_t i = 0; i < hf.weights().named().size(); ++i)
    EXPECT_TRUE(at::equal(hf.weights().named()[i].second, model.weights().named()[i].second))
        << hf.weights().named()[i].first;
}

TEST(Reference, LowPrecisionLogitsStayNearFloat32) {
  for (const char* name : {"tiny-llama", "tiny-gpt2"}) {
    CausalLM f32 = load_model(repo_reference() / (std::string(name) + "-hf"));
    auto prompts = read_prompts(repo_reference() / "logits" / (std::string(name) + ".json"));
    // bf16 keeps 8 significant bits: with these deliberately large random weights the logits move
    // by up to ~7% of their range (measured 0.8 of 10.7); f16 weights move them by < 1%.
    for (auto [dtype, tolerance] : {std::pair{at::kBFloat16, 0.1}, std::pair{at::kHalf, 0.01}}) {
      CausalLM low = load_model(repo_reference() / (std::string(name) + "-hf"), dtype);
      EXPECT_EQ(low.dtype(), dtype);
      for (const auto& p : prompts) {
        auto reference = model_logits(f32, p);
        auto approx = model_logits(low, p);
        const double spread = reference.abs().max().item<double>();
        EXPECT_LT(max_abs_diff(reference, approx), tolerance * spread)
            << name << " " << c10::toString(dtype) << " spread " << spread;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Round trips

at::Tensor logits_for(const CausalLM& model, const std::vector<std::int64_t>& tokens) {
  at::NoGradGuard no_grad;
  return model.forward_tokens(at::tensor(tokens, at::TensorOptions().dtype(at::kLong)).view({1, -1}));
}

TEST(RoundTrip, HuggingFaceSaveLoadGivesIdenticalLogits) {
  testing::TempDir dir;
  const std::vector<std::int64_t> tokens = {1, 546, 669, 281, 283, 361, 279};
  for (const char* name : {"tiny-llama-hf", "tiny-gpt2-hf"}) {
    CausalLM original = load_model(repo_reference() / name);
    const fs::path out = dir / name;
    save_model_hf(original, out, tokenizer_files_in(repo_reference() / name));
    EXPECT_TRUE(fs::exists(out / "config.json"));
    EXPECT_TRUE(fs::exists(out / "model.safetensors"));
    EXPECT_TRUE(fs::exists(out / "tokenizer_config.json"));
    CausalLM reloaded = load_model(out);
    EXPECT_EQ(reloaded.fingerprint(), original.fingerprint()) << name;
    EXPECT_TRUE(at::equal(logits_for(original, tokens), logits_for(reloaded, tokens))) << name;
    // Tensor names and layouts are Hugging Face's: the saved file matches the reference file.
    auto saved = tensor::open_safetensors(out / "model.safetensors");
    auto reference = tensor::open_safetensors(repo_reference() / name / "model.safetensors");
    for (const auto& info : reference->tensors())
      EXPECT_TRUE(at::equal(saved->load(info.name), reference->load(info.name))) << name << " " << info.name;
  }
}

TEST(RoundTrip, Bf16CheckpointStaysBf16) {
  testing::TempDir dir;
  CausalLM model = load_model(repo_reference() / "tiny-llama-hf", at::kBFloat16);
  save_model_hf(model, dir / "bf16");
  EXPECT_EQ(load_config(dir / "bf16").torch_dtype, "bfloat16");
  auto source = tensor::open_safetensors(dir / "bf16");
  EXPECT_EQ(source->find("model.embed_tokens.weight")->type, tensor::StoredType::bf16);
  CausalLM reloaded = load_model(dir / "bf16", at::kBFloat16);
  EXPECT_EQ(reloaded.fingerprint(), model.fingerprint());
}

TEST(RoundTrip, GgufSaveReproducesLlamaCppLayout) {
  testing::TempDir dir;
  const fs::path original_file = repo_reference() / "tiny-llama.gguf";
  CausalLM original = load_model(original_file);
  tensor::GgufFile original_gguf(original_file);
  save_model_gguf(original, dir / "copy.gguf", gguf_tokenizer_metadata(original_gguf));
  tensor::GgufFile copy(dir / "copy.gguf");
  EXPECT_EQ(copy.architecture(), "llama");
  EXPECT_EQ(copy.get_string_array("tokenizer.ggml.tokens"), original_gguf.get_string_array("tokenizer.ggml.tokens"));
  // Every tensor, the permuted q/k rows included, is what llama.cpp's converter wrote.
  for (const auto& info : original_gguf.tensors()) {
    ASSERT_TRUE(copy.has(info.name)) << info.name;
    EXPECT_TRUE(at::equal(copy.load(info.name), original_gguf.load(info.name))) << info.name;
  }
  for (const char* key : {"llama.embedding_length", "llama.block_count", "llama.attention.head_count_kv",
                          "llama.rope.dimension_count", "llama.context_length"})
    EXPECT_EQ(copy.get_i64(key), original_gguf.get_i64(key)) << key;
  CausalLM reloaded = load_model(dir / "copy.gguf");
  EXPECT_EQ(reloaded.fingerprint(), original.fingerprint());
  const std::vector<std::int64_t> tokens = {1, 689, 916, 356, 918};
  EXPECT_TRUE(at::equal(logits_for(original, tokens), logits_for(reloaded, tokens)));
}

TEST(RoundTrip, Gpt2ToGgufAndQ8) {
  testing::TempDir dir;
  CausalLM hf = load_model(repo_reference() / "tiny-gpt2-hf");
  save_model_gguf(hf, dir / "gpt2.gguf");
  CausalLM gguf = load_model(dir / "gpt2.gguf");
  EXPECT_EQ(gguf.fingerprint(), hf.fingerprint());
  const std::vector<std::int64_t> tokens = {464, 2836, 7342, 10977, 8362};
  auto reference = logits_for(hf, tokens);
  EXPECT_TRUE(at::equal(reference, logits_for(gguf, tokens)));

  save_model_gguf(hf, dir / "gpt2-q8.gguf", {}, /*quantize_q8_0=*/true);
  tensor::GgufFile q8(dir / "gpt2-q8.gguf");
  EXPECT_EQ(q8.find("blk.0.attn_qkv.weight")->type, tensor::StoredType::q8_0);
  EXPECT_EQ(q8.find("blk.0.attn_norm.weight")->type, tensor::StoredType::f32);
  auto quantized = logits_for(load_model(dir / "gpt2-q8.gguf"), tokens);
  EXPECT_LT(max_abs_diff(reference, quantized), 0.05 * reference.abs().max().item<double>());
}

// ---------------------------------------------------------------------------------------------
// Checkpoint errors name the file and the tensor

TEST(LoadErrors, MissingTensorAndShapeMismatch) {
  testing::TempDir dir;
  fs::create_directories(dir / "m");
  fs::copy_file(repo_reference() / "tiny-llama-hf" / "config.json", dir / "m" / "config.json");
  auto source = tensor::open_safetensors(repo_reference() / "tiny-llama-hf");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& info : source->tensors())
    if (info.name != "model.layers.1.mlp.up_proj.weight") tensors.emplace_back(info.name, source->load(info.name));
  tensor::write_safetensors(dir / "m" / "model.safetensors", tensors);
  try {
    load_model(dir / "m");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  tensors.emplace_back("model.layers.1.mlp.up_proj.weight", at::zeros({176, 63}));
  tensor::write_safetensors(dir / "m" / "model.safetensors", tensors);
  try {
    load_model(dir / "m");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("up_proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[176, 63]"), std::string::npos) << e.what();
  }
}

TEST(LoadErrors, UnknownArchitecturesAndPaths) {
  testing::TempDir dir;
  fs::create_directories(dir / "m");
  std::ofstream(dir / "m" / "config.json") << R"({"model_type": "falcon", "hidden_size": 8})";
  try {
    load_model(dir / "m");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("falcon"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_model(dir / "nothing-here"), Error);
  std::ofstream(dir / "junk.bin") << "not a model";
  EXPECT_THROW(load_model(dir / "junk.bin"), Error);

  tensor::GgufWriter writer;
  writer.set("general.architecture", tensor::GgufValue::string("mamba"));
  writer.write(dir / "mamba.gguf");
  try {
    load_model(dir / "mamba.gguf");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mamba"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Architectures without third-party reference logits: an independent float64 implementation.

// Hugging Face Llama-family forward, one token at a time, straight from the formulas (RMSNorm,
// half-rotation RoPE with the given inverse frequencies, grouped-query causal attention with an
// optional window, SwiGLU). Reads the checkpoint's own tensor names; shares no code with the model.
class NaiveLlama {
 public:
  NaiveLlama(const json& config, std::map<std::string, at::Tensor> tensors, std::vector<double> inverse_frequencies)
      : config_(config), tensors_(std::move(tensors)), inv_freq_(std::move(inverse_frequencies)) {
    for (auto& [name, t] : tensors_) t = t.to(at::kDouble).contiguous();
  }

  std::vector<std::vector<double>> logits(const std::vector<std::int64_t>& tokens, std::int64_t first_position,
                                          std::int64_t window) const {
    const int64_t d = config_["hidden_size"], heads = config_["num_attention_heads"];
    const int64_t kv_heads = config_["num_key_value_heads"], layers = config_["num_hidden_layers"];
    const int64_t hd = d / heads, n = static_cast<int64_t>(tokens.size());
    const double eps = config_["rms_norm_eps"];
    auto W = [&](const std::string& name) -> const at::Tensor& { return tensors_.at(name); };
    auto has = [&](const std::string& name) { return tensors_.count(name) > 0; };

    std::vector<std::vector<double>> x(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) x[static_cast<size_t>(t)] = row(W("model.embed_tokens.weight"), tokens[static_cast<size_t>(t)]);
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<std::vector<double>> q(static_cast<size_t>(n)), k(static_cast<size_t>(n)), v(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t) {
        auto h = rms_norm(x[static_cast<size_t>(t)], W(p + "input_layernorm.weight"), eps);
        q[static_cast<size_t>(t)] = affine(W(p + "self_attn.q_proj.weight"), h, has(p + "self_attn.q_proj.bias") ? &W(p + "self_attn.q_proj.bias") : nullptr);
        k[static_cast<size_t>(t)] = affine(W(p + "self_attn.k_proj.weight"), h, has(p + "self_attn.k_proj.bias") ? &W(p + "self_attn.k_proj.bias") : nullptr);
        v[static_cast<size_t>(t)] = affine(W(p + "self_attn.v_proj.weight"), h, has(p + "self_attn.v_proj.bias") ? &W(p + "self_attn.v_proj.bias") : nullptr);
        rotate(q[static_cast<size_t>(t)], heads, hd, first_position + t);
        rotate(k[static_cast<size_t>(t)], kv_heads, hd, first_position + t);
      }
      for (int64_t t = 0; t < n; ++t) {
        std::vector<double> attended(static_cast<size_t>(d), 0.0);
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t g = h / (heads / kv_heads);
          std::vector<double> scores;
          const int64_t first_key = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
          for (int64_t s = first_key; s <= t; ++s) {
            double dot = 0;
            for (int64_t i = 0; i < hd; ++i) dot += q[static_cast<size_t>(t)][static_cast<size_t>(h * hd + i)] * k[static_cast<size_t>(s)][static_cast<size_t>(g * hd + i)];
            scores.push_back(dot / std::sqrt(static_cast<double>(hd)));
          }
          double top = *std::max_element(scores.begin(), scores.end()), total = 0;
          for (auto& s : scores) total += (s = std::exp(s - top));
          for (int64_t s = first_key; s <= t; ++s)
            for (int64_t i = 0; i < hd; ++i)
              attended[static_cast<size_t>(h * hd + i)] += scores[static_cast<size_t>(s - first_key)] / total * v[static_cast<size_t>(s)][static_cast<size_t>(g * hd + i)];
        }
        add_to(x[static_cast<size_t>(t)], affine(W(p + "self_attn.o_proj.weight"), attended, nullptr));
      }
      for (int64_t t = 0; t < n; ++t) {
        auto h = rms_norm(x[static_cast<size_t>(t)], W(p + "post_attention_layernorm.weight"), eps);
        auto gate = affine(W(p + "mlp.gate_proj.weight"), h, nullptr);
        auto up = affine(W(p + "mlp.up_proj.weight"), h, nullptr);
        for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
        add_to(x[static_cast<size_t>(t)], affine(W(p + "mlp.down_proj.weight"), gate, nullptr));
      }
    }
    const at::Tensor& head = has("lm_head.weight") ? W("lm_head.weight") : W("model.embed_tokens.weight");
    std::vector<std::vector<double>> out;
    for (int64_t t = 0; t < n; ++t) out.push_back(affine(head, rms_norm(x[static_cast<size_t>(t)], W("model.norm.weight"), eps), nullptr));
    return out;
  }

 private:
  static std::vector<double> row(const at::Tensor& m, int64_t r) {
    auto a = m.accessor<double, 2>();
    std::vector<double> out(static_cast<size_t>(m.size(1)));
    for (int64_t i = 0; i < m.size(1); ++i) out[static_cast<size_t>(i)] = a[r][i];
    return out;
  }
  static std::vector<double> affine(const at::Tensor& m, const std::vector<double>& x, const at::Tensor* bias) {
    auto a = m.accessor<double, 2>();
    std::vector<double> out(static_cast<size_t>(m.size(0)));
    for (int64_t o = 0; o < m.size(0); ++o) {
      double acc = bias ? bias->accessor<double, 1>()[o] : 0.0;
      for (int64_t i = 0; i < m.size(1); ++i) acc += a[o][i] * x[static_cast<size_t>(i)];
      out[static_cast<size_t>(o)] = acc;
    }
    return out;
  }
  static std::vector<double> rms_norm(const std::vector<double>& x, const at::Tensor& w, double eps) {
    double mean_square = 0;
    for (double v : x) mean_square += v * v / static_cast<double>(x.size());
    auto a = w.accessor<double, 1>();
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] / std::sqrt(mean_square + eps) * a[static_cast<int64_t>(i)];
    return out;
  }
  static void add_to(std::vector<double>& x, const std::vector<double>& y) {
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  }
  // Hugging Face's rotate_half: dimension i pairs with i + hd/2 and turns by position * inv_freq[i].
  void rotate(std::vector<double>& x, int64_t heads, int64_t hd, int64_t position) const {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < hd / 2; ++i) {
        const double angle = static_cast<double>(position) * inv_freq_[static_cast<size_t>(i)];
        double& a = x[static_cast<size_t>(h * hd + i)];
        double& b = x[static_cast<size_t>(h * hd + i + hd / 2)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(angle) - b0 * std::sin(angle);
        b = b0 * std::cos(angle) + a0 * std::sin(angle);
      }
    }
  }

  json config_;
  std::map<std::string, at::Tensor> tensors_;
  std::vector<double> inv_freq_;
};

// Random Llama-family tensors with Hugging Face names for `config` (hidden 32, head_dim 8).
std::map<std::string, at::Tensor> random_hf_llama(const json& config, bool qkv_bias, std::uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto draw = [&](std::vector<int64_t> shape, double scale, double mean = 0.0) {
    return at::randn(shape, gen, f32) * scale + mean;
  };
  const int64_t d = config["hidden_size"], f = config["intermediate_size"], v = config["vocab_size"];
  const int64_t hd = d / config["num_attention_heads"].get<int64_t>();
  const int64_t kvd = hd * config["num_key_value_heads"].get<int64_t>();
  std::map<std::string, at::Tensor> t;
  t["model.embed_tokens.weight"] = draw({v, d}, 1.0);
  for (int64_t l = 0; l < config["num_hidden_layers"].get<int64_t>(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t[p + "input_layernorm.weight"] = draw({d}, 0.1, 1.0);
    t[p + "self_attn.q_proj.weight"] = draw({d, d}, 0.4);
    t[p + "self_attn.k_proj.weight"] = draw({kvd, d}, 0.4);
    t[p + "self_attn.v_proj.weight"] = draw({kvd, d}, 0.3);
    if (qkv_bias) {
      t[p + "self_attn.q_proj.bias"] = draw({d}, 0.5);
      t[p + "self_attn.k_proj.bias"] = draw({kvd}, 0.5);
      t[p + "self_attn.v_proj.bias"] = draw({kvd}, 0.5);
    }
    t[p + "self_attn.o_proj.weight"] = draw({d, d}, 0.3);
    t[p + "post_attention_layernorm.weight"] = draw({d}, 0.1, 1.0);
    t[p + "mlp.gate_proj.weight"] = draw({f, d}, 0.3);
    t[p + "mlp.up_proj.weight"] = draw({f, d}, 0.3);
    t[p + "mlp.down_proj.weight"] = draw({d, f}, 0.3);
  }
  t["model.norm.weight"] = draw({d}, 0.1, 1.0);
  if (!config.value("tie_word_embeddings", false)) t["lm_head.weight"] = draw({v, d}, 0.3);
  return t;
}

struct NaiveCase {
  std::string name;
  json config_changes;
  bool qkv_bias;
  std::vector<double> inverse_frequencies;  // computed by hand from the published formulas
  std::int64_t tokens;
  std::int64_t first_position;  // positions start here (large values make scaling matter)
  std::int64_t window;          // sliding window, 0 = none
};

// head_dim 8, rope_theta 10000 unless changed: plain frequencies 1, 0.1, 0.01, 0.001.
const std::vector<NaiveCase>& naive_cases() {
  static const std::vector<NaiveCase> cases = {
      // Qwen2: q/k/v biases (no output bias), GQA, tied embeddings, theta 1e6: 1e6^(-2i/8).
      {"qwen2_bias_tied",
       {{"model_type", "qwen2"}, {"tie_word_embeddings", true}, {"rope_theta", 1000000.0}},
       true,
       {1.0, 0.03162277660168379, 0.001, 3.1622776601683795e-05},
       12, 0, 0},
      // Llama 3.1 scaling (factor 8, low 1, high 4, original context 1024): wavelength 2*pi/f is
      // 6.28 and 62.8 (< 1024/4: kept), 628 (between: smooth = (1024/628.3 - 1)/3 = 0.2099,
      // f = (1 - smooth) * 0.01/8 + smooth * 0.01), 6283 (> 1024: divided by 8). Tied head.
      {"llama3_scaling_tied",
       {{"tie_word_embeddings", true},
        {"rope_scaling",
         {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
          {"original_max_position_embeddings", 1024}}}},
       false,
       {1.0, 0.1, 0.003086760967011274, 0.000125},
       10, 3000, 0},
      // Linear (position interpolation), factor 4: every frequency / 4.
      {"linear_scaling",
       {{"rope_scaling", {{"type", "linear"}, {"factor", 4.0}}}},
       false,
       {0.25, 0.025, 0.0025, 0.00025},
       10, 500, 0},
      // Dynamic NTK, factor 2, max_position_embeddings 8, 12 tokens: base = 10000 * (2*12/8 - 1)^(8/6).
      {"dynamic_scaling",
       {{"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}, {"max_position_embeddings", 8}},
       false,
       {1.0, 0.07937005259840997, 0.006299605249474365, 0.0005},
       12, 0, 0},
      // Mistral: sliding window of 4 over 11 tokens.
      {"mistral_window", {{"model_type", "mistral"}, {"sliding_window", 4}}, false, {1.0, 0.1, 0.01, 0.001}, 11, 0, 4},
  };
  return cases;
}

class NaiveReference : public ::testing::TestWithParam<NaiveCase> {};

TEST_P(NaiveReference, LoadedCheckpointMatchesFloat64Loops) {
  const NaiveCase& c = GetParam();
  json config = {{"architectures", {"LlamaForCausalLM"}},
                 {"model_type", "llama"},
                 {"hidden_size", 32},
                 {"intermediate_size", 40},
                 {"num_hidden_layers", 2},
                 {"num_attention_heads", 4},
                 {"num_key_value_heads", 2},
                 {"vocab_size", 60},
                 {"max_position_embeddings", 4096},
                 {"rms_norm_eps", 1e-6},
                 {"rope_theta", 10000.0},
                 {"tie_word_embeddings", false},
                 {"bos_token_id", 1},
                 {"eos_token_id", 2}};
  config.update(c.config_changes);
  auto tensors = random_hf_llama(config, c.qkv_bias, 17);

  testing::TempDir dir;
  std::ofstream(dir / "config.json") << config.dump(2);
  tensor::write_safetensors(dir / "model.safetensors", {tensors.begin(), tensors.end()});
  CausalLM model = load_model(dir.path(), at::kDouble);
  EXPECT_EQ(model.config().tie_word_embeddings, config["tie_word_embeddings"].get<bool>());
  EXPECT_EQ(model.config().qkv_bias, c.qkv_bias);

  // The library's frequency table is the hand-computed one.
  auto library_frequencies = rope_inverse_frequencies(model.config(), c.first_position + c.tokens);
  ASSERT_EQ(library_frequencies.size(), c.inverse_frequencies.size());
  for (size_t i = 0; i < library_frequencies.size(); ++i)
    EXPECT_NEAR(library_frequencies[i], c.inverse_frequencies[i], 1e-15 + 1e-12 * c.inverse_frequencies[i]) << i;

  std::vector<std::int64_t> tokens;
  for (std::int64_t t = 0; t < c.tokens; ++t) tokens.push_back((t * 37 + 11) % 60);
  NaiveLlama naive(config, tensors, c.inverse_frequencies);
  auto expected = naive.logits(tokens, c.first_position, c.window);

  at::NoGradGuard no_grad;
  auto ids = at::tensor(tokens, at::TensorOptions().dtype(at::kLong)).view({1, -1});
  auto positions = (at::arange(c.tokens, at::TensorOptions().dtype(at::kLong)) + c.first_position).view({1, -1});
  auto logits = model.logits(model.forward_embeddings(model.embed(ids), {}, positions))[0];
  double worst = 0, spread = 0;
  for (std::int64_t t = 0; t < c.tokens; ++t) {
    for (std::int64_t v = 0; v < 60; ++v) {
      const double e = expected[static_cast<size_t>(t)][static_cast<size_t>(v)];
      worst = std::max(worst, std::abs(logits[t][v].item<double>() - e));
      spread = std::max(spread, std::abs(e));
    }
  }
  EXPECT_GT(spread, 1.0);
  EXPECT_LT(worst, 1e-9 * spread) << c.name;

  // The same checkpoint in float32 stays within float32 rounding.
  CausalLM f32 = load_model(dir.path());
  auto logits32 = f32.logits(f32.forward_embeddings(f32.embed(ids), {}, positions))[0];
  EXPECT_LT(max_abs_diff(logits32, logits), 1e-4 * std::max(1.0, spread / 10)) << c.name;

  // And the HF → GGUF → load trip keeps it (qwen2 as qwen2, the rest as llama with permuted q/k).
  if (c.config_changes.value("rope_scaling", json::object()).value("type", "") != "dynamic") {
    save_model_gguf(model, dir / "m.gguf");
    CausalLM from_gguf = load_model(dir / "m.gguf", at::kDouble);
    auto logits_gguf = from_gguf.logits(from_gguf.forward_embeddings(from_gguf.embed(ids), {}, positions))[0];
    EXPECT_LT(max_abs_diff(logits_gguf, logits), 1e-6 * spread) << c.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, NaiveReference, ::testing::ValuesIn(naive_cases()),
                         [](const ::testing::TestParamInfo<NaiveCase>& info) { return info.param.name; });

}  // namespace
}  // namespace userip::lm
