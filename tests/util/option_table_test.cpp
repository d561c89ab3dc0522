#include "userip/util/option_table.h"

#include <gtest/gtest.h>

#include "support/temp_dir.h"

namespace userip {
namespace {

using nlohmann::json;
using testing::expect_error;

enum class ToyColour { red, green };
constexpr EnumName<ToyColour> kToyColourNames[] = {{ToyColour::red, "red"}, {ToyColour::green, "green"}};

struct Inner {
  std::int64_t depth = 3;
};

struct Toy {
  int rounds = 8;
  double rate = 0.05;
  std::string name = "x";
  ToyColour colour = ToyColour::red;
  std::vector<ToyColour> palette = {ToyColour::red};
  std::optional<double> cap;
  std::map<std::string, std::int64_t> per_name;
  Inner inner;
  int added_later = 0;
  double interval = 60;

  static const OptionTable<Toy>& table() {
    static const OptionTable<Toy> t = [] {
      OptionTable<Toy> t("toy");
      t.add("rounds", &Toy::rounds, "Rounds").range(1, 1000);
      t.add("rate", &Toy::rate, "Rate | pipe").range(0, 10).open_below();
      t.add("name", &Toy::name, "Name");
      t.add_enum("colour", &Toy::colour, kToyColourNames, "colour", "ToyColour");
      t.add_enum_list("palette", &Toy::palette, kToyColourNames, "colour", "ToyColours");
      t.add("cap", &Toy::cap, "Cap; null: none").above(0);
      t.add("per_name", &Toy::per_name, "K per name").alias("names");
      t.add<std::int64_t>("depth", [](Toy& o) -> std::int64_t& { return o.inner.depth; }, "Depth").at_least(1);
      t.add("added_later", &Toy::added_later, "Added after files existed")
          .written_when([](const Toy& o) { return o.added_later != 0; })
          .absent_means(0);
      t.add("interval", &Toy::interval, "Seconds").at_least(0).not_saved();
      return t;
    }();
    return t;
  }
};

TEST(OptionTable, WritesAndReadsBackEveryOption) {
  Toy a;
  a.rounds = 5;
  a.rate = 0.5;
  a.name = "y";
  a.colour = ToyColour::green;
  a.palette = {ToyColour::green, ToyColour::red};
  a.cap = 2.5;
  a.per_name = {{"taste", 4}};
  a.inner.depth = 7;
  a.added_later = 2;
  const json j = Toy::table().to_json(a);
  EXPECT_EQ(j.at("colour"), "green");
  EXPECT_EQ(j.at("palette"), json::array({"green", "red"}));
  EXPECT_EQ(j.at("depth"), 7);
  EXPECT_FALSE(j.contains("interval"));  // not saved: it does not shape the result
  Toy b;
  Toy::table().read(j, b, "toy.json", Absent::required);
  EXPECT_EQ(Toy::table().to_json(b), j);
  EXPECT_EQ(b.inner.depth, 7);
  EXPECT_EQ(*b.cap, 2.5);
}

TEST(OptionTable, AnOptionAddedLaterIsWrittenOnlyWhenSetAndReadAsItsOldMeaning) {
  Toy a;
  json j = Toy::table().to_json(a);
  EXPECT_FALSE(j.contains("added_later"));
  Toy b;
  b.added_later = 9;
  Toy::table().read(j, b, "old.json", Absent::required);
  EXPECT_EQ(b.added_later, 0);
  j.erase("rounds");
  expect_error([&] { Toy::table().read(j, b, "old.json", Absent::required); }, {"old.json", "lack \"rounds\""});
  Toy c;
  c.rounds = 3;
  Toy::table().read(j, c, "config", Absent::keep);  // a configuration keeps what it does not name
  EXPECT_EQ(c.rounds, 3);
}

TEST(OptionTable, ErrorsNameTheSourceAndTheKey) {
  Toy o;
  expect_error([&] { Toy::table().read(json{{"rounds", 0}}, o, "f.json", Absent::keep); },
               {"f.json: \"rounds\" must be in [1, 1000], got 0"});
  expect_error([&] { Toy::table().read(json{{"rounds", "3"}}, o, "f.json", Absent::keep); },
               {"f.json: \"rounds\" must be an integer"});
  expect_error([&] { Toy::table().read(json{{"rounds", 3.5}}, o, "f.json", Absent::keep); },
               {"\"rounds\" must be an integer"});
  expect_error([&] { Toy::table().read(json{{"rounds", 1LL << 40}}, o, "f.json", Absent::keep); },
               {"\"rounds\" is out of range"});
  expect_error([&] { Toy::table().read(json{{"rate", 0}}, o, "f.json", Absent::keep); },
               {"\"rate\" must be in (0, 10], got 0"});
  expect_error([&] { Toy::table().read(json{{"colour", "blue"}}, o, "f.json", Absent::keep); },
               {"\"colour\"", "unknown colour 'blue' (expected one of: red, green)"});
  expect_error([&] { Toy::table().read(json{{"palette", json::array({"red", 1})}}, o, "f.json", Absent::keep); },
               {"\"palette\" must be a list of strings"});
  expect_error([&] { Toy::table().read(json{{"roundz", 1}}, o, "f.json", Absent::keep); },
               {"f.json: unknown key \"roundz\" (expected one of: rounds, rate"});
  expect_error([&] { Toy::table().read(json{{"per_name", json{{"a", "b"}}}}, o, "f.json", Absent::keep); },
               {"\"per_name\" must be an object of integers"});
  expect_error([&] { Toy::table().read(json::array(), o, "f.json", Absent::keep); }, {"f.json: expected a JSON object"});
}

TEST(OptionTable, ChecksNameTheFlagForTheCommandLine) {
  Toy o;
  o.inner.depth = 0;
  expect_error([&] { Toy::table().check(o, Spelling::flag); }, {"--depth must be >= 1, got 0"});
  EXPECT_EQ(Toy::table().name_of("per_name", Spelling::flag), "--per-name");
  EXPECT_EQ(Toy::table().name_of("per_name", Spelling::key), "\"per_name\"");
  EXPECT_EQ(Toy::table().field("per_name").flags, (std::vector<std::string>{"per-name", "names"}));
  o.inner.depth = 1;
  o.cap.reset();  // an unset optional has no range to break
  EXPECT_NO_THROW(Toy::table().check(o, Spelling::flag));
}

TEST(OptionTable, TextFromTheCommandLineIsReadByKind) {
  EXPECT_EQ(option_detail::parse_text("42", "integer"), 42);
  EXPECT_EQ(option_detail::parse_text("-3", "integer"), -3);
  EXPECT_EQ(option_detail::parse_text("0.25", "number"), 0.25);
  EXPECT_EQ(option_detail::parse_text("true", "boolean"), true);
  expect_error([] { option_detail::parse_text("4x", "integer"); }, {"must be an integer, got '4x'"});
  expect_error([] { option_detail::parse_text("", "number"); }, {"must be a number"});
  expect_error([] { option_detail::parse_text("nan", "number"); }, {"must be a number"});
  expect_error([] { option_detail::parse_text("yes", "boolean"); }, {"must be true or false"});
}

TEST(OptionTable, TheMarkdownTableHasARowPerOption) {
  const std::string md = Toy::table().markdown();
  EXPECT_NE(md.find("| `rounds` | `--rounds` | integer | 8 | [1, 1000] | Rounds |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `rate` | `--rate` | number | 0.05 | (0, 10] | Rate \\| pipe |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `colour` | `--colour` | one of: red, green | red |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `cap` | `--cap` | number or null | unset | > 0 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `per_name` | `--per-name`, `--names` |"), std::string::npos) << md;
}

TEST(OptionTable, AKeyDeclaredTwiceIsAnError) {
  OptionTable<Toy> t("twice");
  t.add("rounds", &Toy::rounds, "Rounds");
  expect_error([&] { t.add("rounds", &Toy::rounds, "Again"); }, {"declares 'rounds' twice"});
}

}  // namespace
}  // namespace userip
