#include "userip/ctr/settings.h"

#include "ctr/json_fields.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"

namespace userip::ctr {

using nlohmann::json;

json CtrSettings::to_json() const {
  return {{"model", model.to_json()}, {"train", train.to_json()}, {"features", features.to_json()}};
}

json read_config_file(const std::filesystem::path& path) {
  USERIP_CHECK(std::filesystem::is_regular_file(path), "{}: no such configuration file", path.string());
  try {
    json config = json::parse(read_file(path));
    USERIP_CHECK(config.is_object(), "{}: expected a JSON object at the top", path.string());
    return config;
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
}

std::vector<std::string> experiment_names(const json& config) {
  std::vector<std::string> names;
  if (config.contains("experiments") && config["experiments"].is_object()) {
    for (auto it = config["experiments"].begin(); it != config["experiments"].end(); ++it) names.push_back(it.key());
  }
  return names;
}

CtrSettings settings_for(const json& config, const std::string& experiment, const std::string& where) {
  try {
    JsonFields top(config, where);
    json merged = json::object();
    if (top.has("base")) merged = top.get("base");
    USERIP_CHECK(merged.is_object(), "{}: \"base\" must be an object", where);
    if (top.has("experiments")) {
      USERIP_CHECK(top.get("experiments").is_object(), "{}: \"experiments\" must be an object", where);
    }
    if (top.has("compare")) top.get("compare");
    top.finish();
    if (!experiment.empty()) {
      const auto names = experiment_names(config);
      USERIP_CHECK(config.contains("experiments") && config["experiments"].contains(experiment),
                   "{}: no experiment named '{}' (known: {})", where, experiment,
                   names.empty() ? std::string("none") : join(names, ", "));
      const json& overrides = config["experiments"][experiment];
      USERIP_CHECK(overrides.is_object(), "{}: experiment '{}' must be an object", where, experiment);
      merged.merge_patch(overrides);
    }
    const std::string section = experiment.empty() ? where + ": base" : where + ": experiment '" + experiment + "'";
    JsonFields sections(merged, section);
    CtrSettings s;
    if (sections.has("model")) s.model = ModelConfig::from_json(sections.get("model"));
    if (sections.has("train")) s.train = TrainConfig::from_json(sections.get("train"));
    if (sections.has("features")) s.features = FeatureConfig::from_json(sections.get("features"));
    sections.finish();
    return s;
  } catch (const Error& e) {
    const std::string message = e.what();
    if (message.rfind(where, 0) == 0) throw;
    fail("{}: {}", where, message);
  }
}

}  // namespace userip::ctr
