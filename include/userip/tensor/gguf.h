#pragma once
// GGUF (llama.cpp's checkpoint format, versions 2 and 3): typed metadata, tensor directory and
// tensor data. Reading maps the file and converts one tensor at a time (F32, F16, BF16 and Q8_0
// dequantized); writing produces files llama.cpp opens. Architecture-specific conventions (such
// as llama.cpp's permuted q/k rows) are the model loader's business, not this file's.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "userip/tensor/tensor_file.h"

namespace userip::tensor {

// GGUF metadata value types, numbered as in the file.
enum class GgufType : std::uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};
std::string to_string(GgufType type);

// One metadata value. Integers (and booleans) of every width are held as int64 / uint64, floats
// as double; `type` and `element_type` remember the width on disk so that a value read and
// written again keeps its type.
struct GgufValue {
  using Array = std::vector<GgufValue>;
  GgufType type = GgufType::u32;
  GgufType element_type = GgufType::u32;  // arrays only
  // Scalar: int64 (signed types), uint64 (unsigned types), double, bool, string.
  // Array: vector<int64> (every integer type but u64, and bool), vector<uint64> (u64),
  // vector<double> (f32, f64), vector<string>, or Array (arrays of arrays).
  std::variant<std::int64_t, std::uint64_t, double, bool, std::string, std::vector<std::int64_t>,
               std::vector<std::uint64_t>, std::vector<double>, std::vector<std::string>, Array>
      data;

  bool is_array() const { return type == GgufType::array; }
  bool is_integer() const;  // any integer scalar type (not bool)
  std::uint64_t array_size() const;

  static GgufValue u8(std::uint8_t v);
  static GgufValue i8(std::int8_t v);
  static GgufValue u16(std::uint16_t v);
  static GgufValue i16(std::int16_t v);
  static GgufValue u32(std::uint32_t v);
  static GgufValue i32(std::int32_t v);
  static GgufValue u64(std::uint64_t v);
  static GgufValue i64(std::int64_t v);
  static GgufValue f32(float v);
  static GgufValue f64(double v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue string_array(std::vector<std::string> v);
  static GgufValue f32_array(const std::vector<float>& v);
  static GgufValue i32_array(const std::vector<std::int32_t>& v);
  static GgufValue integer_array(GgufType element_type, std::vector<std::int64_t> v);  // any integer type but u64
};

class GgufFile : public TensorSource {
 public:
  explicit GgufFile(const std::filesystem::path& path);
  // Parses `bytes` as a GGUF file called `name` in messages (tests, fuzzing).
  static std::unique_ptr<GgufFile> from_bytes(std::string bytes, const std::string& name);
  ~GgufFile() override;

  std::uint32_t version() const;
  std::uint32_t alignment() const;    // general.alignment, default 32
  std::uint64_t data_offset() const;  // where the tensor data section starts
  // general.architecture ("llama", "gpt2", ...); empty when the file has none.
  std::string architecture() const;

  bool has_key(const std::string& key) const;
  std::vector<std::string> keys() const;  // in file order
  // The value of `key`; throws userip::Error naming the file and key when absent.
  const GgufValue& value(const std::string& key) const;
  const GgufValue* find_value(const std::string& key) const;

  // Typed getters: each throws userip::Error naming the file and key when the key is absent or
  // holds a value of another kind; the two-argument forms return `fallback` when absent.
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  std::uint64_t get_u64(const std::string& key) const;  // any integer type, if >= 0
  std::uint64_t get_u64(const std::string& key, std::uint64_t fallback) const;
  std::int64_t get_i64(const std::string& key) const;  // any integer type, if it fits
  std::int64_t get_i64(const std::string& key, std::int64_t fallback) const;
  float get_f32(const std::string& key) const;  // f32, f64 or any integer type
  float get_f32(const std::string& key, float fallback) const;
  bool get_bool(const std::string& key) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<float> get_f32_array(const std::string& key) const;         // f32/f64/integer arrays
  std::vector<std::int32_t> get_i32_array(const std::string& key) const;  // integer arrays that fit

  const std::vector<TensorInfo>& tensors() const override;
  using TensorSource::load;
  torch::Tensor load(const std::string& name, torch::ScalarType dtype, torch::Device device) const override;
  std::string description() const override;

  struct Impl;

 private:
  GgufFile();
  std::unique_ptr<Impl> impl_;
};

std::unique_ptr<GgufFile> open_gguf(const std::filesystem::path& path);

// True when the file starts with the GGUF magic (to tell GGUF from safetensors by content).
bool is_gguf_file(const std::filesystem::path& path);

// Builds a GGUF file: metadata in insertion order, then tensors. Tensors are converted (and
// Q8_0-quantized) one at a time while writing; the file is written atomically.
class GgufWriter {
 public:
  explicit GgufWriter(std::uint32_t alignment = 32);

  // Sets (or replaces, keeping its position) a metadata key.
  void set(const std::string& key, GgufValue value);
  // `tensor` in PyTorch order, stored as `type` (f32, f16, bf16 or q8_0; q8_0 needs the last
  // dimension to be a multiple of 32). The tensor is kept by reference until write().
  void add_tensor(const std::string& name, torch::Tensor tensor, StoredType type = StoredType::f32);
  // Streaming form: `produce` is called during write() and its result dropped right after.
  void add_tensor(const std::string& name, std::vector<std::int64_t> torch_shape, StoredType type,
                  std::function<torch::Tensor()> produce);

  void write(const std::filesystem::path& path) const;

 private:
  struct PendingTensor {
    std::string name;
    std::vector<std::int64_t> torch_shape;
    StoredType type;
    std::function<torch::Tensor()> produce;
  };
  std::uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, std::size_t> metadata_index_;
  std::vector<PendingTensor> tensors_;
  std::unordered_map<std::string, std::size_t> tensor_index_;
};

// Q8_0 blocks: 32 values share one float16 scale d = max|x| / 127; q = round(x / d).
// `values` must be a multiple of 32 long. Exposed for tests and for the model writer.
std::vector<std::uint8_t> quantize_q8_0(const float* values, std::int64_t count);
void dequantize_q8_0(const std::uint8_t* blocks, std::int64_t count, float* out);

}  // namespace userip::tensor
