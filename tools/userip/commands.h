#pragma once
// Each file in tools/userip/ adds one group of subcommands to the CLI. The commands parse
// options and call the library; they hold no logic of their own.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace userip::cli {

struct GlobalOptions {
  int threads = 0;  // 0 = all cores
  std::string log_level = "info";
};

// The work a subcommand runs after parsing (so that global options are applied first).
using Action = std::function<void()>;
// Registers `action` to run when `command` was chosen on the command line.
void on_run(CLI::App* command, Action action);

void add_data_commands(CLI::App& app, GlobalOptions& global);
void add_lm_commands(CLI::App& app, GlobalOptions& global);
void add_bank_commands(CLI::App& app, GlobalOptions& global);
void add_profile_commands(CLI::App& app, GlobalOptions& global);
void add_ctr_commands(CLI::App& app, GlobalOptions& global);
void add_report_commands(CLI::App& app, GlobalOptions& global);
void add_serve_commands(CLI::App& app, GlobalOptions& global);
void add_dist_commands(CLI::App& app, GlobalOptions& global);
void add_options_commands(CLI::App& app, GlobalOptions& global);

}  // namespace userip::cli
