#pragma once
// The project's dataset: interactions (user, item, rating or click, timestamp), item fields,
// the dictionaries back to the user's original ids, and the train/validation/test/cold split.
// On disk it is a directory of raw little-endian column files plus a JSON manifest; see
// docs/DATASET_FORMAT.md.
#include <nlohmann/json.hpp>

#include "userip/util/option_table.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace userip::data {

enum class FieldKind { text, category, category_list, number };
std::string to_string(FieldKind kind);
FieldKind field_kind_from_string(std::string_view name);

struct ItemField {
  std::string name;
  FieldKind kind = FieldKind::text;
  // One value per item (dense item index); "" means missing. category_list values are joined
  // with '|' (see list_values()).
  std::vector<std::string> values;
};
std::vector<std::string> list_values(std::string_view joined);

// What the value column holds: a rating (label = rating >= threshold) or a 0/1 click.
enum class LabelKind { rating, click };

struct Interactions {
  std::vector<std::uint32_t> user;
  std::vector<std::uint32_t> item;
  std::vector<float> rating;  // the rating, or 0/1 for click data
  std::vector<std::int64_t> timestamp;
  std::size_t size() const { return user.size(); }
};

// Every interaction belongs to exactly one part. Cold users (held out entirely from training)
// have their chronological first `train_ratio` of history in cold_history (the fold-in input)
// and the rest in cold_test.
enum class SplitPart : std::uint8_t { train = 0, valid = 1, test = 2, cold_history = 3, cold_test = 4 };
constexpr int kNumSplitParts = 5;
std::string to_string(SplitPart part);
SplitPart split_part_from_string(std::string_view name);

struct SplitConfig {
  double train_ratio = 0.8;      // of each (warm) user's chronological history
  double valid_ratio = 0.1;
  double test_ratio = 0.1;
  double cold_fraction = 0.1;    // of users, held out entirely (seeded)
  std::uint64_t seed = 42;
  double label_threshold = 4.0;  // click = rating >= threshold (rating data only)
  // Every option above, declared once: JSON key, flag, meaning, range.
  static const OptionTable<SplitConfig>& table();
  void validate() const;  // the table's ranges, then the ratios' sum; errors name the flags
  nlohmann::json to_json() const;
  static SplitConfig from_json(const nlohmann::json& json, const std::string& source);
};

struct Split {
  SplitConfig config;
  std::vector<SplitPart> part;  // per interaction
  bool empty() const { return part.empty(); }
};

class SplitView;

class Dataset {
 public:
  std::vector<std::string> user_ids;  // original ids; index = dense id
  std::vector<std::string> item_ids;
  Interactions interactions;
  std::vector<ItemField> item_fields;
  LabelKind label_kind = LabelKind::rating;
  Split split;
  nlohmann::json provenance = nlohmann::json::object();  // where the data came from, with options

  std::size_t num_users() const { return user_ids.size(); }
  std::size_t num_items() const { return item_ids.size(); }
  std::size_t num_interactions() const { return interactions.size(); }
  bool has_split() const { return !split.empty(); }

  const ItemField* field(std::string_view name) const;
  bool label(std::size_t row) const;
  // Dense ids of original ids (built on first use).
  std::optional<std::uint32_t> find_user(std::string_view original_id) const;
  std::optional<std::uint32_t> find_item(std::string_view original_id) const;

  // The interactions of the given parts, grouped by user in chronological order. Throws if the
  // dataset has no split.
  SplitView view(std::vector<SplitPart> parts) const;
  SplitView training_view() const;  // train only: what profiles, LMs and vocabularies may see

  // Raises userip::Error on inconsistent columns (used after load and before save).
  void validate() const;

  static Dataset load(const std::filesystem::path& dir);
  // Writes the whole dataset into `dir` atomically (a temporary directory renamed into place).
  void save(const std::filesystem::path& dir) const;

 private:
  mutable std::unordered_map<std::string, std::uint32_t> user_index_, item_index_;
};

// A read-only selection of interactions (one or more split parts). Rows are grouped by user and,
// within a user, ordered by (timestamp, original row). Only rows of the chosen parts exist here.
class SplitView {
 public:
  SplitView(const Dataset& dataset, std::vector<SplitPart> parts);

  std::size_t size() const { return rows_.size(); }
  std::size_t row(std::size_t i) const { return rows_[i]; }  // index into dataset interactions
  std::uint32_t user(std::size_t i) const { return dataset_->interactions.user[rows_[i]]; }
  std::uint32_t item(std::size_t i) const { return dataset_->interactions.item[rows_[i]]; }
  float rating(std::size_t i) const { return dataset_->interactions.rating[rows_[i]]; }
  std::int64_t timestamp(std::size_t i) const { return dataset_->interactions.timestamp[rows_[i]]; }
  bool label(std::size_t i) const { return dataset_->label(rows_[i]); }

  // Positions [user_begin(u), user_end(u)) of user u's rows in this view (empty if none).
  std::size_t user_begin(std::uint32_t user) const { return user_offsets_[user]; }
  std::size_t user_end(std::uint32_t user) const { return user_offsets_[user + 1]; }
  std::size_t user_count(std::uint32_t user) const { return user_end(user) - user_begin(user); }
  // Users with at least one row in this view.
  std::vector<std::uint32_t> users() const;
  const std::vector<SplitPart>& parts() const { return parts_; }
  const Dataset& dataset() const { return *dataset_; }

 private:
  const Dataset* dataset_;
  std::vector<SplitPart> parts_;
  std::vector<std::size_t> rows_;
  std::vector<std::size_t> user_offsets_;
};

// Row order of a whole dataset grouped by user, chronological, ties by original row: the order
// that splits are cut in.
std::vector<std::size_t> chronological_order(const Interactions& interactions, std::size_t num_users);

}  // namespace userip::data
