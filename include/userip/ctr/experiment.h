#pragma once
// `userip experiment`: do the profile IDs make a CTR model better, and by how much? Trains every
// chosen CTR model (an experiment of the configuration file) with every variant over several
// seeds, measures AUC, LogLoss and gAUC for all warm users, sparse users and cold users, and
// compares each variant with the base by a paired t-test over seeds.
//
// Variants (METHOD.md §3): base (no profile); codes (UserIP profile IDs from the feature bank);
// dense (UserIP profile vectors); control-genres, control-cf and control-history (k-means codes
// that use no LM).
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/util/option_table.h"

#include "userip/ctr/pipeline.h"

namespace userip::ctr {

enum class Variant { base, codes, dense, control_genres, control_cf, control_history };
std::string to_string(Variant variant);
Variant variant_from_string(std::string_view name);  // error lists the names

// The "compare" section of the configuration file.
struct CompareConfig {
  std::vector<std::string> experiments;  // empty = every experiment of the file (or the base alone)
  int seeds = 5;                         // runs seed_base, seed_base + 1, ...
  std::uint64_t seed_base = 1;
  std::vector<Variant> variants = {Variant::base,           Variant::codes,      Variant::dense,
                                   Variant::control_genres, Variant::control_cf, Variant::control_history};
  std::int64_t control_codes = 8;  // k of every control
  std::string control_field;       // item field of control-genres and control-history; empty = the first category field
  std::int64_t cf_dim = 16;        // rank of control-cf's factorisation
  double sparse_quantile = 0.25;   // sparse users: the bottom quantile of training history length
  // Learning rates tried for every model and variant, each reporting the rate whose runs have the best
  // mean validation AUC over the seeds, so that no variant is judged at a rate that suits another.
  // Empty: the train section's rate alone.
  std::vector<double> learning_rates;

  // Every option above, declared once: JSON key (the configuration's "compare" section), meaning, range.
  static const OptionTable<CompareConfig>& table();
  void validate() const;
  nlohmann::json to_json() const;
  static CompareConfig from_json(const nlohmann::json& json, const CompareConfig& defaults);
};

struct ExperimentInputs {
  const data::Dataset* dataset = nullptr;
  std::string dataset_path;
  nlohmann::json config = nlohmann::json::object();
  std::string config_path;
  ProfileTables userip;  // codes for the codes variant, vectors for dense
  // Fingerprint of what is behind `userip` (the codes, the profile vector files), so a rerun with
  // new profiles does not reuse old runs.
  std::string userip_fingerprint;
};

struct ExperimentOptions {
  TrainOptions train;
  bool resume = true;  // reuse runs of runs.jsonl whose inputs are unchanged
  // The ranks of `userip launch` (null: one process). Each run is trained whole by one rank, run i
  // by rank i mod W, so the results are those of one process with the same threads; rank 0 writes
  // the files. While it runs, each rank appends its finished runs to runs-rank<R>.jsonl.
  dist::World* world = nullptr;
};

// Runs everything, writing `out`/runs.jsonl as runs finish (so an interrupted experiment resumes)
// and finally `out`/experiment.json and `out`/results.md. Returns experiment.json's content.
nlohmann::json run_experiment(const ExperimentInputs& inputs, const CompareConfig& compare,
                              const std::filesystem::path& out, const ExperimentOptions& options);

// The table of results.md from experiment.json: per model, variant and group, mean ± std over
// seeds, and the paired difference to base with its p-value.
std::string results_table(const nlohmann::json& experiment);

}  // namespace userip::ctr
