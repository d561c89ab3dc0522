#pragma once
// Checkpoint tensor containers: safetensors (single file or sharded with an index) and GGUF.
// Files are memory-mapped; load() converts one tensor at a time into the requested dtype and
// device, so peak memory stays near the size of the final weights.
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace userip::tensor {

// Element types as stored on disk (GGUF has more; these are the ones the project reads).
// `other` is a type the file format knows but this project cannot convert (GGUF Q4_K,
// safetensors F8_E4M3, ...): such a file still opens, and load() of that tensor fails naming
// the type (TensorInfo::type_name).
enum class StoredType { f32, f16, bf16, q8_0, i32, i64, f64, i8, u8, i16, other };
std::string to_string(StoredType type);

// The torch dtype a stored type converts to without loss (q8_0: float32). Throws for `other`.
torch::ScalarType natural_dtype(StoredType type);
// The stored type of a torch dtype, or nullopt where no stored type matches (bool, complex...).
std::optional<StoredType> stored_type_of(torch::ScalarType dtype);

struct TensorInfo {
  std::string name;
  StoredType type = StoredType::f32;
  std::vector<std::int64_t> shape;  // in the file's own order (GGUF: ggml order, fastest dim first)
  std::uint64_t offset = 0;         // byte offset of the data within its file
  std::uint64_t bytes = 0;
  std::filesystem::path file;
  bool fastest_dim_first = false;  // true for GGUF: shape must be reversed for PyTorch
  std::string type_name;           // the format's own name of the type ("BF16", "Q4_K", ...)

  std::vector<std::int64_t> torch_shape() const;  // PyTorch order (slowest dim first)
  std::int64_t numel() const;
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const std::vector<TensorInfo>& tensors() const = 0;
  const TensorInfo* find(const std::string& name) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }
  // The tensor `name`, dequantized/converted to `dtype` on `device`, with the shape in PyTorch
  // order (GGUF shapes reversed). Throws userip::Error naming the file and tensor when missing,
  // truncated or of an unsupported type. The result owns its memory: it never aliases the file
  // mapping, so it outlives the source and may be written to.
  virtual torch::Tensor load(const std::string& name, torch::ScalarType dtype, torch::Device device) const = 0;
  // load() on the CPU.
  torch::Tensor load(const std::string& name, torch::ScalarType dtype = torch::kFloat32) const {
    return load(name, dtype, torch::kCPU);
  }
  virtual std::string description() const = 0;  // e.g. the file path, for messages
  std::vector<std::string> names() const;       // in file order
};

// A safetensors file, or a directory / model.safetensors.index.json with shards.
// A directory is read through its model.safetensors.index.json if present, else its
// model.safetensors, else its only *.safetensors file.
std::unique_ptr<TensorSource> open_safetensors(const std::filesystem::path& path);

// The concrete safetensors reader, for callers that want the metadata or the shard list.
class SafetensorsSource : public TensorSource {
 public:
  explicit SafetensorsSource(const std::filesystem::path& path);
  // Parses `bytes` as one safetensors file called `name` in messages (tests, fuzzing).
  static std::unique_ptr<SafetensorsSource> from_bytes(std::string bytes, const std::string& name);
  ~SafetensorsSource() override;

  const std::vector<TensorInfo>& tensors() const override;
  using TensorSource::load;
  torch::Tensor load(const std::string& name, torch::ScalarType dtype, torch::Device device) const override;
  std::string description() const override;

  // "__metadata__" of every shard merged with the index's "metadata" (numbers as text).
  const std::map<std::string, std::string>& metadata() const;
  std::vector<std::filesystem::path> files() const;

  struct Impl;

 private:
  SafetensorsSource();
  std::unique_ptr<Impl> impl_;
};

// GGUF metadata values, as read from the file.
struct GgufValue;  // defined in gguf.h

// What a streaming writer needs to know about a tensor before its data exists: safetensors
// and GGUF put every tensor's offset in the header, ahead of the data.
struct TensorSpec {
  std::string name;
  torch::ScalarType dtype = torch::kFloat32;  // the stored dtype
  std::vector<std::int64_t> shape;            // PyTorch order
};
// Returns the tensor of `spec` (any device; converted to spec.dtype if it is not already).
// Called once per tensor in order, so the caller can build each one on demand and drop it.
using TensorProducer = std::function<torch::Tensor(const TensorSpec& spec)>;

// Writes tensors (each in its own dtype) atomically; "format": "pt" is added to the metadata
// unless given, because transformers refuses files without it.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// Streaming form: at most one tensor from `produce` is alive at a time.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorSpec>& specs,
                       const TensorProducer& produce, const std::map<std::string, std::string>& metadata = {});

// Hugging Face sharded layout in directory `dir`: model-00001-of-0000N.safetensors, each at
// most `max_shard_bytes` of tensor data (a larger tensor gets a shard of its own), plus
// model.safetensors.index.json. A checkpoint that fits one shard is written as plain
// model.safetensors with no index, as transformers does. Stale model.safetensors / index /
// model-*-of-*.safetensors files left by an earlier save are removed. Returns the files written.
std::vector<std::filesystem::path> write_safetensors_sharded(const std::filesystem::path& dir,
                                                             const std::vector<TensorSpec>& specs,
                                                             const TensorProducer& produce,
                                                             std::uint64_t max_shard_bytes,
                                                             const std::map<std::string, std::string>& metadata = {});
std::vector<std::filesystem::path> write_safetensors_sharded(
    const std::filesystem::path& dir, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    std::uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata = {});

}  // namespace userip::tensor
