#include "userip/profile/session.h"

#include <spdlog/spdlog.h>

#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/dist/world.h"
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

FoldIn fold_in_cold_users(const FitSession& session, const std::filesystem::path& fit_dir,
                          const std::vector<std::uint32_t>& users, const InferOptions& options,
                          const std::filesystem::path& out) {
  std::string chosen_ids;
  for (auto u : users) chosen_ids += session.dataset.user_ids[u] + "\n";
  // "annealed": fold-ins made before the prior was annealed over the rounds are not reused. The method is the
  // one that runs (automatic resolved), so that a change of what automatic means is not taken for no change.
  const auto method = resolve_fold_in_method(session.fit.profiles, options.method);
  const std::string fingerprint = hex64(fnv1a64(session.fit.record.value("fingerprint", "") + "|" +
                                                std::to_string(options.rounds) + "|annealed|" + to_string(method) +
                                                "|" + chosen_ids +
                                                (options.history == data::SplitPart::cold_history
                                                     ? std::string()
                                                     : "|history=" + data::to_string(options.history))));
  FoldIn result;
  if (std::filesystem::exists(out / "profile.json")) {
    try {
      if (nlohmann::json::parse(read_file(out / "profile.json")).value("infer_fingerprint", "") == fingerprint) {
        result.reused = true;
        return result;
      }
    } catch (const nlohmann::json::exception&) {
      // An unreadable earlier output is simply replaced.
    }
  }
  // Every rank has read the output directory before rank 0, the only writer, may replace it.
  dist::World& world = dist::World::get();
  world.barrier();
  const auto history = session.dataset.view({options.history});
  const auto in = session.inputs();
  result.profiles = infer_profiles(in, session.fit.profiles, session.fit.options, history, users, options);
  nlohmann::json record = session.fit.record;
  record["folded_in_from"] = std::filesystem::absolute(fit_dir).string();
  record["history_part"] = data::to_string(options.history);
  record["infer_fingerprint"] = fingerprint;
  record["fold_in_method"] = to_string(method);
  record.erase("evaluation");
  const auto test = session.dataset.view(
      {options.history == data::SplitPart::cold_history ? data::SplitPart::cold_test : data::SplitPart::valid});
  // Every rank scores (its share of) the evaluation; rank 0 writes.
  result.on_cold_test = evaluate_profiles(in, result.profiles, session.fit.options, history, test);
  if (!world.is_root()) return result;
  save_profiles(result.profiles, out, record);
  if (result.on_cold_test.tokens > 0)
    write_file_atomic(out / "evaluation.json", result.on_cold_test.to_json().dump(2));
  return result;
}

}  // namespace userip::profile
