// Long (about 650 lines): loading and exporting are the two directions of the same name and layout
// mapping (Hugging Face <-> GGUF, Llama <-> GPT-2 tensors), kept side by side so they stay inverse.
#include "userip/lm/loader.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <charconv>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <set>

#include "lm/model_internal.h"
#include "userip/tensor/gguf.h"
#include "userip/lm/precision.h"
#include "userip/tensor/tensor_file.h"
#include "userip/util/error.h"

namespace userip::lm {

namespace fs = std::filesystem;
using detail::shape_string;

namespace {

// Reads tensors of one checkpoint by name, checking each against the shape the config implies,
// and remembers which were used so leftovers can be reported.
class WeightReader {
 public:
  WeightReader(const tensor::TensorSource& source, torch::ScalarType dtype, torch::Device device)
      : source_(source), dtype_(dtype), device_(device) {}

  bool has(const std::string& name) const { return source_.has(name); }

  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) {
    const tensor::TensorInfo* info = source_.find(name);
    if (!info) fail("{}: missing tensor {}", source_.description(), name);
    if (info->torch_shape() != shape)
      fail("{}: tensor {} has shape {}, expected {}", source_.description(), name, shape_string(info->torch_shape()),
           shape_string(shape));
    used_.insert(name);
    return source_.load(name, dtype_, device_);
  }

  at::Tensor get_if(bool wanted, const std::string& name, const std::vector<int64_t>& shape) {
    return wanted ? get(name, shape) : at::Tensor();
  }

  void mark_used(const std::string& name) { used_.insert(name); }

  // Tensors nobody asked for are a sign of a config that does not describe the file (e.g. biases
  // the config does not mention); say so instead of silently computing something else.
  void warn_unused(const std::function<bool(const std::string&)>& expected_extra) const {
    std::vector<std::string> unused;
    for (const auto& info : source_.tensors())
      if (!used_.count(info.name) && !expected_extra(info.name)) unused.push_back(info.name);
    if (unused.empty()) return;
    std::string list;
    for (size_t i = 0; i < unused.size() && i < 8; ++i) list += (i ? ", " : "") + unused[i];
    if (unused.size() > 8) list += ", ...";
    spdlog::warn("{}: {} tensor(s) not used by the model: {}", source_.description(), unused.size(), list);
  }

 private:
  const tensor::TensorSource& source_;
  torch::ScalarType dtype_;
  torch::Device device_;
  std::set<std::string> used_;
};

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// llama.cpp applies RoPE to adjacent pairs (x0, x1), (x2, x3)... while Hugging Face rotates the
// two halves of each head, so its converter reorders every head's q/k rows from
// [h0 .. h(n/2-1) | h(n/2) .. h(n-1)] to [h0, h(n/2), h1, h(n/2+1), ...]. These undo and redo that.
at::Tensor reorder_rows(const at::Tensor& w, int64_t heads, bool to_llama_cpp) {
  const int64_t head_dim = w.size(0) / heads;
  std::vector<int64_t> split = {heads, 2, head_dim / 2};
  std::vector<int64_t> interleaved = {heads, head_dim / 2, 2};
  for (int64_t i = 1; i < w.dim(); ++i) {
    split.push_back(w.size(i));
    interleaved.push_back(w.size(i));
  }
  const auto& from = to_llama_cpp ? split : interleaved;
  return w.reshape(from).transpose(1, 2).reshape(w.sizes()).contiguous();
}

// GGUF stores floats as float32: 1e-5 arrives as 9.99999974738e-06. The shortest decimal that
// rounds to the same float gives back the number the config author wrote.
double float_as_written(float value) {
  char buffer[32];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  *result.ptr = '\0';
  return std::strtod(buffer, nullptr);
}

std::string dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat64: return "float64";
    default: return c10::toString(dtype);
  }
}

// ------------------------------------------------------------------------------------------
// Hugging Face directories

ModelWeights read_hf_llama(const ModelConfig& c, WeightReader& r) {
  const std::string p = r.has("model.embed_tokens.weight") ? "model." : "";
  const int64_t d = c.hidden_size, f = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  ModelWeights w;
  w.token_embedding = r.get(p + "embed_tokens.weight", {c.vocab_size, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string lp = p + "layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm_weight = r.get(lp + "input_layernorm.weight", {d});
    l.qkv_weight = at::cat({r.get(lp + "self_attn.q_proj.weight", {qd, d}), r.get(lp + "self_attn.k_proj.weight", {kvd, d}),
                            r.get(lp + "self_attn.v_proj.weight", {kvd, d})});
    if (c.qkv_bias)
      l.qkv_bias = at::cat({r.get(lp + "self_attn.q_proj.bias", {qd}), r.get(lp + "self_attn.k_proj.bias", {kvd}),
                            r.get(lp + "self_attn.v_proj.bias", {kvd})});
    l.out_weight = r.get(lp + "self_attn.o_proj.weight", {d, qd});
    l.out_bias = r.get_if(c.out_bias, lp + "self_attn.o_proj.bias", {d});
    l.mlp_norm_weight = r.get(lp + "post_attention_layernorm.weight", {d});
    l.up_weight = at::cat({r.get(lp + "mlp.gate_proj.weight", {f, d}), r.get(lp + "mlp.up_proj.weight", {f, d})});
    if (c.mlp_bias)
      l.up_bias = at::cat({r.get(lp + "mlp.gate_proj.bias", {f}), r.get(lp + "mlp.up_proj.bias", {f})});
    l.down_weight = r.get(lp + "mlp.down_proj.weight", {d, f});
    l.down_bias = r.get_if(c.mlp_bias, lp + "mlp.down_proj.bias", {d});
    w.layers.push_back(std::move(l));
  }
  w.final_norm_weight = r.get(p + "norm.weight", {d});
  w.lm_head = r.get_if(!c.tie_word_embeddings, "lm_head.weight", {c.vocab_size, d});
  r.warn_unused([](const std::string& name) {
    return ends_with(name, "rotary_emb.inv_freq") || name == "lm_head.weight";  // tied copies are ignored, as HF does
  });
  return w;
}

ModelWeights read_hf_gpt2(const ModelConfig& c, WeightReader& r) {
  const std::string p = r.has("transformer.wte.weight") ? "transformer." : "";
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  // HF GPT-2 uses Conv1D modules whose weights are [in, out]: transpose to torch::linear's [out, in].
  auto conv1d = [&](const std::string& name, int64_t in, int64_t out) { return r.get(name, {in, out}).t().contiguous(); };
  ModelWeights w;
  w.token_embedding = r.get(p + "wte.weight", {c.vocab_size, d});
  w.position_embedding = r.get(p + "wpe.weight", {c.max_position_embeddings, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string lp = p + "h." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm_weight = r.get(lp + "ln_1.weight", {d});
    l.attn_norm_bias = r.get(lp + "ln_1.bias", {d});
    l.qkv_weight = conv1d(lp + "attn.c_attn.weight", d, 3 * d);
    l.qkv_bias = r.get(lp + "attn.c_attn.bias", {3 * d});
    l.out_weight = conv1d(lp + "attn.c_proj.weight", d, d);
    l.out_bias = r.get(lp + "attn.c_proj.bias", {d});
    l.mlp_norm_weight = r.get(lp + "ln_2.weight", {d});
    l.mlp_norm_bias = r.get(lp + "ln_2.bias", {d});
    l.up_weight = conv1d(lp + "mlp.c_fc.weight", d, f);
    l.up_bias = r.get(lp + "mlp.c_fc.bias", {f});
    l.down_weight = conv1d(lp + "mlp.c_proj.weight", f, d);
    l.down_bias = r.get(lp + "mlp.c_proj.bias", {d});
    w.layers.push_back(std::move(l));
  }
  w.final_norm_weight = r.get(p + "ln_f.weight", {d});
  w.final_norm_bias = r.get(p + "ln_f.bias", {d});
  w.lm_head = r.get_if(!c.tie_word_embeddings, "lm_head.weight", {c.vocab_size, d});
  r.warn_unused([](const std::string& name) {
    // The causal-mask buffers old GPT-2 exports saved, and tied head copies.
    return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") || name == "lm_head.weight";
  });
  return w;
}

CausalLM load_hf(const fs::path& dir, torch::ScalarType dtype, torch::Device device) {
  ModelConfig config = load_config(dir / "config.json");
  auto source = tensor::open_safetensors(dir);
  WeightReader reader(*source, dtype, device);
  ModelWeights weights =
      config.architecture == Architecture::gpt2 ? read_hf_gpt2(config, reader) : read_hf_llama(config, reader);
  return CausalLM(std::move(config), std::move(weights), dir.string());
}

// ------------------------------------------------------------------------------------------
// GGUF

ModelWeights read_gguf_llama(const ModelConfig& c, const tensor::GgufFile& file, WeightReader& r) {
  const int64_t d = c.hidden_size, f = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  const bool permuted = file.architecture() == "llama";
  auto q_rows = [&](at::Tensor t) { return permuted ? reorder_rows(t, c.num_heads, false) : t; };
  auto k_rows = [&](at::Tensor t) { return permuted ? reorder_rows(t, c.num_kv_heads, false) : t; };
  ModelWeights w;
  w.token_embedding = r.get("token_embd.weight", {c.vocab_size, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string lp = "blk." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm_weight = r.get(lp + "attn_norm.weight", {d});
    l.qkv_weight = at::cat({q_rows(r.get(lp + "attn_q.weight", {qd, d})), k_rows(r.get(lp + "attn_k.weight", {kvd, d})),
                            r.get(lp + "attn_v.weight", {kvd, d})});
    if (c.qkv_bias)
      l.qkv_bias = at::cat({q_rows(r.get(lp + "attn_q.bias", {qd})), k_rows(r.get(lp + "attn_k.bias", {kvd})),
                            r.get(lp + "attn_v.bias", {kvd})});
    l.out_weight = r.get(lp + "attn_output.weight", {d, qd});
    l.out_bias = r.get_if(c.out_bias, lp + "attn_output.bias", {d});
    l.mlp_norm_weight = r.get(lp + "ffn_norm.weight", {d});
    l.up_weight = at::cat({r.get(lp + "ffn_gate.weight", {f, d}), r.get(lp + "ffn_up.weight", {f, d})});
    if (c.mlp_bias) l.up_bias = at::cat({r.get(lp + "ffn_gate.bias", {f}), r.get(lp + "ffn_up.bias", {f})});
    l.down_weight = r.get(lp + "ffn_down.weight", {d, f});
    l.down_bias = r.get_if(c.mlp_bias, lp + "ffn_down.bias", {d});
    w.layers.push_back(std::move(l));
  }
  w.final_norm_weight = r.get("output_norm.weight", {d});
  w.lm_head = r.get_if(!c.tie_word_embeddings, "output.weight", {c.vocab_size, d});
  if (r.has("rope_freqs.weight")) r.mark_used("rope_freqs.weight");  // read into the config
  r.warn_unused([](const std::string&) { return false; });
  return w;
}

ModelWeights read_gguf_gpt2(const ModelConfig& c, WeightReader& r) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  ModelWeights w;
  w.token_embedding = r.get("token_embd.weight", {c.vocab_size, d});
  w.position_embedding = r.get("position_embd.weight", {c.max_position_embeddings, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string lp = "blk." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm_weight = r.get(lp + "attn_norm.weight", {d});
    l.attn_norm_bias = r.get(lp + "attn_norm.bias", {d});
    l.qkv_weight = r.get(lp + "attn_qkv.weight", {3 * d, d});  // GGUF matrices are [out, in] already
    l.qkv_bias = r.get(lp + "attn_qkv.bias", {3 * d});
    l.out_weight = r.get(lp + "attn_output.weight", {d, d});
    l.out_bias = r.get(lp + "attn_output.bias", {d});
    l.mlp_norm_weight = r.get(lp + "ffn_norm.weight", {d});
    l.mlp_norm_bias = r.get(lp + "ffn_norm.bias", {d});
    l.up_weight = r.get(lp + "ffn_up.weight", {f, d});
    l.up_bias = r.get(lp + "ffn_up.bias", {f});
    l.down_weight = r.get(lp + "ffn_down.weight", {d, f});
    l.down_bias = r.get(lp + "ffn_down.bias", {d});
    w.layers.push_back(std::move(l));
  }
  w.final_norm_weight = r.get("output_norm.weight", {d});
  w.final_norm_bias = r.get("output_norm.bias", {d});
  w.lm_head = r.get_if(!c.tie_word_embeddings, "output.weight", {c.vocab_size, d});
  r.warn_unused([](const std::string&) { return false; });
  return w;
}

CausalLM load_gguf(const fs::path& path, torch::ScalarType dtype, torch::Device device) {
  auto file = tensor::open_gguf(path);
  ModelConfig config = config_from_gguf(*file);
  WeightReader reader(*file, dtype, device);
  ModelWeights weights = config.architecture == Architecture::gpt2 ? read_gguf_gpt2(config, reader)
                                                                   : read_gguf_llama(config, *file, reader);
  return CausalLM(std::move(config), std::move(weights), path.string());
}

}  // namespace

ModelConfig config_from_gguf(const tensor::GgufFile& file) {
  const std::string source = file.description();
  const std::string arch = file.architecture();
  if (arch.empty()) fail("{}: no general.architecture", source);
  if (arch != "llama" && arch != "qwen2" && arch != "gpt2")
    fail("{}: unsupported architecture '{}' (supported: llama, qwen2, gpt2)", source, arch);
  auto key = [&](const std::string& suffix) { return arch + "." + suffix; };
  auto layer0_has = [&](const std::string& tensor) { return file.has("blk.0." + tensor); };

  ModelConfig c;
  c.hidden_size = file.get_i64(key("embedding_length"));
  c.num_layers = file.get_i64(key("block_count"));
  c.intermediate_size = file.get_i64(key("feed_forward_length"));
  c.num_heads = file.get_i64(key("attention.head_count"));
  c.num_kv_heads = file.get_i64(key("attention.head_count_kv"), c.num_heads);
  c.head_dim = file.get_i64(key("attention.key_length"), c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.max_position_embeddings = file.get_i64(key("context_length"));
  if (file.has_key(key("vocab_size"))) {
    c.vocab_size = file.get_i64(key("vocab_size"));
  } else if (const tensor::TensorInfo* embedding = file.find("token_embd.weight")) {
    c.vocab_size = embedding->torch_shape().front();
  } else {
    fail("{}: missing tensor token_embd.weight", source);
  }
  c.tie_word_embeddings = !file.has("output.weight");
  if (arch == "gpt2") {
    c.architecture = Architecture::gpt2;
    c.model_type = "gpt2";
    c.norm_eps = float_as_written(file.get_f32(key("attention.layer_norm_epsilon")));
    c.activation = Activation::gelu_tanh;
    c.qkv_bias = c.out_bias = c.mlp_bias = true;
  } else {
    c.architecture = Architecture::llama;
    c.norm_eps = float_as_written(file.get_f32(key("attention.layer_norm_rms_epsilon")));
    c.rope_theta = float_as_written(file.get_f32(key("rope.freq_base"), 10000.0f));
    c.activation = Activation::silu;
    c.qkv_bias = layer0_has("attn_q.bias");
    c.out_bias = layer0_has("attn_output.bias");
    c.mlp_bias = layer0_has("ffn_up.bias");
    // Llama with q/k/v biases but no output bias is what Hugging Face calls qwen2.
    c.model_type = (arch == "qwen2" || (c.qkv_bias && !c.out_bias)) ? "qwen2" : "llama";
    c.sliding_window = file.get_i64(key("attention.sliding_window"), 0);
    // llama.cpp files Mistral under "llama"; a window is what tells them apart.
    if (c.model_type == "llama" && c.sliding_window > 0 && !c.qkv_bias && !c.out_bias && !c.mlp_bias)
      c.model_type = "mistral";
    const std::string scaling = file.get_string(key("rope.scaling.type"), "none");
    if (scaling == "linear") {
      c.rope_scaling.type = RopeScalingType::linear;
      c.rope_scaling.factor = float_as_written(file.get_f32(key("rope.scaling.factor")));
    } else if (scaling == "none" && file.has_key(key("rope.scale_linear"))) {  // older converters
      c.rope_scaling.type = RopeScalingType::linear;
      c.rope_scaling.factor = float_as_written(file.get_f32(key("rope.scale_linear")));
    } else if (scaling != "none") {
      fail("{}: unsupported rope scaling type '{}' (supported: none, linear)", source, scaling);
    }
    if (file.has("rope_freqs.weight")) {
      auto divisors = file.load("rope_freqs.weight", torch::kFloat64).contiguous();
      c.rope_scaling.frequency_divisors.assign(divisors.data_ptr<double>(), divisors.data_ptr<double>() + divisors.numel());
    }
  }
  auto token_id = [&](const char* name) {
    const std::string k = std::string("tokenizer.ggml.") + name;
    return file.has_key(k) ? static_cast<std::int32_t>(file.get_i64(k)) : -1;
  };
  c.bos_token_id = token_id("bos_token_id");
  if (token_id("eos_token_id") >= 0) c.eos_token_ids = {token_id("eos_token_id")};
  c.pad_token_id = token_id("padding_token_id");
  if (const tensor::TensorInfo* embedding = file.find("token_embd.weight")) {
    if (embedding->type != tensor::StoredType::other && embedding->type != tensor::StoredType::q8_0)
      c.torch_dtype = dtype_name(tensor::natural_dtype(embedding->type));
  }
  c.validate(source);
  return c;
}

CausalLM load_model(const fs::path& path, torch::ScalarType dtype, torch::Device device) {
  if (!at::isFloatingType(dtype)) fail("{}: models load into a floating dtype, not {}", path.string(), c10::toString(dtype));
  if (const auto caveat = low_precision_caveat(dtype, device); !caveat.empty()) {
    // Said once per process: one model or a hundred, the machine is the same.
    static std::mutex mutex;
    static std::set<std::string> said;
    std::lock_guard<std::mutex> lock(mutex);
    if (said.insert(caveat).second) spdlog::warn("{}", caveat);
  }
  if (!fs::exists(path)) fail("{}: no such file or directory", path.string());
  if (fs::is_directory(path)) {
    if (!fs::exists(path / "config.json")) fail("{}: not a model directory (no config.json)", path.string());
    return load_hf(path, dtype, device);
  }
  if (tensor::is_gguf_file(path)) return load_gguf(path, dtype, device);
  if (path.filename() == "config.json" || path.extension() == ".safetensors" || path.filename() == "model.safetensors.index.json")
    return load_hf(path.parent_path().empty() ? fs::path(".") : path.parent_path(), dtype, device);
  fail("{}: neither a Hugging Face model directory nor a GGUF file", path.string());
}

// ------------------------------------------------------------------------------------------
// Saving

namespace {

// One tensor of a checkpoint being written, built only when the writer asks for it.
struct PlannedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::function<at::Tensor()> produce;
};

std::vector<PlannedTensor> plan_hf(const CausalLM& model) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  std::vector<PlannedTensor> plan;
  auto add = [&](std::string name, at::Tensor t) {
    auto shape = t.sizes().vec();
    plan.push_back({std::move(name), shape, [t] { return t; }});
  };
  auto add_transposed = [&](std::string name, at::Tensor t) {
    plan.push_back({std::move(name), {t.size(1), t.size(0)}, [t] { return t.t().contiguous(); }});
  };
  if (c.architecture == Architecture::gpt2) {
    add("transformer.wte.weight", w.token_embedding);
    add("transformer.wpe.weight", w.position_embedding);
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const auto& l = w.layers[static_cast<size_t>(i)];
      const std::string lp = "transformer.h." + std::to_string(i) + ".";
      add(lp + "ln_1.weight", l.attn_norm_weight);
      add(lp + "ln_1.bias", l.attn_norm_bias);
      add_transposed(lp + "attn.c_attn.weight", l.qkv_weight);
      add(lp + "attn.c_attn.bias", l.qkv_bias);
      add_transposed(lp + "attn.c_proj.weight", l.out_weight);
      add(lp + "attn.c_proj.bias", l.out_bias);
      add(lp + "ln_2.weight", l.mlp_norm_weight);
      add(lp + "ln_2.bias", l.mlp_norm_bias);
      add_transposed(lp + "mlp.c_fc.weight", l.up_weight);
      add(lp + "mlp.c_fc.bias", l.up_bias);
      add_transposed(lp + "mlp.c_proj.weight", l.down_weight);
      add(lp + "mlp.c_proj.bias", l.down_bias);
    }
    add("transformer.ln_f.weight", w.final_norm_weight);
    add("transformer.ln_f.bias", w.final_norm_bias);
  } else {
    const int64_t qd = c.q_dim(), kvd = c.kv_dim(), f = c.intermediate_size;
    add("model.embed_tokens.weight", w.token_embedding);
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const auto& l = w.layers[static_cast<size_t>(i)];
      const std::string lp = "model.layers." + std::to_string(i) + ".";
      add(lp + "input_layernorm.weight", l.attn_norm_weight);
      add(lp + "self_attn.q_proj.weight", l.qkv_weight.narrow(0, 0, qd));
      add(lp + "self_attn.k_proj.weight", l.qkv_weight.narrow(0, qd, kvd));
      add(lp + "self_attn.v_proj.weight", l.qkv_weight.narrow(0, qd + kvd, kvd));
      if (l.qkv_bias.defined()) {
        add(lp + "self_attn.q_proj.bias", l.qkv_bias.narrow(0, 0, qd));
        add(lp + "self_attn.k_proj.bias", l.qkv_bias.narrow(0, qd, kvd));
        add(lp + "self_attn.v_proj.bias", l.qkv_bias.narrow(0, qd + kvd, kvd));
      }
      add(lp + "self_attn.o_proj.weight", l.out_weight);
      if (l.out_bias.defined()) add(lp + "self_attn.o_proj.bias", l.out_bias);
      add(lp + "post_attention_layernorm.weight", l.mlp_norm_weight);
      add(lp + "mlp.gate_proj.weight", l.up_weight.narrow(0, 0, f));
      add(lp + "mlp.up_proj.weight", l.up_weight.narrow(0, f, f));
      if (l.up_bias.defined()) {
        add(lp + "mlp.gate_proj.bias", l.up_bias.narrow(0, 0, f));
        add(lp + "mlp.up_proj.bias", l.up_bias.narrow(0, f, f));
      }
      add(lp + "mlp.down_proj.weight", l.down_weight);
      if (l.down_bias.defined()) add(lp + "mlp.down_proj.bias", l.down_bias);
    }
    add("model.norm.weight", w.final_norm_weight);
  }
  if (w.lm_head.defined()) add("lm_head.weight", w.lm_head);
  return plan;
}

}  // namespace

std::vector<fs::path> tokenizer_files_in(const fs::path& dir) {
  static const char* kNames[] = {"tokenizer.json",          "tokenizer.model", "tokenizer_config.json",
                                 "special_tokens_map.json", "vocab.json",      "merges.txt",
                                 "added_tokens.json",       "generation_config.json"};
  std::vector<fs::path> files;
  for (const char* name : kNames)
    if (fs::is_regular_file(dir / name)) files.push_back(dir / name);
  return files;
}

void save_model_hf(const CausalLM& model, const fs::path& dir, const std::vector<fs::path>& tokenizer_files,
                   std::uint64_t max_shard_bytes) {
  fs::create_directories(dir);
  ModelConfig config = model.config();
  config.torch_dtype = dtype_name(model.dtype());
  std::vector<PlannedTensor> plan = plan_hf(model);
  std::vector<tensor::TensorSpec> specs;
  std::map<std::string, const PlannedTensor*> by_name;
  for (const auto& t : plan) {
    specs.push_back({t.name, model.dtype(), t.shape});
    by_name[t.name] = &t;
  }
  // The checkpoint goes first: a directory with a config but no weights never looks complete.
  tensor::write_safetensors_sharded(
      dir, specs, [&](const tensor::TensorSpec& spec) { return by_name.at(spec.name)->produce(); }, max_shard_bytes);
  save_config(config, dir / "config.json");
  for (const auto& file : tokenizer_files) {
    if (!fs::is_regular_file(file)) fail("{}: tokenizer file not found", file.string());
    const fs::path target = dir / file.filename();
    std::error_code ec;
    if (fs::exists(target) && fs::equivalent(file, target, ec)) continue;  // saving over the source
    fs::copy_file(file, target, fs::copy_options::overwrite_existing);
  }
}

std::vector<std::pair<std::string, tensor::GgufValue>> gguf_tokenizer_metadata(const tensor::GgufFile& file) {
  std::vector<std::pair<std::string, tensor::GgufValue>> out;
  for (const auto& key : file.keys())
    if (key.rfind("tokenizer.", 0) == 0) out.emplace_back(key, file.value(key));
  return out;
}

void save_model_gguf(const CausalLM& model, const fs::path& file,
                     const std::vector<std::pair<std::string, tensor::GgufValue>>& extra_metadata, bool quantize_q8_0) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const bool gpt2 = c.architecture == Architecture::gpt2;
  const std::string arch = gpt2 ? "gpt2" : (c.model_type == "qwen2" ? "qwen2" : "llama");
  if (c.rope_scaling.type == RopeScalingType::dynamic)
    fail("{}: dynamic NTK RoPE scaling has no GGUF form", file.string());

  tensor::StoredType matrix_type = tensor::StoredType::f32;
  std::uint32_t file_type = 0;  // llama_ftype: ALL_F32
  if (model.dtype() == torch::kFloat16) {
    matrix_type = tensor::StoredType::f16;
    file_type = 1;  // MOSTLY_F16
  } else if (model.dtype() == torch::kBFloat16) {
    matrix_type = tensor::StoredType::bf16;
    file_type = 32;  // MOSTLY_BF16
  }
  if (quantize_q8_0) {
    matrix_type = tensor::StoredType::q8_0;
    file_type = 7;  // MOSTLY_Q8_0
  }

  tensor::GgufWriter writer;
  auto key = [&](const std::string& suffix) { return arch + "." + suffix; };
  auto u32 = [](int64_t v) { return tensor::GgufValue::u32(static_cast<std::uint32_t>(v)); };
  writer.set("general.architecture", tensor::GgufValue::string(arch));
  writer.set("general.name", tensor::GgufValue::string(fs::path(model.source()).filename().string()));
  writer.set("general.file_type", tensor::GgufValue::u32(file_type));
  writer.set("general.quantization_version", tensor::GgufValue::u32(2));
  writer.set(key("context_length"), u32(c.max_position_embeddings));
  writer.set(key("embedding_length"), u32(c.hidden_size));
  writer.set(key("block_count"), u32(c.num_layers));
  writer.set(key("feed_forward_length"), u32(c.intermediate_size));
  writer.set(key("attention.head_count"), u32(c.num_heads));
  if (gpt2) {
    writer.set(key("attention.layer_norm_epsilon"), tensor::GgufValue::f32(static_cast<float>(c.norm_eps)));
  } else {
    writer.set(key("attention.head_count_kv"), u32(c.num_kv_heads));
    writer.set(key("rope.freq_base"), tensor::GgufValue::f32(static_cast<float>(c.rope_theta)));
    writer.set(key("attention.layer_norm_rms_epsilon"), tensor::GgufValue::f32(static_cast<float>(c.norm_eps)));
    writer.set(key("rope.dimension_count"), u32(c.head_dim));
    if (c.head_dim * c.num_heads != c.hidden_size) {
      writer.set(key("attention.key_length"), u32(c.head_dim));
      writer.set(key("attention.value_length"), u32(c.head_dim));
    }
    writer.set(key("vocab_size"), u32(c.vocab_size));
    if (c.sliding_window > 0) writer.set(key("attention.sliding_window"), u32(c.sliding_window));
    if (c.rope_scaling.type == RopeScalingType::linear) {
      writer.set(key("rope.scaling.type"), tensor::GgufValue::string("linear"));
      writer.set(key("rope.scaling.factor"), tensor::GgufValue::f32(static_cast<float>(c.rope_scaling.factor)));
    }
  }
  if (c.bos_token_id >= 0) writer.set("tokenizer.ggml.bos_token_id", u32(c.bos_token_id));
  if (c.eos_token_id() >= 0) writer.set("tokenizer.ggml.eos_token_id", u32(c.eos_token_id()));
  if (c.pad_token_id >= 0) writer.set("tokenizer.ggml.padding_token_id", u32(c.pad_token_id));
  for (const auto& [k, v] : extra_metadata) writer.set(k, v);

  // Q8_0 needs rows that are whole 32-value blocks; other matrices keep the model's float type.
  auto matrix = [&](const std::string& name, std::vector<int64_t> shape, std::function<at::Tensor()> produce) {
    tensor::StoredType type = matrix_type;
    if (type == tensor::StoredType::q8_0 && shape.back() % 32 != 0) type = tensor::StoredType::f32;
    if (type == tensor::StoredType::f32 || type == tensor::StoredType::q8_0) {
      writer.add_tensor(name, shape, type, [produce] { return produce().to(at::kCPU, at::kFloat); });
    } else {
      writer.add_tensor(name, shape, type, produce);
    }
  };
  // llama.cpp reads norms and biases as F32 whatever the matrices are.
  auto vector = [&](const std::string& name, const at::Tensor& t) {
    if (t.defined()) writer.add_tensor(name, t.sizes().vec(), tensor::StoredType::f32, [t] { return t.to(at::kCPU, at::kFloat); });
  };
  auto plain = [](const at::Tensor& t) { return [t] { return t; }; };

  matrix("token_embd.weight", w.token_embedding.sizes().vec(), plain(w.token_embedding));
  if (gpt2) matrix("position_embd.weight", w.position_embedding.sizes().vec(), plain(w.position_embedding));
  const bool permute = arch == "llama";
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), f = c.intermediate_size;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const auto& l = w.layers[static_cast<size_t>(i)];
    const std::string lp = "blk." + std::to_string(i) + ".";
    vector(lp + "attn_norm.weight", l.attn_norm_weight);
    vector(lp + "attn_norm.bias", l.attn_norm_bias);
    if (gpt2) {
      matrix(lp + "attn_qkv.weight", l.qkv_weight.sizes().vec(), plain(l.qkv_weight));
      vector(lp + "attn_qkv.bias", l.qkv_bias);
    } else {
      auto rows = [&](const at::Tensor& t, int64_t heads) {
        return permute ? reorder_rows(t, heads, /*to_llama_cpp=*/true) : t;
      };
      at::Tensor q = l.qkv_weight.narrow(0, 0, qd), k = l.qkv_weight.narrow(0, qd, kvd);
      at::Tensor v = l.qkv_weight.narrow(0, qd + kvd, kvd);
      const int64_t heads = c.num_heads, kv_heads = c.num_kv_heads;
      matrix(lp + "attn_q.weight", q.sizes().vec(), [=] { return rows(q, heads); });
      matrix(lp + "attn_k.weight", k.sizes().vec(), [=] { return rows(k, kv_heads); });
      matrix(lp + "attn_v.weight", v.sizes().vec(), plain(v));
      if (l.qkv_bias.defined()) {
        vector(lp + "attn_q.bias", rows(l.qkv_bias.narrow(0, 0, qd), heads));
        vector(lp + "attn_k.bias", rows(l.qkv_bias.narrow(0, qd, kvd), kv_heads));
        vector(lp + "attn_v.bias", l.qkv_bias.narrow(0, qd + kvd, kvd));
      }
    }
    matrix(lp + "attn_output.weight", l.out_weight.sizes().vec(), plain(l.out_weight));
    vector(lp + "attn_output.bias", l.out_bias);
    vector(lp + "ffn_norm.weight", l.mlp_norm_weight);
    vector(lp + "ffn_norm.bias", l.mlp_norm_bias);
    if (gpt2) {
      matrix(lp + "ffn_up.weight", l.up_weight.sizes().vec(), plain(l.up_weight));
      vector(lp + "ffn_up.bias", l.up_bias);
    } else {
      at::Tensor gate = l.up_weight.narrow(0, 0, f), up = l.up_weight.narrow(0, f, f);
      matrix(lp + "ffn_gate.weight", gate.sizes().vec(), plain(gate));
      matrix(lp + "ffn_up.weight", up.sizes().vec(), plain(up));
      if (l.up_bias.defined()) {
        vector(lp + "ffn_gate.bias", l.up_bias.narrow(0, 0, f));
        vector(lp + "ffn_up.bias", l.up_bias.narrow(0, f, f));
      }
    }
    matrix(lp + "ffn_down.weight", l.down_weight.sizes().vec(), plain(l.down_weight));
    vector(lp + "ffn_down.bias", l.down_bias);
  }
  vector("output_norm.weight", w.final_norm_weight);
  vector("output_norm.bias", w.final_norm_bias);
  if (w.lm_head.defined()) matrix("output.weight", w.lm_head.sizes().vec(), plain(w.lm_head));
  if (!gpt2) {
    // Llama 3 style scaling travels as llama.cpp does it: per-frequency divisors in rope_freqs.
    if (!c.rope_scaling.frequency_divisors.empty() || c.rope_scaling.type == RopeScalingType::llama3) {
      ModelConfig plain_config = c;
      plain_config.rope_scaling = RopeScaling();
      auto unscaled = rope_inverse_frequencies(plain_config, c.max_position_embeddings);
      ModelConfig no_linear = c;
      auto scaled = rope_inverse_frequencies(no_linear, c.max_position_embeddings);
      std::vector<double> divisors(unscaled.size());
      for (size_t i = 0; i < divisors.size(); ++i) divisors[i] = unscaled[i] / scaled[i];
      if (c.rope_scaling.type == RopeScalingType::linear)  // the linear part is in rope.scaling.factor
        for (auto& x : divisors) x /= c.rope_scaling.factor;
      auto t = at::tensor(divisors, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
      writer.add_tensor("rope_freqs.weight", t, tensor::StoredType::f32);
    }
  }
  fs::create_directories(file.parent_path().empty() ? fs::path(".") : file.parent_path());
  writer.write(file);
}

CheckpointSummary summarize_checkpoint(const std::filesystem::path& path) {
  CheckpointSummary summary;
  std::vector<tensor::TensorInfo> tensors;
  if (tensor::is_gguf_file(path)) {
    auto file = tensor::open_gguf(path);
    summary.config = config_from_gguf(*file);
    tensors = file->tensors();
  } else {
    summary.config = load_config(path);
    tensors = tensor::open_safetensors(std::filesystem::is_directory(path) ? path : path.parent_path())->tensors();
  }
  summary.tensors = tensors.size();
  for (const auto& t : tensors) {
    const auto ends_with = [&](const std::string& suffix) {
      return t.name.size() >= suffix.size() && t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with(".attn.bias") || ends_with(".attn.masked_bias") || ends_with("rotary_emb.inv_freq") ||
        t.name == "rope_freqs.weight" || (summary.config.tie_word_embeddings && t.name == "lm_head.weight"))
      continue;
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    summary.parameters += n;
    summary.parameters_by_type[to_string(t.type)] += n;
  }
  return summary;
}

}  // namespace userip::lm
