// safetensors: an 8-byte little-endian header length N, N bytes of JSON describing each tensor
// (dtype, shape, [begin, end) within the data section), then the data section. Reading checks
// every claim the header makes against the file before any tensor is touched.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <regex>
#include <set>
#include <unordered_map>

#include "tensor/tensor_io.h"
#include "userip/tensor/tensor_file.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::tensor {

namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// Same cap as the reference implementation: a larger header is corrupt, not a checkpoint.
constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr std::size_t kMaxRank = 16;
const char* const kIndexName = "model.safetensors.index.json";
const char* const kSingleName = "model.safetensors";

struct DtypeEntry {
  const char* name;
  StoredType type;
  std::size_t bytes;  // per element
};

// Every dtype the format defines with whole-byte elements; those this project cannot convert
// are `other` so the file opens and only loading that tensor fails.
const DtypeEntry kDtypes[] = {
    {"F32", StoredType::f32, 4},       {"F16", StoredType::f16, 2},       {"BF16", StoredType::bf16, 2},
    {"F64", StoredType::f64, 8},       {"I64", StoredType::i64, 8},       {"I32", StoredType::i32, 4},
    {"I16", StoredType::i16, 2},       {"I8", StoredType::i8, 1},         {"U8", StoredType::u8, 1},
    {"BOOL", StoredType::other, 1},    {"U16", StoredType::other, 2},     {"U32", StoredType::other, 4},
    {"U64", StoredType::other, 8},     {"F8_E4M3", StoredType::other, 1}, {"F8_E5M2", StoredType::other, 1},
    {"F8_E8M0", StoredType::other, 1}, {"C64", StoredType::other, 8},
};

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& entry : kDtypes) {
    if (name == entry.name) return &entry;
  }
  return nullptr;
}

std::string write_dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "F32";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kFloat64: return "F64";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kInt16: return "I16";
    case torch::kInt8: return "I8";
    case torch::kUInt8: return "U8";
    case torch::kBool: return "BOOL";
    default: return "";
  }
}

std::uint64_t read_le64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  std::memcpy(&v, p, 8);
  return v;
}

std::string json_value_text(const json& value) { return value.is_string() ? value.get<std::string>() : value.dump(); }

// Parses JSON, rejecting duplicate keys in the top-level object (nlohmann would silently keep
// the last one, and two entries for one tensor name is exactly the ambiguity to refuse).
json parse_json_object(std::string_view text, const std::string& where, const char* what) {
  USERIP_CHECK(is_valid_utf8(text), "{}: {} is not valid UTF-8", where, what);
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      if (!seen.insert(parsed.get<std::string>()).second && duplicate.empty()) duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json doc;
  try {
    doc = json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    fail("{}: {} is not valid JSON: {}", where, what, e.what());
  }
  USERIP_CHECK(duplicate.empty(), "{}: {} has the key '{}' twice", where, what, detail::shown(duplicate));
  USERIP_CHECK(doc.is_object(), "{}: {} is not a JSON object", where, what);
  return doc;
}

std::uint64_t json_u64(const json& value, bool* ok) {
  if (value.is_number_unsigned()) return value.get<std::uint64_t>();
  if (value.is_number_integer() && value.get<std::int64_t>() >= 0)
    return static_cast<std::uint64_t>(value.get<std::int64_t>());
  *ok = false;
  return 0;
}

}  // namespace

struct SafetensorsSource::Impl {
  std::string description;
  std::vector<std::shared_ptr<const detail::ByteBuffer>> buffers;
  std::vector<TensorInfo> tensors;
  std::vector<std::size_t> buffer_of;  // per tensor: index into `buffers`
  std::unordered_map<std::string, std::size_t> by_name;
  std::map<std::string, std::string> metadata;

  // Parses one file's header and appends its tensors.
  void add_file(std::shared_ptr<const detail::ByteBuffer> buffer);
  void open_index(const fs::path& index_path);
};

void SafetensorsSource::Impl::add_file(std::shared_ptr<const detail::ByteBuffer> buffer) {
  const std::string file = buffer->path().string();
  const std::uint64_t size = buffer->size();
  USERIP_CHECK(size >= 8, "{}: not a safetensors file: {} bytes is too short for the 8-byte header length", file, size);
  const std::uint64_t header_len = read_le64(buffer->data());
  USERIP_CHECK(header_len <= size - 8,
               "{}: header length {} runs past the end of the file ({} bytes): truncated or not a safetensors file",
               file, header_len, size);
  USERIP_CHECK(header_len <= kMaxHeaderBytes, "{}: header length {} exceeds the format's limit of {} bytes", file,
               header_len, kMaxHeaderBytes);
  std::string_view header(reinterpret_cast<const char*>(buffer->data()) + 8, header_len);
  USERIP_CHECK(!header.empty() && header.front() == '{', "{}: header does not start with '{{': not a safetensors file",
               file);
  json doc = parse_json_object(header, file, "the header");

  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t data_size = size - data_start;
  const std::size_t first = tensors.size();
  const std::size_t buffer_index = buffers.size();

  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      USERIP_CHECK(entry.is_object(), "{}: __metadata__ is not a JSON object", file);
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        USERIP_CHECK(m.value().is_string(), "{}: __metadata__ value of '{}' is not a string", file,
                     detail::shown(m.key()));
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tname = detail::shown(name, 200);
    USERIP_CHECK(!name.empty(), "{}: a tensor has an empty name", file);
    USERIP_CHECK(entry.is_object(), "{}: tensor '{}': header entry is not a JSON object", file, tname);
    auto dtype_it = entry.find("dtype");
    auto shape_it = entry.find("shape");
    auto offsets_it = entry.find("data_offsets");
    USERIP_CHECK(dtype_it != entry.end() && dtype_it->is_string(), "{}: tensor '{}': missing or non-string 'dtype'",
                 file, tname);
    USERIP_CHECK(shape_it != entry.end() && shape_it->is_array(), "{}: tensor '{}': missing or non-array 'shape'", file,
                 tname);
    USERIP_CHECK(offsets_it != entry.end() && offsets_it->is_array() && offsets_it->size() == 2,
                 "{}: tensor '{}': 'data_offsets' must be an array [begin, end]", file, tname);

    const std::string dtype_name = dtype_it->get<std::string>();
    const DtypeEntry* dtype = find_dtype(dtype_name);
    USERIP_CHECK(dtype != nullptr, "{}: tensor '{}': unknown dtype '{}'", file, tname, detail::shown(dtype_name));

    USERIP_CHECK(shape_it->size() <= kMaxRank, "{}: tensor '{}': {} dimensions is more than the {} allowed", file,
                 tname, shape_it->size(), kMaxRank);
    TensorInfo info;
    info.name = name;
    info.type = dtype->type;
    info.type_name = dtype->name;
    info.file = buffer->path();
    for (const json& dim : *shape_it) {
      bool ok = true;
      std::uint64_t d = json_u64(dim, &ok);
      USERIP_CHECK(ok && d <= static_cast<std::uint64_t>(INT64_MAX),
                   "{}: tensor '{}': shape entry {} is not a non-negative integer", file, tname, dim.dump());
      info.shape.push_back(static_cast<std::int64_t>(d));
    }
    bool ok = true;
    const std::uint64_t begin = json_u64((*offsets_it)[0], &ok);
    const std::uint64_t end = json_u64((*offsets_it)[1], &ok);
    USERIP_CHECK(ok, "{}: tensor '{}': data_offsets {} are not non-negative integers", file, tname, offsets_it->dump());
    USERIP_CHECK(begin <= end, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", file, tname, begin, end);
    USERIP_CHECK(end <= data_size,
                 "{}: tensor '{}': data_offsets [{}, {}] run past the end of the data ({} bytes): truncated file?",
                 file, tname, begin, end, data_size);

    auto numel = detail::checked_numel(info.shape);
    std::uint64_t need = 0;
    USERIP_CHECK(numel && !__builtin_mul_overflow(static_cast<std::uint64_t>(*numel), dtype->bytes, &need),
                 "{}: tensor '{}': shape {} is too large", file, tname, detail::shape_text(info.shape));
    USERIP_CHECK(need == end - begin,
                 "{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}", file, tname,
                 detail::shape_text(info.shape), dtype_name, need, begin, end, end - begin);
    info.offset = data_start + begin;
    info.bytes = end - begin;

    auto [pos, inserted] = by_name.emplace(name, tensors.size());
    if (!inserted) {
      fail("{}: tensor '{}' is also in {}", file, tname, tensors[pos->second].file.string());
    }
    tensors.push_back(std::move(info));
    buffer_of.push_back(buffer_index);
  }

  // The data section must be exactly tiled by the tensors: overlapping tensors would let one
  // write corrupt another, and unclaimed bytes are how polyglot files hide a second payload.
  std::vector<std::size_t> order(tensors.size() - first);
  std::iota(order.begin(), order.end(), first);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return std::make_pair(tensors[a].offset, tensors[a].bytes) < std::make_pair(tensors[b].offset, tensors[b].bytes);
  });
  std::uint64_t cursor = data_start;
  const TensorInfo* previous = nullptr;
  for (std::size_t i : order) {
    const TensorInfo& t = tensors[i];
    USERIP_CHECK(t.offset >= cursor, "{}: tensors '{}' and '{}' overlap", file,
                 previous ? detail::shown(previous->name, 200) : std::string(), detail::shown(t.name, 200));
    USERIP_CHECK(t.offset == cursor, "{}: data bytes [{}, {}) before tensor '{}' belong to no tensor", file,
                 cursor - data_start, t.offset - data_start, detail::shown(t.name, 200));
    cursor = t.offset + t.bytes;
    previous = &t;
  }
  USERIP_CHECK(cursor == size, "{}: {} bytes after the last tensor's data belong to no tensor", file, size - cursor);

  // List tensors in data order (JSON object order is lost in parsing, and reading in data order
  // walks the mapping sequentially).
  std::vector<TensorInfo> sorted;
  sorted.reserve(order.size());
  for (std::size_t i : order) sorted.push_back(std::move(tensors[i]));
  for (std::size_t k = 0; k < sorted.size(); ++k) {
    by_name[sorted[k].name] = first + k;
    tensors[first + k] = std::move(sorted[k]);
  }
  buffers.push_back(std::move(buffer));
}

void SafetensorsSource::Impl::open_index(const fs::path& index_path) {
  const std::string where = index_path.string();
  json doc = parse_json_object(read_file(index_path), where, "the index");
  auto map_it = doc.find("weight_map");
  USERIP_CHECK(map_it != doc.end() && map_it->is_object(), "{}: missing or non-object 'weight_map'", where);
  auto meta_it = doc.find("metadata");
  if (meta_it != doc.end() && meta_it->is_object()) {
    for (auto m = meta_it->begin(); m != meta_it->end(); ++m) metadata[m.key()] = json_value_text(m.value());
  }

  // Shards in order of first mention; the tensors each shard is supposed to hold.
  std::vector<std::string> shards;
  std::map<std::string, std::vector<std::string>> expected;
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    USERIP_CHECK(it.value().is_string(), "{}: weight_map entry of tensor '{}' is not a string", where,
                 detail::shown(it.key()));
    const std::string shard = it.value().get<std::string>();
    const fs::path shard_path(shard);
    // A shard name is a file beside the index; anything else could read files the user never named.
    USERIP_CHECK(!shard.empty() && shard_path.is_relative() && shard_path.has_filename() &&
                     shard_path.filename() == shard_path && shard != "." && shard != "..",
                 "{}: tensor '{}' names shard '{}', which is not a plain file name", where, detail::shown(it.key()),
                 detail::shown(shard));
    auto [pos, inserted] = expected.emplace(shard, std::vector<std::string>{});
    if (inserted) shards.push_back(shard);
    pos->second.push_back(it.key());
  }
  USERIP_CHECK(!shards.empty(), "{}: weight_map is empty", where);

  const fs::path dir = index_path.parent_path();
  for (const auto& shard : shards) {
    const fs::path shard_path = dir / shard;
    std::error_code ec;
    USERIP_CHECK(fs::is_regular_file(shard_path, ec), "{}: shard {} (holding tensor '{}') does not exist", where,
                 shard_path.string(), detail::shown(expected[shard].front()));
    add_file(detail::ByteBuffer::map_file(shard_path));
  }
  for (const auto& [shard, names] : expected) {
    for (const auto& name : names) {
      auto it = by_name.find(name);
      USERIP_CHECK(it != by_name.end(), "{}: tensor '{}' is mapped to {}, which does not contain it", where,
                   detail::shown(name), shard);
      USERIP_CHECK(tensors[it->second].file.filename() == fs::path(shard).filename(),
                   "{}: tensor '{}' is mapped to {} but found in {}", where, detail::shown(name), shard,
                   tensors[it->second].file.string());
    }
  }
}

SafetensorsSource::SafetensorsSource() : impl_(std::make_unique<Impl>()) {}
SafetensorsSource::~SafetensorsSource() = default;

SafetensorsSource::SafetensorsSource(const fs::path& path) : impl_(std::make_unique<Impl>()) {
  std::error_code ec;
  fs::path target = path;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / kIndexName)) {
      target = path / kIndexName;
    } else if (fs::exists(path / kSingleName)) {
      target = path / kSingleName;
    } else {
      std::vector<fs::path> found;
      for (const auto& entry : fs::directory_iterator(path)) {
        if (entry.is_regular_file() && entry.path().extension() == ".safetensors") found.push_back(entry.path());
      }
      USERIP_CHECK(found.size() == 1, "{}: expected {}, {} or a single *.safetensors file; found {} .safetensors files",
                   path.string(), kIndexName, kSingleName, found.size());
      target = found.front();
    }
  }
  USERIP_CHECK(fs::exists(target, ec), "{}: no such file", target.string());
  impl_->description = target.string();
  const std::string filename = target.filename().string();
  if (filename.size() >= 5 && filename.compare(filename.size() - 5, 5, ".json") == 0) {
    impl_->open_index(target);
  } else {
    impl_->add_file(detail::ByteBuffer::map_file(target));
  }
}

std::unique_ptr<SafetensorsSource> SafetensorsSource::from_bytes(std::string bytes, const std::string& name) {
  std::unique_ptr<SafetensorsSource> source(new SafetensorsSource());
  source->impl_->description = name;
  source->impl_->add_file(detail::ByteBuffer::hold(std::move(bytes), name));
  return source;
}

const std::vector<TensorInfo>& SafetensorsSource::tensors() const { return impl_->tensors; }

torch::Tensor SafetensorsSource::load(const std::string& name, torch::ScalarType dtype, torch::Device device) const {
  auto it = impl_->by_name.find(name);
  USERIP_CHECK(it != impl_->by_name.end(), "{}: no tensor '{}'", impl_->description, detail::shown(name, 200));
  const TensorInfo& info = impl_->tensors[it->second];
  const auto& buffer = *impl_->buffers[impl_->buffer_of[it->second]];
  return detail::materialize(buffer, info, dtype, device, info.file.string());
}

std::string SafetensorsSource::description() const { return impl_->description; }

const std::map<std::string, std::string>& SafetensorsSource::metadata() const { return impl_->metadata; }

std::vector<fs::path> SafetensorsSource::files() const {
  std::vector<fs::path> out;
  for (const auto& buffer : impl_->buffers) out.push_back(buffer->path());
  return out;
}

std::unique_ptr<TensorSource> open_safetensors(const fs::path& path) {
  return std::make_unique<SafetensorsSource>(path);
}

// ---------------------------------------------------------------------------------------------
// Writing

namespace {

struct PlannedTensor {
  const TensorSpec* spec;
  std::string dtype_name;
  std::uint64_t bytes;
};

std::vector<PlannedTensor> plan(const std::vector<TensorSpec>& specs, const std::string& where) {
  std::vector<PlannedTensor> out;
  std::set<std::string> names;
  for (const auto& spec : specs) {
    USERIP_CHECK(!spec.name.empty() && spec.name != "__metadata__" && is_valid_utf8(spec.name),
                 "{}: invalid tensor name '{}'", where, detail::shown(spec.name));
    USERIP_CHECK(names.insert(spec.name).second, "{}: tensor '{}' given twice", where, spec.name);
    std::string dtype_name = write_dtype_name(spec.dtype);
    USERIP_CHECK(!dtype_name.empty(), "{}: tensor '{}': dtype {} cannot be stored in safetensors", where, spec.name,
                 c10::toString(spec.dtype));
    auto numel = detail::checked_numel(spec.shape);
    std::uint64_t bytes = 0;
    USERIP_CHECK(numel && !__builtin_mul_overflow(static_cast<std::uint64_t>(*numel),
                                                  static_cast<std::uint64_t>(c10::elementSize(spec.dtype)), &bytes),
                 "{}: tensor '{}': invalid shape {}", where, spec.name, detail::shape_text(spec.shape));
    out.push_back({&spec, std::move(dtype_name), bytes});
  }
  return out;
}

std::map<std::string, std::string> with_format(std::map<std::string, std::string> metadata) {
  metadata.emplace("format", "pt");
  return metadata;
}

// Writes `tensors` (a slice of a plan) as one safetensors file, pulling each from `produce`.
void write_file(const fs::path& path, const std::vector<PlannedTensor>& tensors, const TensorProducer& produce,
                const std::map<std::string, std::string>& metadata) {
  ordered_json header = ordered_json::object();
  ordered_json meta = ordered_json::object();
  for (const auto& [key, value] : metadata) {
    USERIP_CHECK(is_valid_utf8(key) && is_valid_utf8(value), "{}: metadata '{}' is not valid UTF-8", path.string(),
                 detail::shown(key));
    meta[key] = value;
  }
  header["__metadata__"] = meta;
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    ordered_json entry = ordered_json::object();
    entry["dtype"] = t.dtype_name;
    entry["shape"] = t.spec->shape;
    entry["data_offsets"] = {offset, offset + t.bytes};
    header[t.spec->name] = std::move(entry);
    offset += t.bytes;
  }
  std::string text = header.dump();
  // The format asks for the data section to start 8-byte aligned; the reference pads with spaces.
  text.append((8 - text.size() % 8) % 8, ' ');

  AtomicFileWriter out(path);
  const std::uint64_t length = text.size();
  out.write(&length, 8);
  out.write(text);
  for (const auto& t : tensors) {
    torch::Tensor value = produce(*t.spec);
    USERIP_CHECK(value.defined(), "{}: no data for tensor '{}'", path.string(), t.spec->name);
    USERIP_CHECK(value.sizes().vec() == t.spec->shape, "{}: tensor '{}' has shape {}, expected {}", path.string(),
                 t.spec->name, detail::shape_text(value.sizes().vec()), detail::shape_text(t.spec->shape));
    value = value.to(torch::kCPU, t.spec->dtype).contiguous();
    USERIP_ASSERT(static_cast<std::uint64_t>(value.nbytes()) == t.bytes);
    out.write(value.data_ptr(), t.bytes);
  }
  out.commit();
}

std::vector<TensorSpec> specs_of(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    USERIP_CHECK(tensor.defined(), "tensor '{}' is undefined", name);
    specs.push_back({name, tensor.scalar_type(), tensor.sizes().vec()});
  }
  return specs;
}

TensorProducer producer_of(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  auto index = std::make_shared<std::unordered_map<std::string, std::size_t>>();
  for (std::size_t i = 0; i < tensors.size(); ++i) index->emplace(tensors[i].first, i);
  return [&tensors, index](const TensorSpec& spec) {
    auto it = index->find(spec.name);
    return it == index->end() ? torch::Tensor() : tensors[it->second].second;
  };
}

}  // namespace

void write_safetensors(const fs::path& path, const std::vector<TensorSpec>& specs, const TensorProducer& produce,
                       const std::map<std::string, std::string>& metadata) {
  write_file(path, plan(specs, path.string()), produce, with_format(metadata));
}

void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_safetensors(path, specs_of(tensors), producer_of(tensors), metadata);
}

std::vector<fs::path> write_safetensors_sharded(const fs::path& dir, const std::vector<TensorSpec>& specs,
                                                const TensorProducer& produce, std::uint64_t max_shard_bytes,
                                                const std::map<std::string, std::string>& metadata) {
  USERIP_CHECK(max_shard_bytes > 0, "{}: the maximum shard size must be positive", dir.string());
  const auto planned = plan(specs, dir.string());
  std::vector<std::vector<PlannedTensor>> shards(1);
  std::uint64_t shard_bytes = 0;
  for (const auto& t : planned) {
    if (!shards.back().empty() && (t.bytes > max_shard_bytes || shard_bytes > max_shard_bytes - t.bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(t);
    shard_bytes += t.bytes;
  }
  fs::create_directories(dir);
  const auto full_metadata = with_format(metadata);

  std::vector<fs::path> written;
  if (shards.size() == 1) {
    written.push_back(dir / kSingleName);
    write_file(written.back(), shards.front(), produce, full_metadata);
  } else {
    ordered_json weight_map = ordered_json::object();
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < shards.size(); ++i) {
      const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
      written.push_back(dir / name);
      write_file(written.back(), shards[i], produce, full_metadata);
      for (const auto& t : shards[i]) {
        weight_map[t.spec->name] = name;
        total += t.bytes;
      }
    }
    ordered_json index = ordered_json::object();
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = std::move(weight_map);
    written.push_back(dir / kIndexName);
    write_file_atomic(written.back(), index.dump(2) + "\n");
  }

  // A leftover single file or shard set from an earlier save would shadow or mix with this one.
  static const std::regex shard_pattern(R"(model-\d+-of-\d+\.safetensors)");
  std::set<fs::path> keep(written.begin(), written.end());
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool ours = name == kSingleName || name == kIndexName || std::regex_match(name, shard_pattern);
    if (ours && !keep.count(entry.path())) fs::remove(entry.path());
  }
  return written;
}

std::vector<fs::path> write_safetensors_sharded(const fs::path& dir,
                                                const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                                std::uint64_t max_shard_bytes,
                                                const std::map<std::string, std::string>& metadata) {
  return write_safetensors_sharded(dir, specs_of(tensors), producer_of(tensors), max_shard_bytes, metadata);
}

}  // namespace userip::tensor
