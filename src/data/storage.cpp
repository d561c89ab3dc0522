#include "data/storage.h"

#include <unistd.h>

#include <cstring>

#include "userip/util/error.h"

namespace userip::data {

namespace {
constexpr std::size_t kWriteBufferRows = 1 << 16;

std::string column_type_name(const std::type_info& type) {
  if (type == typeid(std::uint32_t)) return "u32";
  if (type == typeid(float)) return "f32";
  if (type == typeid(std::int64_t)) return "i64";
  if (type == typeid(std::uint8_t)) return "u8";
  return "?";
}
}  // namespace

nlohmann::json ColumnWriter::commit() {
  writer_.commit();
  return {{"bytes", writer_.bytes_written()}, {"fnv1a64", hex64(hash_)}};
}

template <typename T>
std::vector<T> read_column(const std::filesystem::path& path, std::size_t count) {
  MappedFile file(path);
  USERIP_CHECK(file.size() == count * sizeof(T),
               "{}: expected {} values of type {} ({} bytes) but the file has {} bytes: the dataset is damaged",
               path.string(), count, column_type_name(typeid(T)), count * sizeof(T), file.size());
  std::vector<T> values(count);
  if (count) std::memcpy(values.data(), file.data(), file.size());
  return values;
}

template std::vector<std::uint32_t> read_column(const std::filesystem::path&, std::size_t);
template std::vector<float> read_column(const std::filesystem::path&, std::size_t);
template std::vector<std::int64_t> read_column(const std::filesystem::path&, std::size_t);
template std::vector<std::uint8_t> read_column(const std::filesystem::path&, std::size_t);

nlohmann::json write_string_table(const std::filesystem::path& path, const std::vector<std::string>& strings) {
  ColumnWriter writer(path);
  std::uint64_t count = strings.size();
  writer.append(&count, 1);
  std::vector<std::uint64_t> ends;
  ends.reserve(strings.size());
  std::uint64_t end = 0;
  for (const auto& s : strings) ends.push_back(end += s.size());
  writer.append(ends.data(), ends.size());
  for (const auto& s : strings) writer.append(s.data(), s.size());
  return writer.commit();
}

std::vector<std::string> read_string_table(const std::filesystem::path& path) {
  MappedFile file(path);
  auto damaged = [&](const char* what) { fail("{}: damaged string table ({})", path.string(), what); };
  if (file.size() < sizeof(std::uint64_t)) damaged("shorter than its header");
  std::uint64_t count;
  std::memcpy(&count, file.data(), sizeof count);
  if (count > (file.size() - sizeof count) / sizeof(std::uint64_t)) damaged("count larger than the file");
  const std::uint8_t* ends = file.data() + sizeof count;
  const char* bytes = reinterpret_cast<const char*>(ends + count * sizeof(std::uint64_t));
  std::uint64_t available = file.size() - sizeof count - count * sizeof(std::uint64_t);
  std::vector<std::string> strings;
  strings.reserve(count);
  std::uint64_t begin = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t end;
    std::memcpy(&end, ends + i * sizeof end, sizeof end);
    if (end < begin || end > available) damaged("offsets out of order or past the end");
    strings.emplace_back(bytes + begin, end - begin);
    begin = end;
  }
  if (begin != available) damaged("trailing bytes");
  return strings;
}

void replace_directory(const std::filesystem::path& staging, const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path old = target;
  old += ".old-" + std::to_string(::getpid());
  bool had_old = fs::exists(target);
  if (had_old) {
    fs::rename(target, old, ec);
    USERIP_CHECK(!ec, "cannot move {} aside: {}", target.string(), ec.message());
  }
  fs::rename(staging, target, ec);
  if (ec) {
    if (had_old) fs::rename(old, target);
    fail("cannot move {} to {}: {}", staging.string(), target.string(), ec.message());
  }
  if (had_old) fs::remove_all(old, ec);
}

DatasetWriter::DatasetWriter(std::filesystem::path dir) : dir_(std::move(dir)) {
  namespace fs = std::filesystem;
  if (dir_.has_parent_path()) fs::create_directories(dir_.parent_path());
  staging_ = dir_;
  staging_ += ".partial-" + std::to_string(::getpid());
  fs::remove_all(staging_);
  fs::create_directories(staging_);
  user_ = std::make_unique<ColumnWriter>(staging_ / "interactions.user.u32");
  item_ = std::make_unique<ColumnWriter>(staging_ / "interactions.item.u32");
  rating_ = std::make_unique<ColumnWriter>(staging_ / "interactions.rating.f32");
  timestamp_ = std::make_unique<ColumnWriter>(staging_ / "interactions.timestamp.i64");
}

DatasetWriter::~DatasetWriter() {
  if (!committed_) {
    user_.reset();
    item_.reset();
    rating_.reset();
    timestamp_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(staging_, ignored);
  }
}

void DatasetWriter::append(std::uint32_t user, std::uint32_t item, float rating, std::int64_t timestamp) {
  buffer_.user.push_back(user);
  buffer_.item.push_back(item);
  buffer_.rating.push_back(rating);
  buffer_.timestamp.push_back(timestamp);
  ++rows_;
  if (buffer_.size() >= kWriteBufferRows) flush();
}

void DatasetWriter::append(const Interactions& interactions) {
  flush();
  user_->append(interactions.user.data(), interactions.size());
  item_->append(interactions.item.data(), interactions.size());
  rating_->append(interactions.rating.data(), interactions.size());
  timestamp_->append(interactions.timestamp.data(), interactions.size());
  rows_ += interactions.size();
}

void DatasetWriter::add_file(const std::string& name, std::string_view contents) {
  write_file_atomic(staging_ / name, contents);
}

void DatasetWriter::flush() {
  std::size_t n = buffer_.size();
  if (n == 0) return;
  user_->append(buffer_.user.data(), n);
  item_->append(buffer_.item.data(), n);
  rating_->append(buffer_.rating.data(), n);
  timestamp_->append(buffer_.timestamp.data(), n);
  buffer_.user.clear();
  buffer_.item.clear();
  buffer_.rating.clear();
  buffer_.timestamp.clear();
}

void DatasetWriter::commit(const Dataset& rest) {
  flush();
  nlohmann::json files;
  files["interactions.user.u32"] = user_->commit();
  files["interactions.item.u32"] = item_->commit();
  files["interactions.rating.f32"] = rating_->commit();
  files["interactions.timestamp.i64"] = timestamp_->commit();
  files["users.strings"] = write_string_table(staging_ / "users.strings", rest.user_ids);
  files["items.strings"] = write_string_table(staging_ / "items.strings", rest.item_ids);
  nlohmann::json fields = nlohmann::json::array();
  for (std::size_t f = 0; f < rest.item_fields.size(); ++f) {
    const auto& field = rest.item_fields[f];
    USERIP_ASSERT(field.values.size() == rest.item_ids.size());
    std::string file = "item_field." + std::to_string(f) + ".strings";
    files[file] = write_string_table(staging_ / file, field.values);
    fields.push_back({{"name", field.name}, {"kind", to_string(field.kind)}, {"file", file}});
  }
  std::uint64_t fingerprint = 0xcbf29ce484222325ULL;
  for (auto& [name, info] : files.items()) fingerprint = fnv1a64(info["fnv1a64"].get<std::string>(), fingerprint);
  nlohmann::json manifest = {
      {"format", "userip-dataset"},
      {"version", kFormatVersion},
      {"num_users", rest.user_ids.size()},
      {"num_items", rest.item_ids.size()},
      {"num_interactions", rows_},
      {"label_kind", rest.label_kind == LabelKind::rating ? "rating" : "click"},
      {"item_fields", fields},
      {"files", files},
      {"fingerprint", hex64(fingerprint)},
      {"provenance", rest.provenance},
  };
  write_file_atomic(staging_ / kManifestFile, manifest.dump(2) + "\n");
  if (rest.has_split()) write_split(staging_, rest.split, rest.user_ids.size());
  replace_directory(staging_, dir_);
  committed_ = true;
}

void write_split(const std::filesystem::path& dir, const Split& split, std::size_t num_users) {
  ColumnWriter column(dir / kSplitColumnFile);
  static_assert(sizeof(SplitPart) == 1);
  column.append(reinterpret_cast<const std::uint8_t*>(split.part.data()), split.part.size());
  nlohmann::json file = column.commit();
  std::vector<std::size_t> counts(kNumSplitParts);
  for (auto p : split.part) counts[static_cast<int>(p)]++;
  nlohmann::json parts = nlohmann::json::object();
  for (int p = 0; p < kNumSplitParts; ++p) parts[to_string(static_cast<SplitPart>(p))] = counts[p];
  nlohmann::json json = {{"config", split.config.to_json()},
                         {"num_interactions", split.part.size()},
                         {"interactions_per_part", parts},
                         {"file", file}};
  write_file_atomic(dir / kSplitFile, json.dump(2) + "\n");
}

Split read_split(const std::filesystem::path& dir, std::size_t num_interactions) {
  Split split;
  if (!std::filesystem::exists(dir / kSplitFile)) return split;
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_file(dir / kSplitFile));
    split.config = SplitConfig::from_json(json.at("config"), (dir / kSplitFile).string());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid split description: {}", (dir / kSplitFile).string(), e.what());
  }
  auto raw = read_column<std::uint8_t>(dir / kSplitColumnFile, num_interactions);
  std::string expected = json.at("file").value("fnv1a64", "");
  std::string actual = hex64(fnv1a64({reinterpret_cast<const char*>(raw.data()), raw.size()}));
  USERIP_CHECK(expected == actual, "{}: does not match {} (fingerprint {} vs {}): re-run `userip data split`",
               (dir / kSplitColumnFile).string(), (dir / kSplitFile).string(), actual, expected);
  split.part.resize(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    USERIP_CHECK(raw[i] < kNumSplitParts, "{}: value {} at row {} is not a split part",
                 (dir / kSplitColumnFile).string(), raw[i], i);
    split.part[i] = static_cast<SplitPart>(raw[i]);
  }
  return split;
}

}  // namespace userip::data
