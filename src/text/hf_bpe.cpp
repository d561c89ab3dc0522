// Hugging Face BPE files: tokenizer.json and the older vocab.json + merges.txt pair.
#include <spdlog/spdlog.h>

#include <atomic>
#include <functional>
#include <unordered_map>

#include "text/hf_json.h"
#include "text/regex.h"
#include "userip/text/bpe.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"

namespace userip::text {

using nlohmann::json;

namespace detail {

json read_json_file(const std::filesystem::path& path) {
  USERIP_CHECK(std::filesystem::exists(path), "{}: no such file", path.string());
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
}

namespace {

const std::string kMetaspace = "\xE2\x96\x81";

std::string type_of(const json& node) {
  if (!node.is_object() || !node.contains("type") || !node["type"].is_string()) return {};
  return node["type"].get<std::string>();
}

template <typename T>
T value_or(const json& node, const char* key, T fallback) {
  if (!node.is_object() || !node.contains(key) || node[key].is_null()) return fallback;
  return node[key].get<T>();
}

SplitBehavior parse_behavior(const std::string& name, const std::filesystem::path& path) {
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail("{}: unknown Split behavior '{}'", path.string(), name);
}

std::string split_pattern(const json& pattern, const std::filesystem::path& path) {
  if (pattern.is_object() && pattern.contains("Regex")) return pattern["Regex"].get<std::string>();
  if (pattern.is_object() && pattern.contains("String")) return regex_escape(pattern["String"].get<std::string>());
  fail("{}: a Split pre-tokenizer needs a pattern {{\"Regex\": ...}} or {{\"String\": ...}}", path.string());
}

void parse_pre_tokenizer(const json& node, BpeOptions& options, bool& byte_level, const std::filesystem::path& path) {
  if (node.is_null()) return;
  const std::string type = type_of(node);
  if (type == "Sequence") {
    for (const auto& step : node.at("pretokenizers")) parse_pre_tokenizer(step, options, byte_level, path);
  } else if (type == "ByteLevel") {
    byte_level = true;
    options.add_prefix_space = value_or(node, "add_prefix_space", false);
    if (value_or(node, "use_regex", true)) options.pre_tokenizer.push_back({kGpt2Pattern});
  } else if (type == "Split") {
    options.pre_tokenizer.push_back({split_pattern(node.at("pattern"), path),
                                     parse_behavior(value_or<std::string>(node, "behavior", "Isolated"), path),
                                     value_or(node, "invert", false)});
  } else if (type == "Digits") {
    options.pre_tokenizer.push_back({value_or(node, "individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)"});
  } else if (type == "Metaspace") {
    USERIP_CHECK(value_or<std::string>(node, "replacement", kMetaspace) == kMetaspace,
                 "{}: Metaspace replacement other than U+2581 is not supported", path.string());
    options.metaspace = true;
    if (node.contains("prepend_scheme")) {
      const auto scheme = node["prepend_scheme"].get<std::string>();
      if (scheme == "first")
        options.metaspace_prepend = BpeOptions::Prepend::kFirst;
      else if (scheme == "always")
        options.metaspace_prepend = BpeOptions::Prepend::kAlways;
      else if (scheme == "never")
        options.metaspace_prepend = BpeOptions::Prepend::kNever;
      else
        fail("{}: unknown Metaspace prepend_scheme '{}'", path.string(), scheme);
    } else {
      options.metaspace_prepend =
          value_or(node, "add_prefix_space", true) ? BpeOptions::Prepend::kAlways : BpeOptions::Prepend::kNever;
    }
    if (value_or(node, "split", true)) {
      options.pre_tokenizer.push_back({regex_escape(kMetaspace), SplitBehavior::kMergedWithNext});
    }
  } else {
    fail("{}: pre-tokenizer type '{}' is not supported (supported: ByteLevel, Split, Digits, Metaspace, Sequence)",
         path.string(), type.empty() ? node.dump() : type);
  }
}

void parse_normalizer(const json& node, BpeOptions& options, const std::filesystem::path& path) {
  if (node.is_null()) return;
  const std::string type = type_of(node);
  if (type == "Sequence") {
    for (const auto& step : node.at("normalizers")) parse_normalizer(step, options, path);
  } else if (type == "NFC") {
    // Qwen2 asks for NFC; text that is already NFC (nearly all text) is unaffected, and
    // llama.cpp does not normalise either, so GGUF and HF loads of one model agree.
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) spdlog::warn("{}: NFC normalisation is not applied", path.string());
  } else if (type == "Prepend") {
    USERIP_CHECK(node.at("prepend").get<std::string>() == kMetaspace, "{}: only Prepend(\"\u2581\") is supported",
                 path.string());
    options.metaspace = true;
    options.metaspace_prepend = BpeOptions::Prepend::kAlways;
  } else if (type == "Replace") {
    const json& pattern = node.at("pattern");
    USERIP_CHECK(pattern.is_object() && pattern.contains("String") && pattern["String"] == " " &&
                     node.at("content").get<std::string>() == kMetaspace,
                 "{}: only the Replace(\" \" -> \"\u2581\") normalizer is supported", path.string());
    if (!options.metaspace) options.metaspace_prepend = BpeOptions::Prepend::kNever;
    options.metaspace = true;
  } else {
    fail("{}: normalizer type '{}' is not supported", path.string(), type.empty() ? node.dump() : type);
  }
}

// bos/eos from a TemplateProcessing post-processor: "[BOS] $A" adds bos by default.
void parse_post_processor(const json& node, SpecialTokens& specials) {
  if (node.is_null()) return;
  const std::string type = type_of(node);
  if (type == "Sequence") {
    for (const auto& step : node.at("processors")) parse_post_processor(step, specials);
    return;
  }
  if (type != "TemplateProcessing" || !node.contains("single") || !node["single"].is_array()) return;
  const json& single = node["single"];
  const auto id_of = [&](const json& item) -> std::int32_t {
    if (!item.is_object() || !item.contains("SpecialToken")) return -1;
    const std::string name = item["SpecialToken"].at("id").get<std::string>();
    const json& table = node.value("special_tokens", json::object());
    if (!table.contains(name) || table[name].at("ids").empty()) return -1;
    return table[name]["ids"][0].get<std::int32_t>();
  };
  if (!single.empty()) {
    if (const std::int32_t bos = id_of(single.front()); bos >= 0) {
      specials.bos = bos;
      specials.add_bos = true;
    }
    if (const std::int32_t eos = id_of(single.back()); eos >= 0 && single.size() > 1) {
      specials.eos = eos;
      specials.add_eos = true;
    }
  }
}

}  // namespace

bool tokenizer_json_is_byte_level(const json& doc) {
  bool byte_level = false;
  const std::function<void(const json&, const char*)> visit = [&](const json& node, const char* list) {
    if (node.is_null()) return;
    const std::string type = type_of(node);
    if (type == "ByteLevel") byte_level = true;
    if (type == "Sequence" && node.contains(list)) {
      for (const auto& step : node[list]) visit(step, list);
    }
  };
  visit(doc.value("pre_tokenizer", json()), "pretokenizers");
  visit(doc.value("decoder", json()), "decoders");
  return byte_level && type_of(doc.value("model", json())) != "Unigram";
}

std::unique_ptr<BpeTokenizer> load_tokenizer_json(const json& doc, const std::filesystem::path& path) {
  try {
    USERIP_CHECK(doc.is_object() && doc.contains("model") && doc["model"].is_object(),
                 "{}: not a tokenizer.json (no \"model\" object)", path.string());
    const json& model = doc["model"];
    const std::string model_type = type_of(model).empty() && model.contains("merges") ? "BPE" : type_of(model);
    USERIP_CHECK(model_type == "BPE",
                 "{}: model type '{}' is not supported (only BPE; SentencePiece models load "
                 "from tokenizer.model)",
                 path.string(), model_type);
    USERIP_CHECK(value_or<std::string>(model, "continuing_subword_prefix", "").empty() &&
                     value_or<std::string>(model, "end_of_word_suffix", "").empty(),
                 "{}: BPE with continuing_subword_prefix / end_of_word_suffix is not supported", path.string());
    USERIP_CHECK(model.contains("vocab") && model["vocab"].is_object(), "{}: model.vocab must be an object",
                 path.string());

    std::vector<std::string> vocab;
    for (const auto& [token, id_node] : model["vocab"].items()) {
      USERIP_CHECK(
          id_node.is_number_integer() && id_node.get<std::int64_t>() >= 0 && id_node.get<std::int64_t>() < (1 << 30),
          "{}: model.vocab[{}] is not a valid id", path.string(), quote_for_message(token));
      const auto id = static_cast<std::size_t>(id_node.get<std::int64_t>());
      if (id >= vocab.size()) vocab.resize(id + 1);
      vocab[id] = token;
    }

    std::vector<std::pair<std::string, std::string>> merges;
    const json& merges_node = model.value("merges", json::array());
    USERIP_CHECK(merges_node.is_array(), "{}: model.merges must be an array", path.string());
    merges.reserve(merges_node.size());
    for (std::size_t i = 0; i < merges_node.size(); ++i) {
      const json& m = merges_node[i];
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const std::size_t space = s.find(' ');
        USERIP_CHECK(space != std::string::npos && space > 0 && space + 1 < s.size() &&
                         s.find(' ', space + 1) == std::string::npos,
                     "{}: model.merges[{}] must be two tokens separated by one space, got {}", path.string(), i,
                     quote_for_message(s));
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else {
        USERIP_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                     "{}: model.merges[{}] must be \"a b\" or [\"a\", \"b\"]", path.string(), i);
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      }
    }

    BpeOptions options;
    bool byte_level = false;
    parse_normalizer(doc.value("normalizer", json()), options, path);
    parse_pre_tokenizer(doc.value("pre_tokenizer", json()), options, byte_level, path);
    byte_level = byte_level || tokenizer_json_is_byte_level(doc);
    options.byte_level = byte_level;
    options.ignore_merges = value_or(model, "ignore_merges", false);
    options.byte_fallback = value_or(model, "byte_fallback", false);
    options.fuse_unk = value_or(model, "fuse_unk", false);
    options.unk_token = value_or<std::string>(model, "unk_token", "");
    USERIP_CHECK(value_or(model, "dropout", 0.0) == 0.0, "{}: BPE dropout is not supported", path.string());

    std::vector<AddedToken> added;
    if (doc.contains("added_tokens") && doc["added_tokens"].is_array()) {
      for (const auto& t : doc["added_tokens"]) {
        AddedToken token;
        token.content = t.at("content").get<std::string>();
        token.id = t.at("id").get<std::int32_t>();
        USERIP_CHECK(token.id >= 0, "{}: added token {} has a negative id", path.string(),
                     quote_for_message(token.content));
        token.special = value_or(t, "special", false);
        token.lstrip = value_or(t, "lstrip", false);
        token.rstrip = value_or(t, "rstrip", false);
        token.single_word = value_or(t, "single_word", false);
        added.push_back(std::move(token));
      }
    }

    auto tok =
        std::make_unique<BpeTokenizer>(std::move(vocab), merges, std::move(options), std::move(added), path.string());
    SpecialTokens specials = tok->specials();
    parse_post_processor(doc.value("post_processor", json()), specials);
    tok->set_specials(specials);
    return tok;
  } catch (const json::exception& e) {
    fail("{}: unexpected structure: {}", path.string(), e.what());
  }
}

}  // namespace detail

bool tokenizer_json_is_byte_level(const std::filesystem::path& tokenizer_json) {
  return detail::tokenizer_json_is_byte_level(detail::read_json_file(tokenizer_json));
}

std::unique_ptr<BpeTokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json) {
  return detail::load_tokenizer_json(detail::read_json_file(tokenizer_json), tokenizer_json);
}

std::unique_ptr<BpeTokenizer> load_bpe_vocab_merges(const std::filesystem::path& vocab_json,
                                                    const std::filesystem::path& merges_txt, std::string_view pre) {
  const json doc = detail::read_json_file(vocab_json);
  USERIP_CHECK(doc.is_object(), "{}: expected a JSON object of token -> id", vocab_json.string());
  std::vector<std::string> vocab;
  std::unordered_map<std::string, std::int32_t> ids;
  for (const auto& [token, id_node] : doc.items()) {
    USERIP_CHECK(
        id_node.is_number_integer() && id_node.get<std::int64_t>() >= 0 && id_node.get<std::int64_t>() < (1 << 30),
        "{}: the id of {} is not a non-negative integer", vocab_json.string(), quote_for_message(token));
    const auto id = static_cast<std::size_t>(id_node.get<std::int64_t>());
    if (id >= vocab.size()) vocab.resize(id + 1);
    vocab[id] = token;
    ids.emplace(token, static_cast<std::int32_t>(id));
  }
  USERIP_CHECK(!vocab.empty(), "{}: the vocabulary is empty", vocab_json.string());

  USERIP_CHECK(std::filesystem::exists(merges_txt), "{}: no such file", merges_txt.string());
  const std::string text = read_file(merges_txt);
  USERIP_CHECK(is_valid_utf8(text), "{}: not valid UTF-8", merges_txt.string());
  std::vector<std::pair<std::string, std::string>> merges;
  std::size_t line_number = 0;
  for (std::string_view line : split(text, '\n')) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_number == 1 && line.substr(0, 8) == "#version")) continue;
    const std::size_t space = line.find(' ');
    USERIP_CHECK(space != std::string_view::npos && space > 0 && space + 1 < line.size() &&
                     line.find(' ', space + 1) == std::string_view::npos,
                 "{}:{}: expected two tokens separated by one space, got {}", merges_txt.string(), line_number,
                 quote_for_message(line));
    std::string a(line.substr(0, space));
    std::string b(line.substr(space + 1));
    for (const std::string* token : {&a, &b}) {
      USERIP_CHECK(ids.count(*token), "{}:{}: token {} is not in {}", merges_txt.string(), line_number,
                   quote_for_message(*token), vocab_json.filename().string());
    }
    USERIP_CHECK(ids.count(a + b), "{}:{}: the merged token {} is not in {}", merges_txt.string(), line_number,
                 quote_for_message(a + b), vocab_json.filename().string());
    merges.emplace_back(std::move(a), std::move(b));
  }

  BpeOptions options;
  options.pre_tokenizer = bpe_pre_tokenizer(pre);
  options.byte_level = true;
  auto tok = std::make_unique<BpeTokenizer>(std::move(vocab), merges, std::move(options), std::vector<AddedToken>{},
                                            vocab_json.string() + " + " + merges_txt.filename().string());
  tok->set_pre_name(std::string(pre));
  return tok;
}

}  // namespace userip::text
