// The feature bank library: round trips, versions, validation, damaged files, crashes mid-write.
#include "userip/store/feature_bank.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <regex>
#include <thread>

#include "support/temp_dir.h"
#include "userip/util/fs.h"
#include "userip/util/random.h"

namespace userip::store {
namespace {

using userip::testing::expect_error;
using userip::testing::TempDir;

// Three fields (one with a non-ASCII name) and users whose ids need care in CSV, JSON and SQL.
BankContents tricky_bank() {
  BankContents c;
  c.fields = {{"taste", 8}, {"background", 3}, {"味道.2", 4}};
  c.codebook_fingerprint = "00ff17a2c3d4e5f6";
  c.extra = {{"seed", 7}, {"model_fingerprint", "abc"}};
  c.users = {"u1", "名前", "a,b", "say \"hi\"", "line\nbreak", " spaced ", "Robert'); DROP TABLE codes;--"};
  c.codes = {3, 0, 1,   //
             7, 2, 3,   //
             0, 1, 0,   //
             5, 0, 2,   //
             1, 1, 1,   //
             6, 2, 0,   //
             2, 0, 3};
  return c;
}

// Runs SQL on a bank file directly, as a user with the sqlite3 tool would.
void sql(const std::filesystem::path& path, const std::string& statement) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  int rc = sqlite3_exec(db, statement.c_str(), nullptr, nullptr, &error);
  std::string message = error ? error : "";
  sqlite3_free(error);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << message;
}

TEST(FeatureBank, RoundTripKeepsIdsCodesOrderAndMetadata) {
  TempDir dir;
  auto path = dir / "bank.sqlite";
  BankContents c = tricky_bank();
  BankMetadata written = write_bank(path, c);
  EXPECT_EQ(written.version, 1);
  EXPECT_TRUE(std::regex_match(written.created_at, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")))
      << written.created_at;

  FeatureBank bank = FeatureBank::open(path);
  EXPECT_EQ(bank.path(), path);
  EXPECT_EQ(bank.size(), 7u);
  EXPECT_EQ(bank.users(), c.users);  // write order, not sorted order
  const auto& m = bank.metadata();
  EXPECT_EQ(m.version, 1);
  EXPECT_EQ(m.created_at, written.created_at);
  EXPECT_EQ(m.codebook_fingerprint, "00ff17a2c3d4e5f6");
  ASSERT_EQ(m.fields.size(), 3u);
  EXPECT_EQ(m.fields[2].name, "味道.2");
  EXPECT_EQ(m.fields[2].cardinality, 4);
  EXPECT_EQ(m.fields[1].cardinality, 3);
  EXPECT_EQ(m.extra, (nlohmann::json{{"seed", 7}, {"model_fingerprint", "abc"}}));
  EXPECT_EQ(bank.field_index("background"), 1);
  EXPECT_EQ(bank.field_index("Taste"), -1);

  // Expected codes written out by hand, row by row, from tricky_bank().
  const std::vector<std::pair<std::string, std::vector<int>>> expected = {
      {"名前", {7, 2, 3}}, {"a,b", {0, 1, 0}},       {"say \"hi\"", {5, 0, 2}}, {"u1", {3, 0, 1}},
      {" spaced ", {6, 2, 0}}, {"line\nbreak", {1, 1, 1}}, {"Robert'); DROP TABLE codes;--", {2, 0, 3}}};
  for (const auto& [user, codes] : expected) {
    const std::int32_t* found = bank.find(user);
    ASSERT_NE(found, nullptr) << user;
    EXPECT_EQ(std::vector<int>(found, found + 3), codes) << user;
  }
  EXPECT_EQ(bank.find("u"), nullptr);
  EXPECT_EQ(bank.find("U1"), nullptr);
  EXPECT_EQ(bank.find("spaced"), nullptr);
  EXPECT_EQ(bank.find(""), nullptr);
}

TEST(FeatureBank, ManyUsersInShuffledOrderAreAllFound) {
  TempDir dir;
  Rng rng(20261126);
  BankContents c;
  c.fields = {{"taste", 16}, {"background", 3}};
  const int n = 5000;
  std::vector<int> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = i;
  rng.shuffle(ids);
  for (int id : ids) {
    c.users.push_back("user-" + std::to_string(id));
    // Codes derived from the id alone, so the check below recomputes them independently.
    c.codes.push_back(id % 16);
    c.codes.push_back((id / 16) % 3);
  }
  write_bank(dir / "bank.sqlite", c);
  FeatureBank bank = FeatureBank::open(dir / "bank.sqlite");
  ASSERT_EQ(bank.size(), static_cast<std::size_t>(n));
  for (int id = 0; id < n; ++id) {
    const std::int32_t* codes = bank.find("user-" + std::to_string(id));
    ASSERT_NE(codes, nullptr) << id;
    EXPECT_EQ(codes[0], id % 16);
    EXPECT_EQ(codes[1], (id / 16) % 3);
  }
  for (int id = n; id < 2 * n; ++id) EXPECT_EQ(bank.find("user-" + std::to_string(id)), nullptr);
  for (std::size_t i = 0; i < 10; ++i) EXPECT_EQ(bank.user_at(i), "user-" + std::to_string(ids[i]));

  // A copy is independent of the original (the index holds no pointers).
  FeatureBank copy = bank;
  bank = FeatureBank::open(dir / "bank.sqlite");
  ASSERT_NE(copy.find("user-4999"), nullptr);
  EXPECT_EQ(copy.find("user-4999")[0], 4999 % 16);
}

TEST(FeatureBank, EmptyBankHoldsNoUsers) {
  TempDir dir;
  BankContents c;
  c.fields = {{"taste", 2}};
  EXPECT_EQ(write_bank(dir / "b.sqlite", c).version, 1);
  FeatureBank bank = FeatureBank::open(dir / "b.sqlite");
  EXPECT_EQ(bank.size(), 0u);
  EXPECT_EQ(bank.find("anyone"), nullptr);
}

TEST(FeatureBank, VersionsIncrementAndTheLatestContentsWin) {
  TempDir dir;
  auto path = dir / "sub" / "bank.sqlite";  // the directory is created
  for (int v = 1; v <= 3; ++v) {
    BankContents c;
    c.fields = {{"taste", 8}};
    c.users = {"u1", "u2"};
    c.codes = {v, 7 - v};
    EXPECT_EQ(write_bank(path, c).version, v);
    FeatureBank bank = FeatureBank::open(path);
    EXPECT_EQ(bank.metadata().version, v);
    EXPECT_EQ(bank.find("u1")[0], v);
    EXPECT_EQ(bank.find("u2")[0], 7 - v);
  }
  // Only the bank itself is left in the directory: no temporary or journal files.
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir / "sub")) files.push_back(e.path().filename());
  EXPECT_EQ(files, std::vector<std::string>{"bank.sqlite"});
}

TEST(FeatureBank, InvalidContentsAreRejectedNamingUserAndField) {
  TempDir dir;
  auto path = dir / "bank.sqlite";
  auto with = [](auto edit) {
    BankContents c = tricky_bank();
    edit(c);
    return c;
  };
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.users[4] = "a,b"; })); },
               {path.string(), "user \"a,b\" appears twice", "rows 2 and 4"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.codes[3 * 3 + 0] = 8; })); },
               {path.string(), "user \"say \\\"hi\\\"\"", "field \"taste\"", "code 8 outside [0, 8)"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.codes[1 * 3 + 2] = -1; })); },
               {"user \"名前\"", "field \"味道.2\"", "code -1 outside [0, 4)"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.codes.pop_back(); })); },
               {"20 codes given", "7 users x 3 fields need 21"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.users[0].clear(); })); },
               {"row 0 has an empty id"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.fields[1].name = "taste"; })); },
               {"field name \"taste\" appears twice (fields 0 and 1)"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.fields[2].name = ""; })); },
               {"field 2 has an empty name"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.fields[2].name = "\xff"; })); },
               {"not valid UTF-8"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.fields[0].cardinality = 0; })); },
               {"field \"taste\" has cardinality 0"});
  expect_error([&] { write_bank(path, with([](BankContents& c) { c.extra = nlohmann::json::array(); })); },
               {"extra must be a JSON object"});
  expect_error(
      [&] {
        write_bank(path, with([](BankContents& c) {
                     c.fields.clear();
                     c.codes.clear();
                   }));
      },
      {"at least one field"});
  // Nothing was written.
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(FeatureBank, DamagedOrForeignFilesAreErrorsNamingThePath) {
  TempDir dir;
  expect_error([&] { FeatureBank::open(dir / "missing.sqlite"); }, {(dir / "missing.sqlite").string(), "does not exist"});
  expect_error([&] { FeatureBank::open(dir.path()); }, {dir.path().string(), "not exist as a regular file"});

  Rng rng(5);
  std::string noise(8192, '\0');
  for (auto& ch : noise) ch = static_cast<char>(rng.below(256));
  auto random_file = dir.write("random.sqlite", noise);
  expect_error([&] { FeatureBank::open(random_file); }, {random_file.string(), "not a database"});

  auto empty_file = dir.write("empty.sqlite", "");
  expect_error([&] { FeatureBank::open(empty_file); }, {empty_file.string(), "no table 'meta'", "tables: none"});

  auto foreign = dir / "foreign.sqlite";
  sql(foreign, "CREATE TABLE users (id TEXT); CREATE TABLE meta (key TEXT, value TEXT);");
  expect_error([&] { FeatureBank::open(foreign); },
               {foreign.string(), "is not a feature bank", "no table 'codes'", "tables: meta, users"});

  // Truncated: a bank spanning many pages cut in half.
  BankContents big;
  big.fields = {{"taste", 100}};
  for (int i = 0; i < 4000; ++i) {
    big.users.push_back("a-rather-long-user-identifier-" + std::to_string(i));
    big.codes.push_back(i % 100);
  }
  auto truncated = dir / "truncated.sqlite";
  write_bank(truncated, big);
  auto size = std::filesystem::file_size(truncated);
  ASSERT_GT(size, 100000u);
  std::filesystem::resize_file(truncated, size / 2);
  expect_error([&] { FeatureBank::open(truncated); }, {truncated.string()});
}

TEST(FeatureBank, HandEditedBanksAreCheckedOnOpen) {
  TempDir dir;
  auto fresh = [&](const std::string& name) {
    auto path = dir / name;
    write_bank(path, tricky_bank());
    return path;
  };
  auto schema = fresh("schema.sqlite");
  sql(schema, "UPDATE meta SET value = '99' WHERE key = 'schema_version'");
  expect_error([&] { FeatureBank::open(schema); }, {schema.string(), "unknown schema version '99'"});

  auto out_of_range = fresh("range.sqlite");
  // The table's CHECK constraints refuse this edit unless told to look away.
  sql(out_of_range, "PRAGMA ignore_check_constraints = ON; UPDATE codes SET f1 = 3 WHERE user_id = 'a,b'");
  expect_error([&] { FeatureBank::open(out_of_range); },
               {out_of_range.string(), "user \"a,b\"", "field \"background\"", "code 3 outside [0, 3)"});

  auto text_code = fresh("text.sqlite");
  sql(text_code, "PRAGMA ignore_check_constraints = ON; UPDATE codes SET f0 = 'x' WHERE user_id = 'u1'");
  expect_error([&] { FeatureBank::open(text_code); }, {"user \"u1\"", "field \"taste\" has no integer code"});

  auto extra_column = fresh("wide.sqlite");
  sql(extra_column, "ALTER TABLE codes ADD COLUMN f3 INTEGER");
  expect_error([&] { FeatureBank::open(extra_column); },
               {extra_column.string(), "has 6 columns, but meta declares 3 fields"});

  auto missing_column = fresh("narrow.sqlite");
  sql(missing_column, "ALTER TABLE codes DROP COLUMN f2");
  expect_error([&] { FeatureBank::open(missing_column); },
               {missing_column.string(), "no column 'f2' (for field \"味道.2\")"});

  auto missing_row = fresh("rows.sqlite");
  sql(missing_row, "DELETE FROM codes WHERE user_id = 'u1'");
  expect_error([&] { FeatureBank::open(missing_row); },
               {missing_row.string(), "6 rows but meta 'user_count' is 7"});

  auto bad_fields = fresh("fields.sqlite");
  sql(bad_fields, "UPDATE meta SET value = '[{\"name\": \"taste\"}]' WHERE key = 'fields'");
  expect_error([&] { FeatureBank::open(bad_fields); }, {bad_fields.string(), "integer 'cardinality'"});
}

TEST(FeatureBank, WriteRefusesToReplaceAFileThatIsNotABank) {
  TempDir dir;
  auto path = dir.write("codes.csv", "user,taste\nu1,3\n");
  expect_error([&] { write_bank(path, tricky_bank()); }, {"refusing to replace", path.string()});
  EXPECT_EQ(read_file(path), "user,taste\nu1,3\n");
}

TEST(FeatureBank, CrashMidWriteLeavesThePreviousVersionAndTheNextWriteSucceeds) {
  TempDir dir;
  auto path = dir / "bank.sqlite";
  auto contents = [](int version) {
    BankContents c;
    c.fields = {{"taste", 8}, {"background", 3}};
    for (int i = 0; i < 300; ++i) {
      c.users.push_back("u" + std::to_string(i));
      c.codes.push_back((i + version) % 8);
      c.codes.push_back(version % 3);
    }
    return c;
  };
  ASSERT_EQ(write_bank(path, contents(1)).version, 1);

  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setenv(kCrashAfterRowsEnv, "120", 1);
    try {
      write_bank(path, contents(2));
    } catch (...) {
      _exit(3);
    }
    _exit(0);  // the hook did not fire: the parent's check below fails
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  auto stale = path;
  stale += ".tmp-" + std::to_string(child);
  EXPECT_TRUE(std::filesystem::exists(stale)) << "the child did not die mid-write";

  FeatureBank survivor = FeatureBank::open(path);
  EXPECT_EQ(survivor.metadata().version, 1);
  ASSERT_EQ(survivor.size(), 300u);
  EXPECT_EQ(survivor.find("u5")[0], 6);  // (5 + 1) % 8
  EXPECT_EQ(survivor.find("u5")[1], 1);

  EXPECT_EQ(write_bank(path, contents(2)).version, 2);
  EXPECT_FALSE(std::filesystem::exists(stale));
  FeatureBank next = FeatureBank::open(path);
  EXPECT_EQ(next.metadata().version, 2);
  EXPECT_EQ(next.find("u5")[0], 7);  // (5 + 2) % 8
  EXPECT_EQ(next.find("u299")[0], 5);  // (299 + 2) % 8
  EXPECT_EQ(next.find("u5")[1], 2);
}

TEST(FeatureBank, ConcurrentWritersGetDistinctVersionsAndReadersSeeWholeBanks) {
  TempDir dir;
  auto path = dir / "bank.sqlite";
  // Writer A's banks hold only code 1 and writer B's only code 2: a reader that met a mix, a
  // short bank or an unreadable file would have seen a half-published bank.
  auto write_one = [&](std::int32_t code, std::vector<std::int64_t>* versions) {
    BankContents c;
    c.fields = {{"taste", 8}};
    for (int i = 0; i < 50; ++i) c.users.push_back("u" + std::to_string(i));
    c.codes.assign(50, code);
    versions->push_back(write_bank(path, c).version);
  };
  std::vector<std::int64_t> a, b;
  std::atomic<bool> done{false};
  std::atomic<int> opened{0};
  std::thread reader([&] {
    while (!done) {
      if (!std::filesystem::exists(path)) continue;
      try {
        FeatureBank bank = FeatureBank::open(path);
        ASSERT_EQ(bank.size(), 50u);
        std::int32_t first_code = bank.codes_at(0)[0];
        EXPECT_TRUE(first_code == 1 || first_code == 2) << first_code;
        for (std::size_t i = 0; i < bank.size(); ++i) ASSERT_EQ(bank.codes_at(i)[0], first_code) << i;
        ++opened;
      } catch (const Error& e) {
        ADD_FAILURE() << e.what();
        return;
      }
    }
  });
  std::thread first([&] {
    for (int i = 0; i < 6; ++i) write_one(1, &a);
  });
  std::thread second([&] {
    for (int i = 0; i < 6; ++i) write_one(2, &b);
  });
  first.join();
  second.join();
  done = true;
  reader.join();
  std::vector<std::int64_t> all = a;
  all.insert(all.end(), b.begin(), b.end());
  std::sort(all.begin(), all.end());
  std::vector<std::int64_t> expected = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  EXPECT_EQ(all, expected);
  EXPECT_EQ(FeatureBank::open(path).metadata().version, 12);
  EXPECT_GT(opened.load(), 0);
}

}  // namespace
}  // namespace userip::store
