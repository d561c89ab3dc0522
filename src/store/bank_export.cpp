#include "userip/store/bank_export.h"

#include <fmt/format.h>

#include "userip/data/export.h"
#include "userip/util/enum_names.h"

namespace userip::store {

namespace {
constexpr EnumName<CodesFormat> kCodesFormatNames[] = {{CodesFormat::csv, "csv"}, {CodesFormat::jsonl, "jsonl"}};
}  // namespace

CodesFormat codes_format_from_string(std::string_view name) {
  return enum_from_name(kCodesFormatNames, name, "export format");
}

std::string json_text(const nlohmann::ordered_json& value, int indent) {
  return value.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

nlohmann::ordered_json bank_info_json(const FeatureBank& bank) {
  const auto& m = bank.metadata();
  nlohmann::ordered_json fields = nlohmann::ordered_json::array();
  for (const auto& f : m.fields) fields.push_back({{"name", f.name}, {"cardinality", f.cardinality}});
  return {{"path", bank.path().string()},
          {"version", m.version},
          {"created_at", m.created_at},
          {"codebook_fingerprint", m.codebook_fingerprint},
          {"users", bank.size()},
          {"fields", fields},
          {"extra", nlohmann::ordered_json::parse(m.extra.dump())}};
}

std::string bank_info_text(const FeatureBank& bank) {
  const auto& m = bank.metadata();
  std::string text = fmt::format(
      "feature bank {}\n  version:              {}\n  created_at:           {}\n  codebook_fingerprint: {}\n"
      "  users:                {}\n  fields ({}):\n",
      bank.path().string(), m.version, m.created_at, m.codebook_fingerprint, bank.size(), m.fields.size());
  for (const auto& f : m.fields) text += fmt::format("    {:<20} {} codes\n", f.name, f.cardinality);
  if (!m.extra.empty()) text += "  extra:                " + m.extra.dump() + "\n";
  return text;
}

nlohmann::ordered_json codes_json(const FeatureBank& bank, const std::int32_t* codes) {
  nlohmann::ordered_json object = nlohmann::ordered_json::object();
  for (std::size_t f = 0; f < bank.fields().size(); ++f) object[bank.fields()[f].name] = codes[f];
  return object;
}

void write_codes(const FeatureBank& bank, CodesFormat format, std::ostream& out) {
  const auto& fields = bank.fields();
  if (format == CodesFormat::csv) {
    std::string line = "user";
    for (const auto& f : fields) line += "," + data::csv_escape(f.name);
    out << line << "\n";
  }
  for (std::size_t i = 0; i < bank.size(); ++i) {
    const std::int32_t* codes = bank.codes_at(i);
    if (format == CodesFormat::csv) {
      std::string line = data::csv_escape(bank.user_at(i));
      for (std::size_t f = 0; f < fields.size(); ++f) line += "," + std::to_string(codes[f]);
      out << line << "\n";
    } else {
      out << json_text({{"user", bank.user_at(i)}, {"codes", codes_json(bank, codes)}}) << "\n";
    }
  }
}

}  // namespace userip::store
