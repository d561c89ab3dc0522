#include "userip/tensor/tensor_file.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "tensor/tensor_io.h"
#include "userip/tensor/gguf.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

// Both formats are little-endian and the readers hand mapped bytes straight to torch.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "checkpoint I/O assumes a little-endian host");

namespace userip::tensor {

namespace {
constexpr EnumName<StoredType> kStoredTypeNames[] = {
    {StoredType::f32, "F32"}, {StoredType::f16, "F16"}, {StoredType::bf16, "BF16"}, {StoredType::q8_0, "Q8_0"},
    {StoredType::i32, "I32"}, {StoredType::i64, "I64"}, {StoredType::f64, "F64"},   {StoredType::i8, "I8"},
    {StoredType::u8, "U8"},   {StoredType::i16, "I16"}, {StoredType::other, "other"}};
}  // namespace

std::string to_string(StoredType type) { return enum_name(kStoredTypeNames, type); }

torch::ScalarType natural_dtype(StoredType type) {
  switch (type) {
    case StoredType::f32: return torch::kFloat32;
    case StoredType::f16: return torch::kFloat16;
    case StoredType::bf16: return torch::kBFloat16;
    case StoredType::q8_0: return torch::kFloat32;
    case StoredType::i32: return torch::kInt32;
    case StoredType::i64: return torch::kInt64;
    case StoredType::f64: return torch::kFloat64;
    case StoredType::i8: return torch::kInt8;
    case StoredType::u8: return torch::kUInt8;
    case StoredType::i16: return torch::kInt16;
    case StoredType::other: break;
  }
  fail("stored type '{}' has no torch dtype", to_string(type));
}

std::optional<StoredType> stored_type_of(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return StoredType::f32;
    case torch::kFloat16: return StoredType::f16;
    case torch::kBFloat16: return StoredType::bf16;
    case torch::kInt32: return StoredType::i32;
    case torch::kInt64: return StoredType::i64;
    case torch::kFloat64: return StoredType::f64;
    case torch::kInt8: return StoredType::i8;
    case torch::kUInt8: return StoredType::u8;
    case torch::kInt16: return StoredType::i16;
    default: return std::nullopt;
  }
}

std::vector<std::int64_t> TensorInfo::torch_shape() const {
  if (!fastest_dim_first) return shape;
  return {shape.rbegin(), shape.rend()};
}

std::int64_t TensorInfo::numel() const {
  auto n = detail::checked_numel(shape);
  USERIP_ASSERT_MSG(n.has_value(), "tensor '{}' has an invalid shape", name);  // readers validate shapes
  return *n;
}

const TensorInfo* TensorSource::find(const std::string& name) const {
  for (const auto& info : tensors()) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

std::vector<std::string> TensorSource::names() const {
  std::vector<std::string> out;
  out.reserve(tensors().size());
  for (const auto& info : tensors()) out.push_back(info.name);
  return out;
}

namespace detail {

std::shared_ptr<const ByteBuffer> ByteBuffer::map_file(const fs::path& path) {
  std::shared_ptr<ByteBuffer> buffer(new ByteBuffer());
  buffer->map_ = MappedFile(path);
  buffer->path_ = path;
  buffer->data_ = buffer->map_.data();
  buffer->size_ = buffer->map_.size();
  buffer->mapped_ = true;
  return buffer;
}

std::shared_ptr<const ByteBuffer> ByteBuffer::hold(std::string bytes, fs::path name) {
  std::shared_ptr<ByteBuffer> buffer(new ByteBuffer());
  buffer->owned_ = std::move(bytes);
  buffer->path_ = std::move(name);
  buffer->data_ = reinterpret_cast<const std::uint8_t*>(buffer->owned_.data());
  buffer->size_ = buffer->owned_.size();
  return buffer;
}

void ByteBuffer::release_pages(std::uint64_t offset, std::uint64_t bytes) const {
  if (!mapped_ || bytes == 0 || offset >= size_) return;
  static const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  // Rounding outwards may drop pages shared with a neighbouring tensor: harmless, the mapping
  // is read-only and file-backed, so a later touch just faults the page in again.
  std::uint64_t begin = offset / page * page;
  std::uint64_t end = std::min<std::uint64_t>(offset + bytes, size_);
  end = (end + page - 1) / page * page;
  auto* base = const_cast<std::uint8_t*>(map_.data());
  ::madvise(base + begin, end - begin, MADV_DONTNEED);  // advisory: failure only costs memory
}

std::optional<std::int64_t> checked_numel(const std::vector<std::int64_t>& shape) {
  // Zero dimensions are skipped in the overflow check: torch refuses [0, 2^62, 2^62] even though
  // it holds no elements, so such a shape must be refused here, as corrupt, not deep in torch.
  std::int64_t extent = 1;
  bool empty = false;
  for (std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d == 0) {
      empty = true;
      continue;
    }
    if (__builtin_mul_overflow(extent, d, &extent) || extent > (INT64_MAX >> 4)) return std::nullopt;
  }
  return empty ? 0 : extent;
}

std::size_t element_bytes(StoredType type) {
  switch (type) {
    case StoredType::f32:
    case StoredType::i32: return 4;
    case StoredType::f16:
    case StoredType::bf16:
    case StoredType::i16: return 2;
    case StoredType::i64:
    case StoredType::f64: return 8;
    case StoredType::i8:
    case StoredType::u8: return 1;
    case StoredType::q8_0:
    case StoredType::other: return 0;
  }
  return 0;
}

std::optional<std::uint64_t> stored_bytes(StoredType type, std::int64_t numel) {
  if (numel < 0) return std::nullopt;
  std::uint64_t n = static_cast<std::uint64_t>(numel);
  std::uint64_t out = 0;
  if (type == StoredType::q8_0) {
    if (n % 32 != 0) return std::nullopt;
    if (__builtin_mul_overflow(n / 32, std::uint64_t{34}, &out)) return std::nullopt;
    return out;
  }
  std::size_t size = element_bytes(type);
  if (size == 0) return std::nullopt;
  if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(size), &out)) return std::nullopt;
  return out;
}

std::string shown(std::string_view text, std::size_t max_chars) {
  std::string quoted = quote_for_message(text, max_chars);
  return quoted.substr(1, quoted.size() - 2);  // drop the double quotes: callers use single ones
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

namespace {

torch::Tensor convert(const ByteBuffer& buffer, const TensorInfo& info, std::int64_t numel, torch::ScalarType dtype,
                      torch::Device device) {
  const std::vector<std::int64_t> shape = info.torch_shape();
  if (numel == 0) return torch::empty(shape, torch::TensorOptions().dtype(dtype).device(device));

  const std::uint8_t* src = buffer.data() + info.offset;
  torch::Tensor out;
  if (info.type == StoredType::q8_0) {
    torch::Tensor values = torch::empty(shape, torch::kFloat32);
    dequantize_q8_0(src, numel, values.data_ptr<float>());
    out = (dtype == torch::kFloat32 && device.is_cpu()) ? values : values.to(device, dtype);
  } else {
    const torch::ScalarType stored = natural_dtype(info.type);
    const std::size_t align = element_bytes(info.type);
    if (reinterpret_cast<std::uintptr_t>(src) % align == 0) {
      // copy=true: even when nothing needs converting the result must own its memory, both
      // because the mapping goes away with the source and because the pages are read-only.
      torch::Tensor view = torch::from_blob(const_cast<std::uint8_t*>(src), shape, torch::TensorOptions(stored));
      out = view.to(device, dtype, /*non_blocking=*/false, /*copy=*/true);
    } else {
      // Formats only promise byte offsets; an unaligned tensor is copied out before torch
      // reads it as typed elements.
      torch::Tensor staged = torch::empty(shape, torch::TensorOptions(stored));
      std::memcpy(staged.data_ptr(), src, info.bytes);
      out = (dtype == stored && device.is_cpu()) ? staged : staged.to(device, dtype);
    }
  }
  buffer.release_pages(info.offset, info.bytes);
  return out;
}

}  // namespace

torch::Tensor materialize(const ByteBuffer& buffer, const TensorInfo& info, torch::ScalarType dtype,
                          torch::Device device, const std::string& where) {
  if (info.type == StoredType::other) {
    fail(
        "{}: tensor '{}' has type {}, which userip cannot load (supported: F32, F16, BF16, Q8_0 and plain "
        "integer types)",
        where, shown(info.name), info.type_name);
  }
  auto numel = checked_numel(info.shape);
  USERIP_CHECK(numel.has_value(), "{}: tensor '{}' has an invalid shape {}", where, shown(info.name),
               shape_text(info.shape));
  auto expected = stored_bytes(info.type, *numel);
  USERIP_CHECK(expected && *expected == info.bytes,
               "{}: tensor '{}' of shape {} and type {} should take {} bytes, not {}", where, shown(info.name),
               shape_text(info.shape), info.type_name, expected ? *expected : 0, info.bytes);
  USERIP_CHECK(fits_within(info.offset, info.bytes, buffer.size()),
               "{}: tensor '{}' (bytes {}..{}) lies past the end of {} ({} bytes)", where, shown(info.name),
               info.offset, info.offset + info.bytes, buffer.path().string(), buffer.size());

  try {
    return convert(buffer, info, *numel, dtype, device);
  } catch (const c10::Error& e) {
    // Anything torch refuses (a device that does not exist, an allocation that fails) is
    // reported like the reader's own errors, naming the file and tensor.
    fail("{}: tensor '{}': {}", where, shown(info.name), e.what_without_backtrace());
  }
}

}  // namespace detail
}  // namespace userip::tensor
