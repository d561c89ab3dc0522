#pragma once
// The default LM's training text, built from a dataset: the item catalogue and the behaviour
// text of the *training split* (never validation, test or cold users), one document per line.
#include <cstdint>
#include <optional>
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
  // Short documents keep each one, with its user summary, inside the LM's context window.
  // default_text() makes it 1 (see there).
  std::size_t sentences_per_document = 3;
  // Training documents in a seeded random order instead of user by user. default_text() sets it.
  bool shuffle_documents = false;
  // A summary of the document's user, put before its behaviour sentences in a share of the
  // documents, so that the LM learns to condition behaviour on a description of the user at the
  // start of the text: the place where profile templates later put the soft profile tokens after
  // the same words. Placeholders, over the user's *training* rows: {user.count}, {user.mean_rating}
  // (one decimal), {user.rating_style} (the user's share of positive labels against the training
  // users' quintiles: very critical / critical / moderate / generous / very generous; the same for
  // any rating scale and for click data), {user.top.FIELD} (most distinctive value of a category
  // field: highest share relative to the population among values of at least 10% of the user's
  // rows) and {user.top2.FIELD} (the two most distinctive). "" = none.
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

// Material to measure whether an LM reads the user summary that its corpus puts before behaviour
// (lm::measure_context_reading scores it). Each case is a training user's summary, one of its
// *validation* interactions in the behaviour phrase (text no LM was trained on), and, for each
// placeholder of the user phrase, the summary with that placeholder's value taken from another
// user whose value differs. An LM that reads a part finds the behaviour less likely after the
// altered summary; one that does not gives the profile tokens placed there nothing to carry.
struct ContextProbeCase {
  std::string summary;
  std::string behaviour;
  std::vector<std::string> altered;  // per placeholder; "" where no other user's value differed
};
struct ContextProbe {
  std::vector<std::string> parts;  // the user phrase's placeholders in order, e.g. "user.top2.genres"
  std::vector<ContextProbeCase> cases;
};
// Up to `max_cases` validation interactions drawn with `seed`. Throws userip::Error when the
// options have no user phrase or the dataset has no validation interactions of training users.
ContextProbe build_context_probe(const data::Dataset& dataset, const CorpusOptions& options, std::size_t max_cases,
                                 std::uint64_t seed);

// The roles that a dataset's item fields play in the default text, chosen from their kinds and
// statistics only, never from their names: a dataset imported with other column names gets the
// same text.
struct FieldRoles {
  // Fields named rating, label or item (the interaction's own placeholders) or with braces play no role.
  std::optional<std::size_t> name;      // the shortest text field of about the most distinct values (a title)
  std::optional<std::size_t> taste;     // the category field with the most distinct values (>= 3)
  std::vector<std::size_t> background;  // up to two other category fields with 2..32 values, fewest first
  std::vector<std::size_t> numbers;     // up to two number fields with at least 2 distinct values
};
FieldRoles field_roles(const data::Dataset& dataset);

// One attribute of the user summary: the words the LM reads before it, and the summary itself.
// The default profile template puts each attribute's soft tokens after the same words.
struct SummaryAttribute {
  std::string name;      // "taste" or "background"
  std::string evidence;  // "The user's taste in products:"
  std::string summary;   // "{user.top2.FIELD}", a CorpusOptions::user_phrase fragment
  std::string typical;   // the summary of the population as a whole, e.g. "Drama, Comedy"
};

// The default text of a dataset, derived from field_roles: the corpus phrases and the summary
// attributes that the default profile template mirrors.
struct DefaultText {
  CorpusOptions corpus;
  std::vector<SummaryAttribute> attributes;
};
DefaultText default_text(const data::Dataset& dataset);

// default_text(dataset).corpus.
CorpusOptions default_corpus_options(const data::Dataset& dataset);

}  // namespace userip::text
