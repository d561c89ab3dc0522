#pragma once
// The feature bank: one SQLite file mapping each user (original string id) to one small integer
// code per profile field. CTR training joins it offline; the server looks users up online and
// hot-reloads newer versions. docs/FEATURE_BANK.md describes the schema.
//
// Publishing is atomic: write_bank builds a complete temporary file beside the bank and rename()s
// it over the old one, so a reader (or a crash) only ever sees a whole old or a whole new bank.
// Reading loads every row into memory once; lookups afterwards are lock-free hash probes, safe
// from any number of threads.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace userip::store {

// One profile field: an attribute at one codebook level ("taste", "background", "taste.2").
struct BankField {
  std::string name;               // any non-empty UTF-8; unique within a bank
  std::int32_t cardinality = 0;   // codes lie in [0, cardinality)
};

struct BankMetadata {
  std::int64_t version = 0;                 // 1 for the first bank at a path, previous + 1 afterwards
  std::string codebook_fingerprint;         // hex string from the profile run
  std::string created_at;                   // ISO-8601 UTC, e.g. 2026-11-26T04:50:00Z
  std::vector<BankField> fields;
  nlohmann::json extra = nlohmann::json::object();  // free-form provenance (seed, model fingerprint, ...)
};

struct BankContents {
  std::vector<BankField> fields;
  std::string codebook_fingerprint;
  nlohmann::json extra = nlohmann::json::object();
  std::vector<std::string> users;           // original ids, unique, non-empty
  std::vector<std::int32_t> codes;          // users.size() x fields.size(), row-major
};

// The schema this code writes and the only one it reads (meta key `schema_version`).
inline constexpr int kBankSchemaVersion = 1;

// Test hook: when the environment variable USERIP_TEST_CRASH_BANK_WRITE_AFTER_ROWS=N is set,
// write_bank kills its own process with SIGKILL right after inserting N rows into the temporary
// file (before the commit and the rename), to test that a crashed writer leaves the published
// bank intact. Never set it outside tests.
inline constexpr const char* kCrashAfterRowsEnv = "USERIP_TEST_CRASH_BANK_WRITE_AFTER_ROWS";

// Writes a new bank at `path` atomically and returns its metadata. version = the old version + 1
// when a bank already exists at `path`, else 1. A file at `path` that is not a readable feature
// bank is an error (nothing is replaced), so a mistyped path cannot destroy unrelated data.
// Writers of the same path are serialised by an flock() on its directory; temporary files of
// writers that crashed ("<path>.tmp-<pid>") are removed by the next write.
// Validates: fields (unique, non-empty, valid UTF-8 names; cardinality >= 1), unique non-empty
// users, codes.size() == users.size() * fields.size(), every code in [0, cardinality); errors name
// the offending user and field.
BankMetadata write_bank(const std::filesystem::path& path, const BankContents& contents);

class FeatureBank {
 public:
  // Opens read-only and loads every row into memory. Throws userip::Error naming the file for: a
  // missing file, a file that is not SQLite, missing tables or columns, an unknown schema version,
  // damaged metadata, a row whose code is missing or out of range, or a row count that differs from
  // the one recorded at write time (a truncated file).
  static FeatureBank open(const std::filesystem::path& path);

  const BankMetadata& metadata() const { return metadata_; }
  const std::vector<BankField>& fields() const { return metadata_.fields; }
  const std::filesystem::path& path() const { return path_; }
  std::size_t size() const { return users_.size(); }  // users

  // nullptr when the user is unknown; else a pointer to fields().size() codes, valid while the
  // bank lives.
  const std::int32_t* find(std::string_view user) const;
  // Index of the field named `name`, or -1.
  int field_index(std::string_view name) const;

  // Users in stored order (the order they were written).
  std::vector<std::string> users() const { return users_; }
  // The i-th user in stored order and its codes (i < size()), for iteration without copies.
  const std::string& user_at(std::size_t i) const { return users_[i]; }
  const std::int32_t* codes_at(std::size_t i) const { return codes_.data() + i * metadata_.fields.size(); }

 private:
  FeatureBank() = default;
  void build_index();

  std::filesystem::path path_;
  BankMetadata metadata_;
  std::vector<std::string> users_;
  std::vector<std::int32_t> codes_;  // size() x fields().size(), row-major
  // Open addressing with linear probing over user indices (0 = empty slot, else index + 1): holds
  // no pointers, so the bank stays cheap to copy and move, and find() takes a string_view without
  // building a std::string.
  std::vector<std::uint32_t> slots_;
  std::uint64_t slot_mask_ = 0;
};

}  // namespace userip::store
