#include "userip/util/fs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "userip/util/error.h"

namespace userip {

namespace {
std::string errno_text() { return std::strerror(errno); }
}  // namespace

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  USERIP_CHECK(in, "cannot open {}: {}", path.string(), errno_text());
  std::ostringstream out;
  out << in.rdbuf();
  USERIP_CHECK(!in.bad(), "cannot read {}", path.string());
  return out.str();
}

void write_file_atomic(const fs::path& path, std::string_view contents) {
  AtomicFileWriter writer(path);
  writer.write(contents);
  writer.commit();
}

AtomicFileWriter::AtomicFileWriter(fs::path path) : path_(std::move(path)) {
  tmp_path_ = path_;
  tmp_path_ += ".tmp";
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  USERIP_CHECK(file_ != nullptr, "cannot create {}: {}", tmp_path_.string(), errno_text());
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 20);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (file_) {
    std::fclose(file_);
    std::error_code ignored;
    fs::remove(tmp_path_, ignored);
  }
}

void AtomicFileWriter::write(const void* data, std::size_t bytes) {
  USERIP_ASSERT(file_ != nullptr);
  if (bytes == 0) return;
  USERIP_CHECK(std::fwrite(data, 1, bytes, file_) == bytes, "cannot write {}: {}", tmp_path_.string(),
               errno_text());
  bytes_written_ += bytes;
}

void AtomicFileWriter::commit() {
  USERIP_ASSERT(file_ != nullptr);
  bool ok = std::fflush(file_) == 0 && fsync(fileno(file_)) == 0;
  int saved = errno;
  std::fclose(file_);
  file_ = nullptr;
  if (!ok) {
    std::error_code ignored;
    fs::remove(tmp_path_, ignored);
    fail("cannot write {}: {}", tmp_path_.string(), std::strerror(saved));
  }
  std::error_code ec;
  fs::rename(tmp_path_, path_, ec);
  USERIP_CHECK(!ec, "cannot rename {} to {}: {}", tmp_path_.string(), path_.string(), ec.message());
}

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  USERIP_CHECK(fd >= 0, "cannot open {}: {}", path.string(), errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int saved = errno;
    ::close(fd);
    fail("cannot stat {}: {}", path.string(), std::strerror(saved));
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    ::close(fd);
    USERIP_CHECK(mapped != MAP_FAILED, "cannot map {}: {}", path.string(), std::strerror(saved));
    data_ = static_cast<std::uint8_t*>(mapped);
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void MappedFile::release() {
  if (data_) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

std::uint64_t fnv1a64(std::string_view bytes, std::uint64_t seed) {
  std::uint64_t h = seed;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string hex64(std::uint64_t value) { return fmt::format("{:016x}", value); }

std::string fingerprint_file(const fs::path& path) {
  MappedFile file(path);
  return hex64(fnv1a64(file.view()));
}

}  // namespace userip
