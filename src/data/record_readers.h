#pragma once
// Concrete RecordReaders; callers use open_records() from userip/data/records.h.
#include <nlohmann/json.hpp>

#include "userip/data/records.h"
#include "userip/util/fs.h"

namespace userip::data {

class CsvReader final : public RecordReader {
 public:
  CsvReader(const std::filesystem::path& path, char delimiter);
  bool next() override;
  std::optional<std::string_view> field(int column) const override;
  std::uint64_t bytes_read() const override { return pos_; }
  std::size_t field_count() const { return fields_.size(); }

 private:
  bool read_record();
  void release_consumed();

  struct Pending {
    std::size_t begin, length;
    bool in_scratch;
  };
  MappedFile file_;
  std::string_view text_;
  char delimiter_;
  std::size_t pos_ = 0;
  std::size_t released_ = 0;
  std::uint64_t next_line_ = 1;
  std::vector<std::string_view> fields_;
  std::vector<Pending> pending_;
  std::string scratch_;
};

class JsonlReader final : public RecordReader {
 public:
  JsonlReader(const std::filesystem::path& path, const RecordOptions& options);
  bool next() override;
  std::optional<std::string_view> field(int column) const override;
  std::uint64_t bytes_read() const override { return pos_; }

 private:
  bool next_line(std::string_view& line);
  void add_column(const std::string& key);
  std::string to_field_text(const nlohmann::json& value, const std::string& key) const;

  MappedFile file_;
  std::string_view text_;
  RecordOptions options_;
  std::size_t pos_ = 0;
  std::uint64_t next_line_number_ = 1;
  std::vector<std::string> values_;
  std::vector<bool> present_;
};

}  // namespace userip::data
