#include "userip/text/corpus.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>

#include "userip/text/item_text.h"
#include "userip/util/error.h"
#include "userip/util/random.h"

namespace userip::text {

namespace {

// The user-summary placeholders of CorpusOptions::user_phrase, rendered from a user's rows.
class UserSummary {
 public:
  UserSummary(const data::Dataset& dataset, const data::SplitView& rows, std::string_view phrase)
      : dataset_(&dataset), view_(&rows) {
    std::size_t pos = 0;
    while (pos < phrase.size()) {
      auto open = phrase.find('{', pos);
      if (open == std::string_view::npos) {
        pieces_.push_back({Kind::literal, std::string(phrase.substr(pos)), 0, 0});
        break;
      }
      auto close = phrase.find('}', open);
      USERIP_CHECK(close != std::string_view::npos, "user phrase '{}': unclosed '{{'", phrase);
      pieces_.push_back({Kind::literal, std::string(phrase.substr(pos, open - pos)), 0, 0});
      const std::string name(phrase.substr(open + 1, close - open - 1));
      pieces_.push_back(parse(name, phrase));
      pos = close + 1;
    }
    // Population shares of each category field's values, for distinctiveness.
    for (const auto& piece : pieces_) {
      if (piece.kind != Kind::top || population_.count(piece.field)) continue;
      auto& shares = population_[piece.field];
      double total = 0;
      for (std::size_t i = 0; i < rows.size(); ++i) {
        for (const auto& v : data::list_values(dataset.item_fields[piece.field].values[rows.item(i)])) shares[v] += 1;
        total += 1;
      }
      for (auto& [v, n] : shares) n /= std::max(total, 1.0);
    }
  }

  std::string render(std::uint32_t user) const {
    std::string out;
    for (const auto& piece : pieces_) {
      switch (piece.kind) {
        case Kind::literal: out += piece.literal; break;
        case Kind::count: out += std::to_string(view_->user_count(user)); break;
        case Kind::mean_rating: out += fmt::format("{:.1f}", mean_rating(user)); break;
        case Kind::rating_style: {
          const double m = mean_rating(user);
          out += m >= 4.0 ? "generous" : m < 3.3 ? "critical" : "moderate";
          break;
        }
        case Kind::top: out += top(user, piece.field, piece.count); break;
      }
    }
    return out;
  }

 private:
  enum class Kind { literal, count, mean_rating, rating_style, top };
  struct Piece {
    Kind kind;
    std::string literal;
    std::size_t field;
    std::size_t count;
  };

  Piece parse(const std::string& name, std::string_view phrase) const {
    if (name == "user.count") return {Kind::count, "", 0, 0};
    if (name == "user.mean_rating") return {Kind::mean_rating, "", 0, 0};
    if (name == "user.rating_style") return {Kind::rating_style, "", 0, 0};
    for (std::size_t n : {std::size_t{1}, std::size_t{2}}) {
      const std::string prefix = n == 1 ? "user.top." : "user.top2.";
      if (name.rfind(prefix, 0) != 0) continue;
      const std::string field = name.substr(prefix.size());
      for (std::size_t f = 0; f < dataset_->item_fields.size(); ++f) {
        const auto& item_field = dataset_->item_fields[f];
        if (item_field.name != field) continue;
        USERIP_CHECK(item_field.kind == data::FieldKind::category || item_field.kind == data::FieldKind::category_list,
                     "user phrase '{}': {{{}}} needs a category field, '{}' is {}", phrase, name, field,
                     data::to_string(item_field.kind));
        return {Kind::top, "", f, n};
      }
      fail("user phrase '{}': {{{}}} names no item field of the dataset", phrase, name);
    }
    fail("user phrase '{}': unknown placeholder {{{}}} (use user.count, user.mean_rating, user.rating_style, "
         "user.top.FIELD or user.top2.FIELD)",
         phrase, name);
  }

  double mean_rating(std::uint32_t user) const {
    double sum = 0;
    for (std::size_t i = view_->user_begin(user); i < view_->user_end(user); ++i) sum += view_->rating(i);
    return view_->user_count(user) ? sum / static_cast<double>(view_->user_count(user)) : 0.0;
  }

  std::string top(std::uint32_t user, std::size_t field, std::size_t count) const {
    std::map<std::string, double> shares;
    const double rows = static_cast<double>(view_->user_count(user));
    for (std::size_t i = view_->user_begin(user); i < view_->user_end(user); ++i)
      for (const auto& v : data::list_values(dataset_->item_fields[field].values[view_->item(i)])) shares[v] += 1 / rows;
    std::vector<std::pair<double, std::string>> ranked;
    const auto& population = population_.at(field);
    for (const auto& [value, share] : shares) {
      const auto it = population.find(value);
      const double lift = it == population.end() || it->second <= 0 ? 0 : share / it->second;
      ranked.emplace_back(share >= 0.1 ? lift : -1.0 + share, value);  // frequent enough first, then by lift
    }
    std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    std::string out;
    for (std::size_t k = 0; k < count && k < ranked.size(); ++k) out += (k ? ", " : "") + ranked[k].second;
    return out.empty() ? "unknown" : out;
  }

  const data::Dataset* dataset_;
  const data::SplitView* view_;
  std::vector<Piece> pieces_;
  std::map<std::size_t, std::map<std::string, double>> population_;
};

}  // namespace

CorpusOptions default_corpus_options(const data::Dataset& dataset) {
  CorpusOptions options;
  if (dataset.field("title") && dataset.field("year") && dataset.field("genres")) {
    // The words before each summary are the evidence phrases of templates/movielens.json.
    options.user_phrase =
        "The user's taste in movies: {user.top2.genres}. About this user ({user.count} movies rated, "
        "{user.mean_rating} on average): {user.rating_style}.";
    return options;
  }
  if (dataset.field("categories") && dataset.field("price")) {
    // ... and of templates/synthetic.json.
    options.user_phrase = "The user's taste in products: {user.top2.categories}. About this user: {user.top.price}, "
                          "{user.rating_style}.";
  }
  // Generic phrases: name every text/category field the dataset has.
  std::string item;
  for (const auto& f : dataset.item_fields) {
    if (f.kind == data::FieldKind::number && f.name != "year") continue;
    item += (item.empty() ? "" : "; ") + f.name + ": {" + f.name + "}";
  }
  if (item.empty()) item = "item {item}";
  options.item_phrase = item;
  options.behaviour_phrase = "Chose " + item + "; rated {rating}.";
  if (dataset.field("categories") && dataset.field("price") && dataset.field("title") && dataset.field("year")) {
    // The kind of item comes before its title: a title names one item, and so its fixed price and categories, so
    // after the title they tell the LM nothing about the user, and a profile could not be read from them.
    options.behaviour_phrase = "Chose a {price} item in {categories}: {title}, {year}; rated {rating}.";
    // One choice per document, documents in random order: no training window holds another choice of the same
    // user, so the summary is the only evidence about the user and the LM learns to read it. With three choices per
    // document in user order, an LM pretrained on a synthetic world barely read the taste summary (docs/RESULTS.md).
    options.sentences_per_document = 1;
    options.shuffle_documents = true;
  }
  return options;
}

Corpus build_corpus(const data::Dataset& dataset, const CorpusOptions& options) {
  USERIP_CHECK(options.sentences_per_document >= 1, "sentences per document must be >= 1");
  USERIP_CHECK(options.heldout_fraction >= 0 && options.heldout_fraction < 1,
               "the held-out fraction must lie in [0, 1), got {}", options.heldout_fraction);
  Corpus corpus;
  corpus.options = options;
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
  std::optional<UserSummary> summary;
  if (!options.user_phrase.empty()) summary.emplace(dataset, train, options.user_phrase);
  for (std::uint32_t user : train.users()) {
    const std::string user_text = summary ? summary->render(user) : std::string();
    auto add_document = [&](std::string document) {
      if (!user_text.empty() && rng.uniform() < options.user_phrase_share) document = user_text + " " + document;
      add(std::move(document));
    };
    std::string document;
    std::size_t in_document = 0;
    for (std::size_t i = train.user_begin(user); i < train.user_end(user); ++i) {
      document += (document.empty() ? "" : " ") + behaviour.render_interaction(dataset, train.row(i));
      ++corpus.behaviour_lines;
      if (++in_document == options.sentences_per_document) {
        add_document(std::move(document));
        document.clear();
        in_document = 0;
      }
    }
    if (!document.empty()) add_document(std::move(document));
  }
  if (options.shuffle_documents) Rng::derive(options.seed, 1).shuffle(corpus.train);
  return corpus;
}

}  // namespace userip::text
