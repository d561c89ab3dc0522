// The module table in README.md ("Layout") is the one picture of which module may link which: it
// must say what src/CMakeLists.txt builds, or a newcomer learns an architecture that is not there.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "support/temp_dir.h"

namespace userip {
namespace {

struct ModuleLinks {
  std::set<std::string> deps;
  bool torch = false;
  bool operator==(const ModuleLinks& o) const { return deps == o.deps && torch == o.torch; }
};

std::map<std::string, ModuleLinks> modules_in_the_build() {
  const std::string cmake = testing::read_source_file("src/CMakeLists.txt");
  std::map<std::string, ModuleLinks> modules;
  const std::regex call(R"(userip_module\((\w+)([^)]*)\))");
  for (std::sregex_iterator it(cmake.begin(), cmake.end(), call), end; it != end; ++it) {
    ModuleLinks links;
    std::istringstream words((*it)[2].str());
    std::string word;
    bool in_deps = false;
    while (words >> word) {
      if (word == "TORCH") links.torch = true;
      if (word == "DEPS" || word == "LIBS" || word == "PRIVATE_LIBS" || word == "TORCH") {
        in_deps = word == "DEPS";
        continue;
      }
      if (in_deps) links.deps.insert(word);
    }
    modules[(*it)[1].str()] = links;
  }
  return modules;
}

std::map<std::string, ModuleLinks> modules_in_the_readme() {
  std::istringstream readme(testing::read_source_file("README.md"));
  std::map<std::string, ModuleLinks> modules;
  std::string line;
  bool in_table = false;
  const std::regex row(R"(\|\s*(\w+)\s*\|\s*([^|]*?)\s*\|\s*(yes|no)\s*\|)");
  while (std::getline(readme, line)) {
    if (line.rfind("| module | may link | libtorch |", 0) == 0) {
      in_table = true;
      continue;
    }
    if (!in_table) continue;
    if (line.rfind("|", 0) != 0) break;
    std::smatch m;
    if (!std::regex_match(line, m, row)) continue;  // the |---| rule
    ModuleLinks links;
    links.torch = m[3] == "yes";
    std::istringstream deps(m[2].str());
    std::string dep;
    while (std::getline(deps, dep, ',')) {
      dep.erase(0, dep.find_first_not_of(' '));
      if (!dep.empty() && dep != "—") links.deps.insert(dep);
    }
    modules[m[1].str()] = links;
  }
  return modules;
}

TEST(ModuleMap, TheReadmeTableIsTheBuildsModuleLinks) {
  const auto built = modules_in_the_build();
  ASSERT_GE(built.size(), 9u) << "src/CMakeLists.txt: no userip_module(...) calls found";
  const auto documented = modules_in_the_readme();
  ASSERT_FALSE(documented.empty()) << "README.md: no '| module | may link | libtorch |' table";
  for (const auto& [name, links] : built) {
    auto it = documented.find(name);
    ASSERT_NE(it, documented.end()) << "README.md does not list module " << name;
    EXPECT_EQ(it->second.deps, links.deps) << "module " << name;
    EXPECT_EQ(it->second.torch, links.torch) << "module " << name << " (libtorch)";
  }
  EXPECT_EQ(documented.size(), built.size());
}

}  // namespace
}  // namespace userip
