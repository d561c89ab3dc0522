#include "userip/text/placeholders.h"

#include <gtest/gtest.h>

#include "support/temp_dir.h"
#include "userip/util/error.h"

namespace userip::text {
namespace {

TEST(Placeholders, SplitsLiteralsAndNamesWithDoubledBracesAsLiterals) {
  const auto parts = split_placeholders("Rated {rating}; {{not}} a {user.top2.genres}}}", "phrase");
  ASSERT_EQ(parts.size(), 5u);
  EXPECT_FALSE(parts[0].placeholder);
  EXPECT_EQ(parts[0].text, "Rated ");
  EXPECT_TRUE(parts[1].placeholder);
  EXPECT_EQ(parts[1].text, "rating");
  EXPECT_EQ(parts[2].text, "; {not} a ");
  EXPECT_TRUE(parts[3].placeholder);
  EXPECT_EQ(parts[3].text, "user.top2.genres");
  EXPECT_FALSE(parts[4].placeholder);
  EXPECT_EQ(parts[4].text, "}");
  EXPECT_TRUE(split_placeholders("", "phrase").empty());
  const auto adjacent = split_placeholders("{a}{b}", "phrase");
  ASSERT_EQ(adjacent.size(), 2u);
  EXPECT_TRUE(adjacent[0].placeholder && adjacent[1].placeholder);
}

TEST(Placeholders, AnUnclosedBraceNamesTheContextAndTheCharacter) {
  testing::expect_error([] { split_placeholders("Chose {title", "template t.json: behaviour"); },
                        {"template t.json: behaviour", "unclosed '{' at character 7", "\"Chose {title\""});
}

}  // namespace
}  // namespace userip::text
