#include <gtest/gtest.h>

#include "support/temp_dir.h"
#include "userip/data/dataset.h"
#include "userip/data/import.h"
#include "userip/util/error.h"

namespace userip::data {
namespace {

ImportOptions options_for(const testing::TempDir& dir, const std::filesystem::path& interactions) {
  ImportOptions o;
  o.interactions = interactions;
  o.out = dir / "dataset";
  o.show_progress = false;
  return o;
}

std::string import_error(const ImportOptions& o) {
  try {
    import_dataset(o);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Import, EncodesIdsAndKeepsOriginals) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("i.csv",
                                      "user,item,rating,timestamp\n"
                                      "alice,m1,4,100\n"
                                      "bob,m2,2.5,2016-01-31T12:00:00Z\n"
                                      "alice,m2,5,2016-01-31\n"));
  auto report = import_dataset(o);
  EXPECT_EQ(report.rows_imported, 3u);
  Dataset d = Dataset::load(o.out);
  EXPECT_EQ(d.user_ids, (std::vector<std::string>{"alice", "bob"}));
  EXPECT_EQ(d.item_ids, (std::vector<std::string>{"m1", "m2"}));
  EXPECT_EQ(d.interactions.user, (std::vector<std::uint32_t>{0, 1, 0}));
  EXPECT_EQ(d.interactions.item, (std::vector<std::uint32_t>{0, 1, 1}));
  EXPECT_EQ(d.interactions.rating[1], 2.5f);
  EXPECT_EQ(d.interactions.timestamp[1], 1454241600);
  EXPECT_EQ(d.interactions.timestamp[2], 1454198400);
  EXPECT_EQ(d.find_user("bob"), 1u);
  EXPECT_FALSE(d.find_user("carol"));
  EXPECT_FALSE(d.has_split());
}

TEST(Import, ParsesTimestamps) {
  EXPECT_EQ(parse_timestamp("1260759144"), 1260759144);
  EXPECT_EQ(parse_timestamp("1970-01-02"), 86400);
  EXPECT_EQ(parse_timestamp("2000-03-01 00:00:01"), 951868801);
  EXPECT_EQ(parse_timestamp("2000-03-01T02:00:00+02:00"), 951868800);
  EXPECT_FALSE(parse_timestamp("yesterday"));
  EXPECT_FALSE(parse_timestamp("2000-13-01"));
}

TEST(Import, BrokenRowStopsTheImportNamingFileLineAndField) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("log.csv", "user,item,rating,timestamp\nu1,i1,4,1\nu2,i2,lots,2\nu3,i3,3,3\n"));
  std::string message = import_error(o);
  EXPECT_NE(message.find("log.csv:3"), std::string::npos) << message;
  EXPECT_NE(message.find("'rating'"), std::string::npos) << message;
  EXPECT_NE(message.find("--skip-bad-rows"), std::string::npos) << message;
  EXPECT_FALSE(std::filesystem::exists(o.out)) << "a failed import must not leave a dataset behind";
}

TEST(Import, SkipBadRowsCountsAndQuotesThem) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("log.csv",
                                      "user,item,rating,timestamp\n"
                                      "u1,i1,4,1\n"
                                      "u2,i2,lots,2\n"
                                      ",i3,3,3\n"
                                      "u4,i4,3,not-a-time\n"
                                      "u5,\"i5\"x,3,5\n"
                                      "u6,i6,1,6\n"));
  o.skip_bad_rows = true;
  auto report = import_dataset(o);
  EXPECT_EQ(report.rows_imported, 2u);
  EXPECT_EQ(report.bad_rows, 4u);
  ASSERT_EQ(report.examples.size(), 4u);
  EXPECT_NE(report.examples[0].find("log.csv:3"), std::string::npos);
  EXPECT_NE(report.examples[3].find("log.csv:6"), std::string::npos);
  Dataset d = Dataset::load(o.out);
  EXPECT_EQ(d.user_ids, (std::vector<std::string>{"u1", "u6"}));
  EXPECT_EQ(d.provenance["bad_rows_skipped"], 4);
}

TEST(Import, UnknownItemsAreReportedNotDropped) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("log.csv", "user,item,rating\nu1,i1,4\nu1,ghost,2\n"));
  o.items = dir.write("items.csv", "item,title,genres\ni1,One,Comedy|Drama\ni2,Two,Drama\n");
  std::string message = import_error(o);
  EXPECT_NE(message.find("log.csv:3"), std::string::npos) << message;
  EXPECT_NE(message.find("ghost"), std::string::npos) << message;
  o.skip_bad_rows = true;
  auto report = import_dataset(o);
  EXPECT_EQ(report.unknown_item_rows, 1u);
  EXPECT_TRUE(report.timestamps_from_row_order);
  Dataset d = Dataset::load(o.out);
  EXPECT_EQ(d.num_items(), 2u);  // items come from the table, even those never interacted with
  ASSERT_NE(d.field("genres"), nullptr);
  EXPECT_EQ(d.field("genres")->kind, FieldKind::category_list);
  EXPECT_EQ(d.field("genres")->values[0], "Comedy|Drama");
}

TEST(Import, ListFieldsAreRecognisedByTheirValuesWhateverTheirName) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("log.csv", "user,item,rating\nu1,i1,4\nu1,i2,2\nu2,i3,5\n"));
  o.items = dir.write("items.csv",
                      "item,name,x_labels,tier\n"
                      "i1,Alpha | Beta,red|blue,low\n"
                      "i2,Gamma,blue,low\n"
                      "i3,Delta,green | red,high\n"
                      "i4,Epsilon,red,low\n");
  import_dataset(o);
  Dataset d = Dataset::load(o.out);
  EXPECT_EQ(d.field("x_labels")->kind, FieldKind::category_list);
  EXPECT_EQ(d.field("x_labels")->values[2], "green|red");
  // A title holding the separator once, whose parts repeat nowhere, stays text.
  EXPECT_EQ(d.field("name")->kind, FieldKind::text);
  EXPECT_EQ(d.field("tier")->kind, FieldKind::category);
}

TEST(Import, ItemTableAsJsonLinesWithArraysAndInferredKinds) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("log.jsonl",
                                      "{\"user\": 1, \"item\": \"a\", \"click\": true, \"timestamp\": 5}\n"
                                      "{\"user\": 2, \"item\": \"b\", \"click\": 0, \"timestamp\": 6}\n"));
  o.items = dir.write("items.jsonl",
                      "{\"item\": \"a\", \"genres\": [\"X\", \"Y\"], \"price\": \"low\", \"year\": 1999}\n"
                      "{\"item\": \"b\", \"genres\": [\"Y\"], \"price\": \"low\", \"year\": 2001, \"blurb\": \"new key\"}\n"
                      "{\"item\": \"c\", \"genres\": [], \"price\": \"low\", \"year\": 2001}\n");
  import_dataset(o);
  Dataset d = Dataset::load(o.out);
  EXPECT_EQ(d.label_kind, LabelKind::click);
  EXPECT_EQ(d.interactions.rating, (std::vector<float>{1.0f, 0.0f}));
  EXPECT_EQ(d.field("genres")->values[0], "X|Y");
  EXPECT_EQ(d.field("price")->kind, FieldKind::category);
  EXPECT_EQ(d.field("year")->kind, FieldKind::number);
  ASSERT_NE(d.field("blurb"), nullptr);  // a key first seen on a later line still becomes a field
  EXPECT_EQ(d.field("blurb")->values[1], "new key");
  EXPECT_EQ(d.field("blurb")->values[0], "");
}

TEST(Import, ConflictingItemAttributesInADenormalisedLogAreBadRows) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("log.csv",
                                      "userId,movieId,rating,timestamp,title\n"
                                      "1,10,4,1,Heat\n"
                                      "2,10,3,2,Heat\n"
                                      "3,10,5,3,Cold\n"));
  o.user_column = "userId";
  o.item_column = "movieId";
  o.item_fields_from_interactions = {"title"};
  std::string message = import_error(o);
  EXPECT_NE(message.find("log.csv:4"), std::string::npos) << message;
  EXPECT_NE(message.find("line 2"), std::string::npos) << message;
}

TEST(Import, InvalidUtf8IsRejected) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("log.csv", "user,item,rating\nu\xFF,i1,4\n"));
  EXPECT_NE(import_error(o).find("log.csv:2"), std::string::npos);
}

TEST(Import, MissingColumnsAreNamed) {
  testing::TempDir dir;
  auto o = options_for(dir, dir.write("log.csv", "uid,item,rating\n1,2,3\n"));
  std::string message = import_error(o);
  EXPECT_NE(message.find("no column 'user'"), std::string::npos) << message;
  EXPECT_NE(message.find("uid, item, rating"), std::string::npos) << message;
}

}  // namespace
}  // namespace userip::data
