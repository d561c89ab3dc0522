// `userip options`: every option table, as docs/OPTIONS.md shows it. The page is generated from
// the tables (util/option_table.h) by this command, and a test checks that it is current.
#include <algorithm>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "userip/ctr/experiment.h"
#include "userip/ctr/features.h"
#include "userip/ctr/models.h"
#include "userip/ctr/train.h"
#include "userip/data/dataset.h"
#include "userip/lm/pretrain.h"
#include "userip/profile/fit.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::cli {

namespace {

struct TableSection {
  std::string name;   // as `userip options NAME` takes it
  std::string title;  // where the options are given
  std::string (*markdown)();  // rendered only when printed: every start of userip lists the sections
};

template <typename Options>
std::string markdown_of() {
  return Options::table().markdown();
}

std::vector<TableSection> sections() {
  return {
      {"split", "`data movielens`, `data import`, `data synth`, `data split` (flags); the dataset's split.json",
       markdown_of<data::SplitConfig>},
      {"pretrain", "`lm pretrain` (flags); the model's pretrain.json", markdown_of<lm::PretrainOptions>},
      {"fit", "`profile fit` (flags); the fit's profile.json", markdown_of<profile::FitOptions>},
      {"model", "the CTR configuration's `model` section; `ctr train` flags where shown",
       markdown_of<ctr::ModelConfig>},
      {"train", "the CTR configuration's `train` section; `ctr train` flags where shown",
       markdown_of<ctr::TrainConfig>},
      {"features", "the CTR configuration's `features` section; `ctr train` flags where shown",
       markdown_of<ctr::FeatureConfig>},
      {"compare", "the CTR configuration's `compare` section; `experiment` flags where shown",
       markdown_of<ctr::CompareConfig>},
  };
}

std::string page(const std::vector<std::string>& only) {
  std::string out;
  if (only.empty()) {
    out +=
        "# Options\n\n"
        "Every option of the commands below is declared once, in its module's option table "
        "(`util/option_table.h`): its JSON key, its flag, its type, default, range and meaning. The JSON the "
        "project writes and reads, the range checks, the commands' flags and `--help`, and this page all come from "
        "that table. This page is generated: `build/bin/userip options > docs/OPTIONS.md` (a test fails when it "
        "is out of date). A flag in the second column after the first is an older spelling, still accepted. "
        "Errors name the option as it was given: the key in a JSON file, the flag on the command line.\n";
  }
  for (const auto& s : sections()) {
    if (!only.empty() && std::find(only.begin(), only.end(), s.name) == only.end()) continue;
    out += "\n## " + s.name + "\n\n" + s.title + ".\n\n" + s.markdown();
  }
  return out;
}

}  // namespace

void add_options_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* cmd = app.add_subcommand(
      "options", "Print every option table (key, flag, type, default, range, meaning) as docs/OPTIONS.md shows it");
  auto names = std::make_shared<std::vector<std::string>>();
  std::vector<std::string> known;
  for (const auto& s : sections()) known.push_back(s.name);
  cmd->add_option("table", *names, "Tables to print: " + join(known, ", ") + " (default: the whole page)")
      ->check(CLI::IsMember(known));
  on_run(cmd, [names] { std::cout << page(*names); });
}

}  // namespace userip::cli
