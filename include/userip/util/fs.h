#pragma once
// File helpers shared by every stage: whole-file reads, crash-safe writes, read-only mappings.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace userip {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path);

// Writes `contents` to a temporary file beside `path`, flushes it to disk and renames it over
// `path`: a reader sees either the old file or the new one, never a half-written one.
void write_file_atomic(const fs::path& path, std::string_view contents);

// A buffered binary writer to `<path>.tmp`, renamed to `path` by commit(). Destroyed without
// commit(), it removes the temporary file: a crash or an exception leaves no partial output.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(fs::path path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, std::size_t bytes);
  void write(std::string_view text) { write(text.data(), text.size()); }
  std::uint64_t bytes_written() const { return bytes_written_; }
  void commit();
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  fs::path tmp_path_;
  std::FILE* file_ = nullptr;
  std::uint64_t bytes_written_ = 0;
};

// A read-only memory mapping of a whole file (empty files map to an empty view).
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const fs::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::string_view view() const { return {reinterpret_cast<const char*>(data_), size_}; }
  const fs::path& path() const { return path_; }

 private:
  void release();
  fs::path path_;
  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// 64-bit FNV-1a, for fingerprints of configurations and files (not for security).
std::uint64_t fnv1a64(std::string_view bytes, std::uint64_t seed = 0xcbf29ce484222325ULL);
std::string fingerprint_file(const fs::path& path);
std::string hex64(std::uint64_t value);

}  // namespace userip
