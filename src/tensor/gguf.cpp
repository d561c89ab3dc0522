// Reader and writer in one file (about 940 lines): both follow the type table (GgmlType) and the
// alignment rules below, and a change to one must be seen against the other.
//
// GGUF layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 metadata count; the
// metadata as (string key, u32 type, value); per tensor (string name, u32 n_dims, u64 dims
// fastest-first, u32 ggml type, u64 offset relative to the data section); padding to the
// alignment; the data section. Strings are u64 length + bytes. Every count and length read from
// the file is checked against the bytes that remain before anything is allocated for it.
#include "userip/tensor/gguf.h"

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>

#include "tensor/tensor_io.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::tensor {

namespace {

constexpr std::uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr std::uint32_t kDefaultAlignment = 32;
constexpr std::uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 4;
constexpr std::size_t kMaxNameBytes = 63;  // GGML_MAX_NAME - 1: llama.cpp rejects longer names
constexpr std::int64_t kQ8Block = 32;
constexpr std::size_t kQ8BlockBytes = 34;

struct GgmlType {
  std::uint32_t id;
  const char* name;
  std::uint32_t block;       // elements per block
  std::uint32_t type_bytes;  // bytes per block
  StoredType stored;
};

// ggml's type table (ids are fixed by the file format; gaps are ids ggml has retired). Types
// this project cannot convert are listed with their sizes so that files using them still open.
const GgmlType kGgmlTypes[] = {
    {0, "F32", 1, 4, StoredType::f32},
    {1, "F16", 1, 2, StoredType::f16},
    {2, "Q4_0", 32, 18, StoredType::other},
    {3, "Q4_1", 32, 20, StoredType::other},
    {6, "Q5_0", 32, 22, StoredType::other},
    {7, "Q5_1", 32, 24, StoredType::other},
    {8, "Q8_0", 32, 34, StoredType::q8_0},
    {9, "Q8_1", 32, 36, StoredType::other},
    {10, "Q2_K", 256, 84, StoredType::other},
    {11, "Q3_K", 256, 110, StoredType::other},
    {12, "Q4_K", 256, 144, StoredType::other},
    {13, "Q5_K", 256, 176, StoredType::other},
    {14, "Q6_K", 256, 210, StoredType::other},
    {15, "Q8_K", 256, 292, StoredType::other},
    {16, "IQ2_XXS", 256, 66, StoredType::other},
    {17, "IQ2_XS", 256, 74, StoredType::other},
    {18, "IQ3_XXS", 256, 98, StoredType::other},
    {19, "IQ1_S", 256, 50, StoredType::other},
    {20, "IQ4_NL", 32, 18, StoredType::other},
    {21, "IQ3_S", 256, 110, StoredType::other},
    {22, "IQ2_S", 256, 82, StoredType::other},
    {23, "IQ4_XS", 256, 136, StoredType::other},
    {24, "I8", 1, 1, StoredType::i8},
    {25, "I16", 1, 2, StoredType::i16},
    {26, "I32", 1, 4, StoredType::i32},
    {27, "I64", 1, 8, StoredType::i64},
    {28, "F64", 1, 8, StoredType::f64},
    {29, "IQ1_M", 256, 56, StoredType::other},
    {30, "BF16", 1, 2, StoredType::bf16},
    {34, "TQ1_0", 256, 54, StoredType::other},
    {35, "TQ2_0", 256, 66, StoredType::other},
    {39, "MXFP4", 32, 17, StoredType::other},
};

const GgmlType* find_ggml_type(std::uint32_t id) {
  for (const auto& t : kGgmlTypes) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

const GgmlType& ggml_type_of(StoredType type) {
  for (const auto& t : kGgmlTypes) {
    if (t.stored == type) return t;
  }
  fail("stored type {} has no GGUF equivalent", to_string(type));
}

bool valid_value_type(std::uint32_t type) { return type <= static_cast<std::uint32_t>(GgufType::f64); }

// Bytes of a scalar value type; 0 for string and array.
std::size_t scalar_bytes(GgufType type) {
  switch (type) {
    case GgufType::u8:
    case GgufType::i8:
    case GgufType::boolean: return 1;
    case GgufType::u16:
    case GgufType::i16: return 2;
    case GgufType::u32:
    case GgufType::i32:
    case GgufType::f32: return 4;
    case GgufType::u64:
    case GgufType::i64:
    case GgufType::f64: return 8;
    case GgufType::string:
    case GgufType::array: return 0;
  }
  return 0;
}

bool is_unsigned(GgufType t) {
  return t == GgufType::u8 || t == GgufType::u16 || t == GgufType::u32 || t == GgufType::u64;
}
bool is_signed(GgufType t) {
  return t == GgufType::i8 || t == GgufType::i16 || t == GgufType::i32 || t == GgufType::i64;
}
bool is_float(GgufType t) { return t == GgufType::f32 || t == GgufType::f64; }

// Bounds-checked little-endian reads over the file's bytes.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size, const std::string& file) : data_(data), size_(size), file_(file) {}

  std::size_t pos() const { return pos_; }
  std::size_t remaining() const { return size_ - pos_; }

  void need(std::size_t bytes, const std::string& what) const {
    if (bytes > remaining()) {
      fail("{}: file ends inside {} (at byte {}, {} more bytes needed, {} left): truncated file?", file_, what, pos_,
           bytes, remaining());
    }
  }

  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const std::string& what) {
    const std::uint64_t length = read<std::uint64_t>(what);
    if (length > remaining()) {
      fail("{}: {} claims a string of {} bytes at byte {}, but only {} bytes are left", file_, what, length, pos_,
           remaining());
    }
    std::string out(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(length));
    pos_ += length;
    return out;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  const std::string& file_;
};

GgufValue read_value(Reader& r, GgufType type, const std::string& what, const std::string& file, int depth);

template <typename T>
std::int64_t read_signed(Reader& r, const std::string& what) {
  return static_cast<std::int64_t>(r.read<T>(what));
}
template <typename T>
std::uint64_t read_unsigned(Reader& r, const std::string& what) {
  return static_cast<std::uint64_t>(r.read<T>(what));
}

std::int64_t read_int_element(Reader& r, GgufType type, const std::string& what) {
  switch (type) {
    case GgufType::u8: return r.read<std::uint8_t>(what);
    case GgufType::i8: return r.read<std::int8_t>(what);
    case GgufType::u16: return r.read<std::uint16_t>(what);
    case GgufType::i16: return r.read<std::int16_t>(what);
    case GgufType::u32: return r.read<std::uint32_t>(what);
    case GgufType::i32: return r.read<std::int32_t>(what);
    case GgufType::i64: return r.read<std::int64_t>(what);
    case GgufType::boolean: return r.read<std::uint8_t>(what) != 0;
    default: break;
  }
  USERIP_ASSERT(false);
  return 0;
}

GgufValue read_array(Reader& r, const std::string& what, const std::string& file, int depth) {
  USERIP_CHECK(depth < kMaxArrayNesting, "{}: {} nests arrays more than {} deep", file, what, kMaxArrayNesting);
  const std::uint32_t raw_type = r.read<std::uint32_t>(what);
  USERIP_CHECK(valid_value_type(raw_type), "{}: {} is an array of unknown value type {}", file, what, raw_type);
  const auto element = static_cast<GgufType>(raw_type);
  const std::uint64_t count = r.read<std::uint64_t>(what);
  // The smallest encoding of one element bounds how many can fit in the rest of the file.
  const std::size_t min_bytes = element == GgufType::string  ? 8
                                : element == GgufType::array ? 12
                                                             : scalar_bytes(element);
  USERIP_CHECK(count <= r.remaining() / min_bytes,
               "{}: {} claims {} array elements of type {}, more than the {} bytes left can hold", file, what, count,
               to_string(element), r.remaining());
  const std::size_t n = static_cast<std::size_t>(count);

  GgufValue out;
  out.type = GgufType::array;
  out.element_type = element;
  if (element == GgufType::string) {
    std::vector<std::string> items;
    items.reserve(n);
    for (std::size_t i = 0; i < n; ++i) items.push_back(r.read_string(what));
    out.data = std::move(items);
  } else if (element == GgufType::array) {
    GgufValue::Array items;
    items.reserve(n);
    for (std::size_t i = 0; i < n; ++i) items.push_back(read_array(r, what, file, depth + 1));
    out.data = std::move(items);
  } else if (element == GgufType::u64) {
    std::vector<std::uint64_t> items(n);
    for (auto& v : items) v = r.read<std::uint64_t>(what);
    out.data = std::move(items);
  } else if (is_float(element)) {
    std::vector<double> items(n);
    for (auto& v : items) v = element == GgufType::f32 ? r.read<float>(what) : r.read<double>(what);
    out.data = std::move(items);
  } else {
    std::vector<std::int64_t> items(n);
    for (auto& v : items) v = read_int_element(r, element, what);
    out.data = std::move(items);
  }
  return out;
}

GgufValue read_value(Reader& r, GgufType type, const std::string& what, const std::string& file, int depth) {
  GgufValue out;
  out.type = type;
  switch (type) {
    case GgufType::u8: out.data = read_unsigned<std::uint8_t>(r, what); break;
    case GgufType::u16: out.data = read_unsigned<std::uint16_t>(r, what); break;
    case GgufType::u32: out.data = read_unsigned<std::uint32_t>(r, what); break;
    case GgufType::u64: out.data = read_unsigned<std::uint64_t>(r, what); break;
    case GgufType::i8: out.data = read_signed<std::int8_t>(r, what); break;
    case GgufType::i16: out.data = read_signed<std::int16_t>(r, what); break;
    case GgufType::i32: out.data = read_signed<std::int32_t>(r, what); break;
    case GgufType::i64: out.data = read_signed<std::int64_t>(r, what); break;
    case GgufType::f32: out.data = static_cast<double>(r.read<float>(what)); break;
    case GgufType::f64: out.data = r.read<double>(what); break;
    case GgufType::boolean: out.data = r.read<std::uint8_t>(what) != 0; break;
    case GgufType::string: out.data = r.read_string(what); break;
    case GgufType::array: return read_array(r, what, file, depth);
  }
  return out;
}

std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

float half_to_float(std::uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

std::uint16_t float_to_half(float value) { return c10::Half(value).x; }

}  // namespace

namespace {
constexpr EnumName<GgufType> kGgufTypeNames[] = {
    {GgufType::u8, "u8"},         {GgufType::i8, "i8"},          {GgufType::u16, "u16"},     {GgufType::i16, "i16"},
    {GgufType::u32, "u32"},       {GgufType::i32, "i32"},        {GgufType::f32, "f32"},     {GgufType::boolean, "bool"},
    {GgufType::string, "string"}, {GgufType::array, "array"},    {GgufType::u64, "u64"},     {GgufType::i64, "i64"},
    {GgufType::f64, "f64"}};
}  // namespace

// A file may hold a type this reader does not know: it is named by its number.
std::string to_string(GgufType type) {
  const char* name = find_enum_name(kGgufTypeNames, type);
  return name ? name : "type " + std::to_string(static_cast<std::uint32_t>(type));
}

// ---------------------------------------------------------------------------------------------
// GgufValue

bool GgufValue::is_integer() const { return is_signed(type) || is_unsigned(type); }

std::uint64_t GgufValue::array_size() const {
  if (!is_array()) return 0;
  return std::visit(
      [](const auto& v) -> std::uint64_t {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::vector<std::int64_t>> || std::is_same_v<V, std::vector<std::uint64_t>> ||
                      std::is_same_v<V, std::vector<double>> || std::is_same_v<V, std::vector<std::string>> ||
                      std::is_same_v<V, Array>) {
          return v.size();
        } else {
          return 0;
        }
      },
      data);
}

namespace {
GgufValue make_scalar(GgufType type, std::variant<std::int64_t, std::uint64_t, double, bool, std::string> v) {
  GgufValue out;
  out.type = type;
  std::visit([&](auto&& x) { out.data = std::move(x); }, v);
  return out;
}
}  // namespace

GgufValue GgufValue::u8(std::uint8_t v) { return make_scalar(GgufType::u8, std::uint64_t{v}); }
GgufValue GgufValue::i8(std::int8_t v) { return make_scalar(GgufType::i8, std::int64_t{v}); }
GgufValue GgufValue::u16(std::uint16_t v) { return make_scalar(GgufType::u16, std::uint64_t{v}); }
GgufValue GgufValue::i16(std::int16_t v) { return make_scalar(GgufType::i16, std::int64_t{v}); }
GgufValue GgufValue::u32(std::uint32_t v) { return make_scalar(GgufType::u32, std::uint64_t{v}); }
GgufValue GgufValue::i32(std::int32_t v) { return make_scalar(GgufType::i32, std::int64_t{v}); }
GgufValue GgufValue::u64(std::uint64_t v) { return make_scalar(GgufType::u64, v); }
GgufValue GgufValue::i64(std::int64_t v) { return make_scalar(GgufType::i64, v); }
GgufValue GgufValue::f32(float v) { return make_scalar(GgufType::f32, static_cast<double>(v)); }
GgufValue GgufValue::f64(double v) { return make_scalar(GgufType::f64, v); }
GgufValue GgufValue::boolean(bool v) { return make_scalar(GgufType::boolean, v); }
GgufValue GgufValue::string(std::string v) { return make_scalar(GgufType::string, std::move(v)); }

GgufValue GgufValue::string_array(std::vector<std::string> v) {
  GgufValue out;
  out.type = GgufType::array;
  out.element_type = GgufType::string;
  out.data = std::move(v);
  return out;
}

GgufValue GgufValue::f32_array(const std::vector<float>& v) {
  GgufValue out;
  out.type = GgufType::array;
  out.element_type = GgufType::f32;
  out.data = std::vector<double>(v.begin(), v.end());
  return out;
}

GgufValue GgufValue::i32_array(const std::vector<std::int32_t>& v) {
  return integer_array(GgufType::i32, std::vector<std::int64_t>(v.begin(), v.end()));
}

GgufValue GgufValue::integer_array(GgufType element_type, std::vector<std::int64_t> v) {
  USERIP_CHECK((is_signed(element_type) || is_unsigned(element_type) || element_type == GgufType::boolean) &&
                   element_type != GgufType::u64,
               "integer_array: element type {} is not an integer type held as int64", to_string(element_type));
  GgufValue out;
  out.type = GgufType::array;
  out.element_type = element_type;
  out.data = std::move(v);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading

struct GgufFile::Impl {
  std::shared_ptr<const detail::ByteBuffer> buffer;
  std::string name;
  std::uint32_t version = 0;
  std::uint32_t alignment = kDefaultAlignment;
  std::uint64_t data_offset = 0;
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::unordered_map<std::string, std::size_t> kv_index;
  std::vector<TensorInfo> tensors;
  std::unordered_map<std::string, std::size_t> tensor_index;

  void parse();
  [[noreturn]] void key_error(const std::string& key, const std::string& problem) const {
    fail("{}: metadata key '{}' {}", name, key, problem);
  }
};

void GgufFile::Impl::parse() {
  const std::string& file = name;
  Reader r(buffer->data(), buffer->size(), file);
  USERIP_CHECK(buffer->size() >= 4, "{}: not a GGUF file ({} bytes is too short for the magic)", file, buffer->size());
  const std::uint32_t magic = r.read<std::uint32_t>("the magic");
  if (magic != kMagic) {
    const std::uint8_t* m = buffer->data();
    fail("{}: not a GGUF file (starts with bytes {:02x} {:02x} {:02x} {:02x}, expected 'GGUF')", file, m[0], m[1], m[2],
         m[3]);
  }
  version = r.read<std::uint32_t>("the version");
  // A big-endian file stores its version byte-swapped, so it reads as a huge number here.
  USERIP_CHECK(!(version > 0xffff && (version & 0xffff) == 0), "{}: big-endian GGUF files are not supported", file);
  USERIP_CHECK(version != 1, "{}: GGUF version 1 is not supported (only versions 2 and 3)", file);
  USERIP_CHECK(version == 2 || version == 3, "{}: unsupported GGUF version {} (only versions 2 and 3)", file, version);

  const std::uint64_t n_tensors = r.read<std::uint64_t>("the tensor count");
  const std::uint64_t n_kv = r.read<std::uint64_t>("the metadata count");
  // Smallest encodings: a metadata entry is an empty key + type + one byte; a tensor info is an
  // empty name + n_dims + type + offset. Counts above what the file can hold are corrupt.
  USERIP_CHECK(n_kv <= r.remaining() / 13, "{}: metadata count {} is impossible for a file of {} bytes", file, n_kv,
               buffer->size());
  USERIP_CHECK(n_tensors <= r.remaining() / 24, "{}: tensor count {} is impossible for a file of {} bytes", file,
               n_tensors, buffer->size());

  kv.reserve(static_cast<std::size_t>(n_kv));
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::string at = fmt::format("metadata entry #{}", i);
    std::string key = r.read_string(at + " (key)");
    const std::string what = fmt::format("the value of metadata key '{}'", detail::shown(key));
    const std::uint32_t raw_type = r.read<std::uint32_t>(what);
    USERIP_CHECK(valid_value_type(raw_type), "{}: metadata key '{}' has unknown value type {}", file,
                 detail::shown(key), raw_type);
    GgufValue value = read_value(r, static_cast<GgufType>(raw_type), what, file, 0);
    auto [pos, inserted] = kv_index.emplace(key, kv.size());
    USERIP_CHECK(inserted, "{}: metadata key '{}' appears twice", file, detail::shown(key));
    kv.emplace_back(std::move(key), std::move(value));
  }

  if (auto it = kv_index.find("general.alignment"); it != kv_index.end()) {
    const GgufValue& v = kv[it->second].second;
    USERIP_CHECK(v.is_integer(), "{}: general.alignment has type {}, expected an integer", file, to_string(v.type));
    const std::uint64_t a = is_signed(v.type) ? static_cast<std::uint64_t>(std::get<std::int64_t>(v.data))
                                              : std::get<std::uint64_t>(v.data);
    USERIP_CHECK(a > 0 && a <= (1u << 30) && (a & (a - 1)) == 0, "{}: general.alignment {} is not a power of two", file,
                 static_cast<std::int64_t>(a));
    alignment = static_cast<std::uint32_t>(a);
  }

  tensors.reserve(static_cast<std::size_t>(n_tensors));
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo info;
    info.name = r.read_string(fmt::format("tensor info #{} (name)", i));
    const std::string tname = detail::shown(info.name, 200);
    const std::string what = fmt::format("tensor info of '{}'", tname);
    const std::uint32_t n_dims = r.read<std::uint32_t>(what);
    USERIP_CHECK(n_dims <= kMaxDims, "{}: tensor '{}' has {} dimensions (at most {})", file, tname, n_dims, kMaxDims);
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const std::uint64_t dim = r.read<std::uint64_t>(what);
      USERIP_CHECK(dim <= static_cast<std::uint64_t>(INT64_MAX), "{}: tensor '{}' has dimension {} = {}", file, tname,
                   d, dim);
      info.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const std::uint32_t type_id = r.read<std::uint32_t>(what);
    const GgmlType* type = find_ggml_type(type_id);
    USERIP_CHECK(type != nullptr, "{}: tensor '{}' has unknown ggml type {}", file, tname, type_id);
    const std::uint64_t relative = r.read<std::uint64_t>(what);

    info.type = type->stored;
    info.type_name = type->name;
    info.fastest_dim_first = true;
    info.file = buffer->path();
    auto numel = detail::checked_numel(info.shape);
    USERIP_CHECK(numel.has_value(), "{}: tensor '{}' has shape {} whose size overflows", file, tname,
                 detail::shape_text(info.shape));
    const std::int64_t row = info.shape.empty() ? 1 : info.shape.front();
    USERIP_CHECK(row % type->block == 0,
                 "{}: tensor '{}' of type {} has rows of {} values, not a multiple of its block of {}", file, tname,
                 type->name, row, type->block);
    USERIP_CHECK(!__builtin_mul_overflow(static_cast<std::uint64_t>(*numel) / type->block,
                                         static_cast<std::uint64_t>(type->type_bytes), &info.bytes),
                 "{}: tensor '{}' has shape {} whose size overflows", file, tname, detail::shape_text(info.shape));
    USERIP_CHECK(relative % alignment == 0, "{}: tensor '{}' has offset {}, not a multiple of the alignment {}", file,
                 tname, relative, alignment);
    info.offset = relative;  // made absolute once the data section's start is known

    auto [pos, inserted] = tensor_index.emplace(info.name, tensors.size());
    USERIP_CHECK(inserted, "{}: tensor '{}' appears twice", file, tname);
    tensors.push_back(std::move(info));
  }

  data_offset = align_up(r.pos(), alignment);
  const std::uint64_t size = buffer->size();
  for (auto& info : tensors) {
    const std::uint64_t relative = info.offset;
    USERIP_CHECK(detail::fits_within(data_offset, relative, size) &&
                     detail::fits_within(data_offset + relative, info.bytes, size),
                 "{}: tensor '{}' (data offset {}, {} bytes) runs past the end of the file ({} bytes): truncated file?",
                 file, detail::shown(info.name, 200), relative, info.bytes, size);
    info.offset = data_offset + relative;
  }

  // Tensors sharing bytes would make writing one corrupt another; llama.cpp refuses them too.
  std::vector<std::size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return std::make_pair(tensors[a].offset, tensors[a].bytes) < std::make_pair(tensors[b].offset, tensors[b].bytes);
  });
  for (std::size_t i = 1; i < order.size(); ++i) {
    const TensorInfo& prev = tensors[order[i - 1]];
    const TensorInfo& cur = tensors[order[i]];
    USERIP_CHECK(cur.offset >= prev.offset + prev.bytes, "{}: tensors '{}' and '{}' overlap", file,
                 detail::shown(prev.name, 200), detail::shown(cur.name, 200));
  }
}

GgufFile::GgufFile() : impl_(std::make_unique<Impl>()) {}
GgufFile::~GgufFile() = default;

GgufFile::GgufFile(const fs::path& path) : impl_(std::make_unique<Impl>()) {
  impl_->name = path.string();
  impl_->buffer = detail::ByteBuffer::map_file(path);
  impl_->parse();
}

std::unique_ptr<GgufFile> GgufFile::from_bytes(std::string bytes, const std::string& name) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->impl_->name = name;
  file->impl_->buffer = detail::ByteBuffer::hold(std::move(bytes), name);
  file->impl_->parse();
  return file;
}

std::unique_ptr<GgufFile> open_gguf(const fs::path& path) { return std::make_unique<GgufFile>(path); }

bool is_gguf_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

std::uint32_t GgufFile::version() const { return impl_->version; }
std::uint32_t GgufFile::alignment() const { return impl_->alignment; }
std::uint64_t GgufFile::data_offset() const { return impl_->data_offset; }
std::string GgufFile::description() const { return impl_->name; }
const std::vector<TensorInfo>& GgufFile::tensors() const { return impl_->tensors; }

std::string GgufFile::architecture() const {
  const GgufValue* v = find_value("general.architecture");
  return v && v->type == GgufType::string ? std::get<std::string>(v->data) : std::string();
}

bool GgufFile::has_key(const std::string& key) const { return impl_->kv_index.count(key) != 0; }

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> out;
  out.reserve(impl_->kv.size());
  for (const auto& [key, value] : impl_->kv) out.push_back(key);
  return out;
}

const GgufValue* GgufFile::find_value(const std::string& key) const {
  auto it = impl_->kv_index.find(key);
  return it == impl_->kv_index.end() ? nullptr : &impl_->kv[it->second].second;
}

const GgufValue& GgufFile::value(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v) impl_->key_error(key, "is missing");
  return *v;
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type != GgufType::string) impl_->key_error(key, fmt::format("has type {}, expected string", to_string(v.type)));
  return std::get<std::string>(v.data);
}

std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  return has_key(key) ? get_string(key) : fallback;
}

std::uint64_t GgufFile::get_u64(const std::string& key) const {
  const GgufValue& v = value(key);
  if (is_unsigned(v.type)) return std::get<std::uint64_t>(v.data);
  if (is_signed(v.type)) {
    const std::int64_t x = std::get<std::int64_t>(v.data);
    if (x < 0) impl_->key_error(key, fmt::format("is {}, expected a non-negative integer", x));
    return static_cast<std::uint64_t>(x);
  }
  impl_->key_error(key, fmt::format("has type {}, expected an integer", to_string(v.type)));
}

std::uint64_t GgufFile::get_u64(const std::string& key, std::uint64_t fallback) const {
  return has_key(key) ? get_u64(key) : fallback;
}

std::int64_t GgufFile::get_i64(const std::string& key) const {
  const GgufValue& v = value(key);
  if (is_signed(v.type)) return std::get<std::int64_t>(v.data);
  if (is_unsigned(v.type)) {
    const std::uint64_t x = std::get<std::uint64_t>(v.data);
    if (x > static_cast<std::uint64_t>(INT64_MAX)) impl_->key_error(key, fmt::format("is {}, too large for int64", x));
    return static_cast<std::int64_t>(x);
  }
  impl_->key_error(key, fmt::format("has type {}, expected an integer", to_string(v.type)));
}

std::int64_t GgufFile::get_i64(const std::string& key, std::int64_t fallback) const {
  return has_key(key) ? get_i64(key) : fallback;
}

float GgufFile::get_f32(const std::string& key) const {
  const GgufValue& v = value(key);
  if (is_float(v.type)) return static_cast<float>(std::get<double>(v.data));
  if (is_signed(v.type)) return static_cast<float>(std::get<std::int64_t>(v.data));
  if (is_unsigned(v.type)) return static_cast<float>(std::get<std::uint64_t>(v.data));
  impl_->key_error(key, fmt::format("has type {}, expected a number", to_string(v.type)));
}

float GgufFile::get_f32(const std::string& key, float fallback) const { return has_key(key) ? get_f32(key) : fallback; }

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type != GgufType::boolean) impl_->key_error(key, fmt::format("has type {}, expected bool", to_string(v.type)));
  return std::get<bool>(v.data);
}

bool GgufFile::get_bool(const std::string& key, bool fallback) const { return has_key(key) ? get_bool(key) : fallback; }

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = value(key);
  if (!v.is_array() || v.element_type != GgufType::string) {
    impl_->key_error(key, fmt::format("has type {}{}, expected an array of strings", to_string(v.type),
                                      v.is_array() ? " of " + to_string(v.element_type) : std::string()));
  }
  return std::get<std::vector<std::string>>(v.data);
}

std::vector<float> GgufFile::get_f32_array(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.is_array()) {
    if (const auto* d = std::get_if<std::vector<double>>(&v.data)) return {d->begin(), d->end()};
    if (const auto* i = std::get_if<std::vector<std::int64_t>>(&v.data)) {
      if (v.element_type != GgufType::boolean) return {i->begin(), i->end()};
    }
    if (const auto* u = std::get_if<std::vector<std::uint64_t>>(&v.data)) return {u->begin(), u->end()};
  }
  impl_->key_error(key, fmt::format("has type {}{}, expected an array of numbers", to_string(v.type),
                                    v.is_array() ? " of " + to_string(v.element_type) : std::string()));
}

std::vector<std::int32_t> GgufFile::get_i32_array(const std::string& key) const {
  const GgufValue& v = value(key);
  std::vector<std::int32_t> out;
  auto check = [&](auto x, std::size_t i) {
    bool fits;
    if constexpr (std::is_signed_v<decltype(x)>) {
      fits = x >= INT32_MIN && x <= INT32_MAX;
    } else {
      fits = x <= static_cast<std::uint64_t>(INT32_MAX);
    }
    if (!fits) impl_->key_error(key, fmt::format("element {} = {} does not fit in int32", i, x));
    return static_cast<std::int32_t>(x);
  };
  if (v.is_array() && v.element_type != GgufType::boolean) {
    if (const auto* i = std::get_if<std::vector<std::int64_t>>(&v.data)) {
      out.reserve(i->size());
      for (std::size_t k = 0; k < i->size(); ++k) out.push_back(check((*i)[k], k));
      return out;
    }
    if (const auto* u = std::get_if<std::vector<std::uint64_t>>(&v.data)) {
      out.reserve(u->size());
      for (std::size_t k = 0; k < u->size(); ++k) out.push_back(check((*u)[k], k));
      return out;
    }
  }
  impl_->key_error(key, fmt::format("has type {}{}, expected an array of integers", to_string(v.type),
                                    v.is_array() ? " of " + to_string(v.element_type) : std::string()));
}

torch::Tensor GgufFile::load(const std::string& name, torch::ScalarType dtype, torch::Device device) const {
  auto it = impl_->tensor_index.find(name);
  USERIP_CHECK(it != impl_->tensor_index.end(), "{}: no tensor '{}'", impl_->name, detail::shown(name, 200));
  return detail::materialize(*impl_->buffer, impl_->tensors[it->second], dtype, device, impl_->name);
}

// ---------------------------------------------------------------------------------------------
// Q8_0

std::vector<std::uint8_t> quantize_q8_0(const float* values, std::int64_t count) {
  USERIP_CHECK(count >= 0 && count % kQ8Block == 0, "Q8_0 needs a multiple of {} values, got {}", kQ8Block, count);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(count / kQ8Block) * kQ8BlockBytes);
  for (std::int64_t b = 0; b < count / kQ8Block; ++b) {
    const float* x = values + b * kQ8Block;
    float amax = 0.0f;
    for (int j = 0; j < kQ8Block; ++j) {
      USERIP_CHECK(std::isfinite(x[j]), "Q8_0 cannot store the non-finite value at index {}", b * kQ8Block + j);
      amax = std::max(amax, std::fabs(x[j]));
    }
    const float d = amax / 127.0f;
    USERIP_CHECK(d <= 65504.0f, "Q8_0 cannot store values as large as {} (its scale is a float16)", amax);
    const float inverse = d > 0.0f ? 1.0f / d : 0.0f;
    std::uint8_t* block = out.data() + b * kQ8BlockBytes;
    const std::uint16_t scale = float_to_half(d);
    std::memcpy(block, &scale, 2);
    for (int j = 0; j < kQ8Block; ++j) {
      const float q = std::clamp(std::round(x[j] * inverse), -127.0f, 127.0f);
      block[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
    }
  }
  return out;
}

void dequantize_q8_0(const std::uint8_t* blocks, std::int64_t count, float* out) {
  USERIP_ASSERT(count % kQ8Block == 0);
  for (std::int64_t b = 0; b < count / kQ8Block; ++b) {
    const std::uint8_t* block = blocks + b * kQ8BlockBytes;
    std::uint16_t scale_bits;
    std::memcpy(&scale_bits, block, 2);
    const float d = half_to_float(scale_bits);
    float* y = out + b * kQ8Block;
    for (int j = 0; j < kQ8Block; ++j) y[j] = d * static_cast<float>(static_cast<std::int8_t>(block[2 + j]));
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

namespace {

class Bytes {
 public:
  template <typename T>
  void put(T value) {
    const auto* p = reinterpret_cast<const char*>(&value);
    text_.append(p, sizeof(T));
  }
  void put_string(const std::string& s) {
    put<std::uint64_t>(s.size());
    text_.append(s);
  }
  void pad_to(std::uint64_t alignment) { text_.append(align_up(text_.size(), alignment) - text_.size(), '\0'); }
  std::string& text() { return text_; }

 private:
  std::string text_;
};

void put_int(Bytes& out, GgufType type, std::int64_t v) {
  switch (type) {
    case GgufType::u8:
    case GgufType::boolean: out.put(static_cast<std::uint8_t>(v)); break;
    case GgufType::i8: out.put(static_cast<std::int8_t>(v)); break;
    case GgufType::u16: out.put(static_cast<std::uint16_t>(v)); break;
    case GgufType::i16: out.put(static_cast<std::int16_t>(v)); break;
    case GgufType::u32: out.put(static_cast<std::uint32_t>(v)); break;
    case GgufType::i32: out.put(static_cast<std::int32_t>(v)); break;
    case GgufType::i64: out.put(static_cast<std::int64_t>(v)); break;
    default: USERIP_ASSERT(false);
  }
}

// `tagged`: whether the value starts with its type. Array elements are untagged (the array names
// their type once), and so is an array nested in an array of arrays.
void put_value(Bytes& out, const GgufValue& v, const std::string& key, int depth, bool tagged) {
  auto mismatch = [&]() { fail("GGUF metadata '{}': value does not match its type {}", key, to_string(v.type)); };
  if (tagged) out.put(static_cast<std::uint32_t>(v.type));
  if (v.type == GgufType::array) {
    USERIP_CHECK(depth < kMaxArrayNesting, "GGUF metadata {}: arrays nested too deeply", detail::shown(key));
    out.put(static_cast<std::uint32_t>(v.element_type));
    out.put<std::uint64_t>(v.array_size());
    const GgufType e = v.element_type;
    if (e == GgufType::string) {
      const auto* items = std::get_if<std::vector<std::string>>(&v.data);
      if (!items) mismatch();
      for (const auto& s : *items) out.put_string(s);
    } else if (e == GgufType::array) {
      const auto* items = std::get_if<GgufValue::Array>(&v.data);
      if (!items) mismatch();
      for (const auto& item : *items) {
        USERIP_CHECK(item.type == GgufType::array, "GGUF metadata {}: an array of arrays holds a non-array",
                     detail::shown(key));
        put_value(out, item, key, depth + 1, /*tagged=*/false);
      }
    } else if (e == GgufType::u64) {
      const auto* items = std::get_if<std::vector<std::uint64_t>>(&v.data);
      if (!items) mismatch();
      for (auto x : *items) out.put(x);
    } else if (is_float(e)) {
      const auto* items = std::get_if<std::vector<double>>(&v.data);
      if (!items) mismatch();
      for (double x : *items) {
        if (e == GgufType::f32)
          out.put(static_cast<float>(x));
        else
          out.put(x);
      }
    } else {
      const auto* items = std::get_if<std::vector<std::int64_t>>(&v.data);
      if (!items) mismatch();
      for (auto x : *items) put_int(out, e, x);
    }
    return;
  }
  switch (v.type) {
    case GgufType::u8:
    case GgufType::u16:
    case GgufType::u32:
    case GgufType::u64: {
      const auto* x = std::get_if<std::uint64_t>(&v.data);
      if (!x) mismatch();
      if (v.type == GgufType::u64)
        out.put(*x);
      else
        put_int(out, v.type, static_cast<std::int64_t>(*x));
      break;
    }
    case GgufType::i8:
    case GgufType::i16:
    case GgufType::i32:
    case GgufType::i64: {
      const auto* x = std::get_if<std::int64_t>(&v.data);
      if (!x) mismatch();
      put_int(out, v.type, *x);
      break;
    }
    case GgufType::f32:
    case GgufType::f64: {
      const auto* x = std::get_if<double>(&v.data);
      if (!x) mismatch();
      if (v.type == GgufType::f32)
        out.put(static_cast<float>(*x));
      else
        out.put(*x);
      break;
    }
    case GgufType::boolean: {
      const auto* x = std::get_if<bool>(&v.data);
      if (!x) mismatch();
      out.put<std::uint8_t>(*x ? 1 : 0);
      break;
    }
    case GgufType::string: {
      const auto* x = std::get_if<std::string>(&v.data);
      if (!x) mismatch();
      out.put_string(*x);
      break;
    }
    case GgufType::array: break;
  }
}

}  // namespace

GgufWriter::GgufWriter(std::uint32_t alignment) : alignment_(alignment) {
  USERIP_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0, "GGUF alignment {} is not a power of two",
               alignment);
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (key == "general.alignment") {
    USERIP_CHECK(value.type == GgufType::u32, "general.alignment must be a u32");
    const auto a = std::get<std::uint64_t>(value.data);
    USERIP_CHECK(a > 0 && (a & (a - 1)) == 0, "GGUF alignment {} is not a power of two", a);
    alignment_ = static_cast<std::uint32_t>(a);
  }
  auto [pos, inserted] = metadata_index_.emplace(key, metadata_.size());
  if (inserted) {
    metadata_.emplace_back(key, std::move(value));
  } else {
    metadata_[pos->second].second = std::move(value);
  }
}

void GgufWriter::add_tensor(const std::string& name, torch::Tensor tensor, StoredType type) {
  USERIP_CHECK(tensor.defined(), "GGUF tensor '{}' is undefined", name);
  auto shape = tensor.sizes().vec();
  add_tensor(name, std::move(shape), type, [tensor]() { return tensor; });
}

void GgufWriter::add_tensor(const std::string& name, std::vector<std::int64_t> torch_shape, StoredType type,
                            std::function<torch::Tensor()> produce) {
  USERIP_CHECK(!name.empty() && name.size() <= kMaxNameBytes, "GGUF tensor name '{}' must be 1 to {} bytes long",
               detail::shown(name), kMaxNameBytes);
  USERIP_CHECK(type != StoredType::other, "GGUF tensor '{}': cannot write type 'other'", name);
  USERIP_CHECK(torch_shape.size() <= kMaxDims, "GGUF tensor '{}' has {} dimensions (at most {})", name,
               torch_shape.size(), kMaxDims);
  USERIP_CHECK(detail::checked_numel(torch_shape).has_value(), "GGUF tensor '{}' has invalid shape {}", name,
               detail::shape_text(torch_shape));
  if (type == StoredType::q8_0) {
    const std::int64_t row = torch_shape.empty() ? 1 : torch_shape.back();
    USERIP_CHECK(row % kQ8Block == 0, "GGUF tensor '{}': Q8_0 needs the last dimension ({}) to be a multiple of {}",
                 name, row, kQ8Block);
  }
  USERIP_CHECK(tensor_index_.emplace(name, tensors_.size()).second, "GGUF tensor '{}' added twice", name);
  tensors_.push_back({name, std::move(torch_shape), type, std::move(produce)});
}

void GgufWriter::write(const fs::path& path) const {
  const std::string where = path.string();
  std::vector<std::pair<std::string, GgufValue>> metadata = metadata_;
  if (alignment_ != kDefaultAlignment && !metadata_index_.count("general.alignment")) {
    metadata.emplace_back("general.alignment", GgufValue::u32(alignment_));
  }

  Bytes header;
  header.put(kMagic);
  header.put<std::uint32_t>(3);
  header.put<std::uint64_t>(tensors_.size());
  header.put<std::uint64_t>(metadata.size());
  for (const auto& [key, value] : metadata) {
    header.put_string(key);
    put_value(header, value, key, 0, /*tagged=*/true);
  }
  std::vector<std::uint64_t> sizes;
  std::uint64_t offset = 0;
  for (const auto& t : tensors_) {
    const GgmlType& type = ggml_type_of(t.type);
    header.put_string(t.name);
    header.put<std::uint32_t>(static_cast<std::uint32_t>(t.torch_shape.size()));
    for (auto it = t.torch_shape.rbegin(); it != t.torch_shape.rend(); ++it) header.put<std::uint64_t>(*it);
    header.put<std::uint32_t>(type.id);
    header.put<std::uint64_t>(offset);
    auto bytes = detail::stored_bytes(t.type, *detail::checked_numel(t.torch_shape));
    USERIP_CHECK(bytes.has_value(), "{}: tensor '{}' is too large", where, t.name);
    sizes.push_back(*bytes);
    offset = align_up(offset + *bytes, alignment_);
  }
  header.pad_to(alignment_);

  AtomicFileWriter out(path);
  out.write(header.text());
  static const char zeros[256] = {};
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i];
    torch::Tensor value = t.produce();
    USERIP_CHECK(value.defined(), "{}: no data for tensor '{}'", where, t.name);
    USERIP_CHECK(value.sizes().vec() == t.torch_shape, "{}: tensor '{}' has shape {}, expected {}", where, t.name,
                 detail::shape_text(value.sizes().vec()), detail::shape_text(t.torch_shape));
    if (t.type == StoredType::q8_0) {
      value = value.to(torch::kCPU, torch::kFloat32).contiguous();
      std::vector<std::uint8_t> blocks;
      try {
        blocks = quantize_q8_0(value.data_ptr<float>(), value.numel());
      } catch (const Error& e) {
        fail("{}: tensor '{}': {}", where, t.name, e.what());
      }
      out.write(blocks.data(), blocks.size());
    } else {
      value = value.to(torch::kCPU, natural_dtype(t.type)).contiguous();
      out.write(value.data_ptr(), static_cast<std::size_t>(value.nbytes()));
    }
    // The last tensor is padded too: ggml sizes the data section as the sum of padded sizes.
    std::uint64_t pad = align_up(sizes[i], alignment_) - sizes[i];
    while (pad > 0) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(pad, sizeof(zeros)));
      out.write(zeros, n);
      pad -= n;
    }
  }
  out.commit();
}

}  // namespace userip::tensor
