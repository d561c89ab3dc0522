#include "userip/util/enum_names.h"

#include <gtest/gtest.h>

#include "support/temp_dir.h"

namespace userip {
namespace {

enum class Colour { red, green, blue };
constexpr EnumName<Colour> kColourNames[] = {{Colour::red, "red"}, {Colour::green, "light-green"}};

TEST(EnumNames, NamesBothWaysAndTheErrorListsTheNames) {
  EXPECT_EQ(enum_name(kColourNames, Colour::green), "light-green");
  EXPECT_EQ(enum_from_name(kColourNames, "red", "colour"), Colour::red);
  EXPECT_EQ(enum_name_list(kColourNames), "red, light-green");
  EXPECT_EQ(enum_name(kColourNames, Colour::blue), "?");  // not in the table
  EXPECT_EQ(find_enum_name(kColourNames, Colour::blue), nullptr);
  testing::expect_error([] { enum_from_name(kColourNames, "Red", "colour"); },
                        {"unknown colour 'Red'", "expected one of: red, light-green"});
}

}  // namespace
}  // namespace userip
