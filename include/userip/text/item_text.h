#pragma once
// Renders text from a dataset: phrases with {placeholders} filled from item fields and from the
// interaction itself. The default LM's corpus and the profile templates use the same renderer, so
// the LM is pretrained on exactly the kind of text it later scores.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "userip/data/dataset.h"

namespace userip::text {

// A phrase such as "Watched {title} ({year}), {genres}; rated {rating}". Placeholders name item
// fields of the dataset or the interaction values `rating`, `label`, `item`. Unknown placeholders
// are rejected at construction with a message that lists the available names.
class PhraseTemplate {
 public:
  PhraseTemplate(std::string_view format, const data::Dataset& dataset);

  // `row` indexes the dataset's interactions.
  std::string render_interaction(const data::Dataset& dataset, std::size_t row) const;
  std::string render_item(const data::Dataset& dataset, std::uint32_t item) const;
  const std::string& format() const { return format_; }
  // True if the phrase uses a value of the interaction (rating/label) and not only the item.
  bool uses_interaction_values() const;

 private:
  enum class Source { literal, field, rating, label, item_id };
  struct Piece {
    Source source;
    std::string literal;
    std::size_t field = 0;
  };
  std::string render(const data::Dataset& dataset, std::uint32_t item, const std::size_t* row) const;

  std::string format_;
  std::vector<Piece> pieces_;
};

// A field value as prose: lists "Action|Comedy" become "Action, Comedy"; a missing value "unknown".
std::string field_as_text(const data::ItemField& field, std::uint32_t item);
// A rating as text: "4" rather than "4.000000", "3.5" as is.
std::string rating_as_text(float rating);

}  // namespace userip::text
