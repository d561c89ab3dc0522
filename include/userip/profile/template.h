#pragma once
// Profile templates: which profile attributes a user has, the evidence phrase that introduces each
// attribute's soft tokens, and the behaviour phrase whose likelihood the soft tokens are fitted to.
// A template is a JSON file (see docs/TEMPLATES.md) validated against a dataset's item fields, so a
// typo fails at load time with the file and line rather than in the middle of a fit.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "userip/data/dataset.h"
#include "userip/text/item_text.h"

namespace userip::profile {

constexpr int kMaxSoftTokens = 64;   // per attribute
constexpr int kMaxAttributes = 64;   // sample segments are stored as int8

struct AttributeSpec {
  std::string name;
  std::string evidence;
  int soft_tokens = 1;
  std::string probe;  // always filled (the default when the file has none); contains "<soft>" once
  // Plain text whose token embeddings start the soft tokens (prompt tuning's vocabulary initialisation, cycled or
  // cut to soft_tokens); empty: they start from small random values. Words the LM has seen where this attribute's
  // evidence goes tie the soft tokens to that meaning, where a random start leaves attributes interchangeable.
  std::string init;
  int line = 0;       // 1-based line of the attribute in its file
};

// What evidence phrases may say about a user, computed from a set of interaction rows (the user's
// history; or, for explanations, all rows of the users behind a code).
struct UserAggregates {
  std::size_t count = 0;
  double mean_rating = 0.0;  // 0 without rows
  double like_rate = 0.0;    // fraction of rows whose label is 1; 0 without rows
  // Per item field (index as in dataset.item_fields): the most frequent value among the rows' items
  // (each value of a category_list counted), ties broken by the smaller value, "unknown" without
  // any; "" for fields that are not category/category_list.
  std::vector<std::string> top;
};
UserAggregates compute_aggregates(const data::Dataset& dataset, const std::vector<std::size_t>& rows);
// The rows of `user` in `view`.
UserAggregates compute_aggregates(const data::Dataset& dataset, const data::SplitView& view, std::uint32_t user);

// A probe prompt split at its "<soft>" marker.
struct ProbeText {
  std::string before;
  std::string after;
};

class ProfileTemplate {
 public:
  // Throws userip::Error naming the file and the 1-based line of the offending key or attribute.
  static ProfileTemplate load(const std::filesystem::path& file, const data::Dataset& dataset);
  static ProfileTemplate parse(const std::string& json_text, const std::string& source_name,
                               const data::Dataset& dataset);

  const std::string& source() const { return source_; }
  const std::string& description() const { return description_; }
  const std::vector<AttributeSpec>& attributes() const { return attributes_; }
  const std::string& behaviour() const { return behaviour_; }
  int total_soft_tokens() const;
  // Index of attribute a's first soft token in 0..total_soft_tokens()-1 (attribute-major order).
  int soft_offset(std::size_t attribute) const;
  // True when an evidence phrase names an item field: the evidence then describes the sample's one
  // behaviour item, so each sample holds a single interaction (as the authors' released code did).
  bool one_interaction_per_sample() const;
  // True when the probe of `attribute` names an item field (render_probe then needs an item).
  bool probe_uses_item(std::size_t attribute) const;
  nlohmann::json to_json() const;  // for the run record

  // Rendering. `dataset` must be the one the template was loaded against. `item` is the sample's
  // behaviour item, required exactly when the phrase names item fields.
  std::string render_evidence(std::size_t attribute, const data::Dataset& dataset, const UserAggregates& aggregates,
                              std::optional<std::uint32_t> item = std::nullopt) const;
  std::string render_behaviour(const data::Dataset& dataset, std::size_t row) const;
  ProbeText render_probe(std::size_t attribute, const data::Dataset& dataset, const UserAggregates& aggregates,
                         std::optional<std::uint32_t> item = std::nullopt) const;

  // Placeholder pieces of an evidence or probe phrase (public so the parser's helpers can build them).
  enum class PieceKind { literal, count, mean_rating, like_rate, top, field, item_id };
  struct Piece {
    PieceKind kind = PieceKind::literal;
    std::string literal;
    std::size_t field = 0;
  };

 private:
  ProfileTemplate() = default;
  std::string render_pieces(const std::vector<Piece>& pieces, const data::Dataset& dataset,
                            const UserAggregates& aggregates, std::optional<std::uint32_t> item,
                            std::size_t attribute, const char* what) const;

  std::string source_;
  std::string description_;
  std::vector<AttributeSpec> attributes_;
  std::string behaviour_;
  std::vector<std::vector<Piece>> evidence_pieces_;
  std::vector<std::vector<Piece>> probe_before_, probe_after_;
  std::optional<text::PhraseTemplate> behaviour_phrase_;
};

// The template a fit uses without a template file, for any dataset: the attributes of the default
// LM's user summary (text::default_text), each with its soft tokens where the summary stood and
// no answer in plain text, and the default corpus's behaviour phrase.
ProfileTemplate default_template(const data::Dataset& dataset);

}  // namespace userip::profile
