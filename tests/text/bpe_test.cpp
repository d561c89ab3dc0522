// Byte-level BPE: the byte table, pre-tokenization rules (GPT-2, Llama 3, Qwen2), merging,
// tokenizer.json loading with added tokens, GGUF-style construction, and malformed input.
#include "userip/text/bpe.h"

#include <gtest/gtest.h>

#include <thread>

#include "support/temp_dir.h"
#include "text/text_test_support.h"
#include "userip/util/error.h"

namespace userip::text {
namespace {

using Strings = std::vector<std::string>;

const BpeTokenizer& gpt2() {
  static const auto tok =
      load_bpe_vocab_merges(model_dir("tiny-gpt2") / "vocab.json", model_dir("tiny-gpt2") / "merges.txt");
  return *tok;
}

// A tokenizer over a tiny vocabulary: letters map to themselves in GPT-2's byte table, so
// the test can name tokens plainly.
std::unique_ptr<BpeTokenizer> tiny(const Strings& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                                   std::vector<SplitStep> pre = {}) {
  BpeOptions options;
  options.pre_tokenizer = std::move(pre);
  return std::make_unique<BpeTokenizer>(vocab, merges, options, std::vector<AddedToken>{}, "test vocabulary");
}

Strings texts(const BpeTokenizer& tok, const std::vector<std::int32_t>& ids) {
  Strings out;
  for (auto id : ids) out.push_back(tok.token_text(id));
  return out;
}

TEST(BpeByteTable, MapsPrintableBytesToThemselvesAndTheRestAboveU0100) {
  const auto& table = byte_to_unicode();
  ASSERT_EQ(table.size(), 256u);
  EXPECT_EQ(table['A'], "A");
  EXPECT_EQ(table['!'], "!");
  EXPECT_EQ(table[0xE9], "\xC3\xA9");  // é stays é
  // Non-printable bytes take U+0100 + their rank among non-printable bytes: 0x00..0x20 are
  // ranks 0..32, so space (0x20) is U+0120 "Ġ" and newline (0x0A) is U+010A "Ċ"; 0x7F..0xA0
  // follow as ranks 33..66 and 0xAD is rank 67 (U+0143 "Ń").
  EXPECT_EQ(table[' '], "\xC4\xA0");
  EXPECT_EQ(table['\n'], "\xC4\x8A");
  EXPECT_EQ(table[0x7F], "\xC4\xA1");  // U+0121
  EXPECT_EQ(table[0xAD], "\xC5\x83");  // U+0143
  std::set<std::string> distinct(table.begin(), table.end());
  EXPECT_EQ(distinct.size(), 256u);
}

TEST(BpePreTokenizer, Gpt2RulesSplitAsGpt2Does) {
  const auto& tok = gpt2();
  EXPECT_EQ(tok.pre_tokenize("Hello world"), (Strings{"Hello", " world"}));
  // A run of spaces keeps its last space for the following word.
  EXPECT_EQ(tok.pre_tokenize("  leading"), (Strings{" ", " leading"}));
  EXPECT_EQ(tok.pre_tokenize("don't   stop"), (Strings{"don", "'t", "  ", " stop"}));
  // Contractions are case-sensitive in GPT-2's pattern.
  EXPECT_EQ(tok.pre_tokenize("DON'T stop"), (Strings{"DON", "'", "T", " stop"}));
  EXPECT_EQ(tok.pre_tokenize("\tHello"), (Strings{"\t", "Hello"}));
  EXPECT_EQ(tok.pre_tokenize("1234567 and 3.14"), (Strings{"1234567", " and", " 3", ".", "14"}));
  EXPECT_EQ(tok.pre_tokenize("end.\n\n"), (Strings{"end", ".", "\n\n"}));
}

TEST(BpePreTokenizer, NextLineIsWhitespaceAsInTheRegexEnginesGpt2WasDefinedWith) {
  // U+0085 has the Unicode White_Space property (Python `regex`, Oniguruma, llama.cpp) though
  // PCRE2's \s and JavaScript's \s leave it out. As whitespace, "x NEL NEL y" splits into
  // x | NEL | NEL | y; as punctuation it would be x | NEL NEL | y.
  const std::string nel = "\xC2\x85";
  EXPECT_EQ(gpt2().pre_tokenize("x" + nel + nel + "y"), (Strings{"x", nel, nel, "y"}));
}

TEST(BpePreTokenizer, Llama3RulesOnHandDerivedCases) {
  // Splits worked out by hand from the Llama 3 pattern (see kLlama3Pattern):
  //  - contractions are case-insensitive, digits group in threes, one non-letter (even a tab)
  //    may lead a word, and punctuation takes trailing newlines with it.
  auto tok = tiny({"a"}, {}, bpe_pre_tokenizer("llama-bpe"));
  EXPECT_EQ(tok->pre_tokenize("Hello world"), (Strings{"Hello", " world"}));
  EXPECT_EQ(tok->pre_tokenize("I'm 12345 years"), (Strings{"I", "'m", " ", "123", "45", " years"}));
  EXPECT_EQ(tok->pre_tokenize("DON'T stop"), (Strings{"DON", "'T", " stop"}));
  EXPECT_EQ(tok->pre_tokenize("a\n\n  b"), (Strings{"a", "\n\n", " ", " b"}));
  EXPECT_EQ(tok->pre_tokenize("foo!!\n\nbar"), (Strings{"foo", "!!\n\n", "bar"}));
  EXPECT_EQ(tok->pre_tokenize("$100.5"), (Strings{"$", "100", ".", "5"}));
  EXPECT_EQ(tok->pre_tokenize("\tHello"), (Strings{"\tHello"}));
  EXPECT_EQ(tok->pre_tokenize("(1995)"), (Strings{"(", "199", "5", ")"}));
}

TEST(BpePreTokenizer, Qwen2SplitsEveryDigit) {
  auto tok = tiny({"a"}, {}, bpe_pre_tokenizer("qwen2"));
  EXPECT_EQ(tok->pre_tokenize("$100.5"), (Strings{"$", "1", "0", "0", ".", "5"}));
  EXPECT_EQ(tok->pre_tokenize("They'RE 2024"), (Strings{"They", "'RE", " ", "2", "0", "2", "4"}));
}

TEST(BpePreTokenizer, UnknownNameIsAnError) {
  EXPECT_THROW(bpe_pre_tokenizer("klingon-bpe"), userip::Error);
  EXPECT_EQ(bpe_pre_tokenizer("gpt-2").size(), 1u);
  EXPECT_EQ(bpe_pre_tokenizer("smollm").size(), 2u);
}

TEST(BpeMerge, AppliesLowestRankFirst) {
  const Strings vocab = {"a", "b", "c", "ab", "bc", "abc"};
  // (b c) outranks (a b): a + bc, then a+bc.
  auto first = tiny(vocab, {{"b", "c"}, {"a", "b"}, {"a", "bc"}});
  EXPECT_EQ(texts(*first, first->encode("abc")), (Strings{"abc"}));
  auto second = tiny(vocab, {{"b", "c"}, {"a", "b"}});
  EXPECT_EQ(texts(*second, second->encode("abc")), (Strings{"a", "bc"}));
  auto third = tiny(vocab, {{"a", "b"}, {"b", "c"}});
  EXPECT_EQ(texts(*third, third->encode("abc")), (Strings{"ab", "c"}));
}

TEST(BpeMerge, EqualPairsMergeLeftmostFirst) {
  auto tok = tiny({"a", "aa", "aaaa"}, {{"a", "a"}, {"aa", "aa"}});
  EXPECT_EQ(texts(*tok, tok->encode("aaa")), (Strings{"aa", "a"}));
  EXPECT_EQ(texts(*tok, tok->encode("aaaaa")), (Strings{"aaaa", "a"}));
}

TEST(BpeMerge, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  BpeOptions options;
  options.ignore_merges = true;
  // "abc" is in the vocabulary though no merge path builds it.
  BpeTokenizer tok({"a", "b", "c", "abc"}, {}, options, {}, "test");
  EXPECT_EQ(tok.encode("abc"), (std::vector<std::int32_t>{3}));
  EXPECT_EQ(tok.encode("cab"), (std::vector<std::int32_t>{2, 0, 1}));
}

TEST(BpeGpt2, KnownEncodings) {
  const auto& tok = gpt2();
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<std::int32_t>{15496, 995}));
  EXPECT_EQ(tok.token_text(15496), "Hello");
  EXPECT_EQ(tok.token_id("Ġworld"), 995);
  EXPECT_EQ(tok.token_id("no such token"), -1);
  EXPECT_EQ(tok.encode(""), std::vector<std::int32_t>{});
  EXPECT_EQ(tok.specials().bos, 50256);
  EXPECT_EQ(tok.specials().eos, 50256);
  EXPECT_FALSE(tok.specials().add_bos);
  EXPECT_EQ(tok.kind(), "bpe");
  EXPECT_EQ(tok.merges().size(), 50000u);
  EXPECT_EQ(tok.merges()[0], (std::pair<std::string, std::string>{"Ġ", "t"}));
}

TEST(BpeGpt2, RoundTripsArbitraryBytes) {
  const auto& tok = gpt2();
  const Strings samples = {
      "Amélie (2001) — Comedy|Romance 😀 don't   stop",
      "  leading\ttabs\n\nand newlines  ",
      std::string("nul\0byte", 8),
      "\xFF\xFE invalid \xC3 utf-8 \xE2\x82",
      "日本語 한국어 עברית",
      std::string(300, ' ') + "x",
      std::string(5000, 'a'),
  };
  for (const auto& s : samples) EXPECT_EQ(tok.decode(tok.encode(s)), s) << s;
}

TEST(BpeGpt2, DecodeSkipsIdsOutsideTheVocabulary) { EXPECT_EQ(gpt2().decode({15496, 99999, -5, 995}), "Hello world"); }

TEST(BpeGpt2, ConcurrentEncodingAgrees) {
  const auto corpus = testing::text::conformance_corpus(300, 7, false);
  std::vector<std::vector<std::int32_t>> expected;
  for (const auto& s : corpus) expected.push_back(gpt2().encode(s));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (std::size_t i = 0; i < corpus.size(); ++i) {
        if (gpt2().encode(corpus[(i + static_cast<std::size_t>(t) * 50) % corpus.size()]) !=
            expected[(i + static_cast<std::size_t>(t) * 50) % corpus.size()]) {
          ++mismatches[static_cast<std::size_t>(t)];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, (std::vector<int>{0, 0, 0, 0}));
}

// --- tokenizer.json ---------------------------------------------------------------------------

json gpt2_vocab_json() { return read_json(model_dir("tiny-gpt2") / "vocab.json"); }

json gpt2_merges_json(bool as_pairs) {
  json merges = json::array();
  for (const auto& [a, b] : gpt2().merges()) {
    if (as_pairs)
      merges.push_back(json::array({a, b}));
    else
      merges.push_back(a + " " + b);
  }
  return merges;
}

json added(int id, const std::string& content, bool lstrip = false, bool rstrip = false) {
  return {{"id", id},         {"content", content},  {"single_word", false}, {"lstrip", lstrip},
          {"rstrip", rstrip}, {"normalized", false}, {"special", true}};
}

TEST(BpeTokenizerJson, Gpt2StyleWithAddedTokensAndTemplate) {
  TempDir dir;
  json doc = {
      {"version", "1.0"},
      {"added_tokens",
       json::array({added(50256, "<|endoftext|>"), added(50257, "<|user|>"), added(50258, "[SEP]", true, true)})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array()},
        {"special_tokens",
         {{"<|endoftext|>", {{"id", "<|endoftext|>"}, {"ids", {50256}}, {"tokens", {"<|endoftext|>"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", gpt2_vocab_json()},
        {"merges", gpt2_merges_json(true)}}},
  };
  dir.write("tokenizer.json", doc.dump());
  const auto tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), 50259);
  const auto& ref = gpt2();
  for (const std::string s : {"Hello world", "Amélie (2001) — 😀", "  a  b\n"})
    EXPECT_EQ(tok->encode(s), ref.encode(s)) << s;

  // Added tokens are cut out of the text before pre-tokenization; [SEP] also eats the
  // whitespace on both sides.
  std::vector<std::int32_t> expected = ref.encode("hi");
  expected.push_back(50257);
  for (auto id : ref.encode("there")) expected.push_back(id);
  expected.push_back(50258);
  for (auto id : ref.encode("x")) expected.push_back(id);
  EXPECT_EQ(tok->encode("hi<|user|>there  [SEP]  x"), expected);
  EXPECT_EQ(tok->decode(tok->encode("hi<|user|>there")), "hi<|user|>there");
  EXPECT_EQ(tok->token_text(50257), "<|user|>");
  EXPECT_EQ(tok->token_id("<|user|>"), 50257);

  // The template "[<|endoftext|>] $A" means bos is added by default.
  EXPECT_EQ(tok->specials().bos, 50256);
  EXPECT_TRUE(tok->specials().add_bos);
  EXPECT_EQ(tok->encode_for_model("Hello"), (std::vector<std::int32_t>{50256, 15496}));
}

TEST(BpeTokenizerJson, Llama3StyleSplitThenByteLevel) {
  TempDir dir;
  json doc = {
      {"added_tokens", json::array({added(50256, "<|endoftext|>")})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {{{"type", "Split"},
               {"pattern", {{"Regex", kLlama3Pattern}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", gpt2_vocab_json()}, {"merges", gpt2_merges_json(false)}}},
  };
  const auto path = dir.write("tokenizer.json", doc.dump());
  EXPECT_TRUE(tokenizer_json_is_byte_level(path));
  const auto tok = load_tokenizer_json(path);
  EXPECT_EQ(tok->pre_tokenize("I'm 12345 years"), (Strings{"I", "'m", " ", "123", "45", " years"}));
  EXPECT_EQ(tok->pre_tokenize("\tHello"), (Strings{"\tHello"}));
  const std::string s = "DON'T stop at 1234567 — ok?\n\n";
  EXPECT_EQ(tok->decode(tok->encode(s)), s);
  EXPECT_FALSE(tok->specials().add_bos);
}

TEST(BpeTokenizerJson, SentencePieceStyleBpeWithByteFallback) {
  // A Llama-2-style tokenizer.json: spaces as "▁", "▁" prepended, no pre-tokenizer split, byte
  // fallback for characters outside the vocabulary.
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"▁", 3}, {"a", 4}, {"b", 5}, {"▁a", 6}, {"▁ab", 7}, {"ab", 8}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 9 + b;
  }
  json doc = {
      {"added_tokens", json::array({added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", "▁"}},
                                     {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}})}}},
      {"pre_tokenizer", nullptr},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", json::array({"▁ a", "a b", "▁a b"})}}},
  };
  TempDir dir;
  const auto path = dir.write("tokenizer.json", doc.dump());
  EXPECT_FALSE(tokenizer_json_is_byte_level(path));
  const auto tok = load_tokenizer_json(path);
  // "ab ab" -> "▁ab▁ab": (▁ a) is the best pair, then (▁a b).
  EXPECT_EQ(tok->encode("ab ab"), (std::vector<std::int32_t>{7, 7}));
  // "\n" is outside the vocabulary: its byte token <0x0A> (id 9 + 10).
  EXPECT_EQ(tok->encode("a\n"), (std::vector<std::int32_t>{6, 19}));
  EXPECT_EQ(tok->decode(tok->encode("ab ab\nb")), "ab ab\nb");
  EXPECT_EQ(tok->encode(""), std::vector<std::int32_t>{});  // no lone "▁" for empty text
}

TEST(BpeTokenizerJson, RejectsWhatItCannotRun) {
  TempDir dir;
  const auto write = [&](const json& doc) { return dir.write("tokenizer.json", doc.dump()); };
  const json model = {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", json::array()}};
  const auto expect_error = [&](const std::filesystem::path& path, const std::string& needle) {
    try {
      load_tokenizer_json(path);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const userip::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
    }
  };
  expect_error(dir.write("tokenizer.json", "{ not json"), "not valid JSON");
  expect_error(write({{"version", "1.0"}}), "no \"model\"");
  expect_error(write({{"model", {{"type", "Unigram"}, {"vocab", json::array()}}}}), "Unigram");
  expect_error(write({{"model", model}, {"pre_tokenizer", {{"type", "Whitespace"}}}}), "Whitespace");
  expect_error(write({{"model", model}, {"normalizer", {{"type", "Lowercase"}}}}), "Lowercase");
  expect_error(
      write({{"model", model},
             {"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}}}}),
      "regex");
  json bad_merge = model;
  bad_merge["merges"] = json::array({"a"});
  expect_error(write({{"model", bad_merge}}), "merges[0]");
  json unknown_merge = model;
  unknown_merge["merges"] = json::array({"a z"});
  expect_error(write({{"model", unknown_merge}}), "merge 1");
  json bad_vocab = model;
  bad_vocab["vocab"] = {{"a", "zero"}};
  expect_error(write({{"model", bad_vocab}}), "model.vocab");
}

// --- vocab.json + merges.txt ------------------------------------------------------------------

TEST(BpeVocabMerges, ErrorsNameTheFileAndLine) {
  TempDir dir;
  const auto vocab = dir.write("vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  const auto expect_error = [&](const std::string& merges, const std::string& needle) {
    const auto path = dir.write("merges.txt", merges);
    try {
      load_bpe_vocab_merges(vocab, path);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const userip::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("#version: 0.2\na b\nab\n", "merges.txt:3");
  expect_error("#version: 0.2\na b\na  b\n", "merges.txt:3");
  expect_error("#version: 0.2\na c\n", "merges.txt:2: token \"c\"");
  expect_error("#version: 0.2\nb a\n", "merged token \"ba\"");
  EXPECT_NO_THROW(load_bpe_vocab_merges(vocab, dir.write("merges.txt", "#version: 0.2\na b\n")));

  const auto bad_vocab = dir.write("bad.json", R"({"a": 0, "b": -1})");
  EXPECT_THROW(load_bpe_vocab_merges(bad_vocab, dir / "merges.txt"), userip::Error);
  EXPECT_THROW(load_bpe_vocab_merges(dir / "missing.json", dir / "merges.txt"), userip::Error);
  EXPECT_THROW(load_bpe_vocab_merges(dir.write("trunc.json", R"({"a": 0, "b)"), dir / "merges.txt"), userip::Error);
}

// --- GGUF-style construction ------------------------------------------------------------------

TEST(BpeGguf, VectorsAsGgufStoresThemGiveTheSameTokenizer) {
  // tokenizer.ggml.tokens is the vocabulary in id order, tokenizer.ggml.merges the merges.txt
  // lines; llama.cpp's converter marks <|endoftext|> as a control token (type 3).
  const auto& ref = gpt2();
  Strings tokens = ref.vocab();
  Strings merges;
  for (const auto& [a, b] : ref.merges()) merges.push_back(a + " " + b);
  std::vector<std::int32_t> types(tokens.size(), 1);
  types[50256] = 3;
  const auto tok = make_bpe_tokenizer(tokens, merges, "gpt-2", types);
  EXPECT_EQ(tok->pre_name(), "gpt-2");
  for (const auto& s : testing::text::conformance_corpus(400, 11, false)) EXPECT_EQ(tok->encode(s), ref.encode(s)) << s;
  // Control tokens are recognised in text.
  EXPECT_EQ(tok->encode("a<|endoftext|>"), (std::vector<std::int32_t>{64, 50256}));

  EXPECT_THROW(make_bpe_tokenizer(tokens, {"Ġt"}, "gpt2"), userip::Error);
  EXPECT_THROW(make_bpe_tokenizer(tokens, merges, "gpt2", {1, 2, 3}), userip::Error);
  EXPECT_THROW(make_bpe_tokenizer(tokens, merges, "no-such-pre"), userip::Error);
}

}  // namespace
}  // namespace userip::text
