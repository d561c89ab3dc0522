// docs/OPTIONS.md and the commands' --help come from the option tables: the page must be what
// `userip options` prints now, and every flag the page names must be in its commands' --help with
// the same meaning.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "support/temp_dir.h"

namespace userip {
namespace {

TEST(OptionsPage, DocsOptionsIsWhatUseripOptionsPrints) {
  std::string printed;
  ASSERT_EQ(testing::run_cli("--log-level warn options", &printed), 0) << printed;
  EXPECT_EQ(printed, testing::read_source_file("docs/OPTIONS.md"))
      << "docs/OPTIONS.md is out of date: run build/bin/userip options > docs/OPTIONS.md";
}

// The commands whose flags each table of the page describes.
const std::map<std::string, std::vector<std::string>>& commands_of_tables() {
  static const std::map<std::string, std::vector<std::string>> commands = {
      {"split", {"data split", "data import", "data synth", "data movielens"}},
      {"pretrain", {"lm pretrain"}},
      {"fit", {"profile fit"}},
      {"model", {"ctr train"}},
      {"train", {"ctr train"}},
      {"features", {"ctr train"}},
      {"compare", {"experiment"}},
  };
  return commands;
}

std::vector<std::string> cells(const std::string& row) {
  std::vector<std::string> out;
  std::string cell;
  for (std::size_t i = 1; i < row.size(); ++i) {
    if (row[i] == '\\' && i + 1 < row.size() && row[i + 1] == '|') {
      cell += '|';
      ++i;
    } else if (row[i] == '|') {
      out.push_back(cell.substr(cell.find_first_not_of(' ') == std::string::npos ? 0 : cell.find_first_not_of(' ')));
      while (!out.back().empty() && out.back().back() == ' ') out.back().pop_back();
      cell.clear();
    } else {
      cell += row[i];
    }
  }
  return out;
}

TEST(OptionsPage, EveryFlagOnThePageIsInItsCommandsHelpWithItsMeaning) {
  std::istringstream page(testing::read_source_file("docs/OPTIONS.md"));
  std::map<std::string, std::string> help;  // command -> --help text
  std::string line, table;
  int flags_seen = 0;
  while (std::getline(page, line)) {
    if (line.rfind("## ", 0) == 0) table = line.substr(3);
    if (line.rfind("| `", 0) != 0) continue;
    ASSERT_TRUE(commands_of_tables().count(table)) << "a table the test does not know: " << table;
    const auto row = cells(line);
    ASSERT_EQ(row.size(), 6u) << line;
    if (row[1].empty()) continue;  // no flag: a file-only option
    const std::string flag = row[1].substr(1, row[1].find('`', 1) - 1);
    for (const auto& command : commands_of_tables().at(table)) {
      if (!help.count(command)) {
        ASSERT_EQ(testing::run_cli(command + " --help", &help[command]), 0) << command;
      }
      const std::string& text = help[command];
      EXPECT_NE(text.find(flag), std::string::npos) << command << " --help lacks " << flag;
      EXPECT_NE(text.find(row[5]), std::string::npos) << command << " --help lacks the meaning of " << flag << ": "
                                                       << row[5];
      ++flags_seen;
    }
  }
  EXPECT_GT(flags_seen, 40);
}

}  // namespace
}  // namespace userip
