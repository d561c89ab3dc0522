#include "userip/lm/model_tokenizer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <map>

#include "userip/lm/loader.h"
#include "userip/text/bpe.h"
#include "userip/text/sentencepiece.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::lm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// GGUF token types (llama.cpp's llama_token_type), the same numbers as SentencePiece's.
constexpr std::int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5;

std::unique_ptr<text::Tokenizer> tokenizer_from_gguf(const tensor::GgufFile& file, const fs::path& path) {
  std::string model = file.get_string("tokenizer.ggml.model", "");
  USERIP_CHECK(!model.empty(), "{}: no tokenizer in the GGUF metadata (tokenizer.ggml.model)", path.string());
  auto tokens = file.get_string_array("tokenizer.ggml.tokens");
  std::vector<std::int32_t> types;
  if (file.has_key("tokenizer.ggml.token_type")) types = file.get_i32_array("tokenizer.ggml.token_type");
  auto id = [&](const char* key, std::int32_t fallback) {
    return file.has_key(key) ? static_cast<std::int32_t>(file.get_i64(key)) : fallback;
  };
  std::unique_ptr<text::Tokenizer> tokenizer;
  text::SpecialTokens specials;
  if (model == "llama" || model == "t5") {
    text::SentencePieceVocab vocab;
    vocab.tokens = std::move(tokens);
    if (file.has_key("tokenizer.ggml.scores")) vocab.scores = file.get_f32_array("tokenizer.ggml.scores");
    vocab.token_types = std::move(types);
    vocab.add_dummy_prefix = file.get_bool("tokenizer.ggml.add_space_prefix", true);
    vocab.remove_extra_whitespaces = file.get_bool("tokenizer.ggml.remove_extra_whitespaces", false);
    vocab.unigram = model == "t5";  // llama.cpp's UGM tokenizer
    // Named in the model itself, so that a tokenizer.model written from it keeps them.
    const auto in_range = [&](std::int32_t i) { return i >= 0 && static_cast<std::size_t>(i) < vocab.tokens.size() ? i : -1; };
    vocab.bos = in_range(id("tokenizer.ggml.bos_token_id", -1));
    vocab.eos = in_range(id("tokenizer.ggml.eos_token_id", -1));
    vocab.pad = in_range(id("tokenizer.ggml.padding_token_id", -1));
    try {
      tokenizer = text::make_sentencepiece_tokenizer(vocab);
    } catch (const Error& e) {
      fail("{}: tokenizer metadata: {}", path.string(), e.what());
    }
    specials = tokenizer->specials();
    specials.add_bos = model == "llama";  // llama.cpp's defaults: SPM adds bos, UGM (T5) eos
    specials.add_eos = model == "t5";
  } else if (model == "gpt2") {
    std::vector<std::string> merges;
    if (file.has_key("tokenizer.ggml.merges")) merges = file.get_string_array("tokenizer.ggml.merges");
    try {
      tokenizer = text::make_bpe_tokenizer(tokens, merges, file.get_string("tokenizer.ggml.pre", "gpt2"), types);
    } catch (const Error& e) {
      fail("{}: tokenizer metadata: {}", path.string(), e.what());
    }
    specials = tokenizer->specials();
    specials.add_bos = false;
  } else {
    fail("{}: tokenizer kind '{}' is not supported (expected 'llama', 't5' or 'gpt2')", path.string(), model);
  }
  specials.bos = id("tokenizer.ggml.bos_token_id", specials.bos);
  specials.eos = id("tokenizer.ggml.eos_token_id", specials.eos);
  specials.pad = id("tokenizer.ggml.padding_token_id", specials.pad);
  specials.unk = id("tokenizer.ggml.unknown_token_id", specials.unk);
  specials.add_bos = file.get_bool("tokenizer.ggml.add_bos_token", specials.add_bos);
  specials.add_eos = file.get_bool("tokenizer.ggml.add_eos_token", specials.add_eos);
  const std::int32_t n = tokenizer->vocab_size();
  for (auto [name, value] : {std::pair<const char*, std::int32_t>{"bos", specials.bos},
                             {"eos", specials.eos},
                             {"padding", specials.pad},
                             {"unknown", specials.unk}}) {
    USERIP_CHECK(value < n, "{}: tokenizer.ggml.{}_token_id {} is outside the vocabulary of {} tokens",
                 path.string(), name, value, n);
  }
  tokenizer->set_specials(specials);
  return tokenizer;
}

bool same_steps(const std::vector<text::SplitStep>& a, const std::vector<text::SplitStep>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].pattern != b[i].pattern || a[i].behavior != b[i].behavior || a[i].invert != b[i].invert) return false;
  }
  return true;
}

// llama.cpp's name (tokenizer.ggml.pre) for the pre-tokenizer of a byte-level BPE tokenizer.
std::string llama_cpp_pre_name(const text::BpeTokenizer& bpe) {
  std::string pre = bpe.pre_name();
  if (pre.empty()) {
    for (const char* candidate : {"gpt-2", "llama-bpe", "qwen2", "smollm"}) {
      if (same_steps(text::bpe_pre_tokenizer(candidate), bpe.options().pre_tokenizer)) {
        pre = candidate;
        break;
      }
    }
    USERIP_CHECK(!pre.empty(),
                 "the BPE tokenizer's pre-tokenizer ({} regex steps) is none that llama.cpp names (GPT-2, Llama 3, "
                 "Qwen2, SmolLM): GGUF cannot carry it",
                 bpe.options().pre_tokenizer.size());
  }
  if (pre == "gpt2") pre = "gpt-2";                         // llama.cpp spells it with a hyphen
  if (pre == "llama3" || pre == "llama-v3") pre = "llama-bpe";
  return pre;
}

// The BPE tokenizer behind `tokenizer` if it is one GGUF and tokenizer.json can describe.
const text::BpeTokenizer* byte_level_bpe(const text::Tokenizer& tokenizer) {
  const auto* bpe = dynamic_cast<const text::BpeTokenizer*>(&tokenizer);
  if (bpe == nullptr) return nullptr;
  USERIP_CHECK(bpe->options().byte_level && !bpe->options().metaspace,
               "this BPE tokenizer is SentencePiece-style (spaces as U+2581), not byte-level: export it from a "
               "model directory that has the original tokenizer.model");
  return bpe;
}

// Token types of a byte-level BPE vocabulary as llama.cpp's converter assigns them.
std::vector<std::int32_t> bpe_token_types(const text::BpeTokenizer& bpe) {
  std::vector<std::int32_t> types(bpe.vocab().size(), kNormal);
  for (std::size_t i = 0; i < types.size(); ++i)
    if (bpe.vocab()[i].empty()) types[i] = kUnused;
  for (const auto& token : bpe.added_tokens()) {
    if (token.id >= 0 && static_cast<std::size_t>(token.id) < types.size())
      types[static_cast<std::size_t>(token.id)] = token.special ? kControl : kUserDefined;
  }
  return types;
}

std::string behavior_name(text::SplitBehavior behavior) {
  switch (behavior) {
    case text::SplitBehavior::kIsolated: return "Isolated";
    case text::SplitBehavior::kRemoved: return "Removed";
    case text::SplitBehavior::kMergedWithPrevious: return "MergedWithPrevious";
    case text::SplitBehavior::kMergedWithNext: return "MergedWithNext";
    case text::SplitBehavior::kContiguous: return "Contiguous";
  }
  return "Isolated";
}

// transformers' names of the special tokens, as tokenizer_config.json stores them.
json special_tokens_config(const text::Tokenizer& tokenizer) {
  const auto& s = tokenizer.specials();
  json config = json::object();
  for (auto [key, id] : {std::pair<const char*, std::int32_t>{"bos_token", s.bos},
                         {"eos_token", s.eos},
                         {"unk_token", s.unk},
                         {"pad_token", s.pad}}) {
    if (id >= 0 && id < tokenizer.vocab_size()) config[key] = tokenizer.token_text(id);
  }
  config["add_bos_token"] = s.add_bos;
  config["add_eos_token"] = s.add_eos;
  return config;
}

json bpe_tokenizer_json(const text::BpeTokenizer& bpe) {
  const auto& options = bpe.options();
  const auto& s = bpe.specials();
  json vocab = json::object();
  for (std::size_t i = 0; i < bpe.vocab().size(); ++i)
    if (!bpe.vocab()[i].empty()) vocab[bpe.vocab()[i]] = i;
  json merges = json::array();
  for (const auto& [a, b] : bpe.merges()) merges.push_back(a + " " + b);  // byte-level tokens hold no spaces
  json added = json::array();
  std::vector<text::AddedToken> added_tokens = bpe.added_tokens();
  std::sort(added_tokens.begin(), added_tokens.end(),
            [](const text::AddedToken& x, const text::AddedToken& y) { return x.id < y.id; });
  for (const auto& t : added_tokens) {
    added.push_back({{"id", t.id},
                     {"content", t.content},
                     {"single_word", t.single_word},
                     {"lstrip", t.lstrip},
                     {"rstrip", t.rstrip},
                     {"normalized", false},
                     {"special", t.special}});
  }
  json steps = json::array();
  for (const auto& step : options.pre_tokenizer) {
    steps.push_back({{"type", "Split"},
                     {"pattern", {{"Regex", step.pattern}}},
                     {"behavior", behavior_name(step.behavior)},
                     {"invert", step.invert}});
  }
  steps.push_back({{"type", "ByteLevel"},
                   {"add_prefix_space", options.add_prefix_space},
                   {"trim_offsets", true},
                   {"use_regex", false}});
  json post_processor = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  const bool bos = s.add_bos && s.bos >= 0, eos = s.add_eos && s.eos >= 0;
  if (bos || eos) {
    json single = json::array(), pair = json::array(), specials = json::object();
    auto special = [&](std::int32_t id) {
      const std::string text = bpe.token_text(id);
      specials[text] = {{"id", text}, {"ids", {id}}, {"tokens", {text}}};
      return json{{"SpecialToken", {{"id", text}, {"type_id", 0}}}};
    };
    if (bos) single.push_back(special(s.bos));
    single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
    if (eos) single.push_back(special(s.eos));
    pair = single;
    if (bos) pair.push_back(special(s.bos));
    pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
    if (eos) pair.push_back(special(s.eos));
    post_processor = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
  }
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", steps}}},
          {"post_processor", post_processor},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", options.ignore_merges},
            {"vocab", vocab},
            {"merges", merges}}}};
}

}  // namespace

std::unique_ptr<text::Tokenizer> load_model_tokenizer(const fs::path& path) {
  if (tensor::is_gguf_file(path)) {
    auto file = tensor::open_gguf(path);
    return tokenizer_from_gguf(*file, path);
  }
  USERIP_CHECK(fs::exists(path), "{}: no such file or directory", path.string());
  fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  return text::load_tokenizer(dir);
}

std::vector<std::pair<std::string, tensor::GgufValue>> gguf_tokenizer_metadata(const text::Tokenizer& tokenizer) {
  std::vector<std::pair<std::string, tensor::GgufValue>> out;
  const std::int32_t n = tokenizer.vocab_size();
  std::vector<std::string> tokens(static_cast<std::size_t>(n));
  for (std::int32_t i = 0; i < n; ++i) tokens[static_cast<std::size_t>(i)] = tokenizer.token_text(i);

  if (const auto* sp = dynamic_cast<const text::SentencePieceTokenizer*>(&tokenizer)) {
    std::vector<float> scores(tokens.size());
    std::vector<std::int32_t> types(tokens.size());
    for (std::int32_t i = 0; i < n; ++i) {
      scores[static_cast<std::size_t>(i)] = sp->score(i);
      types[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(sp->piece_type(i));
    }
    out.emplace_back("tokenizer.ggml.model", tensor::GgufValue::string(sp->is_unigram() ? "t5" : "llama"));
    out.emplace_back("tokenizer.ggml.pre", tensor::GgufValue::string("default"));
    out.emplace_back("tokenizer.ggml.tokens", tensor::GgufValue::string_array(std::move(tokens)));
    out.emplace_back("tokenizer.ggml.scores", tensor::GgufValue::f32_array(scores));
    out.emplace_back("tokenizer.ggml.token_type", tensor::GgufValue::i32_array(types));
    out.emplace_back("tokenizer.ggml.add_space_prefix", tensor::GgufValue::boolean(sp->add_dummy_prefix()));
    out.emplace_back("tokenizer.ggml.remove_extra_whitespaces", tensor::GgufValue::boolean(sp->remove_extra_whitespaces()));
  } else if (const auto* bpe = byte_level_bpe(tokenizer)) {
    const std::string pre = llama_cpp_pre_name(*bpe);
    const bool llama3 = pre == "llama-bpe";
    if (bpe->options().ignore_merges != llama3) {
      spdlog::warn("BPE tokenizer: ignore_merges is {} but llama.cpp's pre-tokenizer '{}' implies {}; token ids of "
                   "rare words may differ in the GGUF file",
                   bpe->options().ignore_merges, pre, llama3);
    }
    if (bpe->options().add_prefix_space)
      spdlog::warn("BPE tokenizer: add_prefix_space has no GGUF equivalent for byte-level BPE; it is dropped");
    for (std::size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i].empty()) tokens[i] = fmt::format("[PAD{}]", i);  // llama.cpp's converter fills holes so
    std::vector<std::string> merges;
    for (const auto& [a, b] : bpe->merges()) merges.push_back(a + " " + b);
    out.emplace_back("tokenizer.ggml.model", tensor::GgufValue::string("gpt2"));
    out.emplace_back("tokenizer.ggml.pre", tensor::GgufValue::string(pre));
    out.emplace_back("tokenizer.ggml.tokens", tensor::GgufValue::string_array(std::move(tokens)));
    out.emplace_back("tokenizer.ggml.token_type", tensor::GgufValue::i32_array(bpe_token_types(*bpe)));
    out.emplace_back("tokenizer.ggml.merges", tensor::GgufValue::string_array(std::move(merges)));
  } else {
    fail("a {} tokenizer has no GGUF form (expected SentencePiece or byte-level BPE)", tokenizer.kind());
  }

  const auto& s = tokenizer.specials();
  auto id = [&](const char* key, std::int32_t value) {
    if (value >= 0 && value < n) out.emplace_back(key, tensor::GgufValue::u32(static_cast<std::uint32_t>(value)));
  };
  id("tokenizer.ggml.bos_token_id", s.bos);
  id("tokenizer.ggml.eos_token_id", s.eos);
  id("tokenizer.ggml.unknown_token_id", s.unk);
  id("tokenizer.ggml.padding_token_id", s.pad);
  out.emplace_back("tokenizer.ggml.add_bos_token", tensor::GgufValue::boolean(s.add_bos));
  out.emplace_back("tokenizer.ggml.add_eos_token", tensor::GgufValue::boolean(s.add_eos));
  return out;
}

void save_tokenizer_hf(const text::Tokenizer& tokenizer, const fs::path& dir) {
  fs::create_directories(dir);
  json config = special_tokens_config(tokenizer);
  if (const auto* sp = dynamic_cast<const text::SentencePieceTokenizer*>(&tokenizer)) {
    sp->save(dir / "tokenizer.model");
    config["tokenizer_class"] = "LlamaTokenizer";
    config["legacy"] = true;  // plain SentencePiece behaviour, as the model itself defines it
  } else if (const auto* bpe = byte_level_bpe(tokenizer)) {
    write_file_atomic(dir / "tokenizer.json", bpe_tokenizer_json(*bpe).dump(2) + "\n");
    config["tokenizer_class"] = "PreTrainedTokenizerFast";
    if (bpe->options().add_prefix_space) config["add_prefix_space"] = true;
  } else {
    fail("{}: a {} tokenizer cannot be written as Hugging Face files", dir.string(), tokenizer.kind());
  }
  write_file_atomic(dir / "tokenizer_config.json", config.dump(2) + "\n");
}

torch::ScalarType stored_dtype(const fs::path& source) {
  std::unique_ptr<tensor::GgufFile> gguf;
  std::unique_ptr<tensor::TensorSource> safetensors;
  const tensor::TensorSource* tensors = nullptr;
  if (tensor::is_gguf_file(source)) {
    gguf = tensor::open_gguf(source);
    tensors = gguf.get();
  } else {
    USERIP_CHECK(fs::exists(source), "{}: no such file or directory", source.string());
    safetensors = tensor::open_safetensors(fs::is_directory(source) ? source : source.parent_path());
    tensors = safetensors.get();
  }
  std::map<tensor::StoredType, std::int64_t> elements;
  for (const auto& t : tensors->tensors())
    if (t.shape.size() == 2) elements[t.type] += t.numel();
  tensor::StoredType most = tensor::StoredType::f32;
  std::int64_t best = -1;
  for (const auto& [type, count] : elements) {
    if (count > best) most = type, best = count;
  }
  if (most == tensor::StoredType::f16) return torch::kHalf;
  if (most == tensor::StoredType::bf16) return torch::kBFloat16;
  return torch::kFloat;
}

void export_model(const fs::path& source, const fs::path& out, const ExportOptions& options) {
  USERIP_CHECK(fs::exists(source), "{}: no such file or directory", source.string());
  const bool from_gguf = tensor::is_gguf_file(source);
  const fs::path source_dir = from_gguf || fs::is_directory(source) ? source : source.parent_path();
  const torch::ScalarType dtype = options.dtype ? *options.dtype : stored_dtype(source);
  if (options.format == ExportFormat::gguf) {
    USERIP_CHECK(!fs::is_directory(out), "{}: is a directory; GGUF export writes one file (e.g. {})", out.string(),
                 (out / "model.gguf").string());
    // The tokenizer first: a vocabulary GGUF cannot hold fails before any weight is converted.
    std::vector<std::pair<std::string, tensor::GgufValue>> metadata;
    if (from_gguf) {
      metadata = gguf_tokenizer_metadata(*tensor::open_gguf(source));
    } else {
      auto tokenizer = load_model_tokenizer(source);
      try {
        metadata = gguf_tokenizer_metadata(*tokenizer);
      } catch (const Error& e) {
        fail("{}: {}", source_dir.string(), e.what());
      }
      if (const fs::path config = source_dir / "tokenizer_config.json"; fs::exists(config)) {
        const json doc = json::parse(read_file(config), nullptr, /*allow_exceptions=*/false);
        if (doc.is_object() && doc.contains("chat_template") && doc["chat_template"].is_string())
          metadata.emplace_back("tokenizer.chat_template", tensor::GgufValue::string(doc["chat_template"].get<std::string>()));
      }
    }
    CausalLM model = load_model(source, dtype);
    // llama.cpp takes the vocabulary size from the token list and wants the embedding to match:
    // pad the list as its converter does when the model has more rows than the tokenizer tokens.
    for (auto& [key, value] : metadata) {
      if (key != "tokenizer.ggml.tokens") continue;
      auto& tokens = std::get<std::vector<std::string>>(value.data);
      const auto vocab = static_cast<std::size_t>(model.vocab_size());
      USERIP_CHECK(tokens.size() <= vocab, "{}: the tokenizer has {} tokens but the model only {} embedding rows",
                   source.string(), tokens.size(), vocab);
      if (tokens.size() == vocab) break;
      const std::size_t first_pad = tokens.size();
      for (std::size_t i = first_pad; i < vocab; ++i) tokens.push_back(fmt::format("[PAD{}]", i));
      for (auto& [k, v] : metadata) {
        if (k == "tokenizer.ggml.scores") {
          auto& scores = std::get<std::vector<double>>(v.data);
          scores.resize(vocab, -1000.0);
        } else if (k == "tokenizer.ggml.token_type") {
          auto& types = std::get<std::vector<std::int64_t>>(v.data);
          types.resize(vocab, kUnused);
        }
      }
      break;
    }
    if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
    save_model_gguf(model, out, metadata, options.quantize_q8_0);
  } else {
    USERIP_CHECK(!options.quantize_q8_0, "{}: Q8_0 quantization is for GGUF output only", out.string());
    USERIP_CHECK(!fs::exists(out) || fs::is_directory(out), "{}: exists and is not a directory", out.string());
    std::unique_ptr<text::Tokenizer> tokenizer;
    if (from_gguf) tokenizer = load_model_tokenizer(source);
    CausalLM model = load_model(source, dtype);
    if (from_gguf) {
      save_model_hf(model, out);
      save_tokenizer_hf(*tokenizer, out);
    } else {
      save_model_hf(model, out, tokenizer_files_in(source_dir));
    }
  }
}

}  // namespace userip::lm
