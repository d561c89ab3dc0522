// A checkpoint's tokenizer wherever it lives (Hugging Face files, GGUF metadata) and the export of
// models with their tokenizers:
// 1. every reference file (HF directories and llama.cpp's GGUF files) tokenizes the reference
//    prompts into llama.cpp's token ids;
// 2. the GGUF tokenizer metadata the project writes equals what llama.cpp's own converter wrote
//    for the same tokenizers;
// 3. HF -> GGUF -> HF round trips keep weights, logits and token ids; Q8_0 and f16 exports stay
//    within tolerance; vocabularies smaller than the embedding are padded as llama.cpp wants.
#include "userip/lm/model_tokenizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "support/temp_dir.h"
#include "userip/tensor/gguf.h"
#include "userip/lm/loader.h"
#include "userip/text/bpe.h"
#include "userip/text/sentencepiece.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "lm/lm_test_support.h"

namespace userip::lm {
namespace {

using namespace test_support;

namespace fs = std::filesystem;
using nlohmann::json;
using userip::testing::TempDir;


struct Prompt {
  std::string text;
  std::vector<std::int32_t> tokens;
};

// The prompts of logits/<name>.json with llama.cpp's token ids; their texts are the lines of
// `prompts_file`, in order.
std::vector<Prompt> reference_prompts(const std::string& name, const std::string& prompts_file) {
  std::vector<Prompt> prompts;
  for (const auto& item : json::parse(read_file(repo_reference() / "logits" / (name + ".json"))))
    prompts.push_back({item.at("text").get<std::string>(), item.at("tokens").get<std::vector<std::int32_t>>()});
  std::ifstream in(repo_reference() / prompts_file);
  std::string line;
  std::size_t i = 0;
  while (std::getline(in, line)) {
    EXPECT_LT(i, prompts.size());
    if (i < prompts.size()) {
      EXPECT_EQ(prompts[i].text, line);
    }
    ++i;
  }
  EXPECT_EQ(i, prompts.size());
  return prompts;
}

std::vector<Prompt> llama_prompts() { return reference_prompts("tiny-llama", "prompts.txt"); }
std::vector<Prompt> gpt2_prompts() { return reference_prompts("tiny-gpt2", "prompts-gpt2.txt"); }

// Strings beyond the reference prompts: special tokens in raw text, newlines, emoji, nothing.
const std::vector<std::string> kExtraTexts = {
    "", " ", "a\n\nb", "<s> inside </s> text", "<|endoftext|>The end<|endoftext|>", "don't   stop\t\tnow 🎬🍿",
    "Ünïcödé ÅÄÖ 日本語 123,456.78"};

void expect_tokenizes_like(const text::Tokenizer& actual, const text::Tokenizer& expected, const std::string& what) {
  EXPECT_EQ(actual.vocab_size(), expected.vocab_size()) << what;
  EXPECT_EQ(actual.specials().bos, expected.specials().bos) << what;
  EXPECT_EQ(actual.specials().eos, expected.specials().eos) << what;
  EXPECT_EQ(actual.specials().add_bos, expected.specials().add_bos) << what;
  EXPECT_EQ(actual.specials().add_eos, expected.specials().add_eos) << what;
  for (const auto& text : kExtraTexts) {
    EXPECT_EQ(actual.encode_for_model(text), expected.encode_for_model(text)) << what << ": " << text;
    auto ids = expected.encode(text);
    EXPECT_EQ(actual.decode(ids), expected.decode(ids)) << what << ": " << text;
  }
}

void expect_reference_tokens(const text::Tokenizer& tokenizer, const std::vector<Prompt>& prompts,
                             const std::string& what) {
  for (const auto& p : prompts) EXPECT_EQ(tokenizer.encode_for_model(p.text), p.tokens) << what << ": " << p.text;
}

at::Tensor logits_for(const CausalLM& model, const std::vector<std::int32_t>& tokens) {
  at::NoGradGuard no_grad;
  std::vector<std::int64_t> ids(tokens.begin(), tokens.end());
  return model.forward_tokens(at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, -1}));
}


// The exported model reproduces the original exactly: weights, logits and token ids.
void expect_same_model(const fs::path& exported, const fs::path& original, const std::vector<Prompt>& prompts) {
  CausalLM a = load_model(original), b = load_model(exported);
  EXPECT_EQ(b.fingerprint(), a.fingerprint()) << exported;
  EXPECT_EQ(b.config().architecture, a.config().architecture);
  EXPECT_EQ(b.config().max_position_embeddings, a.config().max_position_embeddings);
  auto ta = load_model_tokenizer(original), tb = load_model_tokenizer(exported);
  expect_reference_tokens(*tb, prompts, exported.string());
  expect_tokenizes_like(*tb, *ta, exported.string());
  for (const auto& p : prompts) EXPECT_TRUE(at::equal(logits_for(a, p.tokens), logits_for(b, p.tokens))) << p.text;
}

// ---------------------------------------------------------------------------------------------
// 1. Reference token ids from every reference file

TEST(ModelTokenizer, TinyLlamaHfAndGgufGiveLlamaCppTokenIds) {
  auto prompts = llama_prompts();
  ASSERT_EQ(prompts.size(), 5u);
  auto hf = load_model_tokenizer(repo_reference() / "tiny-llama-hf");
  auto gguf = load_model_tokenizer(repo_reference() / "tiny-llama.gguf");
  EXPECT_EQ(hf->kind(), "sentencepiece");
  EXPECT_EQ(gguf->kind(), "sentencepiece");
  EXPECT_TRUE(hf->specials().add_bos);
  expect_reference_tokens(*hf, prompts, "tiny-llama-hf");
  expect_reference_tokens(*gguf, prompts, "tiny-llama.gguf");
  expect_tokenizes_like(*gguf, *hf, "tiny-llama.gguf vs tiny-llama-hf");
  // The config.json / model.safetensors paths inside the directory find the same tokenizer.
  auto via_file = load_model_tokenizer(repo_reference() / "tiny-llama-hf" / "model.safetensors");
  expect_reference_tokens(*via_file, prompts, "tiny-llama-hf/model.safetensors");
}

TEST(ModelTokenizer, TinyGpt2HfAndGgufGiveLlamaCppTokenIds) {
  auto prompts = gpt2_prompts();
  ASSERT_EQ(prompts.size(), 3u);
  auto hf = load_model_tokenizer(repo_reference() / "tiny-gpt2-hf");
  EXPECT_EQ(hf->kind(), "bpe");
  EXPECT_FALSE(hf->specials().add_bos);
  expect_reference_tokens(*hf, prompts, "tiny-gpt2-hf");
  if (!fs::exists(shared_gpt2_gguf())) GTEST_SKIP() << shared_gpt2_gguf() << " is absent";
  auto gguf = load_model_tokenizer(shared_gpt2_gguf());
  expect_reference_tokens(*gguf, prompts, "tiny-gpt2.gguf");
  expect_tokenizes_like(*gguf, *hf, "tiny-gpt2.gguf vs tiny-gpt2-hf");
}

TEST(ModelTokenizer, MissingTokenizerNamesTheFile) {
  TempDir dir;
  fs::create_directories(dir / "m");
  fs::copy_file(repo_reference() / "tiny-llama-hf" / "config.json", dir / "m" / "config.json");
  try {
    load_model_tokenizer(dir / "m");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "m").string()), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_model_tokenizer(dir / "absent"), Error);
  tensor::GgufWriter writer;  // a GGUF file without tokenizer metadata
  writer.set("general.architecture", tensor::GgufValue::string("llama"));
  writer.write(dir / "bare.gguf");
  try {
    load_model_tokenizer(dir / "bare.gguf");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bare.gguf"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.model"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// 2. The metadata written equals llama.cpp's converter's

const tensor::GgufValue& metadata_value(const std::vector<std::pair<std::string, tensor::GgufValue>>& metadata, const std::string& key) {
  for (const auto& [k, v] : metadata)
    if (k == key) return v;
  throw std::runtime_error("no metadata key " + key);
}

bool has_metadata(const std::vector<std::pair<std::string, tensor::GgufValue>>& metadata, const std::string& key) {
  for (const auto& [k, v] : metadata)
    if (k == key) return true;
  return false;
}

// Written to a GGUF file and read back, so the comparison goes through the file format.
std::unique_ptr<tensor::GgufFile> metadata_file(const std::vector<std::pair<std::string, tensor::GgufValue>>& metadata,
                                        const fs::path& path) {
  tensor::GgufWriter writer;
  writer.set("general.architecture", tensor::GgufValue::string("llama"));
  for (const auto& [k, v] : metadata) writer.set(k, v);
  writer.write(path);
  return tensor::open_gguf(path);
}

TEST(GgufTokenizerMetadata, SentencePieceMatchesLlamaCppConverter) {
  TempDir dir;
  auto tokenizer = load_model_tokenizer(repo_reference() / "tiny-llama-hf");
  auto metadata = gguf_tokenizer_metadata(*tokenizer);
  auto ours = metadata_file(metadata, dir / "ours.gguf");
  tensor::GgufFile theirs(repo_reference() / "tiny-llama.gguf");
  for (const char* key : {"tokenizer.ggml.model", "tokenizer.ggml.pre"})
    EXPECT_EQ(ours->get_string(key), theirs.get_string(key)) << key;
  EXPECT_EQ(ours->get_string_array("tokenizer.ggml.tokens"), theirs.get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(ours->get_f32_array("tokenizer.ggml.scores"), theirs.get_f32_array("tokenizer.ggml.scores"));
  EXPECT_EQ(ours->get_i32_array("tokenizer.ggml.token_type"), theirs.get_i32_array("tokenizer.ggml.token_type"));
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"})
    EXPECT_EQ(ours->get_i64(key), theirs.get_i64(key)) << key;
  for (const char* key : {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"})
    EXPECT_EQ(ours->get_bool(key), theirs.get_bool(key)) << key;
  EXPECT_EQ(ours->get_i64("tokenizer.ggml.unknown_token_id"), 0);
  EXPECT_TRUE(ours->get_bool("tokenizer.ggml.add_space_prefix"));  // llama.cpp's default, stated
  EXPECT_FALSE(has_metadata(metadata, "tokenizer.ggml.padding_token_id"));  // the model has no pad
  // The project's GGUF reader turns it back into the same tokenizer.
  auto back = load_model_tokenizer(dir / "ours.gguf");
  expect_reference_tokens(*back, llama_prompts(), "metadata of tiny-llama-hf");
  expect_tokenizes_like(*back, *tokenizer, "metadata of tiny-llama-hf");
}

TEST(GgufTokenizerMetadata, ByteLevelBpeMatchesLlamaCppConverter) {
  TempDir dir;
  auto tokenizer = load_model_tokenizer(repo_reference() / "tiny-gpt2-hf");
  auto metadata = gguf_tokenizer_metadata(*tokenizer);
  EXPECT_EQ(std::get<std::string>(metadata_value(metadata, "tokenizer.ggml.model").data), "gpt2");
  EXPECT_EQ(std::get<std::string>(metadata_value(metadata, "tokenizer.ggml.pre").data), "gpt-2");
  EXPECT_FALSE(has_metadata(metadata, "tokenizer.ggml.scores"));
  auto ours = metadata_file(metadata, dir / "ours.gguf");
  EXPECT_EQ(ours->get_string_array("tokenizer.ggml.merges").size(), 50000u);
  EXPECT_EQ(ours->get_string_array("tokenizer.ggml.merges").front(), "\xC4\xA0 t");  // "Ġ t"
  EXPECT_EQ(ours->get_i32_array("tokenizer.ggml.token_type").back(), 3);           // <|endoftext|>: control
  EXPECT_FALSE(ours->get_bool("tokenizer.ggml.add_bos_token"));
  auto back = load_model_tokenizer(dir / "ours.gguf");
  expect_reference_tokens(*back, gpt2_prompts(), "metadata of tiny-gpt2-hf");
  expect_tokenizes_like(*back, *tokenizer, "metadata of tiny-gpt2-hf");

  if (!fs::exists(shared_gpt2_gguf())) GTEST_SKIP() << shared_gpt2_gguf() << " is absent";
  tensor::GgufFile theirs(shared_gpt2_gguf());
  for (const char* key : {"tokenizer.ggml.model", "tokenizer.ggml.pre"})
    EXPECT_EQ(ours->get_string(key), theirs.get_string(key)) << key;
  for (const char* key : {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})
    EXPECT_EQ(ours->get_string_array(key), theirs.get_string_array(key)) << key;
  EXPECT_EQ(ours->get_i32_array("tokenizer.ggml.token_type"), theirs.get_i32_array("tokenizer.ggml.token_type"));
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"})
    EXPECT_EQ(ours->get_i64(key), theirs.get_i64(key)) << key;
}

TEST(GgufTokenizerMetadata, TokenizerJsonPreTokenizersGetLlamaCppNames) {
  // tokenizer.json files carry regexes, not names: GPT-2's, Llama 3's and Qwen2's rules are
  // recognised and named as llama.cpp names them, and the GGUF form tokenizes identically.
  TempDir dir;
  auto gpt2 = load_model_tokenizer(repo_reference() / "tiny-gpt2-hf");
  save_tokenizer_hf(*gpt2, dir / "gpt2");
  const json base = json::parse(read_file(dir / "gpt2" / "tokenizer.json"));
  struct Case {
    const char* name;
    const char* pattern;
    bool ignore_merges;
  };
  for (const Case& c : {Case{"gpt-2", text::kGpt2Pattern, false}, Case{"llama-bpe", text::kLlama3Pattern, true},
                        Case{"qwen2", text::kQwen2Pattern, false}}) {
    json doc = base;
    doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = c.pattern;
    doc["model"]["ignore_merges"] = c.ignore_merges;
    fs::create_directories(dir / c.name);
    write_file_atomic(dir / c.name / "tokenizer.json", doc.dump());
    auto tokenizer = text::load_tokenizer(dir / c.name);
    auto metadata = gguf_tokenizer_metadata(*tokenizer);
    EXPECT_EQ(std::get<std::string>(metadata_value(metadata, "tokenizer.ggml.pre").data), c.name);
    metadata_file(metadata, dir / (std::string(c.name) + ".gguf"));
    auto back = load_model_tokenizer(dir / (std::string(c.name) + ".gguf"));
    expect_tokenizes_like(*back, *tokenizer, c.name);
    for (const auto& p : gpt2_prompts()) EXPECT_EQ(back->encode(p.text), tokenizer->encode(p.text)) << c.name;
    for (const auto& p : llama_prompts()) EXPECT_EQ(back->encode(p.text), tokenizer->encode(p.text)) << c.name;
  }
}

TEST(GgufTokenizerMetadata, UnigramSentencePieceBecomesT5) {
  TempDir dir;
  tensor::GgufFile reference(repo_reference() / "tiny-llama.gguf");
  text::SentencePieceVocab vocab;
  vocab.tokens = reference.get_string_array("tokenizer.ggml.tokens");
  vocab.scores = reference.get_f32_array("tokenizer.ggml.scores");
  for (auto& s : vocab.scores) s = s / 100.0f - 1.0f;  // log-probability-like for the unigram model
  vocab.token_types = reference.get_i32_array("tokenizer.ggml.token_type");
  vocab.unigram = true;
  auto unigram = text::make_sentencepiece_tokenizer(vocab);
  auto metadata = gguf_tokenizer_metadata(*unigram);
  EXPECT_EQ(std::get<std::string>(metadata_value(metadata, "tokenizer.ggml.model").data), "t5");
  metadata_file(metadata, dir / "unigram.gguf");
  auto back = load_model_tokenizer(dir / "unigram.gguf");
  ASSERT_NE(dynamic_cast<const text::SentencePieceTokenizer*>(back.get()), nullptr);
  EXPECT_TRUE(dynamic_cast<const text::SentencePieceTokenizer&>(*back).is_unigram());
  expect_tokenizes_like(*back, *unigram, "unigram");
  for (const auto& p : llama_prompts()) EXPECT_EQ(back->encode(p.text), unigram->encode(p.text)) << p.text;
}

TEST(GgufTokenizerMetadata, RefusesWhatGgufCannotExpress) {
  // SentencePiece-style BPE from a tokenizer.json (spaces as "▁"): llama.cpp's BPE is byte-level.
  text::BpeOptions options;
  options.byte_level = false;
  options.metaspace = true;
  text::BpeTokenizer metaspace({"<unk>", "a", "b", "ab", "\xE2\x96\x81"}, {{"a", "b"}}, options, {}, "test");
  try {
    gguf_tokenizer_metadata(metaspace);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.model"), std::string::npos) << e.what();
  }
  TempDir dir;
  EXPECT_THROW(save_tokenizer_hf(metaspace, dir / "m"), Error);
  // A byte-level pre-tokenizer llama.cpp has no name for.
  text::BpeOptions custom;
  custom.pre_tokenizer = {{R"(\d+|\D+)"}};
  text::BpeTokenizer odd({"a", "b", "ab"}, {{"a", "b"}}, custom, {}, "test");
  try {
    gguf_tokenizer_metadata(odd);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pre-tokenizer"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Export round trips

TEST(Export, TinyLlamaHfToGgufAndBack) {
  TempDir dir;
  const fs::path hf = repo_reference() / "tiny-llama-hf";
  export_model(hf, dir / "tiny-llama.gguf", {});
  EXPECT_TRUE(tensor::is_gguf_file(dir / "tiny-llama.gguf"));
  expect_same_model(dir / "tiny-llama.gguf", hf, llama_prompts());
  // The tensors are what llama.cpp's converter wrote (q/k rows permuted its way).
  tensor::GgufFile ours(dir / "tiny-llama.gguf"), theirs(repo_reference() / "tiny-llama.gguf");
  for (const auto& info : theirs.tensors()) {
    ASSERT_TRUE(ours.has(info.name)) << info.name;
    EXPECT_TRUE(at::equal(ours.load(info.name), theirs.load(info.name))) << info.name;
  }
  ExportOptions to_hf;
  to_hf.format = ExportFormat::hf;
  export_model(dir / "tiny-llama.gguf", dir / "back", to_hf);
  EXPECT_TRUE(fs::exists(dir / "back" / "tokenizer.model"));
  EXPECT_TRUE(fs::exists(dir / "back" / "tokenizer_config.json"));
  expect_same_model(dir / "back", hf, llama_prompts());
}

TEST(Export, LlamaCppGgufToHf) {
  TempDir dir;
  ExportOptions to_hf;
  to_hf.format = ExportFormat::hf;
  export_model(repo_reference() / "tiny-llama.gguf", dir / "hf", to_hf);
  expect_same_model(dir / "hf", repo_reference() / "tiny-llama.gguf", llama_prompts());
  expect_same_model(dir / "hf", repo_reference() / "tiny-llama-hf", llama_prompts());
  // The SentencePiece model written for it names its special tokens itself.
  auto sp = text::load_sentencepiece(dir / "hf" / "tokenizer.model");
  EXPECT_EQ(sp->specials().bos, 1);
  EXPECT_EQ(sp->specials().eos, 2);
  EXPECT_EQ(load_config(dir / "hf").bos_token_id, 1);
  // GGUF -> GGUF keeps the tokenizer metadata as it was.
  export_model(repo_reference() / "tiny-llama.gguf", dir / "copy.gguf", {});
  expect_same_model(dir / "copy.gguf", repo_reference() / "tiny-llama.gguf", llama_prompts());
}

TEST(Export, TinyGpt2HfToGgufAndBack) {
  TempDir dir;
  const fs::path hf = repo_reference() / "tiny-gpt2-hf";
  export_model(hf, dir / "tiny-gpt2.gguf", {});
  expect_same_model(dir / "tiny-gpt2.gguf", hf, gpt2_prompts());
  ExportOptions to_hf;
  to_hf.format = ExportFormat::hf;
  export_model(dir / "tiny-gpt2.gguf", dir / "back", to_hf);
  EXPECT_TRUE(fs::exists(dir / "back" / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(dir / "back" / "vocab.json"));
  expect_same_model(dir / "back", hf, gpt2_prompts());
  // tokenizer.json in the layout transformers reads.
  json doc = json::parse(read_file(dir / "back" / "tokenizer.json"));
  EXPECT_EQ(doc["model"]["type"], "BPE");
  EXPECT_EQ(doc["model"]["vocab"]["<|endoftext|>"], 50256);
  EXPECT_EQ(doc["model"]["merges"].size(), 50000u);
  EXPECT_EQ(doc["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(doc["decoder"]["type"], "ByteLevel");
  json config = json::parse(read_file(dir / "back" / "tokenizer_config.json"));
  EXPECT_EQ(config["eos_token"], "<|endoftext|>");
  EXPECT_EQ(config["add_bos_token"], false);

  if (!fs::exists(shared_gpt2_gguf())) GTEST_SKIP() << shared_gpt2_gguf() << " is absent";
  export_model(shared_gpt2_gguf(), dir / "from-llama-cpp", to_hf);
  expect_same_model(dir / "from-llama-cpp", hf, gpt2_prompts());
}

TEST(Export, TemplateProcessingKeepsBosOfByteLevelBpe) {
  // A byte-level BPE that adds bos (as Llama 3 does) keeps doing so through tokenizer.json and GGUF.
  TempDir dir;
  auto gpt2 = load_model_tokenizer(repo_reference() / "tiny-gpt2-hf");
  auto specials = gpt2->specials();
  specials.add_bos = true;
  gpt2->set_specials(specials);
  save_tokenizer_hf(*gpt2, dir / "hf");
  auto from_json = text::load_tokenizer(dir / "hf");
  EXPECT_TRUE(from_json->specials().add_bos);
  expect_tokenizes_like(*from_json, *gpt2, "tokenizer.json with bos");
  EXPECT_EQ(from_json->encode_for_model("Hello").front(), 50256);
  metadata_file(gguf_tokenizer_metadata(*gpt2), dir / "bos.gguf");
  expect_tokenizes_like(*load_model_tokenizer(dir / "bos.gguf"), *gpt2, "GGUF with bos");
}

TEST(Export, Q8AndF16StayWithinTolerance) {
  TempDir dir;
  const fs::path hf = repo_reference() / "tiny-llama-hf";
  CausalLM reference = load_model(hf);
  ExportOptions q8;
  q8.quantize_q8_0 = true;
  export_model(hf, dir / "q8.gguf", q8);
  tensor::GgufFile file(dir / "q8.gguf");
  EXPECT_EQ(file.find("blk.0.attn_q.weight")->type, tensor::StoredType::q8_0);
  EXPECT_EQ(file.find("token_embd.weight")->type, tensor::StoredType::q8_0);
  EXPECT_EQ(file.find("blk.0.attn_norm.weight")->type, tensor::StoredType::f32);
  EXPECT_EQ(file.get_i64("general.file_type"), 7);  // MOSTLY_Q8_0
  CausalLM quantized = load_model(dir / "q8.gguf");
  EXPECT_EQ(stored_dtype(dir / "q8.gguf"), at::kFloat);
  // The same model with every matrix quantized here by ggml's reference rule (blocks of 32 along
  // rows; d = max|x| / 127 stored as f16; q = round(x / d)); rows of 176 stay f32 as in the file.
  ModelWeights fake = reference.weights();
  auto fake_q8 = [](at::Tensor& t) {
    if (!t.defined() || t.size(-1) % 32 != 0) return;
    auto blocks = t.to(at::kFloat).reshape({-1, 32});
    auto d = blocks.abs().amax(1, /*keepdim=*/true) / 127.0f;
    auto inverse = at::where(d > 0, 1.0f / d, at::zeros_like(d));
    auto q = at::round(blocks * inverse);
    t = (q * d.to(at::kHalf).to(at::kFloat)).reshape(t.sizes()).contiguous();
  };
  fake_q8(fake.token_embedding);
  fake_q8(fake.lm_head);
  for (auto& l : fake.layers) {
    fake_q8(l.qkv_weight);
    fake_q8(l.out_weight);
    fake_q8(l.up_weight);
    fake_q8(l.down_weight);
  }
  CausalLM expected_q8(reference.config(), fake);
  for (const auto& p : llama_prompts()) {
    auto expected = logits_for(reference, p.tokens);
    auto actual = logits_for(quantized, p.tokens);
    EXPECT_LT(max_abs_diff(actual, logits_for(expected_q8, p.tokens)), 1e-4) << p.text;
    // Against f32: these deliberately large random weights amplify rounding (bf16 moves the
    // logits by up to 7% of their spread, see reference_test.cpp); Q8_0 measured ~10%.
    EXPECT_LT(max_abs_diff(expected, actual), 0.15 * expected.abs().max().item<double>()) << p.text;
  }
  expect_reference_tokens(*load_model_tokenizer(dir / "q8.gguf"), llama_prompts(), "q8.gguf");

  ExportOptions f16;
  f16.dtype = at::kHalf;
  export_model(hf, dir / "f16.gguf", f16);
  EXPECT_EQ(tensor::GgufFile(dir / "f16.gguf").find("blk.0.attn_q.weight")->type, tensor::StoredType::f16);
  EXPECT_EQ(stored_dtype(dir / "f16.gguf"), at::kHalf);
  // Exported again without a dtype, an f16 checkpoint stays f16.
  ExportOptions to_hf;
  to_hf.format = ExportFormat::hf;
  export_model(dir / "f16.gguf", dir / "f16-hf", to_hf);
  EXPECT_EQ(load_config(dir / "f16-hf").torch_dtype, "float16");
  EXPECT_EQ(stored_dtype(dir / "f16-hf"), at::kHalf);
  CausalLM half = load_model(dir / "f16-hf");
  for (const auto& p : llama_prompts()) {
    auto expected = logits_for(reference, p.tokens);
    EXPECT_LT(max_abs_diff(expected, logits_for(half, p.tokens)), 0.01 * expected.abs().max().item<double>());
  }
}

TEST(Export, PadsTheVocabularyToTheEmbedding) {
  // Models often have more embedding rows than tokens (vocabularies rounded up); llama.cpp takes
  // the vocabulary size from the token list, so the export pads it as llama.cpp's converter does.
  TempDir dir;
  ModelConfig config = load_config(repo_reference() / "tiny-llama-hf");
  config.vocab_size = 1024;
  CausalLM model(config, random_weights(config, 7, at::kFloat, at::kCPU), "padded");
  save_model_hf(model, dir / "hf", tokenizer_files_in(repo_reference() / "tiny-llama-hf"));
  export_model(dir / "hf", dir / "padded.gguf", {});
  tensor::GgufFile file(dir / "padded.gguf");
  auto tokens = file.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 1024u);
  EXPECT_EQ(tokens[1000], "[PAD1000]");
  EXPECT_EQ(file.get_i32_array("tokenizer.ggml.token_type")[1023], 5);  // unused
  EXPECT_EQ(file.get_f32_array("tokenizer.ggml.scores").size(), 1024u);
  auto tokenizer = load_model_tokenizer(dir / "padded.gguf");
  expect_reference_tokens(*tokenizer, llama_prompts(), "padded.gguf");
  EXPECT_EQ(load_model(dir / "padded.gguf").fingerprint(), model.fingerprint());

  // The other way round, a tokenizer bigger than the embedding, cannot be a working GGUF file.
  config.vocab_size = 900;
  save_model_hf(CausalLM(config, random_weights(config, 7, at::kFloat, at::kCPU)), dir / "small",
                tokenizer_files_in(repo_reference() / "tiny-llama-hf"));
  try {
    export_model(dir / "small", dir / "small.gguf", {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("900"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "small.gguf"));
}

TEST(Export, CarriesTheChatTemplate) {
  TempDir dir;
  fs::copy(repo_reference() / "tiny-llama-hf", dir / "chat");
  json config = json::parse(read_file(dir / "chat" / "tokenizer_config.json"));
  config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
  write_file_atomic(dir / "chat" / "tokenizer_config.json", config.dump());
  export_model(dir / "chat", dir / "chat.gguf", {});
  EXPECT_EQ(tensor::GgufFile(dir / "chat.gguf").get_string("tokenizer.chat_template"), config["chat_template"]);
  // ... and a tokenizer.json written from GGUF is recognised again as GPT-2's on the way back.
  export_model(repo_reference() / "tiny-gpt2-hf", dir / "g.gguf", {});
  ExportOptions to_hf;
  to_hf.format = ExportFormat::hf;
  export_model(dir / "g.gguf", dir / "g-hf", to_hf);
  export_model(dir / "g-hf", dir / "g2.gguf", {});
  tensor::GgufFile again(dir / "g2.gguf"), first(dir / "g.gguf");
  EXPECT_EQ(again.get_string("tokenizer.ggml.pre"), "gpt-2");
  for (const char* key : {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})
    EXPECT_EQ(again.get_string_array(key), first.get_string_array(key)) << key;
  EXPECT_EQ(again.get_i32_array("tokenizer.ggml.token_type"), first.get_i32_array("tokenizer.ggml.token_type"));
}

TEST(Export, ErrorsNameThePaths) {
  TempDir dir;
  try {
    export_model(dir / "absent", dir / "x.gguf", {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "absent").string()), std::string::npos) << e.what();
  }
  fs::create_directories(dir / "a-directory");
  try {
    export_model(repo_reference() / "tiny-llama-hf", dir / "a-directory", {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a-directory"), std::string::npos) << e.what();
  }
  ExportOptions q8_hf;
  q8_hf.format = ExportFormat::hf;
  q8_hf.quantize_q8_0 = true;
  EXPECT_THROW(export_model(repo_reference() / "tiny-llama-hf", dir / "hf", q8_hf), Error);
}

}  // namespace
}  // namespace userip::lm
