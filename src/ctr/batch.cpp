#include "userip/ctr/batch.h"

#include <algorithm>

#include "userip/util/enum_names.h"
#include "userip/util/error.h"

namespace userip::ctr {
namespace {

using nlohmann::json;

const char* type_name(const json& value) { return value.type_name(); }

const json& member(const json& object, const char* key, const std::string& where) {
  USERIP_CHECK(object.contains(key), "{}: missing key \"{}\"", where, key);
  return object.at(key);
}

std::int64_t int_value(const json& value, const std::string& where, const char* key) {
  USERIP_CHECK(value.is_number_integer(), "{}: \"{}\" must be an integer, got {}", where, key, type_name(value));
  return value.get<std::int64_t>();
}

std::string string_value(const json& value, const std::string& where, const char* key) {
  USERIP_CHECK(value.is_string(), "{}: \"{}\" must be a string, got {}", where, key, type_name(value));
  return value.get<std::string>();
}

FieldKind field_kind_from_string(const std::string& name, const std::string& where) {
  if (name == "categorical") return FieldKind::categorical;
  if (name == "multi_hot") return FieldKind::multi_hot;
  fail("{}: \"kind\" must be \"categorical\" or \"multi_hot\", got \"{}\"", where, name);
}

json field_to_json(const FieldInfo& field) {
  return {{"name", field.name}, {"kind", to_string(field.kind)}, {"offset", field.offset}, {"size", field.size}};
}

// One entry of the "categorical" or "multi_hot" list; `expected` is the kind that list holds, so a
// field filed under the wrong list is caught rather than embedded the wrong way.
FieldInfo field_from_json(const json& object, FieldKind expected, const std::string& where) {
  USERIP_CHECK(object.is_object(), "{}: a field is an object with name, offset and size, got {}", where,
               type_name(object));
  for (const auto& [key, value] : object.items()) {
    USERIP_CHECK(key == "name" || key == "kind" || key == "offset" || key == "size",
                 "{}: unknown key \"{}\" (expected: name, kind, offset, size)", where, key);
  }
  FieldInfo field;
  field.name = string_value(member(object, "name", where), where, "name");
  const std::string named = fmt::format("{} \"{}\"", where, field.name);
  field.kind = expected;
  if (object.contains("kind")) {
    const auto kind = field_kind_from_string(string_value(object.at("kind"), named, "kind"), named);
    USERIP_CHECK(kind == expected, "{}: \"kind\" is \"{}\" but the field is listed under \"{}\"", named,
                 to_string(kind), to_string(expected));
  }
  field.offset = int_value(member(object, "offset", named), named, "offset");
  field.size = int_value(member(object, "size", named), named, "size");
  USERIP_CHECK(field.offset >= 0, "{}: \"offset\" must be >= 0, got {}", named, field.offset);
  USERIP_CHECK(field.size >= 1, "{}: \"size\" must be >= 1 (the OOV bucket counts), got {}", named, field.size);
  return field;
}

std::vector<FieldInfo> fields_from_json(const json& list, FieldKind kind, const char* key) {
  const std::string where = fmt::format("field layout: \"{}\"", key);
  USERIP_CHECK(list.is_array(), "{} must be a list, got {}", where, type_name(list));
  std::vector<FieldInfo> fields;
  for (std::size_t i = 0; i < list.size(); ++i) {
    fields.push_back(field_from_json(list[i], kind, fmt::format("{}[{}]", where, i)));
  }
  return fields;
}

// The ranges must tile [0, vocabulary_size) without overlap: vocabulary_size() is the sum of the
// sizes, so any gap or overlap would leave some index outside the embedding table.
void check_ranges(const FieldLayout& layout) {
  std::vector<const FieldInfo*> fields;
  for (const auto& f : layout.categorical) fields.push_back(&f);
  for (const auto& f : layout.multi_hot) fields.push_back(&f);
  std::sort(fields.begin(), fields.end(), [](const FieldInfo* a, const FieldInfo* b) { return a->offset < b->offset; });
  std::int64_t next = 0;
  for (const FieldInfo* f : fields) {
    USERIP_CHECK(f->offset == next,
                 "field layout: field \"{}\" starts at {} but the fields before it end at {} (ranges must be "
                 "contiguous and not overlap)",
                 f->name, f->offset, next);
    next += f->size;
  }
}

}  // namespace

namespace {
constexpr EnumName<FieldKind> kFieldKindNames[] = {{FieldKind::categorical, "categorical"},
                                                   {FieldKind::multi_hot, "multi_hot"}};
}  // namespace

std::string to_string(FieldKind kind) { return enum_name(kFieldKindNames, kind); }

std::int64_t FieldLayout::vocabulary_size() const {
  std::int64_t total = 0;
  for (const auto& f : categorical) total += f.size;
  for (const auto& f : multi_hot) total += f.size;
  return total;
}

std::int64_t FieldLayout::num_fields() const {
  return static_cast<std::int64_t>(categorical.size() + multi_hot.size()) + (dense_dim > 0 ? 1 : 0);
}

nlohmann::json FieldLayout::to_json() const {
  json out = json::object();
  out["categorical"] = json::array();
  for (const auto& f : categorical) out["categorical"].push_back(field_to_json(f));
  out["multi_hot"] = json::array();
  for (const auto& f : multi_hot) out["multi_hot"].push_back(field_to_json(f));
  out["max_values"] = max_values;
  out["dense_dim"] = dense_dim;
  out["dense_name"] = dense_name;
  return out;
}

FieldLayout FieldLayout::from_json(const nlohmann::json& json) {
  USERIP_CHECK(json.is_object(), "field layout: expected a JSON object, got {}", type_name(json));
  for (const auto& [key, value] : json.items()) {
    USERIP_CHECK(key == "categorical" || key == "multi_hot" || key == "max_values" || key == "dense_dim" ||
                     key == "dense_name",
                 "field layout: unknown key \"{}\" (expected: categorical, multi_hot, max_values, dense_dim, "
                 "dense_name)",
                 key);
  }
  const std::string where = "field layout";
  FieldLayout layout;
  if (json.contains("categorical")) {
    layout.categorical = fields_from_json(json.at("categorical"), FieldKind::categorical, "categorical");
  }
  if (json.contains("multi_hot")) {
    layout.multi_hot = fields_from_json(json.at("multi_hot"), FieldKind::multi_hot, "multi_hot");
  }
  if (json.contains("max_values")) layout.max_values = int_value(json.at("max_values"), where, "max_values");
  if (json.contains("dense_dim")) layout.dense_dim = int_value(json.at("dense_dim"), where, "dense_dim");
  if (json.contains("dense_name")) layout.dense_name = string_value(json.at("dense_name"), where, "dense_name");
  USERIP_CHECK(layout.max_values >= 1, "field layout: \"max_values\" must be >= 1, got {}", layout.max_values);
  USERIP_CHECK(layout.dense_dim >= 0, "field layout: \"dense_dim\" must be >= 0, got {}", layout.dense_dim);
  check_ranges(layout);
  return layout;
}

std::int64_t FeatureBatch::size() const {
  // Any defined input tells B; categorical comes first because it is [B, 0] even without fields.
  for (const torch::Tensor* t : {&categorical, &multi_index, &dense, &label}) {
    if (t->defined()) return t->size(0);
  }
  return 0;
}

}  // namespace userip::ctr
