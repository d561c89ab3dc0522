#include "userip/lm/config.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::lm {

using nlohmann::json;

namespace {
constexpr EnumName<Architecture> kArchitectureNames[] = {{Architecture::llama, "llama"}, {Architecture::gpt2, "gpt2"}};
constexpr EnumName<Activation> kActivationNames[] = {
    {Activation::silu, "silu"}, {Activation::gelu_tanh, "gelu_tanh"}, {Activation::gelu, "gelu"}};
constexpr EnumName<RopeScalingType> kRopeScalingNames[] = {{RopeScalingType::none, "none"},
                                                          {RopeScalingType::linear, "linear"},
                                                          {RopeScalingType::dynamic, "dynamic"},
                                                          {RopeScalingType::llama3, "llama3"}};
}  // namespace

std::string to_string(Architecture architecture) { return enum_name(kArchitectureNames, architecture); }
std::string to_string(Activation activation) { return enum_name(kActivationNames, activation); }
std::string to_string(RopeScalingType type) { return enum_name(kRopeScalingNames, type); }

namespace {

// The model types whose weights and forward pass this project implements. Each maps to the
// architecture class HF writes in "architectures".
struct KnownModelType {
  const char* model_type;
  const char* hf_class;
  Architecture architecture;
};
constexpr KnownModelType kKnownModelTypes[] = {
    {"llama", "LlamaForCausalLM", Architecture::llama},
    {"mistral", "MistralForCausalLM", Architecture::llama},
    {"qwen2", "Qwen2ForCausalLM", Architecture::llama},
    {"gpt2", "GPT2LMHeadModel", Architecture::gpt2},
};

const KnownModelType* find_model_type(const std::string& model_type) {
  for (const auto& known : kKnownModelTypes)
    if (model_type == known.model_type) return &known;
  return nullptr;
}

const KnownModelType* find_hf_class(const std::string& hf_class) {
  for (const auto& known : kKnownModelTypes)
    if (hf_class == known.hf_class) return &known;
  return nullptr;
}

// Typed field readers: a wrong type is the user's file being wrong, so it becomes a userip::Error
// naming the file and the key rather than nlohmann's generic type_error.
bool has_value(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && !it->is_null();
}

std::int64_t get_int(const json& object, const char* key, const std::string& source) {
  const json& value = object.at(key);
  if (value.is_number_integer() || value.is_number_unsigned()) return value.get<std::int64_t>();
  // Some exporters write integral sizes as floats ("hidden_size": 64.0).
  if (value.is_number_float() && std::floor(value.get<double>()) == value.get<double>())
    return static_cast<std::int64_t>(value.get<double>());
  fail("{}: '{}' must be an integer, got {}", source, key, value.dump());
}

std::int64_t get_int_or(const json& object, const char* key, std::int64_t fallback, const std::string& source) {
  return has_value(object, key) ? get_int(object, key, source) : fallback;
}

std::int64_t get_required_int(const json& object, std::initializer_list<const char*> keys, const std::string& source) {
  for (const char* key : keys)
    if (has_value(object, key)) return get_int(object, key, source);
  fail("{}: missing '{}'", source, *keys.begin());
}

double get_double_or(const json& object, const char* key, double fallback, const std::string& source) {
  if (!has_value(object, key)) return fallback;
  const json& value = object.at(key);
  if (!value.is_number()) fail("{}: '{}' must be a number, got {}", source, key, value.dump());
  return value.get<double>();
}

bool get_bool_or(const json& object, const char* key, bool fallback, const std::string& source) {
  if (!has_value(object, key)) return fallback;
  const json& value = object.at(key);
  if (!value.is_boolean()) fail("{}: '{}' must be true or false, got {}", source, key, value.dump());
  return value.get<bool>();
}

std::string get_string_or(const json& object, const char* key, const std::string& fallback, const std::string& source) {
  if (!has_value(object, key)) return fallback;
  const json& value = object.at(key);
  if (!value.is_string()) fail("{}: '{}' must be a string, got {}", source, key, value.dump());
  return value.get<std::string>();
}

// Token ids may be an integer, a list (Llama 3's eos) or null.
std::vector<std::int32_t> get_token_ids(const json& object, const char* key, std::vector<std::int32_t> fallback,
                                        const std::string& source) {
  auto it = object.find(key);
  if (it == object.end()) return fallback;
  if (it->is_null()) return {};
  auto to_id = [&](const json& value) {
    if (!value.is_number_integer()) fail("{}: '{}' must hold integer token ids, got {}", source, key, value.dump());
    return static_cast<std::int32_t>(value.get<std::int64_t>());
  };
  if (it->is_array()) {
    std::vector<std::int32_t> ids;
    for (const auto& value : *it) ids.push_back(to_id(value));
    return ids;
  }
  return {to_id(*it)};
}

std::int32_t first_or_none(const std::vector<std::int32_t>& ids) { return ids.empty() ? -1 : ids.front(); }

Activation parse_activation(const std::string& name, const std::string& source) {
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::gelu_tanh;
  if (name == "gelu") return Activation::gelu;
  fail("{}: unsupported activation '{}' (supported: silu, gelu, gelu_new, gelu_pytorch_tanh)", source, name);
}

std::string activation_name(Activation activation) {
  switch (activation) {
    case Activation::silu: return "silu";
    case Activation::gelu_tanh: return "gelu_new";
    case Activation::gelu: return "gelu";
  }
  return "silu";
}

RopeScaling parse_rope_scaling(const json& object, const std::string& source) {
  RopeScaling scaling;
  if (!has_value(object, "rope_scaling")) return scaling;
  const json& spec = object.at("rope_scaling");
  if (!spec.is_object()) fail("{}: 'rope_scaling' must be an object, got {}", source, spec.dump());
  // Newer transformers write "rope_type", older ones "type".
  std::string type = get_string_or(spec, "rope_type", get_string_or(spec, "type", "default", source), source);
  if (type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeScalingType::linear;
  } else if (type == "dynamic") {
    scaling.type = RopeScalingType::dynamic;
  } else if (type == "llama3") {
    scaling.type = RopeScalingType::llama3;
    scaling.low_freq_factor = get_double_or(spec, "low_freq_factor", 1.0, source);
    scaling.high_freq_factor = get_double_or(spec, "high_freq_factor", 4.0, source);
    scaling.original_max_position_embeddings = get_int_or(spec, "original_max_position_embeddings", 0, source);
    if (scaling.original_max_position_embeddings <= 0)
      fail("{}: rope_scaling type llama3 needs original_max_position_embeddings", source);
    if (!(scaling.high_freq_factor > scaling.low_freq_factor))
      fail("{}: rope_scaling llama3 needs high_freq_factor > low_freq_factor", source);
  } else {
    fail("{}: unsupported rope_scaling type '{}' (supported: linear, dynamic, llama3)", source, type);
  }
  if (!has_value(spec, "factor")) fail("{}: rope_scaling type {} needs a 'factor'", source, type);
  scaling.factor = get_double_or(spec, "factor", 1.0, source);
  if (!(scaling.factor >= 1.0)) fail("{}: rope_scaling factor must be >= 1, got {}", source, scaling.factor);
  return scaling;
}

ModelConfig parse_gpt2(const json& object, const std::string& source) {
  ModelConfig config;
  config.architecture = Architecture::gpt2;
  config.hidden_size = get_required_int(object, {"n_embd", "hidden_size"}, source);
  config.num_layers = get_required_int(object, {"n_layer", "num_hidden_layers"}, source);
  config.num_heads = get_required_int(object, {"n_head", "num_attention_heads"}, source);
  config.num_kv_heads = config.num_heads;
  config.head_dim = config.num_heads > 0 ? config.hidden_size / config.num_heads : 0;
  config.intermediate_size = get_int_or(object, "n_inner", 4 * config.hidden_size, source);
  config.vocab_size = get_required_int(object, {"vocab_size"}, source);
  config.max_position_embeddings = get_required_int(object, {"n_positions", "max_position_embeddings", "n_ctx"}, source);
  config.norm_eps = get_double_or(object, "layer_norm_epsilon", 1e-5, source);
  config.activation = parse_activation(get_string_or(object, "activation_function", "gelu_new", source), source);
  config.tie_word_embeddings = get_bool_or(object, "tie_word_embeddings", true, source);
  config.scale_attn_by_inverse_layer_idx = get_bool_or(object, "scale_attn_by_inverse_layer_idx", false, source);
  if (!get_bool_or(object, "scale_attn_weights", true, source))
    fail("{}: scale_attn_weights=false is not supported", source);
  config.qkv_bias = config.out_bias = config.mlp_bias = true;
  // GPT2Config's defaults name <|endoftext|> of the real vocabulary; a smaller custom vocabulary
  // that does not say has none.
  std::vector<std::int32_t> end_of_text;
  if (config.vocab_size > 50256) end_of_text = {50256};
  config.bos_token_id = first_or_none(get_token_ids(object, "bos_token_id", end_of_text, source));
  config.eos_token_ids = get_token_ids(object, "eos_token_id", end_of_text, source);
  return config;
}

ModelConfig parse_llama_family(const json& object, const std::string& model_type, const std::string& source) {
  ModelConfig config;
  config.architecture = Architecture::llama;
  config.hidden_size = get_required_int(object, {"hidden_size"}, source);
  config.intermediate_size = get_required_int(object, {"intermediate_size"}, source);
  config.num_layers = get_required_int(object, {"num_hidden_layers"}, source);
  config.num_heads = get_required_int(object, {"num_attention_heads"}, source);
  config.num_kv_heads = get_int_or(object, "num_key_value_heads", config.num_heads, source);
  config.head_dim =
      get_int_or(object, "head_dim", config.num_heads > 0 ? config.hidden_size / config.num_heads : 0, source);
  config.vocab_size = get_required_int(object, {"vocab_size"}, source);
  config.max_position_embeddings = get_int_or(object, "max_position_embeddings", 2048, source);
  config.norm_eps = get_double_or(object, "rms_norm_eps", 1e-6, source);
  config.rope_theta = get_double_or(object, "rope_theta", 10000.0, source);
  config.rope_scaling = parse_rope_scaling(object, source);
  config.activation = parse_activation(get_string_or(object, "hidden_act", "silu", source), source);
  config.tie_word_embeddings = get_bool_or(object, "tie_word_embeddings", false, source);
  if (get_double_or(object, "partial_rotary_factor", 1.0, source) != 1.0)
    fail("{}: partial_rotary_factor != 1 is not supported", source);
  if (model_type == "qwen2") {
    // Qwen2 always has q/k/v biases and no output bias; there is no config switch for it.
    config.qkv_bias = true;
    config.out_bias = false;
    if (get_bool_or(object, "use_sliding_window", false, source))
      config.sliding_window = get_int_or(object, "sliding_window", 0, source);
  } else if (model_type == "mistral") {
    config.sliding_window = get_int_or(object, "sliding_window", 0, source);
  } else {
    config.qkv_bias = config.out_bias = get_bool_or(object, "attention_bias", false, source);
    config.mlp_bias = get_bool_or(object, "mlp_bias", false, source);
  }
  config.bos_token_id = first_or_none(get_token_ids(object, "bos_token_id", {}, source));
  config.eos_token_ids = get_token_ids(object, "eos_token_id", {}, source);
  return config;
}

}  // namespace

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](std::int64_t value, const char* name) {
    if (value <= 0) fail("{}: {} must be positive, got {}", source, name, value);
  };
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_layers, "num_hidden_layers");
  positive(num_heads, "num_attention_heads");
  positive(num_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(vocab_size, "vocab_size");
  positive(max_position_embeddings, "max_position_embeddings");
  if (num_heads % num_kv_heads != 0)
    fail("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", source, num_heads,
         num_kv_heads);
  if (architecture == Architecture::gpt2) {
    if (num_kv_heads != num_heads) fail("{}: gpt2 has no grouped-query attention", source);
    if (head_dim * num_heads != hidden_size)
      fail("{}: n_embd ({}) must be divisible by n_head ({})", source, hidden_size, num_heads);
  } else {
    if (head_dim % 2 != 0) fail("{}: head_dim must be even for rotary embeddings, got {}", source, head_dim);
    // Keep the combinations that each HF model type can express, so a save reloads identically.
    if (model_type == "qwen2" && (!qkv_bias || out_bias))
      fail("{}: qwen2 has q/k/v biases and no output bias", source);
    if (model_type == "mistral" && (qkv_bias || out_bias || mlp_bias))
      fail("{}: mistral has no attention or MLP biases", source);
    if (model_type == "llama" && qkv_bias != out_bias)
      fail("{}: llama's attention_bias sets q/k/v and output biases together", source);
  }
  if (!(norm_eps > 0)) fail("{}: the norm epsilon must be positive", source);
  if (!(rope_theta > 0)) fail("{}: rope_theta must be positive", source);
  if (!rope_scaling.frequency_divisors.empty() &&
      static_cast<std::int64_t>(rope_scaling.frequency_divisors.size()) != head_dim / 2)
    fail("{}: {} RoPE frequency divisors for head_dim {}", source, rope_scaling.frequency_divisors.size(), head_dim);
  auto check_id = [&](std::int32_t id, const char* name) {
    if (id >= vocab_size) fail("{}: {} {} is outside the vocabulary ({} tokens)", source, name, id, vocab_size);
  };
  check_id(bos_token_id, "bos_token_id");
  check_id(pad_token_id, "pad_token_id");
  for (auto id : eos_token_ids) check_id(id, "eos_token_id");
}

ModelConfig ModelConfig::from_json(const json& object, const std::string& source) {
  if (!object.is_object()) fail("{}: expected a JSON object", source);
  std::string model_type = get_string_or(object, "model_type", "", source);
  const KnownModelType* known = nullptr;
  if (!model_type.empty()) {
    known = find_model_type(model_type);
    if (!known)
      fail("{}: unsupported model_type '{}' (supported: llama, mistral, qwen2, gpt2)", source, model_type);
  } else {
    // Old exports carry only "architectures".
    if (!has_value(object, "architectures") || !object.at("architectures").is_array() ||
        object.at("architectures").empty())
      fail("{}: neither model_type nor architectures is given", source);
    const json& first = object.at("architectures").front();
    std::string hf_class = first.is_string() ? first.get<std::string>() : first.dump();
    known = find_hf_class(hf_class);
    if (!known)
      fail("{}: unsupported architecture '{}' (supported: LlamaForCausalLM, MistralForCausalLM, "
           "Qwen2ForCausalLM, GPT2LMHeadModel)",
           source, hf_class);
    model_type = known->model_type;
  }
  ModelConfig config = known->architecture == Architecture::gpt2 ? parse_gpt2(object, source)
                                                                  : parse_llama_family(object, model_type, source);
  config.model_type = model_type;
  config.pad_token_id = first_or_none(get_token_ids(object, "pad_token_id", {}, source));
  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  config.torch_dtype = get_string_or(object, "torch_dtype", get_string_or(object, "dtype", "float32", source), source);
  config.validate(source);
  return config;
}

json ModelConfig::to_json() const {
  if (!rope_scaling.frequency_divisors.empty())
    fail("this model's RoPE frequency divisors (from a GGUF rope_freqs tensor) have no config.json form");
  json out = json::object();
  const KnownModelType* known = find_model_type(model_type);
  out["architectures"] = json::array({known ? known->hf_class : "LlamaForCausalLM"});
  out["model_type"] = model_type;
  auto token_id = [](std::int32_t id) { return id < 0 ? json(nullptr) : json(id); };
  json eos = eos_token_ids.empty()     ? json(nullptr)
             : eos_token_ids.size() == 1 ? json(eos_token_ids.front())
                                         : json(eos_token_ids);
  if (architecture == Architecture::gpt2) {
    out["n_embd"] = hidden_size;
    out["n_layer"] = num_layers;
    out["n_head"] = num_heads;
    out["n_inner"] = intermediate_size;
    out["n_positions"] = max_position_embeddings;
    out["n_ctx"] = max_position_embeddings;
    out["vocab_size"] = vocab_size;
    out["layer_norm_epsilon"] = norm_eps;
    out["activation_function"] = activation_name(activation);
    out["scale_attn_by_inverse_layer_idx"] = scale_attn_by_inverse_layer_idx;
  } else {
    out["hidden_size"] = hidden_size;
    out["intermediate_size"] = intermediate_size;
    out["num_hidden_layers"] = num_layers;
    out["num_attention_heads"] = num_heads;
    out["num_key_value_heads"] = num_kv_heads;
    out["head_dim"] = head_dim;
    out["vocab_size"] = vocab_size;
    out["max_position_embeddings"] = max_position_embeddings;
    out["rms_norm_eps"] = norm_eps;
    out["rope_theta"] = rope_theta;
    out["hidden_act"] = activation_name(activation);
    if (rope_scaling.type == RopeScalingType::none) {
      out["rope_scaling"] = nullptr;
    } else {
      json scaling = {{"rope_type", to_string(rope_scaling.type)}, {"factor", rope_scaling.factor}};
      if (rope_scaling.type == RopeScalingType::llama3) {
        scaling["low_freq_factor"] = rope_scaling.low_freq_factor;
        scaling["high_freq_factor"] = rope_scaling.high_freq_factor;
        scaling["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
      }
      out["rope_scaling"] = scaling;
    }
    if (model_type == "llama") {
      out["attention_bias"] = qkv_bias;
      out["mlp_bias"] = mlp_bias;
    }
    if (model_type == "qwen2") out["use_sliding_window"] = sliding_window > 0;
    if (model_type == "qwen2" || model_type == "mistral")
      out["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
  }
  out["tie_word_embeddings"] = tie_word_embeddings;
  out["bos_token_id"] = token_id(bos_token_id);
  out["eos_token_id"] = eos;
  if (pad_token_id >= 0) out["pad_token_id"] = pad_token_id;
  out["torch_dtype"] = torch_dtype;
  return out;
}

ModelConfig load_config(const std::filesystem::path& path) {
  std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  if (!std::filesystem::exists(file)) fail("{}: no such file", file.string());
  json object;
  try {
    object = json::parse(read_file(file));
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", file.string(), e.what());
  }
  return ModelConfig::from_json(object, file.string());
}

void save_config(const ModelConfig& config, const std::filesystem::path& file) {
  write_file_atomic(file, config.to_json().dump(2) + "\n");
}

std::vector<double> rope_inverse_frequencies(const ModelConfig& config, std::int64_t sequence_length) {
  const std::int64_t dim = config.head_dim;
  double base = config.rope_theta;
  const RopeScaling& scaling = config.rope_scaling;
  if (scaling.type == RopeScalingType::dynamic && sequence_length > config.max_position_embeddings) {
    // NTK-aware scaling: raise the base so the longest wavelength covers the longer sequence.
    double ratio = scaling.factor * static_cast<double>(sequence_length) /
                       static_cast<double>(config.max_position_embeddings) -
                   (scaling.factor - 1.0);
    base *= std::pow(ratio, static_cast<double>(dim) / static_cast<double>(dim - 2));
  }
  std::vector<double> inverse(static_cast<std::size_t>(dim / 2));
  for (std::int64_t i = 0; i < dim / 2; ++i)
    inverse[static_cast<std::size_t>(i)] = 1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim));
  if (scaling.type == RopeScalingType::linear) {
    for (double& f : inverse) f /= scaling.factor;
  } else if (scaling.type == RopeScalingType::llama3) {
    const double old_context = static_cast<double>(scaling.original_max_position_embeddings);
    const double low_freq_wavelength = old_context / scaling.low_freq_factor;
    const double high_freq_wavelength = old_context / scaling.high_freq_factor;
    for (double& f : inverse) {
      const double wavelength = 2.0 * M_PI / f;
      if (wavelength < high_freq_wavelength) continue;  // short wavelengths resolve local order: keep
      if (wavelength > low_freq_wavelength) {
        f /= scaling.factor;  // long wavelengths: interpolate like linear scaling
      } else {
        const double smooth = (old_context / wavelength - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        f = (1.0 - smooth) * f / scaling.factor + smooth * f;
      }
    }
  }
  if (!scaling.frequency_divisors.empty()) {
    USERIP_ASSERT(scaling.frequency_divisors.size() == inverse.size());
    for (std::size_t i = 0; i < inverse.size(); ++i) inverse[i] /= scaling.frequency_divisors[i];
  }
  return inverse;
}

}  // namespace userip::lm
