#include "userip/data/dataset.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "data/storage.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::data {

namespace {
constexpr EnumName<FieldKind> kFieldKindNames[] = {{FieldKind::text, "text"},
                                                   {FieldKind::category, "category"},
                                                   {FieldKind::category_list, "category_list"},
                                                   {FieldKind::number, "number"}};
constexpr EnumName<SplitPart> kSplitPartNames[] = {{SplitPart::train, "train"},
                                                   {SplitPart::valid, "valid"},
                                                   {SplitPart::test, "test"},
                                                   {SplitPart::cold_history, "cold_history"},
                                                   {SplitPart::cold_test, "cold_test"}};
}  // namespace

std::string to_string(FieldKind kind) { return enum_name(kFieldKindNames, kind); }

FieldKind field_kind_from_string(std::string_view name) { return enum_from_name(kFieldKindNames, name, "field kind"); }

std::string to_string(SplitPart part) { return enum_name(kSplitPartNames, part); }

SplitPart split_part_from_string(std::string_view name) { return enum_from_name(kSplitPartNames, name, "split part"); }

std::vector<std::string> list_values(std::string_view joined) { return split_list(joined, '|'); }

void SplitConfig::validate() const {
  auto in_unit = [](double x) { return x >= 0.0 && x <= 1.0; };
  USERIP_CHECK(in_unit(train_ratio) && in_unit(valid_ratio) && in_unit(test_ratio),
               "split ratios must lie in [0, 1] (train {}, valid {}, test {})", train_ratio, valid_ratio, test_ratio);
  USERIP_CHECK(train_ratio > 0, "the train ratio must be > 0");
  USERIP_CHECK(std::abs(train_ratio + valid_ratio + test_ratio - 1.0) < 1e-6,
               "split ratios must sum to 1 (train {} + valid {} + test {} = {})", train_ratio, valid_ratio,
               test_ratio, train_ratio + valid_ratio + test_ratio);
  USERIP_CHECK(cold_fraction >= 0.0 && cold_fraction < 1.0, "the cold-user fraction must lie in [0, 1), got {}",
               cold_fraction);
  USERIP_CHECK(std::isfinite(label_threshold), "the label threshold must be a finite number");
}

nlohmann::json SplitConfig::to_json() const {
  return {{"train_ratio", train_ratio},   {"valid_ratio", valid_ratio}, {"test_ratio", test_ratio},
          {"cold_fraction", cold_fraction}, {"seed", seed},             {"label_threshold", label_threshold}};
}

SplitConfig SplitConfig::from_json(const nlohmann::json& json) {
  SplitConfig c;
  c.train_ratio = json.at("train_ratio").get<double>();
  c.valid_ratio = json.at("valid_ratio").get<double>();
  c.test_ratio = json.at("test_ratio").get<double>();
  c.cold_fraction = json.at("cold_fraction").get<double>();
  c.seed = json.at("seed").get<std::uint64_t>();
  c.label_threshold = json.at("label_threshold").get<double>();
  c.validate();
  return c;
}

const ItemField* Dataset::field(std::string_view name) const {
  for (const auto& f : item_fields) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

bool Dataset::label(std::size_t row) const {
  float value = interactions.rating[row];
  if (label_kind == LabelKind::click) return value > 0.5f;
  return value >= split.config.label_threshold;
}

namespace {
std::optional<std::uint32_t> find_id(const std::vector<std::string>& ids,
                                     std::unordered_map<std::string, std::uint32_t>& index, std::string_view id) {
  if (index.size() != ids.size()) {
    index.clear();
    index.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) index.emplace(ids[i], static_cast<std::uint32_t>(i));
  }
  auto it = index.find(std::string(id));
  if (it == index.end()) return std::nullopt;
  return it->second;
}
}  // namespace

std::optional<std::uint32_t> Dataset::find_user(std::string_view id) const { return find_id(user_ids, user_index_, id); }
std::optional<std::uint32_t> Dataset::find_item(std::string_view id) const { return find_id(item_ids, item_index_, id); }

SplitView Dataset::view(std::vector<SplitPart> parts) const { return SplitView(*this, std::move(parts)); }
SplitView Dataset::training_view() const { return view({SplitPart::train}); }

void Dataset::validate() const {
  const auto& x = interactions;
  std::size_t n = x.user.size();
  USERIP_CHECK(x.item.size() == n && x.rating.size() == n && x.timestamp.size() == n,
               "interaction columns differ in length (user {}, item {}, rating {}, timestamp {})", n, x.item.size(),
               x.rating.size(), x.timestamp.size());
  for (std::size_t i = 0; i < n; ++i) {
    USERIP_CHECK(x.user[i] < user_ids.size(), "interaction {}: user index {} is out of range ({} users)", i,
                 x.user[i], user_ids.size());
    USERIP_CHECK(x.item[i] < item_ids.size(), "interaction {}: item index {} is out of range ({} items)", i,
                 x.item[i], item_ids.size());
  }
  for (const auto& f : item_fields) {
    USERIP_CHECK(f.values.size() == item_ids.size(), "item field '{}' has {} values for {} items", f.name,
                 f.values.size(), item_ids.size());
  }
  USERIP_CHECK(split.part.empty() || split.part.size() == n, "the split has {} entries for {} interactions",
               split.part.size(), n);
}

Dataset Dataset::load(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  fs::path manifest_path = dir / kManifestFile;
  USERIP_CHECK(fs::exists(manifest_path), "{} is not a userip dataset (no {}); create one with `userip data import`, "
               "`userip data movielens` or `userip data synth`", dir.string(), kManifestFile);
  Dataset d;
  nlohmann::json manifest;
  std::size_t n_users = 0, n_items = 0, n = 0;
  try {
    manifest = nlohmann::json::parse(read_file(manifest_path));
    USERIP_CHECK(manifest.value("format", "") == "userip-dataset", "{}: not a userip dataset manifest",
                 manifest_path.string());
    int version = manifest.at("version").get<int>();
    USERIP_CHECK(version == kFormatVersion, "{}: format version {} is not supported (this build reads {})",
                 manifest_path.string(), version, kFormatVersion);
    n_users = manifest.at("num_users").get<std::size_t>();
    n_items = manifest.at("num_items").get<std::size_t>();
    n = manifest.at("num_interactions").get<std::size_t>();
    d.label_kind = manifest.at("label_kind").get<std::string>() == "click" ? LabelKind::click : LabelKind::rating;
    d.provenance = manifest.value("provenance", nlohmann::json::object());
    for (const auto& f : manifest.at("item_fields")) {
      ItemField field;
      field.name = f.at("name").get<std::string>();
      field.kind = field_kind_from_string(f.at("kind").get<std::string>());
      field.values = read_string_table(dir / f.at("file").get<std::string>());
      d.item_fields.push_back(std::move(field));
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid manifest: {}", manifest_path.string(), e.what());
  }
  d.user_ids = read_string_table(dir / "users.strings");
  d.item_ids = read_string_table(dir / "items.strings");
  USERIP_CHECK(d.user_ids.size() == n_users && d.item_ids.size() == n_items,
               "{}: the manifest promises {} users and {} items, the files hold {} and {}", dir.string(), n_users,
               n_items, d.user_ids.size(), d.item_ids.size());
  d.interactions.user = read_column<std::uint32_t>(dir / "interactions.user.u32", n);
  d.interactions.item = read_column<std::uint32_t>(dir / "interactions.item.u32", n);
  d.interactions.rating = read_column<float>(dir / "interactions.rating.f32", n);
  d.interactions.timestamp = read_column<std::int64_t>(dir / "interactions.timestamp.i64", n);
  d.split = read_split(dir, n);
  try {
    d.validate();
  } catch (const Error& e) {
    fail("{}: {}", dir.string(), e.what());
  }
  return d;
}

void Dataset::save(const std::filesystem::path& dir) const {
  validate();
  DatasetWriter writer(dir);
  writer.append(interactions);
  writer.commit(*this);
}

std::vector<std::size_t> chronological_order(const Interactions& x, std::size_t num_users) {
  // Counting sort by user, then a stable sort by timestamp inside each user: ties keep file order.
  std::vector<std::size_t> offsets(num_users + 1, 0);
  for (auto u : x.user) offsets[u + 1]++;
  std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
  std::vector<std::size_t> order(x.size());
  std::vector<std::size_t> cursor(offsets.begin(), offsets.end() - 1);
  for (std::size_t i = 0; i < x.size(); ++i) order[cursor[x.user[i]]++] = i;
  for (std::size_t u = 0; u < num_users; ++u) {
    std::stable_sort(order.begin() + offsets[u], order.begin() + offsets[u + 1],
                     [&](std::size_t a, std::size_t b) { return x.timestamp[a] < x.timestamp[b]; });
  }
  return order;
}

SplitView::SplitView(const Dataset& dataset, std::vector<SplitPart> parts)
    : dataset_(&dataset), parts_(std::move(parts)) {
  USERIP_CHECK(dataset.has_split(), "the dataset has no split yet: run `userip data split`");
  bool wanted[kNumSplitParts] = {};
  for (auto p : parts_) wanted[static_cast<int>(p)] = true;
  std::vector<std::size_t> order = chronological_order(dataset.interactions, dataset.num_users());
  user_offsets_.assign(dataset.num_users() + 1, 0);
  rows_.reserve(order.size());
  for (std::size_t row : order) {
    if (!wanted[static_cast<int>(dataset.split.part[row])]) continue;
    rows_.push_back(row);
    user_offsets_[dataset.interactions.user[row] + 1]++;
  }
  std::partial_sum(user_offsets_.begin(), user_offsets_.end(), user_offsets_.begin());
}

std::vector<std::uint32_t> SplitView::users() const {
  std::vector<std::uint32_t> out;
  for (std::size_t u = 0; u + 1 < user_offsets_.size(); ++u) {
    if (user_offsets_[u + 1] > user_offsets_[u]) out.push_back(static_cast<std::uint32_t>(u));
  }
  return out;
}

}  // namespace userip::data
