// The feature bank on SQLite. Why SQLite (docs/FEATURE_BANK.md): one file, transactional, and
// inspectable with the sqlite3 command-line tool. The hot path never touches SQLite: open() loads
// everything once and lookups go through an in-memory hash table.
#include "userip/store/feature_bank.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <unordered_map>

#include "userip/util/error.h"
#include "userip/util/log.h"
#include "userip/util/strings.h"

namespace userip::store {

namespace fs = std::filesystem;

namespace {

std::string shown(std::string_view text) { return quote_for_message(text); }

// Column of field i in table `codes`. Field names live in meta.fields rather than in column
// names: SQLite compares identifiers case-insensitively ("Taste" and "taste" would collide) and
// names are arbitrary UTF-8.
std::string field_column(std::size_t i) { return "f" + std::to_string(i); }

// --- a minimal RAII layer over the SQLite C API; every error names the file ---

class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql, const fs::path& path) : db_(db), path_(path) {
    int rc = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &stmt_, nullptr);
    if (rc != SQLITE_OK) {
      std::string message = sqlite3_errmsg(db);
      sqlite3_finalize(stmt_);
      stmt_ = nullptr;
      fail("feature bank {}: {}", path_.string(), message);
    }
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // True while there is a row; false when done.
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    USERIP_CHECK(rc == SQLITE_DONE, "feature bank {}: {}", path_.string(), sqlite3_errmsg(db_));
    return false;
  }
  void reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  void bind(int index, std::string_view text) {
    check_bind(sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT));
  }
  void bind(int index, std::int64_t value) { check_bind(sqlite3_bind_int64(stmt_, index, value)); }

  int column_type(int column) const { return sqlite3_column_type(stmt_, column); }
  std::int64_t column_int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string column_text(int column) const {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    int bytes = sqlite3_column_bytes(stmt_, column);
    return text ? std::string(text, static_cast<std::size_t>(bytes)) : std::string();
  }

 private:
  void check_bind(int rc) {
    USERIP_CHECK(rc == SQLITE_OK, "feature bank {}: {}", path_.string(), sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  const fs::path& path_;
};

class Database {
 public:
  Database(const fs::path& path, int flags) : path_(path) {
    int rc = sqlite3_open_v2(path.c_str(), &db_, flags | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
      std::string message = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      sqlite3_close(db_);
      db_ = nullptr;
      fail("cannot open feature bank {}: {}", path.string(), message);
    }
  }
  ~Database() { sqlite3_close(db_); }
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  void exec(const std::string& sql) {
    char* error = nullptr;
    int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error);
    if (rc != SQLITE_OK) {
      std::string message = error ? error : sqlite3_errstr(rc);
      sqlite3_free(error);
      fail("feature bank {}: {}", path_.string(), message);
    }
  }
  Statement prepare(const std::string& sql) { return Statement(db_, sql, path_); }
  // Closes now, reporting failure (the destructor cannot).
  void close() {
    int rc = sqlite3_close(db_);
    USERIP_CHECK(rc == SQLITE_OK, "feature bank {}: cannot close: {}", path_.string(), sqlite3_errstr(rc));
    db_ = nullptr;
  }

 private:
  fs::path path_;
  sqlite3* db_ = nullptr;
};

// --- metadata as stored in the `meta` table ---

// Ordered keys ({"name", "cardinality"}) read better in the sqlite3 tool than sorted ones.
nlohmann::ordered_json fields_to_json(const std::vector<BankField>& fields) {
  auto array = nlohmann::ordered_json::array();
  for (const auto& f : fields) array.push_back({{"name", f.name}, {"cardinality", f.cardinality}});
  return array;
}

// Checks what write_bank and open() both require of the fields; `where` prefixes messages.
void validate_fields(const std::vector<BankField>& fields, const std::string& where) {
  USERIP_CHECK(!fields.empty(), "{}: a feature bank needs at least one field", where);
  std::unordered_map<std::string_view, std::size_t> seen;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    const auto& f = fields[i];
    USERIP_CHECK(!f.name.empty(), "{}: field {} has an empty name", where, i);
    USERIP_CHECK(is_valid_utf8(f.name), "{}: field {} has a name that is not valid UTF-8: {}", where, i,
                 shown(f.name));
    auto [it, inserted] = seen.emplace(f.name, i);
    USERIP_CHECK(inserted, "{}: field name {} appears twice (fields {} and {})", where, shown(f.name), it->second, i);
    USERIP_CHECK(f.cardinality >= 1, "{}: field {} has cardinality {} (must be at least 1)", where, shown(f.name),
                 f.cardinality);
  }
}

std::vector<BankField> fields_from_json(const std::string& text, const std::string& where) {
  std::vector<BankField> fields;
  try {
    auto array = nlohmann::json::parse(text);
    USERIP_CHECK(array.is_array(), "{}: meta 'fields' is not a JSON array", where);
    for (const auto& item : array) {
      USERIP_CHECK(item.is_object() && item.contains("name") && item["name"].is_string() &&
                       item.contains("cardinality") && item["cardinality"].is_number_integer(),
                   "{}: meta 'fields' entry {} needs a string 'name' and an integer 'cardinality'", where,
                   fields.size());
      auto cardinality = item["cardinality"].get<std::int64_t>();
      USERIP_CHECK(cardinality >= 1 && cardinality <= INT32_MAX, "{}: field {} has cardinality {}", where,
                   shown(item["name"].get<std::string>()), cardinality);
      fields.push_back({item["name"].get<std::string>(), static_cast<std::int32_t>(cardinality)});
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: meta 'fields' is not valid JSON: {}", where, e.what());
  }
  validate_fields(fields, where);
  return fields;
}

std::string utc_now_iso8601() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// The `meta` table as a map; the checks that tell "not a bank" apart from "a damaged bank".
std::map<std::string, std::string> read_meta(Database& db, const fs::path& path) {
  std::vector<std::string> tables;
  {
    auto stmt = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name");
    while (stmt.step()) tables.push_back(stmt.column_text(0));
  }
  for (const char* needed : {"meta", "codes"}) {
    USERIP_CHECK(std::find(tables.begin(), tables.end(), needed) != tables.end(),
                 "{} is not a feature bank: it has no table '{}' (tables: {})", path.string(), needed,
                 tables.empty() ? "none" : join(tables, ", "));
  }
  std::map<std::string, std::string> meta;
  auto stmt = db.prepare("SELECT key, value FROM meta");
  while (stmt.step()) meta[stmt.column_text(0)] = stmt.column_text(1);

  auto schema = meta.find("schema_version");
  USERIP_CHECK(schema != meta.end(), "{} is not a feature bank: table 'meta' has no 'schema_version'", path.string());
  USERIP_CHECK(parse_int64(schema->second) == kBankSchemaVersion,
               "feature bank {}: unknown schema version '{}' (this build reads version {}; a newer userip may "
               "have written it)",
               path.string(), schema->second, kBankSchemaVersion);
  for (const char* key : {"version", "codebook_fingerprint", "created_at", "fields", "extra", "user_count"}) {
    USERIP_CHECK(meta.count(key), "feature bank {}: table 'meta' has no '{}'", path.string(), key);
  }
  return meta;
}

std::int64_t meta_int(const std::map<std::string, std::string>& meta, const char* key, std::int64_t min,
                      const fs::path& path) {
  auto value = parse_int64(meta.at(key));
  USERIP_CHECK(value && *value >= min, "feature bank {}: meta '{}' is {} (expected an integer >= {})", path.string(),
               key, shown(meta.at(key)), min);
  return *value;
}

BankMetadata metadata_from_meta(const std::map<std::string, std::string>& meta, const fs::path& path) {
  BankMetadata m;
  m.version = meta_int(meta, "version", 1, path);
  m.codebook_fingerprint = meta.at("codebook_fingerprint");
  m.created_at = meta.at("created_at");
  m.fields = fields_from_json(meta.at("fields"), "feature bank " + path.string());
  try {
    m.extra = nlohmann::json::parse(meta.at("extra"));
  } catch (const nlohmann::json::exception& e) {
    fail("feature bank {}: meta 'extra' is not valid JSON: {}", path.string(), e.what());
  }
  USERIP_CHECK(m.extra.is_object(), "feature bank {}: meta 'extra' is not a JSON object", path.string());
  return m;
}

// The version of the bank now at `path`; refuses to go on when the file is something else.
std::int64_t version_of_existing_bank(const fs::path& path) {
  try {
    Database db(path, SQLITE_OPEN_READONLY);
    auto meta = read_meta(db, path);
    return meta_int(meta, "version", 1, path);
  } catch (const Error& e) {
    fail("refusing to replace {}: it is not a readable feature bank ({}); remove it to start again at version 1",
         path.string(), e.what());
  }
}

void validate_contents(const BankContents& c, const fs::path& path) {
  const std::string where = "feature bank " + path.string();
  validate_fields(c.fields, where);
  USERIP_CHECK(c.extra.is_object(), "{}: extra must be a JSON object, got {}", where, c.extra.type_name());
  const std::size_t width = c.fields.size();
  USERIP_CHECK(c.users.size() < UINT32_MAX, "{}: {} users are more than a bank holds", where, c.users.size());
  USERIP_CHECK(c.codes.size() == c.users.size() * width,
               "{}: {} codes given, but {} users x {} fields need {}", where, c.codes.size(), c.users.size(), width,
               c.users.size() * width);
  std::unordered_map<std::string_view, std::size_t> row_of;
  row_of.reserve(c.users.size());
  for (std::size_t row = 0; row < c.users.size(); ++row) {
    const std::string& user = c.users[row];
    USERIP_CHECK(!user.empty(), "{}: the user of row {} has an empty id", where, row);
    auto [it, inserted] = row_of.emplace(user, row);
    USERIP_CHECK(inserted, "{}: user {} appears twice (rows {} and {})", where, shown(user), it->second, row);
    for (std::size_t f = 0; f < width; ++f) {
      std::int32_t code = c.codes[row * width + f];
      USERIP_CHECK(code >= 0 && code < c.fields[f].cardinality, "{}: user {}: field {} has code {} outside [0, {})",
                   where, shown(user), shown(c.fields[f].name), code, c.fields[f].cardinality);
    }
  }
}

// Holds an exclusive flock() on a directory: serialises writers of banks in it (threads and
// processes alike, as each takes its own open file description), so the version read, the
// cleanup of stale temporary files and the rename happen as one step.
class DirectoryLock {
 public:
  explicit DirectoryLock(const fs::path& dir) : dir_(dir) {
    fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    USERIP_CHECK(fd_ >= 0, "cannot open directory {}: {}", dir.string(), std::strerror(errno));
    if (::flock(fd_, LOCK_EX) != 0) {
      int saved = errno;
      ::close(fd_);
      fail("cannot lock directory {}: {}", dir.string(), std::strerror(saved));
    }
  }
  ~DirectoryLock() { ::close(fd_); }  // closing releases the lock
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

  // Makes a rename inside the directory durable.
  void sync() const {
    USERIP_CHECK(::fsync(fd_) == 0, "cannot sync directory {}: {}", dir_.string(), std::strerror(errno));
  }

 private:
  fs::path dir_;
  int fd_ = -1;
};

void sync_file(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  USERIP_CHECK(fd >= 0, "cannot open {}: {}", path.string(), std::strerror(errno));
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  USERIP_CHECK(rc == 0, "cannot sync {}: {}", path.string(), std::strerror(saved));
}

// Temporary files "<name>.tmp-<pid>" (and SQLite's companions of them) left by writers that died:
// under the directory lock no live writer owns one.
void remove_stale_temporaries(const fs::path& dir, const std::string& name) {
  const std::string prefix = name + ".tmp-";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string file = entry.path().filename().string();
    if (file.compare(0, prefix.size(), prefix) != 0) continue;
    spdlog::info("removing {}, left by a bank writer that did not finish", entry.path().string());
    std::error_code ignored;
    fs::remove(entry.path(), ignored);
  }
}

std::optional<std::int64_t> crash_after_rows() {
  const char* value = std::getenv(kCrashAfterRowsEnv);
  if (!value) return std::nullopt;
  auto rows = parse_int64(value);
  USERIP_CHECK(rows && *rows >= 0, "{}={} is not a row count", kCrashAfterRowsEnv, value);
  return rows;
}

void write_temporary_bank(const fs::path& tmp, const BankContents& c, const BankMetadata& m) {
  Database db(tmp, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  // The file is private until the rename, so no journal is needed: a crash leaves only a stale
  // temporary file. Durability comes from the fsync() before the rename, not from SQLite. A page
  // cache of up to 256 MiB (allocated as used) holds a whole realistic bank, so inserting users in
  // their (random) key order never spills and re-reads pages: 1.5x faster at a million users.
  db.exec("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;");
  db.exec("BEGIN");
  db.exec("CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)");
  std::string create = "CREATE TABLE codes (user_id TEXT PRIMARY KEY NOT NULL, position INTEGER NOT NULL";
  std::string insert_sql = "INSERT INTO codes VALUES (?, ?";
  for (std::size_t f = 0; f < c.fields.size(); ++f) {
    // CHECK keeps hand edits made with the sqlite3 tool within the codebook.
    create += fmt::format(", {0} INTEGER NOT NULL CHECK ({0} BETWEEN 0 AND {1})", field_column(f),
                          c.fields[f].cardinality - 1);
    insert_sql += ", ?";
  }
  db.exec(create + ") WITHOUT ROWID");
  insert_sql += ")";

  {
    std::string extra_text;
    try {
      extra_text = c.extra.dump();
    } catch (const nlohmann::json::exception& e) {
      fail("feature bank {}: extra cannot be stored: {}", tmp.string(), e.what());
    }
    auto stmt = db.prepare("INSERT INTO meta VALUES (?, ?)");
    const std::pair<const char*, std::string> rows[] = {
        {"schema_version", std::to_string(kBankSchemaVersion)},
        {"version", std::to_string(m.version)},
        {"codebook_fingerprint", m.codebook_fingerprint},
        {"created_at", m.created_at},
        {"fields", fields_to_json(m.fields).dump()},
        {"extra", extra_text},
        {"user_count", std::to_string(c.users.size())},
    };
    for (const auto& [key, value] : rows) {
      stmt.reset();
      stmt.bind(1, std::string_view(key));
      stmt.bind(2, value);
      stmt.step();
    }
  }

  auto crash_after = crash_after_rows();
  {  // the statement must be finalized before close()
    auto insert = db.prepare(insert_sql);
    const std::size_t width = c.fields.size();
    for (std::size_t row = 0; row < c.users.size(); ++row) {
      if (crash_after && static_cast<std::int64_t>(row) == *crash_after) std::raise(SIGKILL);
      insert.reset();
      insert.bind(1, c.users[row]);
      insert.bind(2, static_cast<std::int64_t>(row));
      for (std::size_t f = 0; f < width; ++f) {
        insert.bind(static_cast<int>(3 + f), static_cast<std::int64_t>(c.codes[row * width + f]));
      }
      insert.step();
    }
  }
  if (crash_after && static_cast<std::int64_t>(c.users.size()) == *crash_after) std::raise(SIGKILL);
  db.exec("COMMIT");
  db.close();
}

}  // namespace

BankMetadata write_bank(const fs::path& path, const BankContents& contents) {
  validate_contents(contents, path);
  fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  USERIP_CHECK(!ec, "cannot create directory {} for feature bank {}: {}", dir.string(), path.string(), ec.message());
  USERIP_CHECK(path.has_filename(), "feature bank path {} names no file", path.string());

  DirectoryLock lock(dir);
  remove_stale_temporaries(dir, path.filename().string());

  BankMetadata m;
  m.version = fs::exists(path) ? version_of_existing_bank(path) + 1 : 1;
  m.codebook_fingerprint = contents.codebook_fingerprint;
  m.created_at = utc_now_iso8601();
  m.fields = contents.fields;
  m.extra = contents.extra;

  fs::path tmp = path;
  tmp += ".tmp-" + std::to_string(::getpid());
  try {
    write_temporary_bank(tmp, contents, m);
    sync_file(tmp);
    fs::rename(tmp, path, ec);
    USERIP_CHECK(!ec, "cannot rename {} to {}: {}", tmp.string(), path.string(), ec.message());
    lock.sync();
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
  spdlog::debug("wrote feature bank {} version {} ({} users, {} fields)", path.string(), m.version,
                contents.users.size(), contents.fields.size());
  return m;
}

FeatureBank FeatureBank::open(const fs::path& path) {
  std::error_code ec;
  USERIP_CHECK(fs::is_regular_file(path, ec), "feature bank {} does not exist{}", path.string(),
               fs::exists(path, ec) ? " as a regular file" : "");
  FeatureBank bank;
  bank.path_ = path;
  Database db(path, SQLITE_OPEN_READONLY);
  auto meta = read_meta(db, path);
  bank.metadata_ = metadata_from_meta(meta, path);
  const auto& fields = bank.metadata_.fields;
  const std::size_t width = fields.size();
  const std::int64_t user_count = meta_int(meta, "user_count", 0, path);
  USERIP_CHECK(user_count < UINT32_MAX, "feature bank {}: meta 'user_count' is {}", path.string(), user_count);

  // The table must hold exactly one code column per declared field: anything else means meta and
  // codes disagree on how many codes a row has.
  std::vector<std::string> columns;
  {
    auto stmt = db.prepare("SELECT name FROM pragma_table_info('codes')");
    while (stmt.step()) columns.push_back(stmt.column_text(0));
  }
  std::vector<std::string> expected = {"user_id", "position"};
  for (std::size_t f = 0; f < width; ++f) expected.push_back(field_column(f));
  for (std::size_t f = 0; f < expected.size(); ++f) {
    USERIP_CHECK(std::find(columns.begin(), columns.end(), expected[f]) != columns.end(),
                 "feature bank {}: table 'codes' has no column '{}'{}", path.string(), expected[f],
                 f >= 2 ? fmt::format(" (for field {})", shown(fields[f - 2].name)) : "");
  }
  USERIP_CHECK(columns.size() == expected.size(),
               "feature bank {}: table 'codes' has {} columns, but meta declares {} fields (expected columns {})",
               path.string(), columns.size(), width, join(expected, ", "));

  std::string select = "SELECT " + join(expected, ", ") + " FROM codes";
  auto stmt = db.prepare(select);
  const auto n = static_cast<std::size_t>(user_count);
  bank.users_.resize(n);
  bank.codes_.resize(n * width);
  std::vector<bool> filled(n, false);
  std::size_t rows = 0;
  while (stmt.step()) {
    ++rows;
    USERIP_CHECK(stmt.column_type(0) == SQLITE_TEXT, "feature bank {}: row {} of table 'codes' has no text user_id",
                 path.string(), rows);
    std::string user = stmt.column_text(0);
    USERIP_CHECK(stmt.column_type(1) == SQLITE_INTEGER, "feature bank {}: user {} has no integer position",
                 path.string(), shown(user));
    std::int64_t position = stmt.column_int(1);
    USERIP_CHECK(position >= 0 && position < user_count && !filled[position],
                 "feature bank {}: user {} has position {}, outside [0, {}) or taken by another user (meta "
                 "'user_count' is {})",
                 path.string(), shown(user), position, user_count, user_count);
    filled[position] = true;
    for (std::size_t f = 0; f < width; ++f) {
      int column = static_cast<int>(2 + f);
      USERIP_CHECK(stmt.column_type(column) == SQLITE_INTEGER, "feature bank {}: user {}: field {} has no integer code",
                   path.string(), shown(user), shown(fields[f].name));
      std::int64_t code = stmt.column_int(column);
      USERIP_CHECK(code >= 0 && code < fields[f].cardinality,
                   "feature bank {}: user {}: field {} has code {} outside [0, {})", path.string(), shown(user),
                   shown(fields[f].name), code, fields[f].cardinality);
      bank.codes_[position * width + f] = static_cast<std::int32_t>(code);
    }
    bank.users_[position] = std::move(user);
  }
  USERIP_CHECK(rows == n, "feature bank {}: table 'codes' has {} rows but meta 'user_count' is {} (truncated or edited?)",
               path.string(), rows, n);
  bank.build_index();
  return bank;
}

void FeatureBank::build_index() {
  std::size_t capacity = 2;
  while (capacity < 2 * users_.size()) capacity *= 2;  // load factor <= 1/2 keeps probes short
  slots_.assign(capacity, 0);
  slot_mask_ = capacity - 1;
  std::hash<std::string_view> hash;
  for (std::size_t i = 0; i < users_.size(); ++i) {
    std::uint64_t slot = hash(users_[i]) & slot_mask_;
    while (slots_[slot] != 0) {
      USERIP_CHECK(users_[slots_[slot] - 1] != users_[i], "feature bank {}: user {} appears twice", path_.string(),
                   shown(users_[i]));
      slot = (slot + 1) & slot_mask_;
    }
    slots_[slot] = static_cast<std::uint32_t>(i + 1);
  }
}

const std::int32_t* FeatureBank::find(std::string_view user) const {
  if (slots_.empty()) return nullptr;
  std::uint64_t slot = std::hash<std::string_view>{}(user) & slot_mask_;
  while (std::uint32_t entry = slots_[slot]) {
    if (users_[entry - 1] == user) return codes_at(entry - 1);
    slot = (slot + 1) & slot_mask_;
  }
  return nullptr;
}

int FeatureBank::field_index(std::string_view name) const {
  for (std::size_t f = 0; f < metadata_.fields.size(); ++f) {
    if (metadata_.fields[f].name == name) return static_cast<int>(f);
  }
  return -1;
}

}  // namespace userip::store
