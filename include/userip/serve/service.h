#pragma once
// What the HTTP server serves, without the HTTP: an immutable snapshot of a trained CTR model,
// the feature bank(s) it reads profile codes from and the codes' explanations; scoring and profile
// lookup against a snapshot; and the optional fold-in of a new user's profile through the LM.
//
// Hot reload builds a whole new snapshot beside the one serving and swaps a shared_ptr: a request
// keeps the snapshot it started with, so in-flight requests finish on the old version and no
// request ever sees a half-loaded one. A snapshot that fails to load never replaces the old one.
#include <torch/types.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/ctr/features.h"
#include "userip/ctr/train.h"
#include "userip/profile/session.h"
#include "userip/serve/metrics.h"
#include "userip/serve/requests.h"
#include "userip/store/feature_bank.h"

namespace userip::serve {

struct StateSource {
  std::filesystem::path model;                 // a `ctr train` output directory
  std::vector<std::filesystem::path> banks;    // feature banks, merged (e.g. fitted users + folded-in users)
  std::filesystem::path explanations;          // optional: `profile explain --json` output (JSON lines)
  nlohmann::json to_json() const;
};

struct ServingState {
  StateSource source;
  ctr::SavedModel model;
  std::vector<store::FeatureBank> banks;
  std::optional<ctr::UserCodeTable> codes;     // set when the model reads profile codes
  // Explanation of each code: field name ("taste", "taste.2") -> code -> explanation JSON.
  std::map<std::string, std::vector<nlohmann::json>> explanations;
  StateGauges gauges;

  bool uses_codes() const { return codes.has_value(); }
  nlohmann::json describe() const;  // for /readyz and the log
};

// Loads and checks everything before anything serves from it. Errors name the file: a model that
// is not a trained CTR model, a model that reads dense profile vectors (the server serves codes or
// none), a codes model without a bank, banks whose fields differ from the model's, a malformed
// explanations line. The model is put in evaluation mode and scored once (warm-up).
std::shared_ptr<const ServingState> load_state(const StateSource& source, std::int64_t generation);

struct ScoreResult {
  std::vector<float> scores;     // in the request's item order
  std::int64_t unknown_items = 0;
  bool user_in_vocabulary = false;  // the model learned an embedding for this user
  std::string profile;           // "bank" (codes found), "missing" (codes to OOV) or "unused" (base model)
};
// Scores one user's candidates; unknown users and items take the out-of-vocabulary path.
ScoreResult score(const ServingState& state, const ScoreRequest& request, ScoringCounts* counts);

// The user's codes per field with their explanations. RequestError 404 for a user in no bank;
// RequestError 404 as well when no bank is loaded (the resource does not exist here).
nlohmann::json profile_of(const ServingState& state, const std::string& user);

// The fold-in endpoint's engine: one new user's codes from its history with the LM and codebooks
// frozen, by the rule of `profile infer` (profile::FoldInMethod::automatic). One fold-in runs at a
// time (it is CPU-bound through the LM); others wait their turn.
class FoldIn {
 public:
  FoldIn(const std::filesystem::path& profile_dir, const profile::SessionOptions& options, int rounds);
  struct Result {
    std::vector<std::string> fields;
    std::vector<std::int64_t> codes;       // per field
    std::int64_t used_interactions = 0;
    std::vector<std::string> unknown_items;  // not in the catalogue, skipped
    double seconds = 0;
    nlohmann::json to_json(const ServingState* state) const;  // with explanations when available
  };
  // RequestError 422 when no item of the history is in the catalogue.
  Result infer(const std::string& user, const std::vector<HistoryEvent>& history);
  const std::vector<std::string>& fields() const { return fields_; }

 private:
  profile::FitSession session_;
  data::Dataset catalogue_;  // the fit's items without interactions: each request copies it and adds its history
  int rounds_ = 0;
  std::vector<std::string> fields_;
  std::mutex mutex_;
};

// The snapshot serving now, swapped atomically by reload().
class StateHolder {
 public:
  explicit StateHolder(StateSource source);
  std::shared_ptr<const ServingState> current() const { return std::atomic_load(&state_); }
  // Loads a new snapshot from `source` (or the current source when null) and swaps it in. On
  // failure the old snapshot keeps serving and the error propagates. Reloads are serialised.
  std::shared_ptr<const ServingState> reload(const StateSource* source = nullptr);

 private:
  std::mutex reload_mutex_;
  std::shared_ptr<const ServingState> state_;
};

}  // namespace userip::serve
