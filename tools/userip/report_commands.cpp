#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "commands.h"
#include "userip/report/report.h"

namespace userip::cli {

namespace {

struct ReportCommand {
  report::ReportInputs inputs;
  std::filesystem::path out;

  void run() const {
    const auto summary = report::write_report(inputs, out);
    for (const auto& note : summary.notes) std::cerr << "note: " << note << "\n";
    std::cout << fmt::format("wrote {} ({} plots, {} tables); render it with scripts/render_report.sh {}\n",
                             out.string(), summary.plots, summary.tables, out.string());
  }
};

}  // namespace

void add_report_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* cmd = app.add_subcommand(
      "report",
      "Write one self-contained HTML page of a run: LM pretraining and EM curves, code usage, a 2-D map of the "
      "profiles, what each code means, and the CTR experiment's metrics with paired differences to base "
      "(docs/REPORT.md; render it with scripts/render_report.sh)");
  auto c = std::make_shared<ReportCommand>();
  auto& inputs = c->inputs;
  cmd->add_option("--experiment", inputs.experiment,
                  "`userip experiment` output directory (experiment.json), or the file itself")
      ->required();
  cmd->add_option("--out", c->out, "HTML file to write (atomically)")->required();
  cmd->add_option("--lm", inputs.lm, "`userip lm pretrain` output directory (pretrain_log.jsonl)");
  cmd->add_option("--profiles", inputs.profiles,
                  "`userip profile fit` output directory (profile.json, log.jsonl, profiles.safetensors, users.txt, "
                  "codes.csv)");
  cmd->add_option("--explanations", inputs.explanations, "JSON lines written by `userip profile explain --json`");
  cmd->add_option("--title", inputs.title, "Title of the page")->capture_default_str();
  cmd->add_option("--max-points", inputs.max_projection_points, "Most users drawn in each profile scatter")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  on_run(cmd, [c] { c->run(); });
}

}  // namespace userip::cli
