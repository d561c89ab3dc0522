// Long (about 650 lines): the feature configuration, the users' code and vector tables and the
// encoder are one contract (features.h) with one JSON form, saved beside every trained model.
#include "userip/ctr/features.h"

#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "userip/tensor/tensor_file.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"

namespace userip::ctr {
namespace {

using nlohmann::json;

constexpr EnumName<ProfileInput> kProfileInputNames[] = {
    {ProfileInput::none, "none"}, {ProfileInput::codes, "codes"}, {ProfileInput::dense, "dense"}};

bool is_usable_item_field(data::FieldKind kind) { return kind != data::FieldKind::text; }

// Values of a field for one item as counted and encoded: the list for category_list, else the
// single value; missing ("") yields nothing.
std::vector<std::string> field_values(data::FieldKind kind, const std::string& raw) {
  if (raw.empty()) return {};
  if (kind == data::FieldKind::category_list) return data::list_values(raw);
  return {raw};
}

}  // namespace

std::string to_string(ProfileInput input) { return enum_name(kProfileInputNames, input); }

ProfileInput profile_input_from_string(std::string_view name) {
  return enum_from_name(kProfileInputNames, name, "profile input");
}

const OptionTable<FeatureConfig>& FeatureConfig::table() {
  static const OptionTable<FeatureConfig> table = [] {
    using C = FeatureConfig;
    OptionTable<C> t("features", /*flags_by_default=*/false);
    t.add("user_id", &C::user_id, "The user's id is a field");
    t.add("item_id", &C::item_id, "The item's id is a field");
    t.add("min_count", &C::min_count, "Training interactions a value needs to get its own index").at_least(1);
    t.add("number_buckets", &C::number_buckets, "Quantile buckets of number fields (over the training items)")
        .range(1, 1000);
    t.add("max_values", &C::max_values, "Multi-hot values kept per example (the first ones in item order)")
        .range(1, 1024);
    t.add_enum("profile", &C::profile, kProfileInputNames, "profile input",
               "What the model reads of the user's profile: none, codes (feature bank) or dense (profile vectors); "
               "where none, `ctr train` reads codes when given --bank and dense vectors when given --profiles")
        .flag("profile-input");
    t.add("item_fields", &C::item_fields,
          "Item fields by name; null: every category, category list and number field of the dataset");
    return t;
  }();
  return table;
}

void FeatureConfig::validate() const {
  table().check(*this, Spelling::key, "features");
  if (item_fields) {
    std::set<std::string> seen;
    for (const auto& name : *item_fields) {
      USERIP_CHECK(!name.empty(), "features: item_fields holds an empty name");
      USERIP_CHECK(seen.insert(name).second, "features: item field '{}' is listed twice", name);
    }
  }
}

json FeatureConfig::to_json() const { return table().to_json(*this); }

FeatureConfig FeatureConfig::from_json(const json& j, const FeatureConfig& defaults) {
  FeatureConfig c = defaults;
  table().read(j, c, "features", Absent::keep);
  c.validate();
  return c;
}

// --- profile tables ------------------------------------------------------------------------------

UserCodeTable UserCodeTable::from_bank(const store::FeatureBank& bank) {
  UserCodeTable table;
  table.source = bank.path().string();
  table.fields = bank.fields();
  const std::size_t width = table.fields.size();
  table.codes.reserve(bank.size());
  for (std::size_t i = 0; i < bank.size(); ++i) {
    const std::int32_t* codes = bank.codes_at(i);
    table.codes.emplace(bank.user_at(i), std::vector<std::int32_t>(codes, codes + width));
  }
  return table;
}

UserCodeTable UserCodeTable::from_banks(const std::vector<std::filesystem::path>& paths) {
  std::vector<store::FeatureBank> banks;
  for (const auto& path : paths) banks.push_back(store::FeatureBank::open(path));
  return from_banks(banks);
}

UserCodeTable UserCodeTable::from_banks(const std::vector<store::FeatureBank>& banks) {
  USERIP_CHECK(!banks.empty(), "no feature bank given");
  UserCodeTable merged;
  for (const auto& bank : banks) {
    UserCodeTable one = from_bank(bank);
    if (merged.source.empty()) {
      merged = std::move(one);
      continue;
    }
    auto describe = [](const std::vector<store::BankField>& fields) {
      std::vector<std::string> parts;
      for (const auto& f : fields) parts.push_back(fmt::format("{}({})", f.name, f.cardinality));
      return join(parts, ", ");
    };
    bool same = one.fields.size() == merged.fields.size();
    for (std::size_t f = 0; same && f < one.fields.size(); ++f) {
      same = one.fields[f].name == merged.fields[f].name && one.fields[f].cardinality == merged.fields[f].cardinality;
    }
    USERIP_CHECK(same, "feature banks {} and {} have different fields: [{}] vs [{}]", merged.source, bank.path().string(),
                 describe(merged.fields), describe(one.fields));
    for (auto& [user, codes] : one.codes) {
      auto [it, inserted] = merged.codes.emplace(user, codes);
      USERIP_CHECK(inserted || it->second == codes, "user '{}' has different codes in feature banks {} and {}", user,
                   merged.source, bank.path().string());
    }
    merged.source += "," + bank.path().string();
  }
  return merged;
}

std::string UserCodeTable::fingerprint() const {
  std::string text;
  for (const auto& f : fields) text += fmt::format("{}:{};", f.name, f.cardinality);
  std::vector<const std::pair<const std::string, std::vector<std::int32_t>>*> rows;
  for (const auto& row : codes) rows.push_back(&row);
  std::sort(rows.begin(), rows.end(), [](auto* a, auto* b) { return a->first < b->first; });
  for (const auto* row : rows) text += fmt::format("{}={};", row->first, fmt::join(row->second, ","));
  return hex64(fnv1a64(text));
}

UserVectorTable UserVectorTable::from_profile_dirs(const std::vector<std::filesystem::path>& dirs) {
  USERIP_CHECK(!dirs.empty(), "no profile directory given");
  UserVectorTable table;
  std::vector<torch::Tensor> parts;
  std::int64_t rows = 0;
  for (const auto& dir : dirs) {
    const auto weights = dir / "profiles.safetensors";
    const auto users_file = dir / "users.txt";
    USERIP_CHECK(std::filesystem::exists(weights) && std::filesystem::exists(users_file),
                 "{}: not a profile output (needs profiles.safetensors and users.txt)", dir.string());
    auto source = tensor::open_safetensors(weights);
    USERIP_CHECK(source->has("profiles"), "{}: no tensor 'profiles'", weights.string());
    torch::Tensor vectors = source->load("profiles", torch::kFloat32);
    USERIP_CHECK(vectors.dim() == 3, "{}: tensor 'profiles' should be [users, tokens, dim], has {} dimensions",
                 weights.string(), vectors.dim());
    vectors = vectors.reshape({vectors.size(0), -1});
    std::ifstream in(users_file);
    std::string line;
    std::int64_t count = 0;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      USERIP_CHECK(count < vectors.size(0), "{}: more users than rows of {}", users_file.string(), weights.string());
      USERIP_CHECK(table.row.emplace(line, rows + count).second, "user '{}' appears twice among the profile directories ({})",
                   line, users_file.string());
      ++count;
    }
    USERIP_CHECK(count == vectors.size(0), "{}: {} users but {} profile rows in {}", users_file.string(), count,
                 vectors.size(0), weights.string());
    USERIP_CHECK(parts.empty() || parts.front().size(1) == vectors.size(1),
                 "{}: profile width {} differs from {} of the first directory", dir.string(), vectors.size(1),
                 parts.front().size(1));
    parts.push_back(vectors);
    rows += count;
    table.source += (table.source.empty() ? "" : ",") + dir.string();
  }
  table.vectors = torch::cat(parts, 0).contiguous();
  return table;
}

// --- examples ------------------------------------------------------------------------------------

FeatureBatch Examples::batch(const torch::Tensor& rows, torch::Device device) const {
  FeatureBatch b;
  b.categorical = categorical.index_select(0, rows).to(torch::kLong).to(device);
  b.multi_index = multi_index.index_select(0, rows).to(torch::kLong).to(device);
  b.multi_weight = multi_weight.index_select(0, rows).to(device);
  if (dense.defined()) b.dense = dense.index_select(0, rows).to(device);
  b.label = label.index_select(0, rows).to(device);
  return b;
}

FeatureBatch Examples::batch(std::int64_t begin, std::int64_t end, torch::Device device) const {
  return batch(torch::arange(begin, end, torch::kLong), device);
}

// --- encoder -------------------------------------------------------------------------------------

std::int32_t FeatureEncoder::Vocabulary::lookup(std::string_view value) const {
  auto it = index.find(std::string(value));
  return it == index.end() ? 0 : it->second;
}

namespace {

// A vocabulary of the values counted at least min_count times, in sorted order (stable across runs).
template <typename Vocabulary>
Vocabulary make_vocabulary(const std::map<std::string, std::int64_t>& counts, std::int64_t min_count) {
  Vocabulary v;
  for (const auto& [value, count] : counts) {
    if (count < min_count) continue;
    v.values.push_back(value);
    v.index.emplace(value, static_cast<std::int32_t>(v.values.size()));
  }
  return v;
}

// Bucket b (1-based) holds values in (boundaries[b-2], boundaries[b-1]]; unparseable values are OOV.
std::int32_t encode_number_bucket(const std::vector<double>& boundaries, std::string_view value) {
  auto parsed = parse_double(value);
  if (!parsed) return 0;
  const auto bucket = std::lower_bound(boundaries.begin(), boundaries.end(), *parsed) - boundaries.begin();
  return static_cast<std::int32_t>(bucket) + 1;
}

}  // namespace

FeatureEncoder FeatureEncoder::fit(const data::Dataset& dataset, const data::SplitView& train,
                                   const FeatureConfig& config, const UserCodeTable* codes,
                                   const UserVectorTable* vectors) {
  config.validate();
  USERIP_CHECK(&train.dataset() == &dataset, "features: the training view belongs to another dataset");
  USERIP_CHECK(train.size() > 0, "features: the training split is empty");
  FeatureEncoder e;
  e.config_ = config;

  // Which item fields, and their kinds.
  if (config.item_fields) {
    for (const auto& name : *config.item_fields) {
      const data::ItemField* field = dataset.field(name);
      if (!field) {
        std::vector<std::string> available;
        for (const auto& f : dataset.item_fields) available.push_back(f.name);
        fail("features: the dataset has no item field '{}' (it has: {})", name, join(available, ", "));
      }
      USERIP_CHECK(is_usable_item_field(field->kind),
                   "features: item field '{}' is free text; use a category, category_list or number field", name);
      e.item_fields_.push_back({field->name, field->kind, {}, {}});
    }
  } else {
    for (const auto& field : dataset.item_fields) {
      if (is_usable_item_field(field.kind)) e.item_fields_.push_back({field.name, field.kind, {}, {}});
    }
  }

  // Counts over the training interactions only: nothing from validation, test or cold users.
  std::map<std::string, std::int64_t> user_counts, item_counts;
  std::vector<std::map<std::string, std::int64_t>> value_counts(e.item_fields_.size());
  std::vector<const data::ItemField*> fields;
  for (const auto& spec : e.item_fields_) fields.push_back(dataset.field(spec.name));
  std::vector<std::int64_t> item_seen(dataset.num_items(), 0);
  for (std::uint32_t u : train.users()) user_counts[dataset.user_ids[u]] += static_cast<std::int64_t>(train.user_count(u));
  for (std::size_t i = 0; i < train.size(); ++i) ++item_seen[train.item(i)];
  for (std::size_t item = 0; item < dataset.num_items(); ++item) {
    if (item_seen[item] == 0) continue;
    item_counts[dataset.item_ids[item]] += item_seen[item];
    for (std::size_t f = 0; f < fields.size(); ++f) {
      if (e.item_fields_[f].kind == data::FieldKind::number) continue;
      for (const auto& value : field_values(fields[f]->kind, fields[f]->values[item])) {
        value_counts[f][value] += item_seen[item];
      }
    }
  }
  e.users_ = make_vocabulary<Vocabulary>(user_counts, config.user_id ? config.min_count : INT64_MAX);
  e.items_ = make_vocabulary<Vocabulary>(item_counts, config.item_id ? config.min_count : INT64_MAX);
  for (std::size_t f = 0; f < fields.size(); ++f) {
    auto& spec = e.item_fields_[f];
    if (spec.kind != data::FieldKind::number) {
      spec.vocabulary = make_vocabulary<Vocabulary>(value_counts[f], config.min_count);
      continue;
    }
    // Quantile boundaries over the distinct training items' values: equal-mass buckets of the catalogue.
    std::vector<double> values;
    for (std::size_t item = 0; item < dataset.num_items(); ++item) {
      if (item_seen[item] == 0) continue;
      if (auto v = parse_double(fields[f]->values[item])) values.push_back(*v);
    }
    std::sort(values.begin(), values.end());
    for (int b = 1; b < config.number_buckets && !values.empty(); ++b) {
      const double q = values[static_cast<std::size_t>(static_cast<double>(b) * static_cast<double>(values.size() - 1) /
                                                       config.number_buckets)];
      if (spec.boundaries.empty() || q > spec.boundaries.back()) spec.boundaries.push_back(q);
    }
  }

  // Profile inputs: only their shapes are part of the model.
  if (config.profile == ProfileInput::codes) {
    USERIP_CHECK(codes != nullptr, "features: profile input 'codes' needs a feature bank");
    USERIP_CHECK(!codes->fields.empty(), "features: feature bank {} has no fields", codes->source);
    e.code_fields_ = codes->fields;
  } else if (config.profile == ProfileInput::dense) {
    USERIP_CHECK(vectors != nullptr && vectors->vectors.defined(), "features: profile input 'dense' needs profile vectors");
    e.dense_dim_ = vectors->vectors.size(1);
  }

  // The catalogue: every item of the dataset (not only the trained ones), so items first seen in
  // validation or test still get their genres and year.
  for (std::size_t item = 0; item < dataset.num_items(); ++item) {
    e.catalogue_index_.emplace(dataset.item_ids[item], static_cast<std::int64_t>(item));
    e.catalogue_ids_.push_back(dataset.item_ids[item]);
    std::vector<std::string> values;
    for (const auto* field : fields) values.push_back(field->values[item]);
    e.catalogue_values_.push_back(std::move(values));
  }
  e.build_layout();
  e.encode_catalogue();
  return e;
}

void FeatureEncoder::build_layout() {
  layout_ = FieldLayout{};
  std::int64_t offset = 0;
  auto add = [&](std::vector<FieldInfo>& list, std::string name, FieldKind kind, std::int64_t size) {
    list.push_back({std::move(name), kind, offset, size});
    offset += size;
  };
  if (config_.user_id) add(layout_.categorical, "user_id", FieldKind::categorical, static_cast<std::int64_t>(users_.values.size()) + 1);
  if (config_.item_id) add(layout_.categorical, "item_id", FieldKind::categorical, static_cast<std::int64_t>(items_.values.size()) + 1);
  item_categorical_fields_ = 0;
  for (const auto& spec : item_fields_) {
    if (spec.kind == data::FieldKind::category_list) continue;
    const std::int64_t size = spec.kind == data::FieldKind::number
                                  ? static_cast<std::int64_t>(spec.boundaries.size()) + 2
                                  : static_cast<std::int64_t>(spec.vocabulary.values.size()) + 1;
    add(layout_.categorical, spec.name, FieldKind::categorical, size);
    ++item_categorical_fields_;
  }
  for (const auto& field : code_fields_) {
    // Local 0 stays the bucket of users absent from the bank; code c is local c + 1.
    add(layout_.categorical, "profile:" + field.name, FieldKind::categorical, field.cardinality + 1);
  }
  std::int64_t widest = 1;
  for (const auto& spec : item_fields_) {
    if (spec.kind != data::FieldKind::category_list) continue;
    add(layout_.multi_hot, spec.name, FieldKind::multi_hot, static_cast<std::int64_t>(spec.vocabulary.values.size()) + 1);
  }
  for (const auto& values : catalogue_values_) {
    for (std::size_t f = 0; f < item_fields_.size(); ++f) {
      if (item_fields_[f].kind == data::FieldKind::category_list) {
        widest = std::max<std::int64_t>(widest, static_cast<std::int64_t>(data::list_values(values[f]).size()));
      }
    }
  }
  layout_.max_values = std::min(widest, config_.max_values);
  layout_.dense_dim = dense_dim_;
  layout_.dense_name = dense_dim_ > 0 ? "profile vector" : "";
}

void FeatureEncoder::encode_catalogue() {
  const std::size_t items = catalogue_ids_.size();
  const auto multi = static_cast<std::size_t>(layout_.multi_hot.size());
  const auto width = static_cast<std::size_t>(layout_.max_values);
  catalogue_item_local_.resize(items);
  for (std::size_t item = 0; item < items; ++item) catalogue_item_local_[item] = items_.lookup(catalogue_ids_[item]);
  catalogue_categorical_.assign(items * static_cast<std::size_t>(item_categorical_fields_), 0);
  catalogue_multi_index_.assign(items * multi * width, 0);
  catalogue_multi_weight_.assign(items * multi * width, 0.0f);
  for (std::size_t item = 0; item < items; ++item) {
    std::size_t c = 0, m = 0;
    for (std::size_t f = 0; f < item_fields_.size(); ++f) {
      const auto& spec = item_fields_[f];
      const std::string& raw = catalogue_values_[item][f];
      if (spec.kind == data::FieldKind::category_list) {
        std::vector<std::int32_t> locals;
        for (const auto& value : data::list_values(raw)) {
          if (locals.size() == width) break;
          locals.push_back(spec.vocabulary.lookup(value));
        }
        if (locals.empty()) locals.push_back(0);  // a missing list is the OOV value, like a missing category
        const std::size_t base = (item * multi + m) * width;
        for (std::size_t k = 0; k < locals.size(); ++k) {
          catalogue_multi_index_[base + k] = locals[k];
          catalogue_multi_weight_[base + k] = 1.0f / static_cast<float>(locals.size());
        }
        ++m;
      } else {
        catalogue_categorical_[item * static_cast<std::size_t>(item_categorical_fields_) + c] =
            spec.kind == data::FieldKind::number ? encode_number_bucket(spec.boundaries, raw) : spec.vocabulary.lookup(raw);
        ++c;
      }
    }
  }
}

void FeatureEncoder::check_tables(const UserCodeTable* codes, const UserVectorTable* vectors) const {
  if (config_.profile == ProfileInput::codes) {
    USERIP_CHECK(codes != nullptr, "this model reads profile codes: give it a feature bank");
    bool same = codes->fields.size() == code_fields_.size();
    for (std::size_t f = 0; same && f < code_fields_.size(); ++f) {
      same = codes->fields[f].name == code_fields_[f].name && codes->fields[f].cardinality == code_fields_[f].cardinality;
    }
    if (!same) {
      std::vector<std::string> want, got;
      for (const auto& f : code_fields_) want.push_back(fmt::format("{}({})", f.name, f.cardinality));
      for (const auto& f : codes->fields) got.push_back(fmt::format("{}({})", f.name, f.cardinality));
      fail("feature bank {} has fields [{}] but the model was trained on [{}]", codes->source, join(got, ", "),
           join(want, ", "));
    }
  } else if (config_.profile == ProfileInput::dense) {
    USERIP_CHECK(vectors != nullptr && vectors->vectors.defined(), "this model reads dense profiles: give it profile vectors");
    USERIP_CHECK(vectors->vectors.size(1) == dense_dim_, "profile vectors from {} have width {} but the model expects {}",
                 vectors->source, vectors->vectors.size(1), dense_dim_);
  }
}

FeatureEncoder::ResolvedRow FeatureEncoder::resolve_user(std::string_view user, const UserCodeTable* codes,
                                                         const UserVectorTable* vectors) const {
  ResolvedRow r;
  r.user_local = users_.lookup(user);
  if (config_.profile == ProfileInput::codes) {
    auto it = codes->codes.find(std::string(user));
    if (it != codes->codes.end()) r.codes = it->second.data();
  } else if (config_.profile == ProfileInput::dense) {
    auto it = vectors->row.find(std::string(user));
    if (it != vectors->row.end()) r.vector_row = it->second;
  }
  return r;
}

template <typename Resolve>
Examples FeatureEncoder::encode_resolved(std::size_t n, Resolve&& resolve, const UserVectorTable* vectors,
                                         EncodeCounts* counts) const {
  const auto rows = static_cast<std::int64_t>(n);
  const auto num_categorical = static_cast<std::int64_t>(layout_.categorical.size());
  const auto multi = static_cast<std::int64_t>(layout_.multi_hot.size());
  const std::int64_t width = layout_.max_values;
  Examples ex;
  ex.categorical = torch::zeros({rows, num_categorical}, torch::kInt32);
  ex.multi_index = torch::zeros({rows, multi, width}, torch::kInt32);
  ex.multi_weight = torch::zeros({rows, multi, width}, torch::kFloat32);
  ex.label = torch::zeros({rows}, torch::kFloat32);
  if (dense_dim_ > 0) ex.dense = torch::zeros({rows, dense_dim_}, torch::kFloat32);
  ex.user.resize(n);
  auto* cat = ex.categorical.data_ptr<std::int32_t>();
  auto* mi = ex.multi_index.data_ptr<std::int32_t>();
  auto* mw = ex.multi_weight.data_ptr<float>();
  auto* label = ex.label.data_ptr<float>();
  float* dense = dense_dim_ > 0 ? ex.dense.data_ptr<float>() : nullptr;
  const float* vector_data = dense_dim_ > 0 ? vectors->vectors.data_ptr<float>() : nullptr;

  // Field offsets turn each field's local index into the shared table's global index.
  std::vector<std::int32_t> cat_offset, multi_offset;
  for (const auto& f : layout_.categorical) cat_offset.push_back(static_cast<std::int32_t>(f.offset));
  for (const auto& f : layout_.multi_hot) multi_offset.push_back(static_cast<std::int32_t>(f.offset));
  const auto item_fields = static_cast<std::size_t>(item_categorical_fields_);
  const std::size_t multi_block = static_cast<std::size_t>(multi * width);

  EncodeCounts local;
  local.examples = rows;
  for (std::size_t i = 0; i < n; ++i) {
    const ResolvedRow r = resolve(i);
    std::int32_t* out = cat + static_cast<std::int64_t>(i) * num_categorical;
    std::size_t c = 0;
    if (config_.user_id) out[c] = cat_offset[c] + r.user_local, ++c;
    if (r.user_local == 0) ++local.unknown_users;
    std::int32_t item_local = 0;
    if (r.catalogue_row >= 0) {
      item_local = catalogue_item_local_[static_cast<std::size_t>(r.catalogue_row)];
    } else {
      ++local.unknown_items;
    }
    if (config_.item_id) out[c] = cat_offset[c] + item_local, ++c;
    for (std::size_t f = 0; f < item_fields; ++f, ++c) {
      const std::int32_t value =
          r.catalogue_row >= 0 ? catalogue_categorical_[static_cast<std::size_t>(r.catalogue_row) * item_fields + f] : 0;
      out[c] = cat_offset[c] + value;
    }
    if (config_.profile == ProfileInput::codes) {
      if (!r.codes) ++local.missing_profiles;
      for (std::size_t f = 0; f < code_fields_.size(); ++f, ++c) out[c] = cat_offset[c] + (r.codes ? r.codes[f] + 1 : 0);
    }
    if (multi > 0) {
      std::int32_t* index = mi + i * multi_block;
      float* weight = mw + i * multi_block;
      for (std::int64_t m = 0; m < multi; ++m) {
        for (std::int64_t k = 0; k < width; ++k) {
          const std::size_t at = static_cast<std::size_t>(m * width + k);
          if (r.catalogue_row >= 0) {
            const std::size_t src = static_cast<std::size_t>(r.catalogue_row) * multi_block + at;
            index[at] = multi_offset[static_cast<std::size_t>(m)] + catalogue_multi_index_[src];
            weight[at] = catalogue_multi_weight_[src];
          } else {
            index[at] = multi_offset[static_cast<std::size_t>(m)];
            weight[at] = k == 0 ? 1.0f : 0.0f;
          }
        }
      }
    }
    if (dense) {
      if (r.vector_row >= 0) {
        std::copy_n(vector_data + r.vector_row * dense_dim_, dense_dim_, dense + static_cast<std::int64_t>(i) * dense_dim_);
      } else {
        ++local.missing_profiles;  // a zero vector: the model learns what "no profile" means from cold rows
      }
    }
    label[i] = r.label;
    ex.user[i] = r.group;
  }
  if (counts) *counts = local;
  return ex;
}

Examples FeatureEncoder::encode(const data::Dataset& dataset, const data::SplitView& view, const UserCodeTable* codes,
                                const UserVectorTable* vectors, EncodeCounts* counts) const {
  check_tables(codes, vectors);
  std::vector<ResolvedRow> per_user(dataset.num_users());
  for (std::uint32_t u = 0; u < dataset.num_users(); ++u) {
    per_user[u] = resolve_user(dataset.user_ids[u], codes, vectors);
    per_user[u].group = u;
  }
  std::vector<std::int64_t> catalogue_row(dataset.num_items(), -1);
  for (std::size_t item = 0; item < dataset.num_items(); ++item) {
    auto it = catalogue_index_.find(dataset.item_ids[item]);
    if (it != catalogue_index_.end()) catalogue_row[item] = it->second;
  }
  return encode_resolved(
      view.size(),
      [&](std::size_t i) {
        ResolvedRow r = per_user[view.user(i)];
        r.catalogue_row = catalogue_row[view.item(i)];
        r.label = view.label(i) ? 1.0f : 0.0f;
        return r;
      },
      vectors, counts);
}

Examples FeatureEncoder::encode_pairs(const std::vector<std::string>& users, const std::vector<std::string>& items,
                                      const UserCodeTable* codes, const UserVectorTable* vectors,
                                      EncodeCounts* counts) const {
  check_tables(codes, vectors);
  USERIP_CHECK(users.size() == items.size(), "{} users but {} items", users.size(), items.size());
  // A request scores many items for one user: its lookups are done once per run of equal users.
  const std::string* resolved_user = nullptr;
  ResolvedRow user_row;
  return encode_resolved(
      users.size(),
      [&](std::size_t i) {
        if (resolved_user == nullptr || users[i] != *resolved_user) {
          user_row = resolve_user(users[i], codes, vectors);
          resolved_user = &users[i];
        }
        ResolvedRow r = user_row;
        auto it = catalogue_index_.find(items[i]);
        r.catalogue_row = it == catalogue_index_.end() ? -1 : it->second;
        r.group = static_cast<std::uint32_t>(i);
        return r;
      },
      vectors, counts);
}

// --- persistence ---------------------------------------------------------------------------------

json FeatureEncoder::to_json() const {
  json fields = json::array();
  for (const auto& spec : item_fields_) {
    json f = {{"name", spec.name}, {"kind", data::to_string(spec.kind)}};
    if (spec.kind == data::FieldKind::number) {
      f["boundaries"] = spec.boundaries;
    } else {
      f["values"] = spec.vocabulary.values;
    }
    fields.push_back(std::move(f));
  }
  json code_fields = json::array();
  for (const auto& f : code_fields_) code_fields.push_back({{"name", f.name}, {"cardinality", f.cardinality}});
  return {{"format", "userip-ctr-features"},
          {"version", 1},
          {"config", config_.to_json()},
          {"layout", layout_.to_json()},
          {"users", users_.values},
          {"items", items_.values},
          {"item_fields", fields},
          {"profile_code_fields", code_fields},
          {"dense_dim", dense_dim_},
          {"catalogue", {{"ids", catalogue_ids_}, {"values", catalogue_values_}}}};
}

FeatureEncoder FeatureEncoder::from_json(const json& j) {
  USERIP_CHECK(j.is_object() && j.value("format", "") == "userip-ctr-features",
               "not a userip feature file (format should be \"userip-ctr-features\")");
  USERIP_CHECK(j.value("version", 0) == 1, "feature file version {} is not supported (expected 1)", j.value("version", 0));
  FeatureEncoder e;
  try {
    e.config_ = FeatureConfig::from_json(j.at("config"));
    auto vocabulary = [](const json& values) {
      Vocabulary v;
      v.values = values.get<std::vector<std::string>>();
      for (std::size_t i = 0; i < v.values.size(); ++i) v.index.emplace(v.values[i], static_cast<std::int32_t>(i + 1));
      return v;
    };
    e.users_ = vocabulary(j.at("users"));
    e.items_ = vocabulary(j.at("items"));
    for (const auto& f : j.at("item_fields")) {
      ItemFieldSpec spec;
      spec.name = f.at("name").get<std::string>();
      spec.kind = data::field_kind_from_string(f.at("kind").get<std::string>());
      if (spec.kind == data::FieldKind::number) {
        spec.boundaries = f.at("boundaries").get<std::vector<double>>();
      } else {
        spec.vocabulary = vocabulary(f.at("values"));
      }
      e.item_fields_.push_back(std::move(spec));
    }
    for (const auto& f : j.at("profile_code_fields")) {
      e.code_fields_.push_back({f.at("name").get<std::string>(), f.at("cardinality").get<std::int32_t>()});
    }
    e.dense_dim_ = j.at("dense_dim").get<std::int64_t>();
    e.catalogue_ids_ = j.at("catalogue").at("ids").get<std::vector<std::string>>();
    e.catalogue_values_ = j.at("catalogue").at("values").get<std::vector<std::vector<std::string>>>();
  } catch (const json::exception& ex) {
    fail("feature file: {}", ex.what());
  }
  USERIP_CHECK(e.catalogue_values_.size() == e.catalogue_ids_.size(), "feature file: catalogue has {} ids but {} value rows",
               e.catalogue_ids_.size(), e.catalogue_values_.size());
  for (std::size_t i = 0; i < e.catalogue_ids_.size(); ++i) {
    USERIP_CHECK(e.catalogue_values_[i].size() == e.item_fields_.size(),
                 "feature file: catalogue item '{}' has {} values for {} item fields", e.catalogue_ids_[i],
                 e.catalogue_values_[i].size(), e.item_fields_.size());
    e.catalogue_index_.emplace(e.catalogue_ids_[i], static_cast<std::int64_t>(i));
  }
  e.build_layout();
  // The stored layout is what the model's weights were shaped by: a file edited by hand must not
  // silently shift every index.
  USERIP_CHECK(e.layout_.to_json() == j.at("layout"), "feature file: the stored field layout does not match its vocabularies");
  e.encode_catalogue();
  return e;
}

void FeatureEncoder::save(const std::filesystem::path& path) const { write_file_atomic(path, to_json().dump()); }

FeatureEncoder FeatureEncoder::load(const std::filesystem::path& path) {
  USERIP_CHECK(std::filesystem::exists(path), "{}: no such file", path.string());
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
  try {
    return from_json(j);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
}

}  // namespace userip::ctr
