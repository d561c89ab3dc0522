#pragma once
// Import of interaction logs and item tables (CSV or JSON lines) into the dataset format.
// Reads the interactions in one streaming pass: memory grows with the number of distinct users
// and items, not with the number of rows.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "userip/data/dataset.h"

namespace userip::data {

struct ImportOptions {
  std::filesystem::path interactions;            // CSV/TSV or JSON lines
  std::optional<std::filesystem::path> items;    // optional item table
  std::filesystem::path out;                     // dataset directory to create or replace

  // Interaction columns. The value column is `rating_column` if the file has it, else
  // `click_column` (0/1, true/false); `timestamp_column` may be absent (row order is then used).
  std::string user_column = "user";
  std::string item_column = "item";
  std::string rating_column = "rating";
  std::string click_column = "click";
  std::string timestamp_column = "timestamp";

  // Item table: the id column; every other column becomes an item field.
  std::string item_id_column = "item";
  // Item fields taken from the interactions file itself (logs that repeat item attributes on
  // every row, like MovieLens' export); the values of one item must agree across rows.
  std::vector<std::string> item_fields_from_interactions;
  // Fields holding several categories separated by `list_separator` (JSON arrays also work). Fields
  // not named here are still read as lists when their values look like lists (see below).
  std::vector<std::string> list_fields;
  char list_separator = '|';
  // Kinds forced by the user (field name → kind); others are inferred from the values, never from
  // the name: list_fields, or at least 5% of the values hold `list_separator` and some part recurs
  // (at most 100,000 distinct parts)
  // → category_list; all values numeric → number; few distinct values → category; else text.
  std::map<std::string, FieldKind> field_kinds;

  bool skip_bad_rows = false;   // otherwise the first malformed row stops the import
  std::size_t max_examples = 5; // bad rows quoted in the report
  bool show_progress = true;
};

struct ImportReport {
  std::uint64_t rows_read = 0;
  std::uint64_t rows_imported = 0;
  std::uint64_t bad_rows = 0;          // malformed rows skipped (only with skip_bad_rows)
  std::uint64_t unknown_item_rows = 0; // interactions naming items absent from the item table
  std::uint64_t bad_item_rows = 0;
  std::vector<std::string> examples;   // "file:line: problem" for the first few skipped rows
  std::vector<std::string> ignored_columns;
  std::size_t num_users = 0, num_items = 0;
  bool timestamps_from_row_order = false;
  double seconds = 0;
};

// Imports into options.out (atomically replacing it). The dataset carries no split yet: call
// make_split/save_split (the CLI does it by default).
ImportReport import_dataset(const ImportOptions& options);

// Epoch seconds from an integer, a decimal number, or an ISO-8601 date or date-time
// ("2016-01-31", "2016-01-31T12:00:00Z", "2016-01-31 12:00:00+02:00").
std::optional<std::int64_t> parse_timestamp(std::string_view text);

}  // namespace userip::data
