#include <fmt/format.h>

#include "data/record_readers.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::data {

JsonlReader::JsonlReader(const std::filesystem::path& path, const RecordOptions& options)
    : file_(path), options_(options) {
  path_ = path;
  text_ = file_.view();
  bytes_total_ = text_.size();
  if (text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;
  {
    // The columns must be known before the first next(): from the first record, or from all.
    std::size_t saved_pos = pos_;
    std::string_view line;
    bool scanned_one = false;
    while ((options_.jsonl_scan_all_keys || !scanned_one) && next_line(line)) {
      scanned_one = true;
      nlohmann::json record;
      try {
        record = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        fail("{}:{}: invalid JSON: {}", path.string(), line_, e.what());
      }
      USERIP_CHECK(record.is_object(), "{}:{}: expected a JSON object, got {}", path.string(), line_,
                   record.type_name());
      for (auto& [key, value] : record.items()) add_column(key);
    }
    pos_ = saved_pos;
    next_line_number_ = 1;
    line_ = 0;
  }
}

void JsonlReader::add_column(const std::string& key) {
  if (column_index(key) < 0) columns_.push_back(key);
}

bool JsonlReader::next_line(std::string_view& line) {
  while (pos_ < text_.size()) {
    std::size_t end = text_.find('\n', pos_);
    if (end == std::string_view::npos) end = text_.size();
    line = text_.substr(pos_, end - pos_);
    line_ = next_line_number_++;
    pos_ = end < text_.size() ? end + 1 : end;
    if (!trim(line).empty()) return true;
  }
  return false;
}

std::string JsonlReader::to_field_text(const nlohmann::json& value, const std::string& key) const {
  switch (value.type()) {
    case nlohmann::json::value_t::string:
      return value.get<std::string>();
    case nlohmann::json::value_t::boolean:
      return value.get<bool>() ? "1" : "0";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float:
      return value.dump();
    case nlohmann::json::value_t::array: {
      std::string joined;
      for (const auto& element : value) {
        USERIP_CHECK(!element.is_array() && !element.is_object(),
                     "{}:{}: field '{}': nested arrays/objects are not supported in a list", path_.string(), line_,
                     key);
        std::string item = to_field_text(element, key);
        USERIP_CHECK(item.find(options_.list_separator) == std::string::npos,
                     "{}:{}: field '{}': list element {} contains the list separator '{}'", path_.string(), line_,
                     key, quote_for_message(item), options_.list_separator);
        if (!joined.empty()) joined += options_.list_separator;
        joined += item;
      }
      return joined;
    }
    default:
      fail("{}:{}: field '{}': unsupported JSON value of type {}", path_.string(), line_, key, value.type_name());
  }
}

bool JsonlReader::next() {
  std::string_view line;
  if (!next_line(line)) return false;
  nlohmann::json record;
  try {
    record = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}:{}: invalid JSON: {}", path_.string(), line_, e.what());
  }
  USERIP_CHECK(record.is_object(), "{}:{}: expected a JSON object, got {}", path_.string(), line_,
               record.type_name());
  values_.assign(columns_.size(), std::string());
  present_.assign(columns_.size(), false);
  for (auto& [key, value] : record.items()) {
    int index = column_index(key);
    if (index < 0 || value.is_null()) continue;  // keys outside the schema are not part of this table
    values_[index] = to_field_text(value, key);
    present_[index] = true;
  }
  return true;
}

std::optional<std::string_view> JsonlReader::field(int column) const {
  if (column < 0 || static_cast<std::size_t>(column) >= values_.size() || !present_[column]) return std::nullopt;
  return values_[column];
}

int RecordReader::column_index(std::string_view name) const {
  for (std::size_t i = 0; i < columns_.size(); ++i) {
    if (columns_[i] == name) return static_cast<int>(i);
  }
  return -1;
}

std::string RecordReader::where() const { return fmt::format("{}:{}", path_.string(), line_); }

FileFormat detect_format(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ext == ".csv" || ext == ".tsv" || ext == ".txt") return FileFormat::csv;
  if (ext == ".jsonl" || ext == ".ndjson" || ext == ".json") return FileFormat::jsonl;
  fail("{}: cannot tell the format from the extension '{}' (expected .csv, .tsv, .jsonl or .ndjson)",
       path.string(), ext);
}

std::unique_ptr<RecordReader> open_records(const std::filesystem::path& path, const RecordOptions& options) {
  USERIP_CHECK(std::filesystem::exists(path), "{}: no such file", path.string());
  if (detect_format(path) == FileFormat::jsonl) return std::make_unique<JsonlReader>(path, options);
  char delimiter = path.extension() == ".tsv" ? '\t' : options.csv_delimiter;
  return std::make_unique<CsvReader>(path, delimiter);
}

}  // namespace userip::data
