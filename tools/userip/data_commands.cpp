#include "commands.h"

namespace userip::cli {

void add_data_commands(CLI::App& app, GlobalOptions& global) {
  auto* data = app.add_subcommand("data", "Datasets: import, MovieLens, synthetic worlds, splits, statistics");
  data->require_subcommand(1);
}

}  // namespace userip::cli
