// The default LM's corpus: behaviour documents of the training split only, with the user summary
// (CorpusOptions::user_phrase) computed by hand below.
#include "userip/text/corpus.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "support/temp_dir.h"

namespace userip::text {
namespace {

// Items: i0 Action|Comedy, i1 Drama, i2 Action, i3 Horror. User a rates i0 5, i2 4, i1 3; user b
// rates i1 2, i3 3, i0 2, and a validation row i2 that the corpus must never show.
data::Dataset two_users() {
  data::Dataset d;
  d.user_ids = {"a", "b"};
  d.item_ids = {"i0", "i1", "i2", "i3"};
  d.item_fields = {{"genres", data::FieldKind::category_list, {"Action|Comedy", "Drama", "Action", "Horror"}}};
  auto add = [&](std::uint32_t u, std::uint32_t i, float r, std::int64_t t) {
    d.interactions.user.push_back(u);
    d.interactions.item.push_back(i);
    d.interactions.rating.push_back(r);
    d.interactions.timestamp.push_back(t);
  };
  add(0, 0, 5, 1), add(0, 2, 4, 2), add(0, 1, 3, 3);
  add(1, 1, 2, 1), add(1, 3, 3, 2), add(1, 0, 2, 3), add(1, 2, 5, 4);
  d.split.part = std::vector<data::SplitPart>(7, data::SplitPart::train);
  d.split.part[6] = data::SplitPart::valid;
  d.validate();
  return d;
}

CorpusOptions summary_options(std::string phrase) {
  CorpusOptions o;
  o.item_phrase = "";
  o.behaviour_phrase = "{item}.";
  o.user_phrase = std::move(phrase);
  o.user_phrase_share = 1.0;
  o.heldout_fraction = 0;
  return o;
}

TEST(Corpus, UserSummariesComeFromTrainingRowsOnly) {
  // Population of training rows (6): Action 3/6, Comedy 2/6, Drama 2/6, Horror 1/6.
  // a: Action 2/3 (lift 4/3), Comedy 1/3 (1), Drama 1/3 (1): top two Action, then Comedy (tie with
  //    Drama broken by name); mean rating 4.0 -> generous.
  // b: Drama 1/3 (1), Horror 1/3 (2), Action 1/3 (2/3), Comedy 1/3 (1): Horror, Comedy; mean 7/3 ->
  //    critical. b's validation row (i2, rated 5) must not count.
  auto corpus = build_corpus(two_users(), summary_options(
                                              "{user.top2.genres} / {user.top.genres} / {user.rating_style} / "
                                              "{user.count} / {user.mean_rating}:"));
  ASSERT_EQ(corpus.train.size(), 2u);
  EXPECT_EQ(corpus.train[0], "Action, Comedy / Action / generous / 3 / 4.0: i0. i2. i1.");
  EXPECT_EQ(corpus.train[1], "Horror, Comedy / Horror / critical / 3 / 2.3: i1. i3. i0.");
}

TEST(Corpus, DocumentsHoldAtMostTheGivenNumberOfSentences) {
  auto o = summary_options("");
  o.sentences_per_document = 2;
  auto corpus = build_corpus(two_users(), o);
  EXPECT_EQ(corpus.train, (std::vector<std::string>{"i0. i2.", "i1.", "i1. i3.", "i0."}));
}

TEST(Corpus, ShuffledDocumentsAreTheSameDocumentsInASeededOrder) {
  auto o = summary_options("");
  o.sentences_per_document = 1;
  const auto in_user_order = build_corpus(two_users(), o).train;
  ASSERT_EQ(in_user_order, (std::vector<std::string>{"i0.", "i2.", "i1.", "i1.", "i3.", "i0."}));
  o.shuffle_documents = true;
  const auto shuffled = build_corpus(two_users(), o).train;
  EXPECT_EQ(build_corpus(two_users(), o).train, shuffled);
  auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  EXPECT_EQ(sorted(shuffled), sorted(in_user_order));
  // Some seed among a few reorders these six documents (one seed may leave them be by chance).
  bool reordered = false;
  for (std::uint64_t seed = 1; seed <= 4 && !reordered; ++seed) {
    o.seed = seed;
    reordered = build_corpus(two_users(), o).train != in_user_order;
  }
  EXPECT_TRUE(reordered);
}

TEST(Corpus, BadUserPhrasesNameThePlaceholder) {
  testing::expect_error([] { build_corpus(two_users(), summary_options("{user.top.title}")); }, {"user.top.title"});
  testing::expect_error([] { build_corpus(two_users(), summary_options("{user.favourite}")); }, {"user.favourite"});
  testing::expect_error([] { build_corpus(two_users(), summary_options("{user.count")); }, {"unclosed"});
}

}  // namespace
}  // namespace userip::text
