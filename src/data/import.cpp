#include "userip/data/import.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "data/storage.h"
#include "userip/data/records.h"
#include "userip/util/error.h"
#include "userip/util/log.h"
#include "userip/util/progress.h"
#include "userip/util/strings.h"

namespace userip::data {

namespace {

// Dense ids in order of first appearance, keeping the original strings.
class IdDictionary {
 public:
  std::optional<std::uint32_t> find(std::string_view id) {
    key_.assign(id.data(), id.size());
    auto it = index_.find(key_);
    if (it == index_.end()) return std::nullopt;
    return it->second;
  }
  std::uint32_t add(std::string_view id) {
    auto dense = static_cast<std::uint32_t>(ids_.size());
    ids_.emplace_back(id);
    index_.emplace(ids_.back(), dense);
    return dense;
  }
  std::uint32_t find_or_add(std::string_view id) {
    // Logs are usually grouped by user: the previous row's id saves a hash lookup.
    if (last_ < ids_.size() && ids_[last_] == id) return last_;
    auto found = find(id);
    last_ = found ? *found : add(id);
    return last_;
  }
  std::vector<std::string>& ids() { return ids_; }
  std::size_t size() const { return ids_.size(); }

 private:
  std::unordered_map<std::string, std::uint32_t> index_;
  std::vector<std::string> ids_;
  std::string key_;
  std::uint32_t last_ = UINT32_MAX;
};

// A row that cannot be imported: fatal, or counted and quoted when skipping bad rows.
class BadRowPolicy {
 public:
  BadRowPolicy(const ImportOptions& options, ImportReport& report) : options_(options), report_(report) {}
  void reject(const std::string& where, const std::string& problem, std::uint64_t& counter) {
    std::string message = fmt::format("{}: {}", where, problem);
    if (!options_.skip_bad_rows) {
      throw Error(message + " (use --skip-bad-rows to skip such rows and report them)");
    }
    ++counter;
    if (report_.examples.size() < options_.max_examples) report_.examples.push_back(message);
  }

 private:
  const ImportOptions& options_;
  ImportReport& report_;
};

// Values of item fields, growing with the item dictionary; checks repeated items agree.
class ItemFieldCollector {
 public:
  explicit ItemFieldCollector(std::vector<std::string> names) : names_(std::move(names)), values_(names_.size()) {}
  const std::vector<std::string>& names() const { return names_; }

  // The problem with the values given for item `item` at `where`, or "" if they fit.
  std::string check(std::uint32_t item, const std::vector<std::string_view>& values) const {
    for (std::size_t f = 0; f < names_.size(); ++f) {
      if (!is_valid_utf8(values[f])) return fmt::format("field '{}': invalid UTF-8", names_[f]);
      if (item < first_line_.size() && values_[f][item] != values[f]) {
        return fmt::format("field '{}' of item {} is {} here but {} on line {}", names_[f],
                           quote_for_message(item_name_[item]), quote_for_message(values[f]),
                           quote_for_message(values_[f][item]), first_line_[item]);
      }
    }
    return {};
  }
  void set(std::uint32_t item, std::string_view item_name, const std::vector<std::string_view>& values,
           std::uint64_t line) {
    if (item < first_line_.size()) return;
    USERIP_ASSERT(item == first_line_.size());
    for (std::size_t f = 0; f < names_.size(); ++f) values_[f].emplace_back(values[f]);
    first_line_.push_back(line);
    item_name_.emplace_back(item_name);
  }
  // Items that never got values (e.g. items only seen in interactions) get missing values.
  void pad_to(std::size_t items) {
    while (first_line_.size() < items) {
      for (auto& v : values_) v.emplace_back();
      first_line_.push_back(0);
      item_name_.emplace_back();
    }
  }
  std::vector<ItemField> take_fields(const ImportOptions& options);

 private:
  std::vector<std::string> names_;
  std::vector<std::vector<std::string>> values_;
  std::vector<std::uint64_t> first_line_;
  std::vector<std::string> item_name_;
};

// Distinct categories a list field may hold before it is taken for free text.
constexpr std::size_t kMaxListValues = 100000;

FieldKind infer_kind(const std::string& name, const std::vector<std::string>& values, const ImportOptions& options) {
  if (auto forced = options.field_kinds.find(name); forced != options.field_kinds.end()) return forced->second;
  for (const auto& list_field : options.list_fields) {
    if (list_field == name) return FieldKind::category_list;
  }
  std::size_t present = 0, with_separator = 0, parts = 0;
  bool numeric = true;
  std::unordered_set<std::string_view> distinct;
  std::unordered_set<std::string> distinct_parts;
  for (const auto& v : values) {
    if (v.empty()) continue;
    ++present;
    if (numeric && !parse_double(v)) numeric = false;
    if (distinct.size() <= 1000) distinct.insert(v);
    if (v.find(options.list_separator) != std::string::npos) ++with_separator;
    for (auto& part : split_list(v, options.list_separator)) {
      ++parts;
      if (distinct_parts.size() <= kMaxListValues) distinct_parts.insert(std::move(part));
    }
  }
  if (present > 0 && numeric) return FieldKind::number;
  // Values such as "Action|Comedy": a list of categories, whatever the column is called. Titles that happen to hold
  // the separator are rare among their values, and their parts do not recur. (With `,` as the separator, titles
  // such as "Heat, The" can pass for a list: --field-kind NAME=text says otherwise.)
  if (with_separator * 20 >= present && with_separator > 0 && distinct_parts.size() <= kMaxListValues &&
      distinct_parts.size() < parts)
    return FieldKind::category_list;
  // Few distinct values that repeat: a categorical attribute (brand, price level), not free text.
  if (present > 0 && distinct.size() <= 1000 && distinct.size() * 2 <= present) return FieldKind::category;
  return FieldKind::text;
}

std::vector<ItemField> ItemFieldCollector::take_fields(const ImportOptions& options) {
  std::vector<ItemField> fields;
  for (std::size_t f = 0; f < names_.size(); ++f) {
    ItemField field;
    field.name = names_[f];
    field.values = std::move(values_[f]);
    field.kind = infer_kind(field.name, field.values, options);
    if (field.kind == FieldKind::category_list) {
      // Normalise separators and spacing so that consumers can split on '|' alone.
      for (auto& v : field.values) v = join(split_list(v, options.list_separator), "|");
    }
    fields.push_back(std::move(field));
  }
  return fields;
}

std::string columns_list(const RecordReader& reader) {
  std::string out;
  for (const auto& c : reader.columns()) out += (out.empty() ? "" : ", ") + c;
  return out.empty() ? "(none)" : out;
}

int require_column(const RecordReader& reader, const std::string& name, const char* option) {
  int index = reader.column_index(name);
  USERIP_CHECK(index >= 0, "{}: no column '{}' (set it with {}); the file has: {}", reader.path().string(), name,
               option, columns_list(reader));
  return index;
}

std::optional<float> parse_click(std::string_view text) {
  text = trim(text);
  if (text == "1" || text == "true" || text == "True" || text == "TRUE") return 1.0f;
  if (text == "0" || text == "false" || text == "False" || text == "FALSE") return 0.0f;
  return std::nullopt;
}

void read_item_table(const ImportOptions& options, IdDictionary& items, std::unique_ptr<ItemFieldCollector>& fields,
                     BadRowPolicy& policy, ImportReport& report) {
  RecordOptions record_options;
  record_options.list_separator = options.list_separator;
  record_options.jsonl_scan_all_keys = true;
  auto reader = open_records(*options.items, record_options);
  int id_column = require_column(*reader, options.item_id_column, "--item-id-column");
  std::vector<std::string> names;
  std::vector<int> columns;
  for (std::size_t c = 0; c < reader->columns().size(); ++c) {
    if (static_cast<int>(c) == id_column) continue;
    names.push_back(reader->columns()[c]);
    columns.push_back(static_cast<int>(c));
  }
  fields = std::make_unique<ItemFieldCollector>(names);
  std::vector<std::string_view> values(columns.size());
  while (true) {
    try {
      if (!reader->next()) break;
    } catch (const Error& e) {
      policy.reject(reader->where(), e.what(), report.bad_item_rows);
      continue;
    }
    auto id = reader->field(id_column);
    if (!id || trim(*id).empty()) {
      policy.reject(reader->where(), fmt::format("missing item id (column '{}')", options.item_id_column),
                    report.bad_item_rows);
      continue;
    }
    std::string_view item_id = trim(*id);
    if (!is_valid_utf8(item_id)) {
      policy.reject(reader->where(), "item id: invalid UTF-8", report.bad_item_rows);
      continue;
    }
    for (std::size_t f = 0; f < columns.size(); ++f) values[f] = reader->field(columns[f]).value_or("");
    auto existing = items.find(item_id);
    std::uint32_t item = existing ? *existing : static_cast<std::uint32_t>(items.size());
    std::string problem = fields->check(item, values);
    if (!problem.empty()) {
      policy.reject(reader->where(), problem, report.bad_item_rows);
      continue;
    }
    if (!existing) items.add(item_id);
    fields->set(item, item_id, values, reader->line());
  }
}

}  // namespace

std::optional<std::int64_t> parse_timestamp(std::string_view text) {
  text = trim(text);
  if (auto integer = parse_int64(text)) return integer;
  if (auto number = parse_double(text)) return static_cast<std::int64_t>(std::floor(*number));
  // ISO 8601: YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|±HH[:MM]]
  auto digits = [&](std::size_t pos, std::size_t count) -> std::optional<int> {
    if (pos + count > text.size()) return std::nullopt;
    int value = 0;
    for (std::size_t i = pos; i < pos + count; ++i) {
      if (text[i] < '0' || text[i] > '9') return std::nullopt;
      value = value * 10 + (text[i] - '0');
    }
    return value;
  };
  auto year = digits(0, 4), month = digits(5, 2), day = digits(8, 2);
  if (!year || !month || !day || text.size() < 10 || text[4] != '-' || text[7] != '-') return std::nullopt;
  if (*month < 1 || *month > 12 || *day < 1 || *day > 31) return std::nullopt;
  int hour = 0, minute = 0, second = 0;
  long offset_seconds = 0;
  std::size_t pos = 10;
  if (pos < text.size()) {
    if (text[pos] != 'T' && text[pos] != ' ') return std::nullopt;
    auto h = digits(pos + 1, 2), m = digits(pos + 4, 2);
    if (!h || !m || text[pos + 3] != ':' || *h > 23 || *m > 59) return std::nullopt;
    hour = *h;
    minute = *m;
    pos += 6;
    if (pos < text.size() && text[pos] == ':') {
      auto s = digits(pos + 1, 2);
      if (!s || *s > 60) return std::nullopt;
      second = *s;
      pos += 3;
      if (pos < text.size() && text[pos] == '.') {
        ++pos;
        while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
      }
    }
    if (pos < text.size()) {
      if (text[pos] == 'Z' && pos + 1 == text.size()) {
        pos += 1;
      } else if (text[pos] == '+' || text[pos] == '-') {
        int sign = text[pos] == '-' ? -1 : 1;
        auto oh = digits(pos + 1, 2);
        if (!oh) return std::nullopt;
        int om = 0;
        std::size_t next = pos + 3;
        if (next < text.size()) {
          if (text[next] == ':') ++next;
          auto m2 = digits(next, 2);
          if (!m2) return std::nullopt;
          om = *m2;
          next += 2;
        }
        if (next != text.size()) return std::nullopt;
        offset_seconds = sign * (*oh * 3600L + om * 60L);
        pos = next;
      } else {
        return std::nullopt;
      }
    }
  }
  // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's civil-days method).
  int y = *year - (*month <= 2 ? 1 : 0);
  long era = (y >= 0 ? y : y - 399) / 400;
  long yoe = y - era * 400;
  long mp = (*month + 9) % 12;
  long doy = (153 * mp + 2) / 5 + *day - 1;
  long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  long days = era * 146097 + doe - 719468;
  return static_cast<std::int64_t>(days) * 86400 + hour * 3600 + minute * 60 + second - offset_seconds;
}

ImportReport import_dataset(const ImportOptions& options) {
  auto started = std::chrono::steady_clock::now();
  ImportReport report;
  BadRowPolicy policy(options, report);
  IdDictionary users, items;
  std::unique_ptr<ItemFieldCollector> fields;
  if (options.items) read_item_table(options, items, fields, policy, report);
  const bool closed_item_set = options.items.has_value();

  RecordOptions record_options;
  record_options.list_separator = options.list_separator;
  auto reader = open_records(options.interactions, record_options);
  int user_column = require_column(*reader, options.user_column, "--user-column");
  int item_column = require_column(*reader, options.item_column, "--item-column");
  int value_column = reader->column_index(options.rating_column);
  LabelKind label_kind = LabelKind::rating;
  if (value_column < 0) {
    value_column = reader->column_index(options.click_column);
    label_kind = LabelKind::click;
    USERIP_CHECK(value_column >= 0,
                 "{}: neither a rating column '{}' (--rating-column) nor a click column '{}' (--click-column); the "
                 "file has: {}",
                 options.interactions.string(), options.rating_column, options.click_column, columns_list(*reader));
  }
  int time_column = reader->column_index(options.timestamp_column);
  report.timestamps_from_row_order = time_column < 0;
  if (time_column < 0) {
    spdlog::warn("{}: no timestamp column '{}': using the row order as time", options.interactions.string(),
                 options.timestamp_column);
  }

  std::unique_ptr<ItemFieldCollector> inline_fields;
  std::vector<int> inline_columns;
  if (!options.item_fields_from_interactions.empty()) {
    USERIP_CHECK(!options.items, "item fields come either from an item table or from the interactions file, not both");
    for (const auto& name : options.item_fields_from_interactions) {
      inline_columns.push_back(require_column(*reader, name, "--item-fields-from-interactions"));
    }
    inline_fields = std::make_unique<ItemFieldCollector>(options.item_fields_from_interactions);
  }
  std::set<int> used = {user_column, item_column, value_column, time_column};
  used.insert(inline_columns.begin(), inline_columns.end());
  for (std::size_t c = 0; c < reader->columns().size(); ++c) {
    if (!used.count(static_cast<int>(c))) report.ignored_columns.push_back(reader->columns()[c]);
  }
  if (!report.ignored_columns.empty()) {
    spdlog::info("{}: ignoring columns {}", options.interactions.string(), join(report.ignored_columns, ", "));
  }

  DatasetWriter writer(options.out);
  std::unique_ptr<ProgressBar> progress;
  if (options.show_progress) progress = std::make_unique<ProgressBar>("import", reader->bytes_total() >> 20, "MiB");
  std::vector<std::string_view> inline_values(inline_columns.size());
  const char* value_name = label_kind == LabelKind::rating ? "rating" : "click";
  const std::string& value_column_name = reader->columns()[value_column];
  while (true) {
    try {
      if (!reader->next()) break;
    } catch (const Error& e) {
      ++report.rows_read;
      policy.reject(reader->where(), e.what(), report.bad_rows);
      continue;
    }
    ++report.rows_read;
    if (progress && (report.rows_read & 0xFFFF) == 0) progress->set(reader->bytes_read() >> 20);

    auto user_text = reader->field(user_column);
    auto item_text = reader->field(item_column);
    auto value_text = reader->field(value_column);
    if (!user_text || trim(*user_text).empty() || !is_valid_utf8(*user_text)) {
      policy.reject(reader->where(), fmt::format("field '{}': missing or invalid user id", options.user_column),
                    report.bad_rows);
      continue;
    }
    if (!item_text || trim(*item_text).empty() || !is_valid_utf8(*item_text)) {
      policy.reject(reader->where(), fmt::format("field '{}': missing or invalid item id", options.item_column),
                    report.bad_rows);
      continue;
    }
    std::optional<float> value;
    if (value_text) {
      if (label_kind == LabelKind::click) {
        value = parse_click(*value_text);
      } else if (auto v = parse_double(*value_text)) {
        value = static_cast<float>(*v);
      }
    }
    if (!value) {
      policy.reject(reader->where(),
                    fmt::format("field '{}': cannot read {} as a {}", value_column_name,
                                quote_for_message(value_text.value_or("")), value_name),
                    report.bad_rows);
      continue;
    }
    std::int64_t timestamp = static_cast<std::int64_t>(report.rows_read);
    if (time_column >= 0) {
      auto time_text = reader->field(time_column);
      auto parsed = time_text ? parse_timestamp(*time_text) : std::nullopt;
      if (!parsed) {
        policy.reject(reader->where(),
                      fmt::format("field '{}': cannot read {} as a timestamp (epoch seconds or ISO 8601)",
                                  options.timestamp_column, quote_for_message(time_text.value_or(""))),
                      report.bad_rows);
        continue;
      }
      timestamp = *parsed;
    }
    std::string_view item_id = trim(*item_text);
    std::optional<std::uint32_t> item = items.find(item_id);
    if (!item && closed_item_set) {
      policy.reject(reader->where(),
                    fmt::format("item {} is not in the item table {}", quote_for_message(item_id),
                                options.items->string()),
                    report.unknown_item_rows);
      continue;
    }
    if (inline_fields) {
      for (std::size_t f = 0; f < inline_columns.size(); ++f) {
        inline_values[f] = reader->field(inline_columns[f]).value_or("");
      }
      std::uint32_t candidate = item ? *item : static_cast<std::uint32_t>(items.size());
      std::string problem = inline_fields->check(candidate, inline_values);
      if (!problem.empty()) {
        policy.reject(reader->where(), problem, report.bad_rows);
        continue;
      }
    }
    if (!item) item = items.add(item_id);
    if (inline_fields) inline_fields->set(*item, item_id, inline_values, reader->line());
    std::uint32_t user = users.find_or_add(trim(*user_text));
    writer.append(user, *item, *value, timestamp);
    ++report.rows_imported;
  }
  if (progress) {
    progress->set(reader->bytes_read() >> 20);
    progress->finish();
  }
  USERIP_CHECK(report.rows_imported > 0, "{}: no interactions could be imported ({} rows read)",
               options.interactions.string(), report.rows_read);

  Dataset rest;
  rest.label_kind = label_kind;
  if (inline_fields) fields = std::move(inline_fields);
  if (fields) {
    fields->pad_to(items.size());
    rest.item_fields = fields->take_fields(options);
  }
  rest.user_ids = std::move(users.ids());
  rest.item_ids = std::move(items.ids());
  report.num_users = rest.user_ids.size();
  report.num_items = rest.item_ids.size();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  rest.provenance = {
      {"source", "import"},
      {"interactions", std::filesystem::absolute(options.interactions).string()},
      {"items", options.items ? std::filesystem::absolute(*options.items).string() : ""},
      {"rows_read", report.rows_read},
      {"rows_imported", report.rows_imported},
      {"bad_rows_skipped", report.bad_rows},
      {"unknown_item_rows_skipped", report.unknown_item_rows},
      {"bad_item_rows_skipped", report.bad_item_rows},
      {"timestamps_from_row_order", report.timestamps_from_row_order},
  };
  writer.commit(rest);
  return report;
}

}  // namespace userip::data
