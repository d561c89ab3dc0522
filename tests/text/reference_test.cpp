// Conformance with ../shared/reference: the token ids llama.cpp produced for the reference
// checkpoints' prompts (BOS included for the Llama model). The fixtures in tests/data/tokenizer
// are copies (tests/data/tokenizer/make_fixtures.py), so this runs without the shared folder;
// where the folder is present the originals are checked too.
#include <gtest/gtest.h>

#include "support/temp_dir.h"
#include "text/text_test_support.h"
#include "userip/text/bpe.h"
#include "userip/text/sentencepiece.h"
#include "userip/util/error.h"

namespace userip::text {
namespace {

using testing::text::shared_reference;

struct Expected {
  std::string text;
  std::vector<std::int32_t> tokens;
};

std::vector<Expected> expected_tokens(const std::string& model) {
  std::vector<Expected> out;
  const json all = read_json(fixtures() / "reference-tokens.json");
  for (const auto& e : all.at(model)) {
    out.push_back({e.at("text").get<std::string>(), e.at("tokens").get<std::vector<std::int32_t>>()});
  }
  return out;
}

void expect_matches(const Tokenizer& tok, const std::vector<Expected>& expected) {
  ASSERT_FALSE(expected.empty());
  for (const auto& e : expected) {
    EXPECT_EQ(tok.encode_for_model(e.text), e.tokens) << e.text;
    EXPECT_EQ(tok.decode(tok.encode(e.text)), e.text);
  }
}

TEST(ReferenceTokens, FixturesMatchTheSharedReference) {
  const auto ref = shared_reference();
  if (ref.empty()) GTEST_SKIP() << "../shared/reference is not present";
  for (const std::string model : {"tiny-llama", "tiny-gpt2"}) {
    const auto original = read_json(ref / "logits" / (model + ".json"));
    const auto copy = expected_tokens(model);
    ASSERT_EQ(original.size(), copy.size());
    for (std::size_t i = 0; i < copy.size(); ++i) {
      EXPECT_EQ(original[i].at("text").get<std::string>(), copy[i].text);
      EXPECT_EQ(original[i].at("tokens").get<std::vector<std::int32_t>>(), copy[i].tokens);
    }
  }
}

TEST(ReferenceTokens, TinyLlamaTokenizerModel) {
  const auto tok = load_tokenizer(model_dir("tiny-llama"));
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 1000);
  EXPECT_EQ(tok->specials().bos, 1);
  EXPECT_EQ(tok->specials().eos, 2);
  EXPECT_EQ(tok->specials().unk, 0);
  EXPECT_TRUE(tok->specials().add_bos);
  EXPECT_FALSE(tok->specials().add_eos);
  expect_matches(*tok, expected_tokens("tiny-llama"));
}

TEST(ReferenceTokens, TinyLlamaFromGgufMetadata) {
  // The tokenizer.* keys llama.cpp's converter wrote into tiny-llama.gguf.
  const auto meta = read_json(fixtures() / "tiny-llama-gguf-tokenizer.json");
  ASSERT_EQ(meta.at("tokenizer.ggml.model"), "llama");
  SentencePieceVocab vocab;
  vocab.tokens = meta.at("tokenizer.ggml.tokens").get<std::vector<std::string>>();
  vocab.scores = meta.at("tokenizer.ggml.scores").get<std::vector<float>>();
  vocab.token_types = meta.at("tokenizer.ggml.token_type").get<std::vector<std::int32_t>>();
  vocab.bos = meta.at("tokenizer.ggml.bos_token_id").get<std::int32_t>();
  vocab.eos = meta.at("tokenizer.ggml.eos_token_id").get<std::int32_t>();
  const auto tok = make_sentencepiece_tokenizer(vocab);
  SpecialTokens specials = tok->specials();
  specials.add_bos = meta.at("tokenizer.ggml.add_bos_token").get<bool>();
  tok->set_specials(specials);
  expect_matches(*tok, expected_tokens("tiny-llama"));
  EXPECT_EQ(tok->piece_type(0), PieceType::kUnknown);
  EXPECT_EQ(tok->piece_type(1), PieceType::kControl);
  EXPECT_EQ(tok->piece_type(3), PieceType::kByte);
}

TEST(ReferenceTokens, TinyGpt2VocabMerges) {
  const auto tok = load_tokenizer(model_dir("tiny-gpt2"));
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->specials().bos, 50256);
  EXPECT_EQ(tok->specials().eos, 50256);
  EXPECT_FALSE(tok->specials().add_bos);
  expect_matches(*tok, expected_tokens("tiny-gpt2"));
}

TEST(ReferenceTokens, SharedReferenceDirectoriesLoadDirectly) {
  const auto ref = shared_reference();
  if (ref.empty()) GTEST_SKIP() << "../shared/reference is not present";
  expect_matches(*load_tokenizer(ref / "tiny-llama-hf"), expected_tokens("tiny-llama"));
  expect_matches(*load_tokenizer(ref / "tiny-gpt2-hf"), expected_tokens("tiny-gpt2"));
}

// --- special tokens from the checkpoint's configuration -----------------------------------------

TEST(SpecialTokens, ConfigFilesOverrideInOrder) {
  TempDir dir;
  for (const char* f : {"vocab.json", "merges.txt"}) {
    std::filesystem::copy_file(model_dir("tiny-gpt2") / f, dir / f);
  }
  // config.json names ids; tokenizer_config.json (read last) names strings and wins.
  dir.write("config.json", R"({"bos_token_id": 50256, "eos_token_id": [198, 50256], "pad_token_id": null})");
  dir.write("special_tokens_map.json", R"({"pad_token": {"content": "<|pad|>", "special": true}})");
  dir.write("tokenizer_config.json", R"({"add_bos_token": true, "eos_token": "Ċ",
      "added_tokens_decoder": {"50257": {"content": "<|pad|>", "special": true}}})");
  const auto tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->specials().bos, 50256);
  EXPECT_EQ(tok->specials().eos, 198);  // "Ċ" is the newline token
  EXPECT_EQ(tok->specials().pad, 50257);
  EXPECT_TRUE(tok->specials().add_bos);
  EXPECT_EQ(tok->vocab_size(), 50258);
  EXPECT_EQ(tok->encode("a<|pad|>"), (std::vector<std::int32_t>{64, 50257}));
  EXPECT_EQ(tok->encode_for_model("Hello"), (std::vector<std::int32_t>{50256, 15496}));
}

TEST(SpecialTokens, MalformedConfigIsAnErrorNamingTheFile) {
  TempDir dir;
  std::filesystem::copy_file(model_dir("tiny-llama") / "tokenizer.model", dir / "tokenizer.model");
  dir.write("tokenizer_config.json", R"({"add_bos_token": "yes"})");
  try {
    load_tokenizer(dir.path());
    ADD_FAILURE() << "no error";
  } catch (const userip::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
  dir.write("tokenizer_config.json", "{ broken");
  EXPECT_THROW(load_tokenizer(dir.path()), userip::Error);
  dir.write("tokenizer_config.json", R"({"add_bos_token": false})");
  dir.write("config.json", R"({"eos_token_id": 5000})");
  EXPECT_THROW(load_tokenizer(dir.path()), userip::Error);  // id outside the vocabulary
  dir.write("config.json", R"({"eos_token_id": 2})");
  EXPECT_FALSE(load_tokenizer(dir.path())->specials().add_bos);
}

TEST(LoadTokenizer, MissingOrBrokenFilesAreErrorsNamingThem) {
  TempDir dir;
  const auto expect_error = [](const std::filesystem::path& path, const std::string& needle) {
    try {
      load_tokenizer(path);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const userip::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(dir / "absent", "no such model directory");
  expect_error(dir.path(), "no tokenizer found");
  dir.write("vocab.json", "{}");
  expect_error(dir.path(), "merges.txt must come together");
  std::filesystem::remove(dir / "vocab.json");

  const std::string model = userip::read_file(model_dir("tiny-llama") / "tokenizer.model");
  dir.write("tokenizer.model", model.substr(0, model.size() / 2));  // truncated
  expect_error(dir.path(), "tokenizer.model");
  dir.write("tokenizer.model", "this is not a protobuf");
  expect_error(dir.path(), "tokenizer.model");
  dir.write("tokenizer.model", "");
  expect_error(dir.path(), "tokenizer.model");
}

TEST(LoadTokenizer, PrefersTokenizerModelOverASentencePieceTokenizerJson) {
  TempDir dir;
  std::filesystem::copy_file(model_dir("tiny-llama") / "tokenizer.model", dir / "tokenizer.model");
  // A converted (non-byte-level) tokenizer.json beside it is not used.
  dir.write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"<unk>": 0}, "merges": []},
      "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"}})");
  const auto tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->kind(), "sentencepiece");
  expect_matches(*tok, expected_tokens("tiny-llama"));
}

struct FakeTokenizer : Tokenizer {
  std::vector<std::int32_t> encode(std::string_view) const override { return {}; }
  std::string decode(const std::vector<std::int32_t>&) const override { return {}; }
  std::int32_t vocab_size() const override { return 3; }
  std::string token_text(std::int32_t id) const override { return std::string(1, static_cast<char>('a' + id)); }
  std::string kind() const override { return "fake"; }
};

TEST(TokenizerInterface, DefaultTokenIdScansTheVocabulary) {
  FakeTokenizer tok;
  EXPECT_EQ(tok.token_id("c"), 2);
  EXPECT_EQ(tok.token_id("z"), -1);
  SpecialTokens s;
  s.bos = 0;
  s.eos = 1;
  s.add_bos = s.add_eos = true;
  tok.set_specials(s);
  EXPECT_EQ(tok.encode_for_model("x"), (std::vector<std::int32_t>{0, 1}));
}

}  // namespace
}  // namespace userip::text
