#include "userip/text/item_text.h"

#include <fmt/format.h>

#include <cmath>

#include "userip/text/placeholders.h"
#include "userip/util/error.h"

namespace userip::text {

std::string field_as_text(const data::ItemField& field, std::uint32_t item) {
  const std::string& value = field.values[item];
  if (value.empty()) return "unknown";
  if (field.kind != data::FieldKind::category_list) return value;
  std::string out;
  for (const auto& part : data::list_values(value)) out += (out.empty() ? "" : ", ") + part;
  return out;
}

std::string rating_as_text(float rating) {
  if (std::floor(rating) == rating) return fmt::format("{}", static_cast<long long>(rating));
  return fmt::format("{:g}", rating);
}

PhraseTemplate::PhraseTemplate(std::string_view format, const data::Dataset& dataset) : format_(format) {
  for (auto& part : split_placeholders(format, fmt::format("phrase \"{}\"", format))) {
    if (!part.placeholder) {
      pieces_.push_back({Source::literal, std::move(part.text), 0});
      continue;
    }
    const std::string& name = part.text;
    Piece piece{Source::literal, {}, 0};
    if (name == "rating") {
      piece.source = Source::rating;
    } else if (name == "label") {
      piece.source = Source::label;
    } else if (name == "item") {
      piece.source = Source::item_id;
    } else {
      bool found = false;
      for (std::size_t f = 0; f < dataset.item_fields.size(); ++f) {
        if (dataset.item_fields[f].name == name) {
          piece.source = Source::field;
          piece.field = f;
          found = true;
        }
      }
      if (!found) {
        std::string available = "rating, label, item";
        for (const auto& f : dataset.item_fields) available += ", " + f.name;
        fail("phrase \"{}\": unknown placeholder {{{}}} (available: {})", format, name, available);
      }
    }
    pieces_.push_back(std::move(piece));
  }
}

bool PhraseTemplate::uses_interaction_values() const {
  for (const auto& p : pieces_) {
    if (p.source == Source::rating || p.source == Source::label) return true;
  }
  return false;
}

std::string PhraseTemplate::render_interaction(const data::Dataset& dataset, std::size_t row) const {
  return render(dataset, dataset.interactions.item[row], &row);
}

std::string PhraseTemplate::render_item(const data::Dataset& dataset, std::uint32_t item) const {
  return render(dataset, item, nullptr);
}

std::string PhraseTemplate::render(const data::Dataset& dataset, std::uint32_t item, const std::size_t* row) const {
  std::string out;
  for (const auto& p : pieces_) {
    switch (p.source) {
      case Source::literal:
        out += p.literal;
        break;
      case Source::field:
        out += field_as_text(dataset.item_fields[p.field], item);
        break;
      case Source::item_id:
        out += dataset.item_ids[item];
        break;
      case Source::rating:
        USERIP_CHECK(row != nullptr, "phrase \"{}\": {{rating}} needs an interaction", format_);
        out += rating_as_text(dataset.interactions.rating[*row]);
        break;
      case Source::label:
        USERIP_CHECK(row != nullptr, "phrase \"{}\": {{label}} needs an interaction", format_);
        out += dataset.label(*row) ? "liked" : "did not like";
        break;
    }
  }
  return out;
}

}  // namespace userip::text
