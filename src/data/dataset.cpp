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

const OptionTable<SplitConfig>& SplitConfig::table() {
  static const OptionTable<SplitConfig> table = [] {
    using C = SplitConfig;
    OptionTable<C> t("split");
    t.add("train_ratio", &C::train_ratio, "Share of each warm user's chronological history for training")
        .range(0, 1)
        .open_below();
    t.add("valid_ratio", &C::valid_ratio, "Share for validation").range(0, 1);
    t.add("test_ratio", &C::test_ratio, "Share for test").range(0, 1);
    t.add("cold_fraction", &C::cold_fraction, "Fraction of users held out entirely (cold users)").range(0, 1).open_above();
    t.add("seed", &C::seed, "Seed of the cold-user draw");
    t.add("label_threshold", &C::label_threshold, "click = rating >= threshold (rating data)");
    return t;
  }();
  return table;
}

void SplitConfig::validate() const {
  const auto& t = table();
  t.check(*this, Spelling::flag);
  USERIP_CHECK(std::abs(train_ratio + valid_ratio + test_ratio - 1.0) < 1e-6,
               "{} + {} + {} must sum to 1 ({} + {} + {} = {})", t.name_of("train_ratio", Spelling::flag),
               t.name_of("valid_ratio", Spelling::flag), t.name_of("test_ratio", Spelling::flag), train_ratio,
               valid_ratio, test_ratio, train_ratio + valid_ratio + test_ratio);
}

nlohmann::json SplitConfig::to_json() const { return table().to_json(*this); }

SplitConfig SplitConfig::from_json(const nlohmann::json& json, const std::string& source) {
  SplitConfig c;
  table().read(json, c, source, Absent::required);
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
