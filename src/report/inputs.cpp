#include "report/inputs.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::report {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

namespace {

void require_file(const fs::path& file, const char* produced_by) {
  USERIP_CHECK(fs::is_regular_file(file), "{} does not exist (expected the output of {})", file.string(),
               produced_by);
}

const Json& require(const Json& object, const char* key, const std::string& where) {
  auto it = object.find(key);
  USERIP_CHECK(it != object.end(), "{}: no '{}'", where, key);
  return *it;
}

std::string require_string(const Json& object, const char* key, const std::string& where) {
  const Json& value = require(object, key, where);
  USERIP_CHECK(value.is_string(), "{}: '{}' must be a string, not {}", where, key, value.type_name());
  return value.get<std::string>();
}

std::int64_t require_integer(const Json& object, const char* key, const std::string& where) {
  const Json& value = require(object, key, where);
  USERIP_CHECK(value.is_number_integer(), "{}: '{}' must be an integer, not {}", where, key, value.dump());
  return value.get<std::int64_t>();
}

const Json& require_array(const Json& object, const char* key, const std::string& where) {
  const Json& value = require(object, key, where);
  USERIP_CHECK(value.is_array(), "{}: '{}' must be an array, not {}", where, key, value.type_name());
  return value;
}

const Json& require_object(const Json& object, const char* key, const std::string& where) {
  const Json& value = require(object, key, where);
  USERIP_CHECK(value.is_object(), "{}: '{}' must be an object, not {}", where, key, value.type_name());
  return value;
}

// Null, absent and non-finite all mean "not measured": the writers emit NaN as null.
Measured as_measured(const Json& value, const std::string& what) {
  if (value.is_null()) return std::nullopt;
  USERIP_CHECK(value.is_number(), "{} must be a number or null, not {}", what, value.dump());
  const double x = value.get<double>();
  return std::isfinite(x) ? Measured(x) : std::nullopt;
}

Measured optional_number(const Json& object, const char* key, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end()) return std::nullopt;
  return as_measured(*it, fmt::format("{}: '{}'", where, key));
}

std::string optional_string(const Json& object, const char* key, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return "";
  USERIP_CHECK(it->is_string(), "{}: '{}' must be a string, not {}", where, key, it->type_name());
  return it->get<std::string>();
}

std::vector<std::string> string_list(const Json& object, const char* key, const std::string& where) {
  std::vector<std::string> out;
  for (const auto& item : require_array(object, key, where)) {
    USERIP_CHECK(item.is_string(), "{}: '{}' must hold strings, not {}", where, key, item.dump());
    out.push_back(item.get<std::string>());
  }
  return out;
}

// Calls `on_record(record, "file:line")` for every non-blank line, each a JSON object.
template <typename OnRecord>
void for_each_json_line(const fs::path& file, OnRecord&& on_record) {
  std::istringstream lines(read_file(file));
  std::size_t number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", file.string(), number);
    Json record = parse_json(line, where);
    USERIP_CHECK(record.is_object(), "{}: expected a JSON object, not {}", where, record.type_name());
    on_record(record, where);
  }
}

}  // namespace

Json parse_json(const std::string& text, const std::string& where) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    fail("{}: not valid JSON: {}", where, e.what());
  }
}

std::vector<PretrainPoint> read_pretrain_log(const fs::path& file) {
  require_file(file, "`userip lm pretrain`");
  std::vector<PretrainPoint> points;
  for_each_json_line(file, [&](const Json& record, const std::string& where) {
    PretrainPoint p;
    p.step = require_integer(record, "step", where);
    p.train_loss = optional_number(record, "train_loss", where);
    p.heldout_perplexity = optional_number(record, "heldout_perplexity", where);
    points.push_back(p);
  });
  return points;
}

std::vector<EmRound> read_em_log(const fs::path& file) {
  require_file(file, "`userip profile fit`");
  std::vector<EmRound> rounds;
  for_each_json_line(file, [&](const Json& record, const std::string& where) {
    EmRound r;
    r.round = require_integer(record, "round", where);
    r.train_nll = optional_number(record, "train_nll", where);
    r.valid_nll = optional_number(record, "valid_nll", where);
    if (r.valid_nll && *r.valid_nll < 0) r.valid_nll.reset();
    if (record.contains("attributes")) {
      for (const auto& [name, a] : require_object(record, "attributes", where).items()) {
        const std::string at = fmt::format("{}: attributes.{}", where, name);
        USERIP_CHECK(a.is_object(), "{} must be an object, not {}", at, a.type_name());
        AttributeRound attribute;
        attribute.name = name;
        attribute.quantization_error = optional_number(a, "quantization_error", at);
        if (auto it = a.find("code_perplexity"); it != a.end() && !it->is_null()) {
          // One value per level; an older single-level log wrote a plain number.
          if (it->is_array()) {
            for (const auto& v : *it) attribute.code_perplexity.push_back(as_measured(v, at + ".code_perplexity[]"));
          } else {
            attribute.code_perplexity.push_back(as_measured(*it, at + ".code_perplexity"));
          }
        }
        if (auto it = a.find("code_counts"); it != a.end() && !it->is_null()) {
          USERIP_CHECK(it->is_array(), "{}.code_counts must be an array of arrays (one per level)", at);
          for (const auto& level : *it) {
            USERIP_CHECK(level.is_array(), "{}.code_counts must be an array of arrays (one per level), not {}", at,
                         it->dump());
            std::vector<double> counts;
            for (const auto& c : level) {
              USERIP_CHECK(c.is_number() && c.get<double>() >= 0, "{}.code_counts holds {}, not a count", at,
                           c.dump());
              counts.push_back(c.get<double>());
            }
            attribute.code_counts.push_back(std::move(counts));
          }
        }
        r.attributes.push_back(std::move(attribute));
      }
    }
    rounds.push_back(std::move(r));
  });
  return rounds;
}

const MetricSummary* Experiment::find(const std::string& experiment, const std::string& variant,
                                      const std::string& group, const std::string& metric) const {
  for (const auto& s : summary)
    if (s.experiment == experiment && s.variant == variant && s.group == group && s.metric == metric) return &s;
  return nullptr;
}

std::vector<std::string> Experiment::metrics() const {
  std::vector<std::string> out = {"auc", "log_loss", "gauc"};
  out.erase(std::remove_if(out.begin(), out.end(),
                           [&](const std::string& m) {
                             return std::none_of(summary.begin(), summary.end(),
                                                 [&](const MetricSummary& s) { return s.metric == m; });
                           }),
            out.end());
  for (const auto& s : summary)
    if (std::find(out.begin(), out.end(), s.metric) == out.end()) out.push_back(s.metric);
  return out;
}

Experiment read_experiment(const fs::path& path) {
  Experiment e;
  e.file = fs::is_regular_file(path) || path.extension() == ".json" ? path : path / "experiment.json";
  require_file(e.file, "`userip experiment`");
  const std::string name = e.file.string();
  const Json root = parse_json(read_file(e.file), name);
  USERIP_CHECK(root.is_object(), "{}: expected a JSON object, not {}", name, root.type_name());
  const std::string format = require_string(root, "format", name);
  USERIP_CHECK(format == "userip-experiment", "{}: 'format' is '{}', not 'userip-experiment'", name, format);
  const std::int64_t version = require_integer(root, "version", name);
  USERIP_CHECK(version == 1, "{}: 'version' {} is not supported (this userip reads version 1)", name, version);
  e.dataset = optional_string(root, "dataset", name);
  e.config = optional_string(root, "config", name);
  if (auto it = root.find("seeds"); it != root.end()) {
    USERIP_CHECK(it->is_array(), "{}: 'seeds' must be an array", name);
    for (const auto& s : *it) {
      USERIP_CHECK(s.is_number_integer(), "{}: 'seeds' must hold integers, not {}", name, s.dump());
      e.seeds.push_back(s.get<std::int64_t>());
    }
  }
  e.experiments = string_list(root, "experiments", name);
  e.variants = string_list(root, "variants", name);
  for (const auto& [group, info] : require_object(root, "groups", name).items()) {
    USERIP_CHECK(info.is_object(), "{}: groups.{} must be an object, not {}", name, group, info.type_name());
    e.groups.emplace_back(group, info);
  }
  // The writer's JSON object sorts its keys ("all", "cold", "sparse"); the report reads from the
  // whole population to its hardest part.
  auto rank = [](const std::string& group) {
    static const char* const kOrder[] = {"all", "sparse", "cold"};
    for (int i = 0; i < 3; ++i)
      if (group == kOrder[i]) return i;
    return 3;
  };
  std::stable_sort(e.groups.begin(), e.groups.end(),
                   [&](const auto& a, const auto& b) { return rank(a.first) < rank(b.first); });

  const Json& summary = require_array(root, "summary", name);
  for (std::size_t i = 0; i < summary.size(); ++i) {
    const std::string where = fmt::format("{}: summary[{}]", name, i);
    const Json& s = summary[i];
    USERIP_CHECK(s.is_object(), "{} must be an object, not {}", where, s.type_name());
    MetricSummary m;
    m.experiment = require_string(s, "experiment", where);
    m.variant = require_string(s, "variant", where);
    m.group = require_string(s, "group", where);
    m.metric = require_string(s, "metric", where);
    m.mean = optional_number(s, "mean", where);
    m.std = optional_number(s, "std", where);
    m.diff_mean = optional_number(s, "diff_mean", where);
    m.diff_std = optional_number(s, "diff_std", where);
    m.p_value = optional_number(s, "p_value", where);
    if (auto it = s.find("n"); it != s.end() && !it->is_null()) {
      USERIP_CHECK(it->is_number_integer(), "{}: 'n' must be an integer, not {}", where, it->dump());
      m.n = it->get<std::int64_t>();
    }
    e.summary.push_back(std::move(m));
  }

  // Runs only add each seed's value to the bars: a file without them is still a report.
  if (auto it = root.find("runs"); it != root.end()) {
    USERIP_CHECK(it->is_array(), "{}: 'runs' must be an array, not {}", name, it->type_name());
    for (std::size_t i = 0; i < it->size(); ++i) {
      const std::string where = fmt::format("{}: runs[{}]", name, i);
      const Json& r = (*it)[i];
      USERIP_CHECK(r.is_object(), "{} must be an object, not {}", where, r.type_name());
      // Runs at a learning rate that lost on validation (compare.learning_rates) are not in the summary.
      if (auto sel = r.find("selected"); sel != r.end() && sel->is_boolean() && !sel->get<bool>()) continue;
      RunResult run;
      run.experiment = require_string(r, "experiment", where);
      run.variant = require_string(r, "variant", where);
      run.seed = require_integer(r, "seed", where);
      run.groups = require_object(r, "groups", where);
      for (const auto& [group, metrics] : run.groups.items()) {
        USERIP_CHECK(metrics.is_object(), "{}: groups.{} must be an object, not {}", where, group,
                     metrics.type_name());
        for (const auto& [metric, value] : metrics.items())
          as_measured(value, fmt::format("{}: groups.{}.{}", where, group, metric));
      }
      e.runs.push_back(std::move(run));
    }
  }
  return e;
}

std::vector<CodeExplanationRow> read_explanations(const fs::path& file) {
  require_file(file, "`userip profile explain --json`");
  std::vector<CodeExplanationRow> rows;
  for_each_json_line(file, [&](const Json& record, const std::string& where) {
    CodeExplanationRow row;
    row.attribute = require_string(record, "attribute", where);
    row.level = require_integer(record, "level", where);
    row.code = require_integer(record, "code", where);
    row.probe = optional_string(record, "probe", where);
    row.continuation = optional_string(record, "continuation", where);
    row.continuation_note = optional_string(record, "continuation_note", where);
    if (record.contains("members")) {
      const Json& members = require_object(record, "members", where);
      const std::string at = where + ": members";
      row.users = optional_number(members, "users", at);
      row.interactions_per_user = optional_number(members, "interactions_per_user", at);
      row.mean_rating = optional_number(members, "mean_rating", at);
      row.like_rate = optional_number(members, "like_rate", at);
      if (members.contains("top_categories")) {
        for (const auto& c : require_array(members, "top_categories", at)) {
          USERIP_CHECK(c.is_object(), "{}.top_categories must hold objects, not {}", at, c.dump());
          const std::string category_at = at + ".top_categories[]";
          row.top_categories.push_back({require_string(c, "value", category_at),
                                        optional_number(c, "share", category_at),
                                        optional_number(c, "lift", category_at)});
        }
      }
      if (members.contains("typical_items")) {
        for (const auto& c : require_array(members, "typical_items", at)) {
          USERIP_CHECK(c.is_object(), "{}.typical_items must hold objects, not {}", at, c.dump());
          const std::string item_at = at + ".typical_items[]";
          row.typical_items.push_back({require_string(c, "name", item_at), optional_number(c, "share", item_at),
                                       optional_number(c, "lift", item_at)});
        }
      }
    }
    rows.push_back(std::move(row));
  });
  return rows;
}

std::vector<ProfileAttribute> read_profile_attributes(const fs::path& profile_json) {
  require_file(profile_json, "`userip profile fit`");
  const std::string name = profile_json.string();
  const Json root = parse_json(read_file(profile_json), name);
  USERIP_CHECK(root.is_object(), "{}: expected a JSON object, not {}", name, root.type_name());
  std::vector<ProfileAttribute> attributes;
  const Json& list = require_array(root, "attributes", name);
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string where = fmt::format("{}: attributes[{}]", name, i);
    USERIP_CHECK(list[i].is_object(), "{} must be an object", where);
    ProfileAttribute a{require_string(list[i], "name", where), require_integer(list[i], "soft_tokens", where)};
    USERIP_CHECK(a.soft_tokens >= 1, "{}: 'soft_tokens' is {}, not a positive count", where, a.soft_tokens);
    attributes.push_back(std::move(a));
  }
  USERIP_CHECK(!attributes.empty(), "{}: 'attributes' is empty", name);
  return attributes;
}

}  // namespace userip::report
