#include "userip/text/tokenizer.h"

#include <spdlog/spdlog.h>

#include "text/hf_json.h"
#include "userip/text/bpe.h"
#include "userip/text/sentencepiece.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::text {

using nlohmann::json;
namespace fs = std::filesystem;

std::vector<std::int32_t> Tokenizer::encode_for_model(std::string_view text) const {
  std::vector<std::int32_t> ids;
  std::vector<std::int32_t> body = encode(text);
  ids.reserve(body.size() + 2);
  if (specials_.add_bos && specials_.bos >= 0) ids.push_back(specials_.bos);
  ids.insert(ids.end(), body.begin(), body.end());
  if (specials_.add_eos && specials_.eos >= 0) ids.push_back(specials_.eos);
  return ids;
}

std::int32_t Tokenizer::token_id(std::string_view token) const {
  const std::int32_t n = vocab_size();
  for (std::int32_t id = 0; id < n; ++id) {
    if (token_text(id) == token) return id;
  }
  return -1;
}

namespace {

// A token given as "<s>" or as {"content": "<s>", ...} (transformers' AddedToken); "" if absent.
std::string token_string(const json& doc, const char* key, const fs::path& file) {
  if (!doc.contains(key) || doc[key].is_null()) return {};
  const json& node = doc[key];
  if (node.is_string()) return node.get<std::string>();
  if (node.is_object() && node.contains("content") && node["content"].is_string()) {
    return node["content"].get<std::string>();
  }
  fail("{}: \"{}\" must be a string or an object with \"content\"", file.string(), key);
}

// Ids in config.json are a number, null, or (for several eos tokens) a list: the first counts.
std::int32_t config_id(const json& doc, const char* key, std::int32_t fallback, const fs::path& file) {
  if (!doc.contains(key) || doc[key].is_null()) return fallback;
  const json& node = doc[key];
  const json& first = node.is_array() && !node.empty() ? node[0] : node;
  USERIP_CHECK(first.is_number_integer(), "{}: \"{}\" must be an integer id", file.string(), key);
  return first.get<std::int32_t>();
}

void apply_token_strings(const json& doc, const fs::path& file, const Tokenizer& tokenizer, SpecialTokens& s) {
  const auto resolve = [&](const char* key, std::int32_t& slot) {
    const std::string text = token_string(doc, key, file);
    if (text.empty()) return;
    const std::int32_t id = tokenizer.token_id(text);
    if (id < 0) {
      spdlog::warn("{}: {} {} is not in the vocabulary; ignored", file.string(), key, quote_for_message(text));
      return;
    }
    slot = id;
  };
  resolve("bos_token", s.bos);
  resolve("eos_token", s.eos);
  resolve("pad_token", s.pad);
  resolve("unk_token", s.unk);
}

// The tokens a vocab.json + merges.txt directory marks as special (named tokens and
// transformers' added_tokens_decoder): HF matches them in raw text before BPE.
std::vector<AddedToken> configured_added_tokens(const fs::path& dir) {
  std::vector<AddedToken> out;
  for (const char* name : {"special_tokens_map.json", "tokenizer_config.json"}) {
    const fs::path file = dir / name;
    if (!fs::exists(file)) continue;
    const json doc = detail::read_json_file(file);
    if (!doc.is_object()) continue;
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
      const std::string text = token_string(doc, key, file);
      if (!text.empty()) out.push_back({text, -1, true});
    }
    if (doc.contains("added_tokens_decoder") && doc["added_tokens_decoder"].is_object()) {
      for (const auto& [id_text, entry] : doc["added_tokens_decoder"].items()) {
        const auto id = parse_int64(id_text);
        USERIP_CHECK(id && *id >= 0 && entry.is_object() && entry.contains("content"),
                     "{}: added_tokens_decoder[{}] must map an id to {{\"content\": ...}}", file.string(), id_text);
        AddedToken token{entry["content"].get<std::string>(), static_cast<std::int32_t>(*id),
                         entry.value("special", true)};
        token.lstrip = entry.value("lstrip", false);
        token.rstrip = entry.value("rstrip", false);
        token.single_word = entry.value("single_word", false);
        out.push_back(std::move(token));
      }
    }
  }
  return out;
}

}  // namespace

SpecialTokens read_special_tokens(const fs::path& model_dir, const Tokenizer& tokenizer, SpecialTokens s) {
  try {
    if (const fs::path file = model_dir / "config.json"; fs::exists(file)) {
      const json doc = detail::read_json_file(file);
      USERIP_CHECK(doc.is_object(), "{}: expected a JSON object", file.string());
      s.bos = config_id(doc, "bos_token_id", s.bos, file);
      s.eos = config_id(doc, "eos_token_id", s.eos, file);
      s.pad = config_id(doc, "pad_token_id", s.pad, file);
    }
    for (const char* name : {"special_tokens_map.json", "tokenizer_config.json"}) {
      const fs::path file = model_dir / name;
      if (!fs::exists(file)) continue;
      const json doc = detail::read_json_file(file);
      USERIP_CHECK(doc.is_object(), "{}: expected a JSON object", file.string());
      apply_token_strings(doc, file, tokenizer, s);
      for (const auto& [key, slot] : {std::pair<const char*, bool*>{"add_bos_token", &s.add_bos},
                                      std::pair<const char*, bool*>{"add_eos_token", &s.add_eos}}) {
        if (!doc.contains(key) || doc[key].is_null()) continue;
        USERIP_CHECK(doc[key].is_boolean(), "{}: \"{}\" must be true or false", file.string(), key);
        *slot = doc[key].get<bool>();
      }
    }
  } catch (const json::exception& e) {
    fail("{}: unexpected structure in the tokenizer configuration: {}", model_dir.string(), e.what());
  }
  const std::int32_t n = tokenizer.vocab_size();
  for (auto [name, id] :
       {std::pair<const char*, std::int32_t>{"bos", s.bos}, {"eos", s.eos}, {"pad", s.pad}, {"unk", s.unk}}) {
    USERIP_CHECK(id < n, "{}: {} token id {} is outside the vocabulary of {} tokens", model_dir.string(), name, id, n);
  }
  return s;
}

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& model_dir) {
  USERIP_CHECK(fs::is_directory(model_dir), "{}: no such model directory", model_dir.string());
  const fs::path tokenizer_json = model_dir / "tokenizer.json";
  const fs::path vocab_json = model_dir / "vocab.json";
  const fs::path merges_txt = model_dir / "merges.txt";
  const fs::path sp_model = model_dir / "tokenizer.model";

  std::unique_ptr<Tokenizer> tok;
  if (fs::exists(tokenizer_json)) {
    const json doc = detail::read_json_file(tokenizer_json);
    // A tokenizer.json converted from SentencePiece (Llama 2, Mistral, TinyLlama) is served
    // by libsentencepiece from the original model where that ships alongside: it is the
    // definition the conversion approximates.
    if (!detail::tokenizer_json_is_byte_level(doc) && fs::exists(sp_model)) {
      tok = load_sentencepiece(sp_model);
    } else {
      tok = detail::load_tokenizer_json(doc, tokenizer_json);
    }
  } else if (fs::exists(vocab_json) || fs::exists(merges_txt)) {
    USERIP_CHECK(fs::exists(vocab_json) && fs::exists(merges_txt), "{}: vocab.json and merges.txt must come together",
                 model_dir.string());
    auto bpe = load_bpe_vocab_merges(vocab_json, merges_txt);
    bpe->add_tokens(configured_added_tokens(model_dir));
    tok = std::move(bpe);
  } else if (fs::exists(sp_model)) {
    tok = load_sentencepiece(sp_model);
  } else {
    fail("{}: no tokenizer found (expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model)",
         model_dir.string());
  }
  tok->set_specials(read_special_tokens(model_dir, *tok, tok->specials()));
  return tok;
}

}  // namespace userip::text
