#include "userip/profile/template.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "userip/text/corpus.h"
#include "userip/text/placeholders.h"
#include "userip/util/error.h"

namespace userip::profile {
namespace {

constexpr std::string_view kSoftMarker = "<soft>";
constexpr std::size_t kNone = std::string::npos;

// nlohmann's DOM forgets where things were, so a tiny structural scan of the raw text remembers
// the offsets of the keys an error message may need to point at.
struct JsonLocations {
  std::map<std::string, std::size_t> top_keys;
  std::vector<std::size_t> attribute_starts;                      // each element of "attributes"
  std::vector<std::map<std::string, std::size_t>> attribute_keys;  // keys inside each element
};

JsonLocations scan_locations(const std::string& text) {
  JsonLocations where;
  std::vector<char> stack;
  bool attributes_open = false;  // stack[1] is the "attributes" array
  bool expect_element = false;
  std::string last_top_key;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (attributes_open && stack.size() == 2 && expect_element && c != ']' && c != ',') {
      where.attribute_starts.push_back(i);
      where.attribute_keys.emplace_back();
      expect_element = false;
    }
    if (c == '"') {
      const std::size_t start = i;
      std::string value;
      for (++i; i < text.size() && text[i] != '"'; ++i) {
        if (text[i] == '\\' && i + 1 < text.size()) ++i;
        value += text[i];
      }
      std::size_t next = i + 1;
      while (next < text.size() && std::isspace(static_cast<unsigned char>(text[next]))) ++next;
      const bool is_key = next < text.size() && text[next] == ':';
      if (!is_key) continue;
      if (stack.size() == 1) {
        where.top_keys.emplace(value, start);
        last_top_key = value;
      } else if (attributes_open && stack.size() == 3 && stack[2] == '{' && !where.attribute_keys.empty()) {
        where.attribute_keys.back().emplace(value, start);
      }
      continue;
    }
    if (c == '{' || c == '[') {
      stack.push_back(c);
      if (stack.size() == 2 && c == '[' && last_top_key == "attributes") {
        attributes_open = true;
        expect_element = true;
      }
    } else if (c == '}' || c == ']') {
      if (!stack.empty()) stack.pop_back();
      if (stack.size() < 2) attributes_open = false;
    } else if (c == ',' && attributes_open && stack.size() == 2) {
      expect_element = true;
    }
  }
  return where;
}

int line_of(const std::string& text, std::size_t offset) {
  offset = std::min(offset, text.size());
  return 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(offset), '\n'));
}

bool valid_name(const std::string& name) {
  if (name.empty()) return false;
  const auto alpha = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
  if (!alpha(name[0])) return false;
  return std::all_of(name.begin(), name.end(), [&](char c) { return alpha(c) || (c >= '0' && c <= '9'); });
}

bool is_category(const data::ItemField& field) {
  return field.kind == data::FieldKind::category || field.kind == data::FieldKind::category_list;
}

std::string available_evidence_names(const data::Dataset& dataset) {
  std::string out = "user.count, user.mean_rating, user.like_rate";
  for (const auto& f : dataset.item_fields) {
    if (is_category(f)) out += ", user.top." + f.name;
  }
  for (const auto& f : dataset.item_fields) out += ", " + f.name;
  out += ", item";
  return out;
}

using Piece = ProfileTemplate::Piece;
using PieceKind = ProfileTemplate::PieceKind;

// The evidence and behaviour placeholders: text::PhraseTemplate's, with the user aggregates added and the
// interaction's own values refused. Errors name `where`.
std::vector<Piece> parse_phrase(std::string_view phrase, const data::Dataset& dataset, const std::string& where) {
  std::vector<Piece> pieces;
  for (auto& part : text::split_placeholders(phrase, where)) {
    if (!part.placeholder) {
      pieces.push_back({PieceKind::literal, std::move(part.text), 0});
      continue;
    }
    const std::string& name = part.text;
    Piece piece;
    if (name == "user.count") {
      piece.kind = PieceKind::count;
    } else if (name == "user.mean_rating") {
      piece.kind = PieceKind::mean_rating;
    } else if (name == "user.like_rate") {
      piece.kind = PieceKind::like_rate;
    } else if (name == "rating" || name == "label") {
      fail("{}: {{{}}} is not allowed here: it would reveal the label of the behaviour being predicted "
           "(available: {})",
           where, name, available_evidence_names(dataset));
    } else if (name == "item") {
      piece.kind = PieceKind::item_id;
    } else if (name.rfind("user.top.", 0) == 0) {
      const std::string field = name.substr(9);
      const auto* f = dataset.field(field);
      std::string categories;
      for (const auto& item_field : dataset.item_fields) {
        if (is_category(item_field)) categories += (categories.empty() ? "" : ", ") + ("user.top." + item_field.name);
      }
      USERIP_CHECK(f != nullptr && is_category(*f),
                   "{}: unknown placeholder {{{}}}: user.top.<field> needs a category or category_list item field "
                   "(available: {})",
                   where, name, categories.empty() ? std::string("none in this dataset") : categories);
      piece.kind = PieceKind::top;
      piece.field = static_cast<std::size_t>(f - dataset.item_fields.data());
    } else {
      const auto* f = dataset.field(name);
      USERIP_CHECK(f != nullptr, "{}: unknown placeholder {{{}}} (available: {})", where, name,
                   available_evidence_names(dataset));
      piece.kind = PieceKind::field;
      piece.field = static_cast<std::size_t>(f - dataset.item_fields.data());
    }
    pieces.push_back(std::move(piece));
  }
  return pieces;
}

bool uses_item(const std::vector<Piece>& pieces) {
  return std::any_of(pieces.begin(), pieces.end(),
                     [](const Piece& p) { return p.kind == PieceKind::field || p.kind == PieceKind::item_id; });
}

std::size_t count_occurrences(std::string_view text, std::string_view needle) {
  std::size_t n = 0;
  for (std::size_t pos = text.find(needle); pos != std::string_view::npos; pos = text.find(needle, pos + 1)) ++n;
  return n;
}

std::string type_name(const nlohmann::json& value) { return value.type_name(); }

}  // namespace

UserAggregates compute_aggregates(const data::Dataset& dataset, const std::vector<std::size_t>& rows) {
  UserAggregates out;
  out.count = rows.size();
  out.top.assign(dataset.item_fields.size(), "");
  double rating_sum = 0;
  std::size_t likes = 0;
  for (std::size_t row : rows) {
    rating_sum += dataset.interactions.rating[row];
    likes += dataset.label(row) ? 1 : 0;
  }
  if (!rows.empty()) {
    out.mean_rating = rating_sum / static_cast<double>(rows.size());
    out.like_rate = static_cast<double>(likes) / static_cast<double>(rows.size());
  }
  for (std::size_t f = 0; f < dataset.item_fields.size(); ++f) {
    const auto& field = dataset.item_fields[f];
    if (!is_category(field)) continue;
    std::map<std::string, std::size_t> counts;  // ordered: the first maximum is the smallest value
    for (std::size_t row : rows) {
      const std::string& value = field.values[dataset.interactions.item[row]];
      if (value.empty()) continue;
      if (field.kind == data::FieldKind::category_list) {
        for (const auto& part : data::list_values(value)) ++counts[part];
      } else {
        ++counts[value];
      }
    }
    std::string best = "unknown";
    std::size_t best_count = 0;
    for (const auto& [value, n] : counts) {
      if (n > best_count) {
        best = value;
        best_count = n;
      }
    }
    out.top[f] = best;
  }
  return out;
}

UserAggregates compute_aggregates(const data::Dataset& dataset, const data::SplitView& view, std::uint32_t user) {
  std::vector<std::size_t> rows;
  for (std::size_t i = view.user_begin(user); i < view.user_end(user); ++i) rows.push_back(view.row(i));
  return compute_aggregates(dataset, rows);
}

ProfileTemplate ProfileTemplate::load(const std::filesystem::path& file, const data::Dataset& dataset) {
  std::ifstream in(file, std::ios::binary);
  USERIP_CHECK(in.good(), "cannot read the template file {}", file.string());
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), file.string(), dataset);
}

ProfileTemplate ProfileTemplate::parse(const std::string& json_text, const std::string& source_name,
                                       const data::Dataset& dataset) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::parse_error& e) {
    const std::size_t offset = e.byte > 0 ? e.byte - 1 : 0;
    fail("{}:{}: invalid JSON: {}", source_name, line_of(json_text, offset), e.what());
  }
  const JsonLocations where = scan_locations(json_text);
  const auto top_line = [&](const std::string& key) {
    const auto it = where.top_keys.find(key);
    return it == where.top_keys.end() ? 1 : line_of(json_text, it->second);
  };
  USERIP_CHECK(root.is_object(), "{}:1: a template is a JSON object with \"attributes\" and \"behaviour\", got {}",
               source_name, type_name(root));
  for (const auto& [key, value] : root.items()) {
    USERIP_CHECK(key == "description" || key == "attributes" || key == "behaviour",
                 "{}:{}: unknown key \"{}\" (expected: description, attributes, behaviour)", source_name,
                 top_line(key), key);
  }

  ProfileTemplate t;
  t.source_ = source_name;
  if (root.contains("description")) {
    USERIP_CHECK(root["description"].is_string(), "{}:{}: \"description\" must be a string, got {}", source_name,
                 top_line("description"), type_name(root["description"]));
    t.description_ = root["description"].get<std::string>();
  }

  USERIP_CHECK(root.contains("behaviour"), "{}:1: missing key \"behaviour\" (the phrase of one interaction, e.g. "
               "\"Watched {{title}}; rated {{rating}}.\")", source_name);
  USERIP_CHECK(root["behaviour"].is_string(), "{}:{}: \"behaviour\" must be a string, got {}", source_name,
               top_line("behaviour"), type_name(root["behaviour"]));
  t.behaviour_ = root["behaviour"].get<std::string>();
  USERIP_CHECK(t.behaviour_.find_first_not_of(" \t\r\n") != std::string::npos, "{}:{}: \"behaviour\" is empty",
               source_name, top_line("behaviour"));
  try {
    t.behaviour_phrase_.emplace(t.behaviour_, dataset);
  } catch (const Error& e) {
    fail("{}:{}: behaviour: {}", source_name, top_line("behaviour"), e.what());
  }

  USERIP_CHECK(root.contains("attributes"), "{}:1: missing key \"attributes\" (a list of profile attributes)",
               source_name);
  const nlohmann::json& attributes = root["attributes"];
  const int attributes_line = top_line("attributes");
  USERIP_CHECK(attributes.is_array(), "{}:{}: \"attributes\" must be a list, got {}", source_name, attributes_line,
               type_name(attributes));
  USERIP_CHECK(!attributes.empty(), "{}:{}: \"attributes\" is empty: a profile needs at least one attribute",
               source_name, attributes_line);
  USERIP_CHECK(attributes.size() <= static_cast<std::size_t>(kMaxAttributes),
               "{}:{}: {} attributes; at most {} are supported", source_name, attributes_line, attributes.size(),
               kMaxAttributes);

  std::set<std::string> names;
  for (std::size_t a = 0; a < attributes.size(); ++a) {
    const nlohmann::json& spec = attributes[a];
    const bool located = a < where.attribute_starts.size();
    const int line = located ? line_of(json_text, where.attribute_starts[a]) : attributes_line;
    const auto key_line = [&](const std::string& key) {
      if (!located) return line;
      const auto it = where.attribute_keys[a].find(key);
      return it == where.attribute_keys[a].end() ? line : line_of(json_text, it->second);
    };
    USERIP_CHECK(spec.is_object(), "{}:{}: attribute {} must be an object with \"name\" and \"evidence\", got {}",
                 source_name, line, a + 1, type_name(spec));
    for (const auto& [key, value] : spec.items()) {
      USERIP_CHECK(key == "name" || key == "evidence" || key == "soft_tokens" || key == "probe" || key == "init",
                   "{}:{}: attribute {}: unknown key \"{}\" (expected: name, evidence, soft_tokens, probe, init)",
                   source_name, key_line(key), a + 1, key);
    }
    AttributeSpec attribute;
    attribute.line = line;
    USERIP_CHECK(spec.contains("name"), "{}:{}: attribute {}: missing \"name\"", source_name, line, a + 1);
    USERIP_CHECK(spec["name"].is_string(), "{}:{}: attribute {}: \"name\" must be a string, got {}", source_name,
                 key_line("name"), a + 1, type_name(spec["name"]));
    attribute.name = spec["name"].get<std::string>();
    USERIP_CHECK(valid_name(attribute.name),
                 "{}:{}: attribute {}: bad name \"{}\" (letters, digits and '_', not starting with a digit)",
                 source_name, key_line("name"), a + 1, attribute.name);
    USERIP_CHECK(names.insert(attribute.name).second, "{}:{}: duplicate attribute name \"{}\"", source_name,
                 key_line("name"), attribute.name);
    const std::string label = fmt::format("{}:{}: attribute '{}'", source_name, line, attribute.name);

    USERIP_CHECK(spec.contains("evidence"), "{}: missing \"evidence\" (the phrase before its soft tokens)", label);
    USERIP_CHECK(spec["evidence"].is_string(), "{}:{}: attribute '{}': \"evidence\" must be a string, got {}",
                 source_name, key_line("evidence"), attribute.name, type_name(spec["evidence"]));
    attribute.evidence = spec["evidence"].get<std::string>();
    const std::string evidence_where =
        fmt::format("{}:{}: attribute '{}' evidence", source_name, key_line("evidence"), attribute.name);
    USERIP_CHECK(attribute.evidence.find_first_not_of(" \t\r\n") != std::string::npos,
                 "{}: empty evidence: each attribute needs a phrase that introduces its soft tokens", evidence_where);
    USERIP_CHECK(attribute.evidence.find(kSoftMarker) == std::string::npos,
                 "{}: \"<soft>\" belongs in the probe, not in the evidence (the soft tokens follow the evidence)",
                 evidence_where);
    t.evidence_pieces_.push_back(parse_phrase(attribute.evidence, dataset, evidence_where));

    if (spec.contains("soft_tokens")) {
      const auto& n = spec["soft_tokens"];
      const bool ok = n.is_number_integer() && n.get<long long>() >= 1 && n.get<long long>() <= kMaxSoftTokens;
      USERIP_CHECK(ok, "{}:{}: attribute '{}': soft_tokens must be an integer in 1..{}, got {}", source_name,
                   key_line("soft_tokens"), attribute.name, kMaxSoftTokens, n.dump());
      attribute.soft_tokens = static_cast<int>(n.get<long long>());
    }

    if (spec.contains("init")) {
      USERIP_CHECK(spec["init"].is_string(), "{}:{}: attribute '{}': \"init\" must be a string, got {}", source_name,
                   key_line("init"), attribute.name, type_name(spec["init"]));
      attribute.init = spec["init"].get<std::string>();
      USERIP_CHECK(attribute.init.find_first_not_of(" \t\r\n") != std::string::npos,
                   "{}:{}: attribute '{}': empty \"init\" (leave the key out for a random start)", source_name,
                   key_line("init"), attribute.name);
    }

    if (spec.contains("probe")) {
      USERIP_CHECK(spec["probe"].is_string(), "{}:{}: attribute '{}': \"probe\" must be a string, got {}",
                   source_name, key_line("probe"), attribute.name, type_name(spec["probe"]));
      attribute.probe = spec["probe"].get<std::string>();
    } else {
      attribute.probe = attribute.evidence + " <soft>. In short, this user";
    }
    const std::string probe_where =
        fmt::format("{}:{}: attribute '{}' probe", source_name, key_line("probe"), attribute.name);
    USERIP_CHECK(count_occurrences(attribute.probe, kSoftMarker) == 1,
                 "{}: must contain \"<soft>\" exactly once (where the soft tokens or codeword go), found {} in \"{}\"",
                 probe_where, count_occurrences(attribute.probe, kSoftMarker), attribute.probe);
    const std::size_t marker = attribute.probe.find(kSoftMarker);
    t.probe_before_.push_back(parse_phrase(attribute.probe.substr(0, marker), dataset, probe_where));
    t.probe_after_.push_back(parse_phrase(attribute.probe.substr(marker + kSoftMarker.size()), dataset, probe_where));
    t.attributes_.push_back(std::move(attribute));
  }
  return t;
}

int ProfileTemplate::total_soft_tokens() const {
  int total = 0;
  for (const auto& a : attributes_) total += a.soft_tokens;
  return total;
}

int ProfileTemplate::soft_offset(std::size_t attribute) const {
  USERIP_ASSERT(attribute < attributes_.size());
  int offset = 0;
  for (std::size_t a = 0; a < attribute; ++a) offset += attributes_[a].soft_tokens;
  return offset;
}

bool ProfileTemplate::one_interaction_per_sample() const {
  return std::any_of(evidence_pieces_.begin(), evidence_pieces_.end(), uses_item);
}

bool ProfileTemplate::probe_uses_item(std::size_t attribute) const {
  USERIP_ASSERT(attribute < attributes_.size());
  return uses_item(probe_before_[attribute]) || uses_item(probe_after_[attribute]);
}

nlohmann::json ProfileTemplate::to_json() const {
  nlohmann::json attributes = nlohmann::json::array();
  for (const auto& a : attributes_) {
    nlohmann::json spec = {{"name", a.name}, {"evidence", a.evidence}, {"soft_tokens", a.soft_tokens}, {"probe", a.probe}};
    if (!a.init.empty()) spec["init"] = a.init;  // absent when unused, so older fits keep their fingerprints
    attributes.push_back(std::move(spec));
  }
  return {{"source", source_},
          {"description", description_},
          {"attributes", std::move(attributes)},
          {"behaviour", behaviour_},
          {"total_soft_tokens", total_soft_tokens()},
          {"one_interaction_per_sample", one_interaction_per_sample()}};
}

std::string ProfileTemplate::render_pieces(const std::vector<Piece>& pieces, const data::Dataset& dataset,
                                           const UserAggregates& aggregates, std::optional<std::uint32_t> item,
                                           std::size_t attribute, const char* what) const {
  std::string out;
  for (const auto& p : pieces) {
    switch (p.kind) {
      case PieceKind::literal:
        out += p.literal;
        break;
      case PieceKind::count:
        out += std::to_string(aggregates.count);
        break;
      case PieceKind::mean_rating:
        out += fmt::format("{:.1f}", aggregates.mean_rating);
        break;
      case PieceKind::like_rate:
        out += std::to_string(std::lround(100.0 * aggregates.like_rate));
        break;
      case PieceKind::top:
        USERIP_ASSERT(p.field < aggregates.top.size());
        out += aggregates.top[p.field];
        break;
      case PieceKind::field:
      case PieceKind::item_id:
        USERIP_CHECK(item.has_value(), "{}: the {} of attribute '{}' names an item field and needs the sample's item",
                     source_, what, attributes_[attribute].name);
        USERIP_CHECK(*item < dataset.num_items(), "{}: item {} out of range ({} items)", source_, *item,
                     dataset.num_items());
        out += p.kind == PieceKind::field ? text::field_as_text(dataset.item_fields[p.field], *item)
                                          : dataset.item_ids[*item];
        break;
    }
  }
  return out;
}

std::string ProfileTemplate::render_evidence(std::size_t attribute, const data::Dataset& dataset,
                                             const UserAggregates& aggregates,
                                             std::optional<std::uint32_t> item) const {
  USERIP_ASSERT(attribute < attributes_.size());
  return render_pieces(evidence_pieces_[attribute], dataset, aggregates, item, attribute, "evidence");
}

std::string ProfileTemplate::render_behaviour(const data::Dataset& dataset, std::size_t row) const {
  return behaviour_phrase_->render_interaction(dataset, row);
}

ProbeText ProfileTemplate::render_probe(std::size_t attribute, const data::Dataset& dataset,
                                        const UserAggregates& aggregates, std::optional<std::uint32_t> item) const {
  USERIP_ASSERT(attribute < attributes_.size());
  return {render_pieces(probe_before_[attribute], dataset, aggregates, item, attribute, "probe"),
          render_pieces(probe_after_[attribute], dataset, aggregates, item, attribute, "probe")};
}

ProfileTemplate default_template(const data::Dataset& dataset) {
  const text::DefaultText text = text::default_text(dataset);
  nlohmann::json attributes = nlohmann::json::array();
  std::string roles;
  // The probe starts a behaviour sentence after the codeword, so the LM's continuation is the verdict and the
  // kind of item it expects from a user with that code.
  const std::string& behaviour = text.corpus.behaviour_phrase;
  std::string opening = behaviour.substr(0, behaviour.find('{'));
  while (!opening.empty() && opening.back() == ' ') opening.pop_back();
  for (const auto& a : text.attributes) {
    // The soft tokens take the summary's place after the same words, and start from the population's summary,
    // where the LM reads that kind of fact.
    attributes.push_back({{"name", a.name},
                          {"evidence", a.evidence},
                          {"soft_tokens", 4},
                          {"init", a.typical + "."},
                          {"probe", a.evidence + " <soft>." + (opening.empty() ? "" : " " + opening)}});
    roles += (roles.empty() ? "" : "; ") + a.name + " in place of \"" + a.summary + "\"";
  }
  const nlohmann::json spec = {
      {"description", "the default template, made from the dataset's fields (docs/TEMPLATES.md): " + roles},
      {"attributes", attributes},
      {"behaviour", text.corpus.behaviour_phrase}};
  return ProfileTemplate::parse(spec.dump(2), "default template", dataset);
}

}  // namespace userip::profile
