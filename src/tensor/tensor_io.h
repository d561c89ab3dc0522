#pragma once
// Internals shared by the safetensors and GGUF readers/writers (not part of the public API).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "userip/tensor/tensor_file.h"
#include "userip/util/fs.h"

namespace userip::tensor::detail {

// The bytes of one checkpoint file: a read-only mapping, or bytes held in memory (tests and
// fuzzing parse without touching the disk).
class ByteBuffer {
 public:
  static std::shared_ptr<const ByteBuffer> map_file(const fs::path& path);
  static std::shared_ptr<const ByteBuffer> hold(std::string bytes, fs::path name);

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const fs::path& path() const { return path_; }

  // Tells the kernel this process is done with [offset, offset + bytes) of a mapping. Read-only
  // file pages still count in the resident set once touched, so without this, loading every
  // tensor would hold the whole file *and* the converted weights resident: about twice the
  // weights' size instead of the 1.2x the loader promises.
  void release_pages(std::uint64_t offset, std::uint64_t bytes) const;

 private:
  ByteBuffer() = default;
  MappedFile map_;
  std::string owned_;
  fs::path path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
};

// Product of `shape` or nullopt if a dimension is negative or the product overflows int64.
std::optional<std::int64_t> checked_numel(const std::vector<std::int64_t>& shape);

// Bytes per element of a plain (non-block) stored type; 0 for q8_0 and other.
std::size_t element_bytes(StoredType type);

// Bytes that `numel` values of `type` occupy, or nullopt on overflow / a partial q8_0 block.
std::optional<std::uint64_t> stored_bytes(StoredType type, std::int64_t numel);

// Copies (converting and dequantizing as needed) the tensor `info` out of `buffer` into a fresh
// tensor of `dtype` on `device`, in PyTorch dimension order. `where` names the source in messages.
torch::Tensor materialize(const ByteBuffer& buffer, const TensorInfo& info, torch::ScalarType dtype,
                          torch::Device device, const std::string& where);

// a <= limit - b without overflow: whether the range [a, a + b) ends at or before `limit`.
inline bool fits_within(std::uint64_t a, std::uint64_t b, std::uint64_t limit) { return a <= limit && b <= limit - a; }

std::string shape_text(const std::vector<std::int64_t>& shape);

// A name from a file, fit for a message between single quotes: control characters escaped,
// long names shortened (a corrupt file can hold megabytes of garbage in a name).
std::string shown(std::string_view text, std::size_t max_chars = 200);

}  // namespace userip::tensor::detail
