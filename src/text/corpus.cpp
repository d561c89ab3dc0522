#include "userip/text/corpus.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "userip/text/item_text.h"
#include "userip/text/placeholders.h"
#include "userip/util/error.h"
#include "userip/util/random.h"

namespace userip::text {

namespace {

// The user-summary placeholders of CorpusOptions::user_phrase, rendered from a user's rows.
class UserSummary {
 public:
  UserSummary(const data::Dataset& dataset, const data::SplitView& rows, std::string_view phrase)
      : dataset_(&dataset), view_(&rows) {
    for (auto& part : split_placeholders(phrase, "user phrase")) {
      if (part.placeholder) names_.push_back(part.text), slots_.push_back(pieces_.size());
      pieces_.push_back(part.placeholder ? parse(part.text, phrase) : Piece{Kind::literal, std::move(part.text), 0, 0});
    }
    // Quintiles of the users' shares of positive labels: a style relative to the population, whatever the rating
    // scale or the label threshold, and for click data too.
    std::vector<double> rates;
    for (std::uint32_t u : rows.users()) rates.push_back(like_rate(u));
    std::sort(rates.begin(), rates.end());
    for (std::size_t q = 1; q < 5 && !rates.empty(); ++q) like_rate_quintiles_.push_back(rates[q * (rates.size() - 1) / 5]);
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
    for (std::size_t k = 0; k < pieces_.size(); ++k) out += render_piece(k, user);
    return out;
  }

  // The summary of `user` with placeholder `placeholder` (an index into placeholders()) rendered for `other`.
  std::string render_swapped(std::uint32_t user, std::size_t placeholder, std::uint32_t other) const {
    std::string out;
    for (std::size_t k = 0; k < pieces_.size(); ++k) out += render_piece(k, k == slots_[placeholder] ? other : user);
    return out;
  }

  // The placeholders' names in phrase order, e.g. "user.top2.genres".
  const std::vector<std::string>& placeholders() const { return names_; }

  // Placeholder `placeholder` rendered for `user`.
  std::string value(std::size_t placeholder, std::uint32_t user) const {
    return render_piece(slots_[placeholder], user);
  }

 private:
  enum class Kind { literal, count, mean_rating, rating_style, top };

  std::string render_piece(std::size_t k, std::uint32_t user) const {
    const Piece& piece = pieces_[k];
    switch (piece.kind) {
      case Kind::literal: return piece.literal;
      case Kind::count: return std::to_string(view_->user_count(user));
      case Kind::mean_rating: return fmt::format("{:.1f}", mean_rating(user));
      case Kind::rating_style: return rating_style(user);
      case Kind::top: return top(user, piece.field, piece.count);
    }
    return {};
  }

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

  double like_rate(std::uint32_t user) const {
    double likes = 0;
    for (std::size_t i = view_->user_begin(user); i < view_->user_end(user); ++i) likes += view_->label(i) ? 1 : 0;
    return view_->user_count(user) ? likes / static_cast<double>(view_->user_count(user)) : 0.0;
  }

  std::string rating_style(std::uint32_t user) const {
    static const char* const kStyles[] = {"very critical", "critical", "moderate", "generous", "very generous"};
    const double rate = like_rate(user);
    // A rate equal to several cuts (many users alike: positive-only data, a fixed click ratio) takes the middle of
    // the levels they bound, not the lowest.
    std::size_t above = 0, at_or_above = 0;
    for (double cut : like_rate_quintiles_) above += rate > cut ? 1 : 0, at_or_above += rate >= cut ? 1 : 0;
    return kStyles[like_rate_quintiles_.empty() ? 2 : (above + at_or_above) / 2];
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
  std::vector<std::string> names_;  // of the placeholders, in phrase order
  std::vector<std::size_t> slots_;  // each placeholder's index in pieces_
  std::map<std::size_t, std::map<std::string, double>> population_;
  std::vector<double> like_rate_quintiles_;
};

}  // namespace

namespace {

// How many distinct values a field has (each value of a category_list counted on its own).
std::size_t distinct_values(const data::ItemField& field) {
  std::set<std::string> values;
  for (const auto& v : field.values) {
    if (v.empty()) continue;
    if (field.kind == data::FieldKind::category_list) {
      for (auto& part : data::list_values(v)) values.insert(std::move(part));
    } else {
      values.insert(v);
    }
  }
  return values.size();
}

// A field the phrases can name: not a reserved placeholder of the interaction, no braces.
bool speakable(const data::ItemField& f) {
  return f.name != "rating" && f.name != "label" && f.name != "item" && f.name.find_first_of("{}") == std::string::npos;
}

double mean_length(const data::ItemField& f) {
  double total = 0;
  for (const auto& v : f.values) total += static_cast<double>(v.size());
  return f.values.empty() ? 0 : total / static_cast<double>(f.values.size());
}

bool is_category(const data::ItemField& f) {
  return f.kind == data::FieldKind::category || f.kind == data::FieldKind::category_list;
}

// The most common values of a category field over the training rows, for the population's summary.
std::string typical_values(const data::Dataset& dataset, std::size_t field, std::size_t how_many) {
  std::map<std::string, double> shares;
  auto count = [&](std::uint32_t item) {
    for (const auto& v : data::list_values(dataset.item_fields[field].values[item])) shares[v] += 1;
  };
  if (dataset.has_split()) {
    const auto train = dataset.training_view();
    for (std::size_t i = 0; i < train.size(); ++i) count(train.item(i));
  } else {
    for (auto item : dataset.interactions.item) count(item);
  }
  std::vector<std::pair<double, std::string>> ranked;
  for (const auto& [value, n] : shares) ranked.emplace_back(-n, value);
  std::sort(ranked.begin(), ranked.end());
  std::string out;
  for (std::size_t k = 0; k < how_many && k < ranked.size(); ++k) out += (k ? ", " : "") + ranked[k].second;
  return out.empty() ? "unknown" : out;
}

}  // namespace

FieldRoles field_roles(const data::Dataset& dataset) {
  FieldRoles roles;
  std::vector<std::size_t> distinct(dataset.item_fields.size());
  for (std::size_t f = 0; f < dataset.item_fields.size(); ++f) distinct[f] = distinct_values(dataset.item_fields[f]);
  auto more_distinct = [&](std::optional<std::size_t> best, std::size_t f) { return !best || distinct[f] > distinct[*best]; };
  for (std::size_t f = 0; f < dataset.item_fields.size(); ++f) {
    const auto& field = dataset.item_fields[f];
    if (!speakable(field)) continue;
    if (field.kind == data::FieldKind::text && distinct[f] >= 2 && more_distinct(roles.name, f)) roles.name = f;
    if (is_category(field) && distinct[f] >= 3 && more_distinct(roles.taste, f)) roles.taste = f;
  }
  // Of text fields nearly as distinct as the most distinct one, the shortest names an item (a title, not a
  // description).
  if (roles.name) {
    const std::size_t best = distinct[*roles.name];
    for (std::size_t f = 0; f < dataset.item_fields.size(); ++f) {
      const auto& field = dataset.item_fields[f];
      if (speakable(field) && field.kind == data::FieldKind::text && distinct[f] * 10 >= best * 9 &&
          mean_length(field) < mean_length(dataset.item_fields[*roles.name]))
        roles.name = f;
    }
  }
  for (std::size_t f = 0; f < dataset.item_fields.size(); ++f) {
    const auto& field = dataset.item_fields[f];
    if (!speakable(field)) continue;
    if (is_category(field) && f != roles.taste && distinct[f] >= 2 && distinct[f] <= 32) roles.background.push_back(f);
    if (field.kind == data::FieldKind::number && distinct[f] >= 2 && roles.numbers.size() < 2) roles.numbers.push_back(f);
  }
  std::stable_sort(roles.background.begin(), roles.background.end(),
                   [&](std::size_t a, std::size_t b) { return distinct[a] < distinct[b]; });
  if (roles.background.size() > 2) roles.background.resize(2);
  return roles;
}

DefaultText default_text(const data::Dataset& dataset) {
  const FieldRoles roles = field_roles(dataset);
  auto placeholder = [&](std::size_t f) { return "{" + dataset.item_fields[f].name + "}"; };
  DefaultText text;
  CorpusOptions& options = text.corpus;

  // An item line: its name and numbers, then what kind of item it is.
  std::string numbers, kinds;
  for (std::size_t f : roles.numbers) numbers += (numbers.empty() ? "" : ", ") + placeholder(f);
  if (roles.taste) kinds = placeholder(*roles.taste);
  for (std::size_t f : roles.background) kinds += (kinds.empty() ? "" : "; ") + placeholder(f);
  std::string item = roles.name ? placeholder(*roles.name) : "item {item}";
  if (!numbers.empty()) item += " (" + numbers + ")";
  options.item_phrase = kinds.empty() ? item : item + ": " + kinds;

  // A behaviour sentence gives the user's verdict first and the kind of item before its name. The verdict first:
  // right after the user summary, before the item is named, it can be predicted from the user alone, so the LM
  // learns to read the summary for it (after the title, the item's own average explains most of a rating, and a
  // small LM never learnt to look back to the summary: docs/RESULTS.md). The kind before the name: a name stands
  // for one item, and so for its fixed kind, so after the name the kind tells the LM nothing about the user.
  std::string chose = dataset.label_kind == data::LabelKind::rating ? "Rated {rating}; chose " : "Verdict: {label}; chose ";
  if (roles.background.empty()) {
    chose += "an item";
  } else {
    chose += "a ";
    for (std::size_t k = 0; k < roles.background.size(); ++k) chose += (k ? ", " : "") + placeholder(roles.background[k]);
    chose += " item";
  }
  if (roles.taste) chose += " in " + placeholder(*roles.taste);
  chose += ": " + (roles.name ? placeholder(*roles.name) : std::string("item {item}"));
  if (!numbers.empty()) chose += ", " + numbers;
  options.behaviour_phrase = chose + ".";

  // The user summary: the evidence the LM must learn to read, in words and never in numbers, so that a profile
  // fitted in its place has to carry what the numbers would have said.
  if (roles.taste) {
    const std::string field = dataset.item_fields[*roles.taste].name;
    text.attributes.push_back({"taste", "The user's taste in products:", "{user.top2." + field + "}",
                               typical_values(dataset, *roles.taste, 2)});
  }
  std::string summary, typical;
  for (std::size_t f : roles.background) {
    summary += "{user.top." + dataset.item_fields[f].name + "}, ";
    typical += typical_values(dataset, f, 1) + ", ";
  }
  text.attributes.push_back({"background", "About this user:", summary + "{user.rating_style}", typical + "moderate"});
  for (const auto& a : text.attributes)
    options.user_phrase += (options.user_phrase.empty() ? "" : " ") + a.evidence + " " + a.summary + ".";

  // One choice per document, documents in random order: no training window holds another choice of the same user,
  // so the summary is the only evidence about the user and the LM learns to read it. With three choices per
  // document in user order, an LM pretrained on a synthetic world barely read the taste summary (docs/RESULTS.md).
  options.sentences_per_document = 1;
  options.shuffle_documents = true;
  return text;
}

CorpusOptions default_corpus_options(const data::Dataset& dataset) { return default_text(dataset).corpus; }

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

ContextProbe build_context_probe(const data::Dataset& dataset, const CorpusOptions& options, std::size_t max_cases,
                                 std::uint64_t seed) {
  USERIP_CHECK(!options.user_phrase.empty(),
               "the corpus has no user summary (user phrase), so there is no user context to probe");
  USERIP_CHECK(max_cases >= 1, "the context probe needs at least one case");
  const auto train = dataset.training_view();
  const auto valid = dataset.view({data::SplitPart::valid});
  const UserSummary summary(dataset, train, options.user_phrase);
  const PhraseTemplate behaviour(options.behaviour_phrase, dataset);
  const std::vector<std::uint32_t> users = train.users();
  std::vector<std::pair<std::uint32_t, std::size_t>> rows;  // (user, dataset row) of validation rows with a training history
  for (std::uint32_t user : valid.users())
    if (train.user_count(user) > 0)
      for (std::size_t i = valid.user_begin(user); i < valid.user_end(user); ++i) rows.emplace_back(user, valid.row(i));
  USERIP_CHECK(!rows.empty() && !users.empty(),
               "the dataset has no validation interactions of training users to probe the LM with");
  Rng rng = Rng::derive(seed, 7100);
  rng.shuffle(rows);
  if (rows.size() > max_cases) rows.resize(max_cases);
  std::sort(rows.begin(), rows.end());

  ContextProbe probe;
  probe.parts = summary.placeholders();
  // A part's value is compared as text: two users with the same words give the LM nothing to tell apart.
  constexpr int kDraws = 64;
  for (const auto& [user, row] : rows) {
    ContextProbeCase c;
    c.summary = summary.render(user);
    c.behaviour = behaviour.render_interaction(dataset, row);
    for (std::size_t part = 0; part < probe.parts.size(); ++part) {
      const std::string own = summary.value(part, user);
      std::string altered;
      for (int draw = 0; draw < kDraws && altered.empty(); ++draw) {
        const std::uint32_t other = users[rng.below(users.size())];
        if (summary.value(part, other) != own) altered = summary.render_swapped(user, part, other);
      }
      c.altered.push_back(std::move(altered));
    }
    probe.cases.push_back(std::move(c));
  }
  return probe;
}

}  // namespace userip::text
