#include "userip/profile/session.h"

#include <spdlog/spdlog.h>

#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::profile {

FitInputs FitSession::inputs() const {
  FitInputs in;
  in.dataset = &dataset;
  in.model = model.get();
  in.tokenizer = tokenizer.get();
  in.profile_template = profile_template.get();
  in.model_path = model_path.string();
  return in;
}

ProfileTemplate recorded_template(const nlohmann::json& record, const data::Dataset& dataset, const std::string& source) {
  USERIP_CHECK(record.contains("template") && record["template"].is_object(), "{}: no \"template\" object", source);
  nlohmann::json t = record["template"];
  for (const char* derived : {"source", "total_soft_tokens", "one_interaction_per_sample"}) t.erase(derived);
  return ProfileTemplate::parse(t.dump(2), source + " (template)", dataset);
}

FitSession open_fit_session(const std::filesystem::path& dir, const SessionOptions& options) {
  FitSession f;
  const auto record_file = dir / "profile.json";
  USERIP_CHECK(std::filesystem::exists(record_file), "{}: not a profile directory (no profile.json; run `userip profile fit`)",
               dir.string());
  nlohmann::json record;
  try {
    record = nlohmann::json::parse(read_file(record_file));
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: malformed JSON: {}", record_file.string(), e.what());
  }
  std::filesystem::path dataset_path = options.dataset;
  if (dataset_path.empty()) {
    USERIP_CHECK(record.contains("dataset") && record["dataset"].is_string() && !record["dataset"].get<std::string>().empty(),
                 "{}: records no dataset; give --dataset", record_file.string());
    dataset_path = record["dataset"].get<std::string>();
  }
  f.dataset = data::Dataset::load(dataset_path);
  f.model_path = options.model;
  if (f.model_path.empty()) {
    USERIP_CHECK(record.contains("model") && record["model"].is_object() && record["model"].contains("path") &&
                     record["model"]["path"].is_string(),
                 "{}: records no model; give --model", record_file.string());
    f.model_path = record["model"]["path"].get<std::string>();
  }
  f.model = std::make_unique<lm::CausalLM>(lm::load_model(f.model_path, options.dtype, options.device));
  const std::string expected = record.value("model_fingerprint", "");
  if (!expected.empty() && f.model->fingerprint() != expected)
    spdlog::warn("{}: the model differs from the one the profiles were fitted with (fingerprint {} vs {})",
                 f.model_path.string(), f.model->fingerprint(), expected);
  f.tokenizer = lm::load_model_tokenizer(f.model_path);
  f.profile_template = std::make_unique<ProfileTemplate>(recorded_template(record, f.dataset, record_file.string()));
  f.fit = load_fit(dir, f.dataset, *f.profile_template);
  f.fit.options.device = options.device;
  return f;
}

}  // namespace userip::profile
