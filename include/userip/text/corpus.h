#pragma once
// The default LM's training text, built from a dataset: the item catalogue and the behaviour
// text of the *training split* (never validation, test or cold users), one document per line.
#include <cstdint>
#include <string>
#include <vector>

#include "userip/data/dataset.h"

namespace userip::text {

struct CorpusOptions {
  // One line per item describing it; "" leaves the catalogue out.
  std::string item_phrase = "{title} ({year}): {genres}";
  // One sentence per training interaction; a user's sentences are joined in time order into
  // documents of at most `sentences_per_document`, so the LM learns what goes with what.
  std::string behaviour_phrase = "Watched {title} ({year}), {genres}; rated {rating}.";
  // Short documents keep each one, with its user summary, inside the LM's context window (a few
  // sentences of about 25-35 tokens each), so that the LM learns to read the summary.
  std::size_t sentences_per_document = 3;
  // Training documents in a seeded random order instead of user by user: a training window then
  // holds documents of different users, so the LM cannot learn a user's choices from that user's
  // neighbouring documents and must take them from the summary.
  bool shuffle_documents = false;
  // A summary of the document's user, put before its behaviour sentences in a share of the
  // documents, so that the LM learns to condition behaviour on a description of the user at the
  // start of the text: the place where profile templates later put the soft profile tokens after
  // the same words. Placeholders, over the user's *training* rows: {user.count}, {user.mean_rating}
  // (one decimal), {user.rating_style} (critical / moderate / generous), {user.top.FIELD} (most
  // distinctive value of a category field: highest share relative to the population among values
  // of at least 10% of the user's rows) and {user.top2.FIELD} (the two most distinctive). "" = none.
  std::string user_phrase;
  double user_phrase_share = 0.75;  // of documents that start with the summary
  double heldout_fraction = 0.05;  // of documents, for held-out perplexity
  std::uint64_t seed = 42;
};

struct Corpus {
  CorpusOptions options;  // what it was built with, for the record of a model trained on it
  std::vector<std::string> train;
  std::vector<std::string> heldout;
  std::size_t item_lines = 0;
  std::size_t behaviour_lines = 0;
};

// Throws userip::Error on phrases with unknown placeholders (the message lists the fields) or a
// dataset without a split.
Corpus build_corpus(const data::Dataset& dataset, const CorpusOptions& options);

// Default phrases for a dataset: the MovieLens-style ones above when the dataset has title,
// year and genres fields; otherwise phrases made of whatever text and category fields it has.
CorpusOptions default_corpus_options(const data::Dataset& dataset);

}  // namespace userip::text
