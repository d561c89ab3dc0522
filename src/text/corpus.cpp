#include "userip/text/corpus.h"

#include "userip/text/item_text.h"
#include "userip/util/error.h"
#include "userip/util/random.h"

namespace userip::text {

CorpusOptions default_corpus_options(const data::Dataset& dataset) {
  CorpusOptions options;
  if (dataset.field("title") && dataset.field("year") && dataset.field("genres")) return options;
  // Generic phrases: name every text/category field the dataset has.
  std::string item, behaviour = "Chose ";
  for (const auto& f : dataset.item_fields) {
    if (f.kind == data::FieldKind::number && f.name != "year") continue;
    item += (item.empty() ? "" : "; ") + f.name + ": {" + f.name + "}";
  }
  if (item.empty()) item = "item {item}";
  options.item_phrase = item;
  options.behaviour_phrase = "Chose " + item + "; rated {rating}.";
  return options;
}

Corpus build_corpus(const data::Dataset& dataset, const CorpusOptions& options) {
  USERIP_CHECK(options.sentences_per_document >= 1, "sentences per document must be >= 1");
  USERIP_CHECK(options.heldout_fraction >= 0 && options.heldout_fraction < 1,
               "the held-out fraction must lie in [0, 1), got {}", options.heldout_fraction);
  Corpus corpus;
  Rng rng(options.seed);
  auto add = [&](std::string line) {
    (rng.uniform() < options.heldout_fraction ? corpus.heldout : corpus.train).push_back(std::move(line));
  };
  if (!options.item_phrase.empty()) {
    PhraseTemplate item_phrase(options.item_phrase, dataset);
    for (std::uint32_t i = 0; i < dataset.num_items(); ++i) add(item_phrase.render_item(dataset, i));
    corpus.item_lines = dataset.num_items();
  }
  PhraseTemplate behaviour(options.behaviour_phrase, dataset);
  auto train = dataset.training_view();  // the only interactions the LM may learn from
  for (std::uint32_t user : train.users()) {
    std::string document;
    std::size_t in_document = 0;
    for (std::size_t i = train.user_begin(user); i < train.user_end(user); ++i) {
      document += (document.empty() ? "" : " ") + behaviour.render_interaction(dataset, train.row(i));
      ++corpus.behaviour_lines;
      if (++in_document == options.sentences_per_document) {
        add(std::move(document));
        document.clear();
        in_document = 0;
      }
    }
    if (!document.empty()) add(std::move(document));
  }
  return corpus;
}

}  // namespace userip::text
