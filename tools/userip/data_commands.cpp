#include <fmt/format.h>

#include <iostream>

#include "commands.h"
#include "option_flags.h"
#include "userip/data/dataset.h"
#include "userip/data/export.h"
#include "userip/data/import.h"
#include "userip/data/movielens.h"
#include "userip/data/split.h"
#include "userip/data/stats.h"
#include "userip/data/synth.h"
#include "userip/util/error.h"
#include "userip/util/log.h"

namespace userip::cli {

namespace {

void add_split_options(CLI::App* command, data::SplitConfig& split) {
  add_option_flags(command, data::SplitConfig::table(), split);
}

void print_report(const data::ImportReport& r, const std::filesystem::path& out) {
  std::cout << fmt::format("imported {} of {} rows: {} users, {} items -> {} ({:.2f} s, {:.0f} rows/s)\n",
                           r.rows_imported, r.rows_read, r.num_users, r.num_items, out.string(), r.seconds,
                           r.seconds > 0 ? static_cast<double>(r.rows_read) / r.seconds : 0.0);
  std::uint64_t skipped = r.bad_rows + r.unknown_item_rows + r.bad_item_rows;
  if (skipped > 0) {
    std::cout << fmt::format("skipped {} bad rows ({} malformed interactions, {} naming unknown items, {} bad item "
                             "rows); first examples:\n",
                             skipped, r.bad_rows, r.unknown_item_rows, r.bad_item_rows);
    for (const auto& e : r.examples) std::cout << "  " << e << "\n";
  }
}

// Cuts and stores the split of a freshly written dataset, and prints its statistics summary.
void split_and_store(const std::filesystem::path& dir, const data::SplitConfig& config) {
  data::Dataset dataset = data::Dataset::load(dir);
  dataset.split = data::make_split(dataset, config);
  data::save_split(dir, dataset);
  auto cold = data::cold_users(dataset);
  std::cout << fmt::format("split stored (train {} / valid {} / test {}, {} cold users, seed {})\n",
                           config.train_ratio, config.valid_ratio, config.test_ratio,
                           std::count(cold.begin(), cold.end(), true), config.seed);
}

std::map<std::string, data::FieldKind> parse_field_kinds(const std::vector<std::string>& specs) {
  std::map<std::string, data::FieldKind> kinds;
  for (const auto& spec : specs) {
    auto eq = spec.find('=');
    USERIP_CHECK(eq != std::string::npos && eq > 0, "--field-kind expects NAME=KIND, got '{}'", spec);
    kinds[spec.substr(0, eq)] = data::field_kind_from_string(spec.substr(eq + 1));
  }
  return kinds;
}

struct DataImportCommand {
  data::ImportOptions options;
  data::SplitConfig split;
  std::string items;
  std::vector<std::string> kinds;
  std::string separator = "|";
  bool no_split = false;

  void run() {
    split.validate();
    if (!items.empty()) options.items = items;
    USERIP_CHECK(separator.size() == 1, "--list-separator must be one character, got '{}'", separator);
    options.list_separator = separator[0];
    options.field_kinds = parse_field_kinds(kinds);
    print_report(data::import_dataset(options), options.out);
    if (!no_split) split_and_store(options.out, split);
  }
};

struct DataMovieLensCommand {
  data::MovieLensOptions options;
  data::SplitConfig split;

  void run() const {
    split.validate();
    print_report(data::import_movielens(options), options.out);
    split_and_store(options.out, split);
  }
};

struct DataSynthCommand {
  data::SynthOptions options;
  data::SplitConfig split;
  std::filesystem::path out;

  void run() const {
    split.validate();
    const data::SynthWorld world = data::generate_synthetic(options);
    data::save_synthetic(world, out);
    std::cout << fmt::format("synthesised {} users, {} items, {} interactions -> {} (ground truth in "
                             "ground_truth.csv)\n",
                             world.dataset.num_users(), world.dataset.num_items(), world.dataset.num_interactions(),
                             out.string());
    split_and_store(out, split);
  }
};

struct DataSplitCommand {
  std::filesystem::path dataset;
  data::SplitConfig split;

  void run() const { split_and_store(dataset, split); }
};

struct DataStatsCommand {
  std::filesystem::path dataset;
  bool json = false;

  void run() const {
    const auto stats = data::dataset_stats(data::Dataset::load(dataset));
    std::cout << (json ? stats.dump(2) + "\n" : data::format_stats(stats));
  }
};

struct DataExportCommand {
  std::filesystem::path dataset, out;

  void run() const {
    data::export_csv(data::Dataset::load(dataset), out);
    std::cout << fmt::format("wrote {} and {}\n", (out / "interactions.csv").string(), (out / "items.csv").string());
  }
};

}  // namespace

void add_data_commands(CLI::App& app, GlobalOptions& global) {
  auto* data = app.add_subcommand("data", "Datasets: import, MovieLens, synthetic worlds, splits, statistics");
  data->require_subcommand(1);

  {  // data movielens
    auto* cmd = data->add_subcommand(
        "movielens", "Export MovieLens ml-latest-small from Debian's r-cran-dslabs and import it (with a split)");
    auto c = std::make_shared<DataMovieLensCommand>();
    cmd->add_option("--out", c->options.out, "Dataset directory to create (replaced if it exists)")->required();
    cmd->add_option("--dslabs-dir", c->options.dslabs_data_dir, "R data directory of the dslabs package")
        ->capture_default_str();
    add_split_options(cmd, c->split);
    on_run(cmd, [c] { c->run(); });
  }

  {  // data import
    auto* cmd = data->add_subcommand("import", "Import interactions (and an item table) from CSV or JSON lines");
    auto c = std::make_shared<DataImportCommand>();
    auto& o = c->options;
    cmd->add_option("--interactions", o.interactions, "Interactions file (.csv, .tsv, .jsonl)")
        ->required()
        ->check(CLI::ExistingFile);
    cmd->add_option("--items", c->items, "Item table (.csv, .tsv, .jsonl); interactions must name its items")
        ->check(CLI::ExistingFile);
    cmd->add_option("--out", o.out, "Dataset directory to create (replaced if it exists)")->required();
    cmd->add_option("--user-column", o.user_column, "User id column")->capture_default_str();
    cmd->add_option("--item-column", o.item_column, "Item id column of the interactions")->capture_default_str();
    cmd->add_option("--rating-column", o.rating_column, "Rating column (preferred when present)")
        ->capture_default_str();
    cmd->add_option("--click-column", o.click_column, "Click column (0/1), used when there is no rating column")
        ->capture_default_str();
    cmd->add_option("--timestamp-column", o.timestamp_column,
                    "Time column: epoch seconds or ISO 8601 (row order if absent)")
        ->capture_default_str();
    cmd->add_option("--item-id-column", o.item_id_column, "Item id column of the item table")->capture_default_str();
    cmd->add_option("--item-fields-from-interactions", o.item_fields_from_interactions,
                    "Item fields repeated on every interaction row (denormalised logs)")
        ->delimiter(',');
    cmd->add_option("--list-fields", o.list_fields, "Fields holding category lists separated by --list-separator (others are read as lists when "
                    "at least 5% of their values hold the separator and some part recurs)")
        ->delimiter(',');
    cmd->add_option("--list-separator", c->separator, "Separator inside list fields")->capture_default_str();
    cmd->add_option("--field-kind", c->kinds, "Force a field's kind: NAME=text|category|category_list|number");
    cmd->add_flag("--skip-bad-rows", o.skip_bad_rows,
                  "Skip malformed rows and report their count and first examples instead of stopping");
    cmd->add_flag("--no-split", c->no_split, "Import only; cut the split later with `userip data split`");
    add_split_options(cmd, c->split);
    on_run(cmd, [c] { c->run(); });
  }

  {  // data synth
    auto* cmd = data->add_subcommand("synth", "Generate a synthetic world with known latent user profiles");
    auto c = std::make_shared<DataSynthCommand>();
    auto* o = &c->options;
    cmd->add_option("--out", c->out, "Dataset directory to create (replaced if it exists)")->required();
    cmd->add_option("--users", o->users, "Number of users")->capture_default_str();
    cmd->add_option("--items", o->items, "Number of items")->capture_default_str();
    cmd->add_option("--taste-classes", o->taste_classes, "Latent taste classes K")->capture_default_str();
    cmd->add_option("--background-classes", o->background_classes, "Latent background classes J (1-3)")
        ->capture_default_str();
    cmd->add_option("--categories", o->categories, "Item categories")->capture_default_str();
    cmd->add_option("--mean-interactions", o->mean_interactions, "Mean interactions per user (before activity)")
        ->capture_default_str();
    cmd->add_option("--noise", o->noise, "0 = behaviour fully driven by the profile, 1 = profile-free")
        ->capture_default_str();
    cmd->add_option("--synth-seed", o->seed, "Seed of the generator")->capture_default_str();
    add_split_options(cmd, c->split);
    on_run(cmd, [c] { c->run(); });
  }

  {  // data split
    auto* cmd = data->add_subcommand("split", "(Re)cut the train/validation/test/cold split of a dataset");
    auto c = std::make_shared<DataSplitCommand>();
    cmd->add_option("--dataset", c->dataset, "Dataset directory")->required();
    add_split_options(cmd, c->split);
    on_run(cmd, [c] { c->run(); });
  }

  {  // data stats
    auto* cmd = data->add_subcommand("stats", "Counts, sparsity, activity quantiles, ratings and click rates");
    auto c = std::make_shared<DataStatsCommand>();
    cmd->add_option("--dataset", c->dataset, "Dataset directory")->required();
    cmd->add_flag("--json", c->json, "Print JSON instead of a table");
    on_run(cmd, [c] { c->run(); });
  }

  {  // data export
    auto* cmd = data->add_subcommand("export", "Write a dataset as CSV with the original ids");
    auto c = std::make_shared<DataExportCommand>();
    cmd->add_option("--dataset", c->dataset, "Dataset directory")->required();
    cmd->add_option("--out", c->out, "Directory for interactions.csv and items.csv")->required();
    on_run(cmd, [c] { c->run(); });
  }
}

}  // namespace userip::cli
