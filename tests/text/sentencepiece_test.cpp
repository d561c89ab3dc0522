// SentencePiece: this project's encoder/decoder against libsentencepiece's own command-line
// tools (spm_encode / spm_decode, Debian package `sentencepiece`) on the conformance corpus,
// for the reference tokenizer.model, for models trained here (BPE with byte fallback, unigram
// with user-defined symbols, NFKC normalisation), and for a model serialised from GGUF-style
// vectors; plus training and malformed input.
#include "userip/text/sentencepiece.h"

#include <gtest/gtest.h>

#include "support/temp_dir.h"
#include "text/text_test_support.h"
#include "userip/util/error.h"

namespace userip::text {
namespace {

namespace fs = std::filesystem;
using namespace testing::text;
using Ids = std::vector<std::int32_t>;

std::string ids_line(const Ids& ids) {
  std::string out;
  for (std::size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
  return out;
}

Ids parse_ids(const std::string& line) {
  Ids ids;
  std::size_t pos = 0;
  while (pos < line.size()) {
    std::size_t end = line.find(' ', pos);
    if (end == std::string::npos) end = line.size();
    if (end > pos) ids.push_back(std::stoi(line.substr(pos, end - pos)));
    pos = end + 1;
  }
  return ids;
}

// Runs `tool` (spm_encode / spm_decode) over `lines`, one output line per input line.
std::vector<std::string> run_spm(const std::string& tool, const std::string& args,
                                 const std::vector<std::string>& lines, const TempDir& dir) {
  std::string input;
  for (const auto& l : lines) input += l + "\n";
  const auto path = dir.write(tool + "-input.txt", input);
  std::string output;
  const int status = run_command(
      shell_quote(find_program(tool)) + " " + args + " " + shell_quote(path.string()) + " 2>/dev/null", &output);
  EXPECT_EQ(status, 0) << tool << " " << args;
  auto out = split_lines(output);
  out.resize(lines.size());
  return out;
}

bool have_spm_tools() {
  return !find_program("spm_encode").empty() && !find_program("spm_decode").empty() &&
         !find_program("spm_train").empty();
}

// Encodes and decodes the corpus with `tok` and with libsentencepiece loading `model_file`;
// both must agree exactly.
void expect_agrees_with_libsentencepiece(const SentencePieceTokenizer& tok, const fs::path& model_file,
                                         const std::vector<std::string>& corpus, const TempDir& dir) {
  const auto model = "--model=" + shell_quote(model_file.string());
  const auto expected = run_spm("spm_encode", model + " --output_format=id", corpus, dir);
  std::size_t mismatches = 0;
  std::size_t total_tokens = 0;
  std::vector<std::string> id_lines;
  for (std::size_t i = 0; i < corpus.size(); ++i) {
    const Ids want = parse_ids(expected[i]);
    const Ids got = tok.encode(corpus[i]);
    total_tokens += want.size();
    id_lines.push_back(ids_line(want));
    if (got != want && ++mismatches <= 10) {
      ADD_FAILURE() << model_file.filename() << " string " << i << " " << json(corpus[i]).dump(-1, ' ', true)
                    << "\n  spm_encode " << expected[i] << "\n  ours       " << ids_line(got);
    }
  }
  EXPECT_EQ(mismatches, 0u) << "encoding, of " << corpus.size() << " strings";
  EXPECT_GT(total_tokens, corpus.size() * 2);  // the reference really tokenized the corpus

  const auto decoded = run_spm("spm_decode", model + " --input_format=id", id_lines, dir);
  std::size_t decode_mismatches = 0;
  for (std::size_t i = 0; i < corpus.size(); ++i) {
    const std::string got = tok.decode(parse_ids(id_lines[i]));
    if (got != decoded[i] && ++decode_mismatches <= 10) {
      ADD_FAILURE() << model_file.filename() << " decoding " << id_lines[i] << "\n  spm_decode "
                    << json(decoded[i]).dump(-1, ' ', true) << "\n  ours       " << json(got).dump(-1, ' ', true);
    }
  }
  EXPECT_EQ(decode_mismatches, 0u) << "decoding, of " << corpus.size() << " strings";
}

// Text resembling what the default LM's tokenizer is trained on: catalogue lines and
// behaviour sentences, with some accents and digits.
fs::path write_training_corpus(const TempDir& dir) {
  const std::vector<std::string> titles = {"Toy Story (1995)",
                                           "Amélie (2001)",
                                           "Léon: The Professional (1994)",
                                           "Heat (1995)",
                                           "Jumanji (1995)",
                                           "Se7en (1995)",
                                           "The Matrix (1999)",
                                           "Fight Club (1999)",
                                           "Pulp Fiction (1994)",
                                           "Casablanca (1942)",
                                           "Spirited Away (2001)",
                                           "City of God (2002)",
                                           "La vita è bella (1997)",
                                           "WALL·E (2008)",
                                           "Up (2009)"};
  const std::vector<std::string> genres = {"Comedy",     "Drama",  "Action|Thriller", "Animation|Children",
                                           "Romance",    "Sci-Fi", "Crime|Drama",     "War",
                                           "Documentary"};
  CorpusRng rng(5);
  std::string text;
  for (int i = 0; i < 3000; ++i) {
    switch (rng.below(3)) {
      case 0:
        text += rng.pick(titles) + " — " + rng.pick(genres) + "\n";
        break;
      case 1:
        text += "The user watched " + rng.pick(titles) + " and rated it " + std::to_string(1 + rng.below(5)) + "." +
                std::to_string(rng.below(2) * 5) + " stars.\n";
        break;
      default:
        text += "They're fans of " + rng.pick(genres) + " films; they don't like " + rng.pick(genres) + ".\n";
    }
  }
  return dir.write("train.txt", text);
}

TEST(SentencePieceConformance, ReferenceModelMatchesLibsentencepiece) {
  if (!have_spm_tools()) GTEST_SKIP() << "spm_encode/spm_decode not installed (Debian package sentencepiece)";
  TempDir dir;
  const auto model_file = model_dir("tiny-llama") / "tokenizer.model";
  const auto tok = load_sentencepiece(model_file);
  const auto corpus = conformance_corpus(1200, 424242, true);
  expect_agrees_with_libsentencepiece(*tok, model_file, corpus, dir);
}

TEST(SentencePieceConformance, GgufVectorsSerialiseToAModelLibsentencepieceReadsAlike) {
  if (!have_spm_tools()) GTEST_SKIP() << "spm_encode/spm_decode not installed";
  TempDir dir;
  const auto meta = read_json(fixtures() / "tiny-llama-gguf-tokenizer.json");
  SentencePieceVocab vocab;
  vocab.tokens = meta.at("tokenizer.ggml.tokens").get<std::vector<std::string>>();
  vocab.scores = meta.at("tokenizer.ggml.scores").get<std::vector<float>>();
  vocab.token_types = meta.at("tokenizer.ggml.token_type").get<std::vector<std::int32_t>>();
  vocab.bos = 1;
  vocab.eos = 2;
  const auto tok = make_sentencepiece_tokenizer(vocab);
  const auto model_file = dir / "from-gguf.model";
  tok->save(model_file);
  const auto corpus = conformance_corpus(400, 99, true);
  expect_agrees_with_libsentencepiece(*tok, model_file, corpus, dir);
  // And it tokenizes exactly as the original tokenizer.model.
  const auto original = load_sentencepiece(model_dir("tiny-llama") / "tokenizer.model");
  for (const auto& s : corpus) EXPECT_EQ(tok->encode(s), original->encode(s)) << s;
}

TEST(SentencePieceConformance, TrainedBpeWithByteFallbackAndUserSymbols) {
  if (!have_spm_tools()) GTEST_SKIP() << "spm tools not installed";
  TempDir dir;
  SentencePieceTrainOptions options;
  options.corpus = write_training_corpus(dir);
  options.vocab_size = 500;
  options.user_defined_symbols = {"<|user|>", "[SEP]", "a,b"};
  options.control_symbols = {"<|sys|>"};
  options.num_threads = 2;
  const auto model_file = dir / "out" / "tokenizer.model";
  const auto tok = train_sentencepiece(options, model_file);
  ASSERT_TRUE(fs::exists(model_file));
  EXPECT_FALSE(tok->is_unigram());
  EXPECT_EQ(tok->vocab_size(), 500);
  EXPECT_EQ(tok->specials().unk, 0);
  EXPECT_EQ(tok->specials().bos, 1);
  EXPECT_EQ(tok->specials().eos, 2);
  EXPECT_EQ(tok->specials().pad, -1);
  const std::int32_t user = tok->token_id("<|user|>");
  ASSERT_GE(user, 0);
  EXPECT_EQ(tok->piece_type(user), PieceType::kUserDefined);
  EXPECT_EQ(tok->piece_type(tok->token_id("<|sys|>")), PieceType::kControl);
  EXPECT_EQ(tok->piece_type(tok->token_id("<0x41>")), PieceType::kByte);
  const Ids ids = tok->encode("Heat (1995)<|user|>Toy Story");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), user), 1);

  auto corpus = conformance_corpus(1000, 77, true);
  for (const std::string s : {"x<|user|>y", "<|user|><|user|>", " [SEP] a,b ", "<|sys|> stays text"})
    corpus.push_back(s);
  expect_agrees_with_libsentencepiece(*tok, model_file, corpus, dir);
  for (const auto& s : corpus) EXPECT_EQ(tok->decode(tok->encode(s)), s) << s;  // byte fallback: lossless
}

TEST(SentencePieceConformance, TrainedUnigramWithUnknownRuns) {
  if (!have_spm_tools()) GTEST_SKIP() << "spm tools not installed";
  TempDir dir;
  SentencePieceTrainOptions options;
  options.corpus = write_training_corpus(dir);
  options.model_type = "unigram";
  options.vocab_size = 120;       // a unigram vocabulary of this small corpus cannot be much larger
  options.byte_fallback = false;  // unknown characters become one <unk> per run
  options.user_defined_symbols = {"<|user|>"};
  options.with_pad = true;
  options.num_threads = 2;
  const auto model_file = dir / "unigram.model";
  const auto tok = train_sentencepiece(options, model_file);
  EXPECT_TRUE(tok->is_unigram());
  EXPECT_EQ(tok->specials().pad, 3);
  auto corpus = conformance_corpus(1000, 78, true);
  corpus.push_back("日本語のテキスト and <|user|> again");
  expect_agrees_with_libsentencepiece(*tok, model_file, corpus, dir);
}

TEST(SentencePieceConformance, NfkcNormalisationAndExtraWhitespaceRemoval) {
  if (!have_spm_tools()) GTEST_SKIP() << "spm tools not installed";
  TempDir dir;
  // spm_train's defaults: nmt_nfkc rules (a precompiled character map), extra whitespace
  // removed, unigram.
  const auto corpus_file = write_training_corpus(dir);
  std::string log;
  ASSERT_EQ(run_command(shell_quote(find_program("spm_train")) + " --input=" + shell_quote(corpus_file.string()) +
                            " --model_prefix=" + shell_quote((dir / "nfkc").string()) +
                            " --vocab_size=120 --num_threads=2 --minloglevel=1 2>&1",
                        &log),
            0)
      << log;
  const auto model_file = dir / "nfkc.model";
  const auto tok = load_sentencepiece(model_file);
  EXPECT_EQ(tok->normalize("  ＡＢＣ   ｶﾀｶﾅ  "),
            "\xE2\x96\x81"
            "ABC\xE2\x96\x81"
            "カタカナ");
  auto corpus = conformance_corpus(800, 79, true);
  expect_agrees_with_libsentencepiece(*tok, model_file, corpus, dir);
}

// --- training and malformed input -------------------------------------------------------------

TEST(SentencePieceTraining, ErrorsCarryTheTrainerMessage) {
  if (find_program("spm_train").empty()) GTEST_SKIP() << "spm_train not installed";
  TempDir dir;
  SentencePieceTrainOptions options;
  options.corpus = dir / "missing.txt";
  EXPECT_THROW(train_sentencepiece(options, dir / "m.model"), userip::Error);
  options.corpus = dir.write("tiny.txt", "just a few words\n");
  options.vocab_size = 5000;
  try {
    train_sentencepiece(options, dir / "m.model");
    ADD_FAILURE() << "no error";
  } catch (const userip::Error& e) {
    EXPECT_NE(std::string(e.what()).find("spm_train"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tiny.txt"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "m.model"));
  options.model_type = "word";
  EXPECT_THROW(train_sentencepiece(options, dir / "m.model"), userip::Error);
  // Nothing is left behind next to the model.
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(entry.path().filename().string().rfind(".spm-train", 0), std::string::npos) << entry.path();
  }
}

TEST(SentencePieceModel, MalformedModelsAreErrorsNamingTheSource) {
  TempDir dir;
  const auto expect_error = [&](const std::string& bytes, const std::string& needle) {
    const auto path = dir.write("tokenizer.model", bytes);
    try {
      load_sentencepiece(path);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const userip::Error& e) {
      EXPECT_NE(std::string(e.what()).find("tokenizer.model"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string good = userip::read_file(model_dir("tiny-llama") / "tokenizer.model");
  expect_error("", "not a SentencePiece model");
  expect_error(good.substr(0, good.size() - 7), "malformed");
  expect_error("\xFF\xFF\xFF", "malformed");
  expect_error(std::string("\x0a\x00", 2), "empty");
  EXPECT_THROW(load_sentencepiece(dir / "absent.model"), userip::Error);

  SentencePieceVocab vocab;
  vocab.tokens = {"<unk>", "a"};
  vocab.token_types = {1, 1};
  EXPECT_THROW(serialize_sentencepiece_model(vocab), userip::Error);  // no unknown piece
  vocab.token_types = {2, 2};
  EXPECT_THROW(serialize_sentencepiece_model(vocab), userip::Error);  // two
  vocab.token_types = {2};
  EXPECT_THROW(serialize_sentencepiece_model(vocab), userip::Error);  // length mismatch
  vocab.token_types = {2, 1};
  vocab.tokens = {"<unk>", ""};
  EXPECT_THROW(serialize_sentencepiece_model(vocab), userip::Error);  // empty piece
  vocab.tokens = {"<unk>", "a"};
  vocab.token_types = {2, 6};  // a byte piece that is not "<0xAB>"
  EXPECT_THROW(make_sentencepiece_tokenizer(vocab), userip::Error);
  vocab.tokens = {"<unk>", "a", "a"};
  vocab.token_types = {2, 1, 1};
  EXPECT_THROW(make_sentencepiece_tokenizer(vocab), userip::Error);  // duplicate piece
}

TEST(SentencePieceModel, VectorsWithoutBytesOrScores) {
  // The smallest useful vocabulary: unknown characters become <unk>, runs of them one <unk>.
  SentencePieceVocab vocab;
  vocab.tokens = {"<unk>",
                  "<s>",
                  "</s>",
                  "\xE2\x96\x81",
                  "a",
                  "b",
                  "\xE2\x96\x81"
                  "a",
                  "ab"};
  vocab.scores = {0, 0, 0, -1, -2, -3, -0.5f, -0.7f};
  vocab.token_types = {2, 3, 3, 1, 1, 1, 1, 1};
  const auto tok = make_sentencepiece_tokenizer(vocab);
  EXPECT_EQ(tok->specials().bos, 1);
  EXPECT_EQ(tok->specials().eos, 2);
  EXPECT_TRUE(tok->specials().add_bos);
  // "ab" -> "▁ab": (▁ a) scores -0.5, (a b) -0.7: ▁a first, then nothing joins ▁a + b.
  EXPECT_EQ(tok->encode("ab"), (Ids{6, 5}));
  EXPECT_EQ(tok->encode("zzz a"), (Ids{3, 0, 6}));
  EXPECT_EQ(tok->decode({1, 6, 5, 2}), "ab");
  EXPECT_EQ(tok->decode({3, 0, 6}), " \xE2\x81\x87  a");
  EXPECT_EQ(tok->token_id("zzz"), -1);
  EXPECT_EQ(tok->token_id("</s>"), 2);
}

}  // namespace
}  // namespace userip::text
