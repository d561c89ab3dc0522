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
  std::size_t sentences_per_document = 8;
  double heldout_fraction = 0.05;  // of documents, for held-out perplexity
  std::uint64_t seed = 42;
};

struct Corpus {
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
