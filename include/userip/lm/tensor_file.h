#pragma once
// Checkpoint tensor containers: safetensors (single file or sharded with an index) and GGUF.
// Files are memory-mapped; load() converts one tensor at a time into the requested dtype and
// device, so peak memory stays near the size of the final weights.
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace userip::lm {

// Element types as stored on disk (GGUF has more; these are the ones the project reads).
enum class StoredType { f32, f16, bf16, q8_0, i32, i64, f64, i8, u8 };
std::string to_string(StoredType type);

struct TensorInfo {
  std::string name;
  StoredType type = StoredType::f32;
  std::vector<std::int64_t> shape;  // in the file's own order (GGUF: ggml order, fastest dim first)
  std::uint64_t offset = 0;         // byte offset of the data within its file
  std::uint64_t bytes = 0;
  std::filesystem::path file;
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const std::vector<TensorInfo>& tensors() const = 0;
  const TensorInfo* find(const std::string& name) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }
  // The tensor `name`, dequantized/converted to `dtype` on `device`, with the shape in PyTorch
  // order (GGUF shapes reversed). Throws userip::Error naming the file and tensor when missing,
  // truncated or of an unsupported type.
  virtual torch::Tensor load(const std::string& name, torch::ScalarType dtype, torch::Device device) const = 0;
  virtual std::string description() const = 0;  // e.g. the file path, for messages
};

// A safetensors file, or a directory / model.safetensors.index.json with shards.
std::unique_ptr<TensorSource> open_safetensors(const std::filesystem::path& path);

// GGUF metadata values, as read from the file.
struct GgufValue;  // defined in gguf.h

void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace userip::lm
