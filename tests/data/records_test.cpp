#include <gtest/gtest.h>

#include "support/temp_dir.h"
#include "userip/data/records.h"
#include "userip/util/error.h"

namespace userip::data {
namespace {

std::vector<std::vector<std::string>> read_all(const std::filesystem::path& path) {
  auto reader = open_records(path);
  std::vector<std::vector<std::string>> rows;
  while (reader->next()) {
    std::vector<std::string> row;
    for (std::size_t c = 0; c < reader->columns().size(); ++c) {
      row.push_back(std::string(reader->field(static_cast<int>(c)).value_or("<missing>")));
    }
    rows.push_back(row);
  }
  return rows;
}

std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Csv, HandlesQuotesEmbeddedSeparatorsNewlinesAndUtf8) {
  testing::TempDir dir;
  auto path = dir.write("a.csv",
                        "\xEF\xBB\xBFid,title,genres\r\n"
                        "1,\"Léon: The Professional, \"\"Director's Cut\"\"\",Action|Crime\r\n"
                        "2,\"Two\nlines\",\r\n"
                        "\n"
                        "3,千と千尋の神隠し 🎬,\"\"\n"
                        "4,plain \"quoted\" word,Drama");
  auto reader = open_records(path);
  EXPECT_EQ(reader->columns(), (std::vector<std::string>{"id", "title", "genres"}));
  ASSERT_TRUE(reader->next());
  EXPECT_EQ(reader->line(), 2u);
  EXPECT_EQ(*reader->field(1), "Léon: The Professional, \"Director's Cut\"");
  EXPECT_EQ(*reader->field(2), "Action|Crime");
  ASSERT_TRUE(reader->next());
  EXPECT_EQ(*reader->field(1), "Two\nlines");
  EXPECT_EQ(*reader->field(2), "");
  ASSERT_TRUE(reader->next());
  EXPECT_EQ(reader->line(), 6u);  // the quoted newline and the blank line both count
  EXPECT_EQ(*reader->field(1), "千と千尋の神隠し 🎬");
  ASSERT_TRUE(reader->next());
  EXPECT_EQ(*reader->field(1), "plain \"quoted\" word");
  EXPECT_EQ(*reader->field(2), "Drama");
  EXPECT_FALSE(reader->next());
}

TEST(Csv, ShortRowsHaveMissingFields) {
  testing::TempDir dir;
  auto rows = read_all(dir.write("a.csv", "a,b,c\n1,2\n"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][2], "<missing>");
}

TEST(Csv, UnterminatedQuoteNamesFileAndLine) {
  testing::TempDir dir;
  auto path = dir.write("bad.csv", "a,b\n1,2\n3,\"never closed\n4,5\n");
  std::string message = error_of([&] { read_all(path); });
  EXPECT_NE(message.find("bad.csv:3"), std::string::npos) << message;
  EXPECT_NE(message.find("unterminated"), std::string::npos) << message;
}

TEST(Csv, GarbageAfterClosingQuoteIsAnErrorAndTheReaderRecovers) {
  testing::TempDir dir;
  auto path = dir.write("bad.csv", "a,b\n\"x\"y,1\n2,3\n");
  auto reader = open_records(path);
  std::string message = error_of([&] { reader->next(); });
  EXPECT_NE(message.find("bad.csv:2"), std::string::npos) << message;
  ASSERT_TRUE(reader->next());
  EXPECT_EQ(*reader->field(0), "2");
  EXPECT_EQ(reader->line(), 3u);
}

TEST(Csv, DuplicateOrEmptyHeaderIsRejected) {
  testing::TempDir dir;
  EXPECT_NE(error_of([&] { open_records(dir.write("d.csv", "a,a\n1,2\n")); }).find("twice"), std::string::npos);
  EXPECT_NE(error_of([&] { open_records(dir.write("e.csv", "")); }).find("empty file"), std::string::npos);
}

TEST(Jsonl, ReadsScalarsListsAndNulls) {
  testing::TempDir dir;
  auto path = dir.write("a.jsonl",
                        "{\"user\": \"u1\", \"item\": 7, \"rating\": 4.5, \"genres\": [\"Comedy\", \"Drama\"]}\n"
                        "\n"
                        "{\"user\": \"u2\", \"item\": 8, \"rating\": null, \"genres\": []}\n");
  auto reader = open_records(path);
  ASSERT_TRUE(reader->next());
  EXPECT_EQ(*reader->field(reader->column_index("item")), "7");
  EXPECT_EQ(*reader->field(reader->column_index("genres")), "Comedy|Drama");
  ASSERT_TRUE(reader->next());
  EXPECT_EQ(reader->line(), 3u);
  EXPECT_FALSE(reader->field(reader->column_index("rating")).has_value());
  EXPECT_FALSE(reader->next());
}

TEST(Jsonl, BadLineNamesFileAndLine) {
  testing::TempDir dir;
  auto path = dir.write("a.jsonl", "{\"user\": 1}\n{\"user\": \n");
  auto reader = open_records(path);
  ASSERT_TRUE(reader->next());
  std::string message = error_of([&] { reader->next(); });
  EXPECT_NE(message.find("a.jsonl:2"), std::string::npos) << message;
  EXPECT_FALSE(reader->next());
}

TEST(Records, UnknownExtensionIsRejected) {
  testing::TempDir dir;
  EXPECT_NE(error_of([&] { open_records(dir.write("a.parquet", "x")); }).find("extension"), std::string::npos);
}

}  // namespace
}  // namespace userip::data
