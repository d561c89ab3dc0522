#include "userip/store/profile_dir.h"

#include <nlohmann/json.hpp>

#include "userip/data/records.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"

namespace userip::store {

namespace {
// Keys of profile.json copied into the bank's provenance when present.
const char* const kProvenanceKeys[] = {"seed", "model_fingerprint", "template", "template_path", "dataset"};

}  // namespace

BankContents read_profile_dir(const std::filesystem::path& dir) {
  const auto json_path = dir / "profile.json";
  const auto csv_path = dir / "codes.csv";
  USERIP_CHECK(std::filesystem::is_regular_file(json_path), "{} does not exist (expected the output of a profile fit)",
               json_path.string());
  USERIP_CHECK(std::filesystem::is_regular_file(csv_path), "{} does not exist (expected the output of a profile fit)",
               csv_path.string());

  BankContents contents;
  nlohmann::json profile;
  try {
    profile = nlohmann::json::parse(read_file(json_path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", json_path.string(), e.what());
  }
  USERIP_CHECK(profile.is_object(), "{}: expected a JSON object", json_path.string());
  USERIP_CHECK(profile.contains("fields") && profile["fields"].is_array(), "{}: no 'fields' array",
               json_path.string());
  for (const auto& field : profile["fields"]) {
    USERIP_CHECK(field.is_object() && field.contains("name") && field["name"].is_string() &&
                     field.contains("cardinality") && field["cardinality"].is_number_integer(),
                 "{}: fields[{}] needs a string 'name' and an integer 'cardinality'", json_path.string(),
                 contents.fields.size());
    auto cardinality = field["cardinality"].get<std::int64_t>();
    USERIP_CHECK(cardinality >= 1 && cardinality <= INT32_MAX, "{}: field '{}' has cardinality {}",
                 json_path.string(), field["name"].get<std::string>(), cardinality);
    contents.fields.push_back({field["name"].get<std::string>(), static_cast<std::int32_t>(cardinality)});
  }
  USERIP_CHECK(profile.contains("codebook_fingerprint") && profile["codebook_fingerprint"].is_string(),
               "{}: no string 'codebook_fingerprint'", json_path.string());
  contents.codebook_fingerprint = profile["codebook_fingerprint"].get<std::string>();
  for (const char* key : kProvenanceKeys) {
    if (profile.contains(key)) contents.extra[key] = profile[key];
  }

  data::RecordOptions options;
  options.csv_delimiter = ',';
  auto reader = data::open_records(csv_path, options);
  const auto& columns = reader->columns();
  std::vector<std::string> expected = {"user"};
  for (const auto& f : contents.fields) expected.push_back(f.name);
  USERIP_CHECK(columns == expected, "{}:1: header is '{}' but {} declares the columns '{}'", csv_path.string(),
               join(columns, ","), json_path.string(), join(expected, ","));
  const std::size_t width = contents.fields.size();
  while (reader->next()) {
    auto user = reader->field(0);
    USERIP_CHECK(user && !user->empty(), "{}: empty user id", reader->where());
    USERIP_CHECK(!reader->field(static_cast<int>(width + 1)), "{}: more than the {} columns of the header",
                 reader->where(), width + 1);
    contents.users.emplace_back(*user);
    for (std::size_t f = 0; f < width; ++f) {
      const auto& field = contents.fields[f];
      auto text = reader->field(static_cast<int>(f + 1));
      USERIP_CHECK(text, "{}: no value for field '{}'", reader->where(), field.name);
      auto code = parse_int64(*text);
      USERIP_CHECK(code && *code >= 0 && *code < field.cardinality,
                   "{}: field '{}' of user {} is {}, not a code in [0, {})", reader->where(), field.name,
                   quote_for_message(*user), quote_for_message(*text), field.cardinality);
      contents.codes.push_back(static_cast<std::int32_t>(*code));
    }
  }
  return contents;
}

}  // namespace userip::store
