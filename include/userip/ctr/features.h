#pragma once
// The CTR feature pipeline: which fields a model sees, their vocabularies (from the training split
// only), and the encoding of interactions or (user, item) pairs into the index tensors of batch.h.
//
// Fields, in this order: user_id, item_id, every chosen item field (category -> categorical,
// category_list -> multi-hot, number -> quantile bucket), the profile-code fields (one per bank
// field) or a dense profile vector. Local index 0 of every field is its out-of-vocabulary bucket:
// values seen fewer than min_count times in training, unknown users and items, users missing from
// the feature bank and missing values all land there, so prediction never fails on them.
//
// An encoder is self-contained once built: it keeps the item catalogue's field values, so a saved
// model scores (user, item) pairs without the dataset (serving, `ctr predict`).
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/ctr/batch.h"
#include "userip/data/dataset.h"
#include "userip/store/feature_bank.h"
#include "userip/util/option_table.h"

namespace userip::ctr {

enum class ProfileInput { none, codes, dense };
std::string to_string(ProfileInput input);
ProfileInput profile_input_from_string(std::string_view name);

struct FeatureConfig {
  bool user_id = true;
  bool item_id = true;
  // Item fields by name; unset = every category, category_list and number field of the dataset.
  std::optional<std::vector<std::string>> item_fields;
  std::int64_t min_count = 2;    // training interactions a value needs to get its own index
  int number_buckets = 10;       // quantile buckets of number fields (over the training items)
  std::int64_t max_values = 16;  // multi-hot values kept per example (the first ones in item order)
  ProfileInput profile = ProfileInput::none;

  // Every option above, declared once: JSON key (the configuration's "features" section), meaning, range.
  static const OptionTable<FeatureConfig>& table();
  void validate() const;
  nlohmann::json to_json() const;
  static FeatureConfig from_json(const nlohmann::json& json, const FeatureConfig& defaults);
  static FeatureConfig from_json(const nlohmann::json& json) { return from_json(json, FeatureConfig()); }
};

// Profile codes per user (original id): a feature bank, several banks merged (warm users and
// fold-in users), or a control that uses no LM.
struct UserCodeTable {
  std::string source;                  // for messages and reports
  std::vector<store::BankField> fields;
  std::unordered_map<std::string, std::vector<std::int32_t>> codes;  // user -> one code per field

  // Merges banks; every bank must have the same fields (names and cardinalities), else an error
  // names both files. A user present in two banks with different codes is an error.
  static UserCodeTable from_banks(const std::vector<std::filesystem::path>& paths);
  static UserCodeTable from_banks(const std::vector<store::FeatureBank>& banks);
  static UserCodeTable from_bank(const store::FeatureBank& bank);
  // Of the fields and every user's codes, not of the files: a bank republished with the same codes
  // (a new version, a new creation time) keeps its fingerprint.
  std::string fingerprint() const;
};

// Dense profile vectors per user (original id).
struct UserVectorTable {
  std::string source;
  std::unordered_map<std::string, std::int64_t> row;  // user -> row of vectors
  torch::Tensor vectors;                               // [U, D] float32, CPU

  // profiles.safetensors + users.txt of one or more `profile fit` / `profile infer` outputs.
  static UserVectorTable from_profile_dirs(const std::vector<std::filesystem::path>& dirs);
};

// Encoded examples held on the CPU in compact form; batch() widens and moves a selection.
struct Examples {
  torch::Tensor categorical;   // [N, F] int32
  torch::Tensor multi_index;   // [N, M, max_values] int32
  torch::Tensor multi_weight;  // [N, M, max_values] float32
  torch::Tensor dense;         // [N, D] float32 or undefined
  torch::Tensor label;         // [N] float32 (zeros when unknown)
  std::vector<std::uint32_t> user;   // per example: dense user id of the dataset / index of the pair's user
  std::int64_t size() const { return label.defined() ? label.size(0) : 0; }
  // The examples `rows` ([n] int64, CPU) as a model batch on `device`.
  FeatureBatch batch(const torch::Tensor& rows, torch::Device device) const;
  FeatureBatch batch(std::int64_t begin, std::int64_t end, torch::Device device) const;
};

// What encoding found out-of-vocabulary, for logs and the server's metrics.
struct EncodeCounts {
  std::int64_t examples = 0;
  std::int64_t unknown_users = 0;     // user_id to OOV (not in training or below min_count)
  std::int64_t unknown_items = 0;     // item not in the catalogue at all
  std::int64_t missing_profiles = 0;  // user absent from the code / vector table
};

class FeatureEncoder {
 public:
  // Vocabularies from `train` (must be a view of `dataset`, normally its training view). `codes` is
  // required for ProfileInput::codes and `vectors` for dense; the tables are not kept (only their
  // field names and shapes): encode() takes them again, so a newer bank can be swapped in.
  static FeatureEncoder fit(const data::Dataset& dataset, const data::SplitView& train, const FeatureConfig& config,
                            const UserCodeTable* codes = nullptr, const UserVectorTable* vectors = nullptr);

  const FieldLayout& layout() const { return layout_; }
  const FeatureConfig& config() const { return config_; }

  // Every row of `view`, labels from the dataset. Items are looked up in the encoder's catalogue by
  // original id, so `dataset` may be another dataset than the one fitted on.
  Examples encode(const data::Dataset& dataset, const data::SplitView& view, const UserCodeTable* codes,
                  const UserVectorTable* vectors, EncodeCounts* counts = nullptr) const;
  // (user, item) pairs by original id; Examples::user holds each pair's index. No labels.
  Examples encode_pairs(const std::vector<std::string>& users, const std::vector<std::string>& items,
                        const UserCodeTable* codes, const UserVectorTable* vectors,
                        EncodeCounts* counts = nullptr) const;

  nlohmann::json to_json() const;
  static FeatureEncoder from_json(const nlohmann::json& json);  // throws userip::Error naming the key
  void save(const std::filesystem::path& path) const;           // atomically
  static FeatureEncoder load(const std::filesystem::path& path);

 private:
  struct Vocabulary {
    std::unordered_map<std::string, std::int32_t> index;  // value -> local index (>= 1)
    std::vector<std::string> values;                      // local index - 1 -> value
    std::int32_t lookup(std::string_view value) const;    // 0 when absent
  };
  struct ItemFieldSpec {
    std::string name;
    data::FieldKind kind = data::FieldKind::category;
    Vocabulary vocabulary;              // category and category_list
    std::vector<double> boundaries;     // number: bucket b holds values in (boundaries[b-1], boundaries[b]]
  };
  // One example before encoding: the user's vocabulary index, the item's catalogue row (-1 when
  // unknown), the user's codes (nullptr when absent) and vector row (-1 when absent).
  struct ResolvedRow {
    std::int32_t user_local = 0;
    std::int64_t catalogue_row = -1;
    const std::int32_t* codes = nullptr;
    std::int64_t vector_row = -1;
    float label = 0;
    std::uint32_t group = 0;
  };
  void build_layout();
  void encode_catalogue();
  void check_tables(const UserCodeTable* codes, const UserVectorTable* vectors) const;
  ResolvedRow resolve_user(std::string_view user, const UserCodeTable* codes, const UserVectorTable* vectors) const;
  template <typename Resolve>
  Examples encode_resolved(std::size_t n, Resolve&& resolve, const UserVectorTable* vectors, EncodeCounts* counts) const;

  FeatureConfig config_;
  FieldLayout layout_;
  Vocabulary users_, items_;
  std::vector<ItemFieldSpec> item_fields_;
  std::vector<store::BankField> code_fields_;
  std::int64_t dense_dim_ = 0;
  // The catalogue: every item's original id and raw field values, in the fitted dataset's order.
  std::unordered_map<std::string, std::int64_t> catalogue_index_;
  std::vector<std::string> catalogue_ids_;
  std::vector<std::vector<std::string>> catalogue_values_;  // [item][item field]
  // The catalogue's indices, computed once: each item's item_id vocabulary index (0 when below
  // min_count), [item][categorical item field] and [item][multi-hot field][value] with weights.
  std::vector<std::int32_t> catalogue_item_local_;
  std::vector<std::int32_t> catalogue_categorical_;
  std::vector<std::int32_t> catalogue_multi_index_;
  std::vector<float> catalogue_multi_weight_;
  std::int64_t item_categorical_fields_ = 0;
};

}  // namespace userip::ctr
