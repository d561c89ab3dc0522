#pragma once
// The column and string-table files of a dataset directory (docs/DATASET_FORMAT.md).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "userip/data/dataset.h"
#include "userip/util/fs.h"

namespace userip::data {

inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kSplitFile = "split.json";
inline constexpr const char* kSplitColumnFile = "split.u8";
inline constexpr int kFormatVersion = 1;

// A raw little-endian column being written, with its running fingerprint.
class ColumnWriter {
 public:
  explicit ColumnWriter(std::filesystem::path path) : writer_(std::move(path)) {}
  template <typename T>
  void append(const T* values, std::size_t count) {
    const auto* bytes = reinterpret_cast<const char*>(values);
    std::string_view view(bytes, count * sizeof(T));
    hash_ = fnv1a64(view, hash_);
    writer_.write(bytes, view.size());
  }
  // Returns {"bytes": n, "fnv1a64": "..."} for the manifest.
  nlohmann::json commit();

 private:
  AtomicFileWriter writer_;
  std::uint64_t hash_ = 0xcbf29ce484222325ULL;
};

// Reads `count` values of T from `dir/name`, checking the size against the manifest.
template <typename T>
std::vector<T> read_column(const std::filesystem::path& path, std::size_t count);

// String table file: u64 count, u64 end offset of each string, then the bytes.
nlohmann::json write_string_table(const std::filesystem::path& path, const std::vector<std::string>& strings);
std::vector<std::string> read_string_table(const std::filesystem::path& path);

// Streams interactions into a new dataset directory; commit() writes the rest and renames the
// directory into place. Destroyed without commit(), it leaves the old dataset untouched.
class DatasetWriter {
 public:
  explicit DatasetWriter(std::filesystem::path dir);
  ~DatasetWriter();
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;

  void append(std::uint32_t user, std::uint32_t item, float rating, std::int64_t timestamp);
  void append(const Interactions& interactions);
  std::uint64_t rows() const { return rows_; }
  const std::filesystem::path& staging_dir() const { return staging_; }

  // An extra file in the dataset directory (e.g. a synthetic world's ground truth), published
  // together with the dataset.
  void add_file(const std::string& name, std::string_view contents);

  // Everything but the interactions comes in at the end; `dataset.interactions` is ignored.
  void commit(const Dataset& rest);

 private:
  void flush();
  std::filesystem::path dir_;
  std::filesystem::path staging_;
  std::unique_ptr<ColumnWriter> user_, item_, rating_, timestamp_;
  Interactions buffer_;
  std::uint64_t rows_ = 0;
  bool committed_ = false;
};

// Writes split.u8 and split.json into `dir` (each atomically; split.json last, and it carries
// split.u8's fingerprint, so a crash between the two is detected at load).
void write_split(const std::filesystem::path& dir, const Split& split, std::size_t num_users);
// Empty Split if the dataset has none.
Split read_split(const std::filesystem::path& dir, std::size_t num_interactions);

// Replaces directory `target` by `staging` (both on the same file system) so that a reader
// sees either the old or the new one.
void replace_directory(const std::filesystem::path& staging, const std::filesystem::path& target);

}  // namespace userip::data
