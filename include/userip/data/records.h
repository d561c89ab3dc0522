#pragma once
// Streaming readers for tabular input files (CSV per RFC 4180, and JSON lines). Both present a
// file as records of named text fields, so the importer handles them alike and every error can
// name the file, the line and the field.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace userip::data {

enum class FileFormat { csv, jsonl };
// From the extension (.csv/.tsv → csv, .jsonl/.ndjson/.json → jsonl); throws on anything else.
FileFormat detect_format(const std::filesystem::path& path);

class RecordReader {
 public:
  virtual ~RecordReader() = default;
  // Column names: the CSV header, or the keys of the JSON-lines records (see open_records).
  const std::vector<std::string>& columns() const { return columns_; }
  // Index of a column, or -1.
  int column_index(std::string_view name) const;
  // Advances to the next record; false at end of file. Throws userip::Error on a malformed record
  // (naming file and line) unless the caller asked to skip (see last_error()).
  virtual bool next() = 0;
  // The field of the current record; std::nullopt when missing (short row, absent key, JSON null).
  // Valid until the next call of next().
  virtual std::optional<std::string_view> field(int column) const = 0;
  // Line on which the current record starts (1-based; the CSV header is line 1).
  std::uint64_t line() const { return line_; }
  const std::filesystem::path& path() const { return path_; }
  // "file:line", for messages.
  std::string where() const;
  // Bytes consumed so far, for progress bars.
  virtual std::uint64_t bytes_read() const = 0;
  std::uint64_t bytes_total() const { return bytes_total_; }

 protected:
  std::filesystem::path path_;
  std::vector<std::string> columns_;
  std::uint64_t line_ = 0;
  std::uint64_t bytes_total_ = 0;
};

struct RecordOptions {
  char csv_delimiter = ',';  // ',' or '\t'
  // Joins JSON arrays of strings into one field with this separator (e.g. genres).
  char list_separator = '|';
  // JSON lines: column names are the union of the keys of all records, in first-seen order
  // (costs a first pass over the file). Otherwise: the keys of the first record.
  bool jsonl_scan_all_keys = false;
};

std::unique_ptr<RecordReader> open_records(const std::filesystem::path& path, const RecordOptions& options = {});

}  // namespace userip::data
