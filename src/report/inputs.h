#pragma once
// The report's input files, read and checked: every error names the file and the line or key.
// Any measured value may be JSON null (not measurable, e.g. the AUC of a group with one class) and
// is then std::nullopt, as is a value the file leaves out.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace userip::report {

using Measured = std::optional<double>;

struct PretrainPoint {
  std::int64_t step = 0;
  Measured train_loss;
  Measured heldout_perplexity;
};
// `<lm>/pretrain_log.jsonl`.
std::vector<PretrainPoint> read_pretrain_log(const std::filesystem::path& file);

struct AttributeRound {
  std::string name;
  Measured quantization_error;
  std::vector<Measured> code_perplexity;              // per codebook level
  std::vector<std::vector<double>> code_counts;       // per level, per code
};
struct EmRound {
  std::int64_t round = 0;
  Measured train_nll;
  Measured valid_nll;  // a negative value in the file means "not measured"
  std::vector<AttributeRound> attributes;  // in the file's order
};
// `<profiles>/log.jsonl`.
std::vector<EmRound> read_em_log(const std::filesystem::path& file);

struct MetricSummary {
  std::string experiment, variant, group, metric;
  Measured mean, std, diff_mean, diff_std, p_value;
  std::int64_t n = 0;
};
struct RunResult {
  std::string experiment, variant;
  std::int64_t seed = 0;
  nlohmann::ordered_json groups;  // group -> {metric: value|null, ...}, as in the file
};
struct Experiment {
  std::filesystem::path file;
  std::string dataset, config;
  std::vector<std::int64_t> seeds;
  std::vector<std::string> experiments, variants;
  // name -> {users, examples, ...}: all, sparse, cold first, then any others in file order
  std::vector<std::pair<std::string, nlohmann::ordered_json>> groups;
  std::vector<MetricSummary> summary;
  std::vector<RunResult> runs;

  const MetricSummary* find(const std::string& experiment, const std::string& variant, const std::string& group,
                            const std::string& metric) const;
  // Metrics in the summary: auc, log_loss, gauc first, then any others in first-seen order.
  std::vector<std::string> metrics() const;
};
// `path` is a `ctr experiment` directory or its experiment.json.
Experiment read_experiment(const std::filesystem::path& path);

struct CategoryShare {
  std::string value;
  Measured share, lift;
};
struct CodeExplanationRow {
  std::string attribute;
  std::int64_t level = 1;
  std::int64_t code = 0;
  std::string probe, continuation;
  std::string continuation_note;  // set when every code shares one continuation (then empty)
  Measured users, interactions_per_user, mean_rating, like_rate;
  std::vector<CategoryShare> top_categories;
  std::vector<CategoryShare> typical_items;  // value = the item's name
};
// JSON lines of `userip profile explain --json` (blank lines are skipped).
std::vector<CodeExplanationRow> read_explanations(const std::filesystem::path& file);

struct ProfileAttribute {
  std::string name;
  std::int64_t soft_tokens = 0;
};
// The "attributes" of `<profiles>/profile.json`, in the order of the profile tensor's slices.
std::vector<ProfileAttribute> read_profile_attributes(const std::filesystem::path& profile_json);

// Parses `text` (the contents of `file`), naming the file in the error.
nlohmann::ordered_json parse_json(const std::string& text, const std::string& where);

}  // namespace userip::report
