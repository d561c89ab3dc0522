// What `profile fit` reads of a model's pretraining record (pretrain.json): the corpus that the
// default sample shape and the template check follow.
#include <gtest/gtest.h>

#include "support/temp_dir.h"
#include "userip/lm/pretrain.h"

namespace userip::lm {
namespace {

TEST(PretrainRecord, CorpusAndSentencesPerDocumentComeFromPretrainJson) {
  testing::TempDir dir;
  dir.write("pretrain.json", R"({"corpus": {"sentences_per_document": 1, "behaviour_phrase": "Rated {rating}."}})");
  const auto corpus = pretrained_corpus(dir.path());
  ASSERT_TRUE(corpus.has_value());
  EXPECT_EQ(corpus->value("behaviour_phrase", ""), "Rated {rating}.");
  EXPECT_EQ(pretrained_sentences_per_document(dir.path()), std::optional<std::size_t>(1));
}

TEST(PretrainRecord, OtherModelsHaveNone) {
  testing::TempDir dir;
  EXPECT_FALSE(pretrained_corpus(dir.path()).has_value());                  // a checkpoint without the record
  EXPECT_FALSE(pretrained_corpus(dir.path() / "model.gguf").has_value());   // a file
  dir.write("pretrain.json", R"({"fingerprint": "x"})");
  EXPECT_FALSE(pretrained_sentences_per_document(dir.path()).has_value());  // a record without a corpus
}

TEST(PretrainRecord, MalformedRecordsNameTheFile) {
  testing::TempDir dir;
  dir.write("pretrain.json", "{not json");
  testing::expect_error([&] { pretrained_corpus(dir.path()); }, {"pretrain.json", "malformed"});
  dir.write("pretrain.json", R"({"corpus": {"sentences_per_document": 0}})");
  testing::expect_error([&] { pretrained_sentences_per_document(dir.path()); },
                        {"pretrain.json", "sentences_per_document"});
}

}  // namespace
}  // namespace userip::lm
