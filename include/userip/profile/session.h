#pragma once
// A finished fit opened for further work (fold-in, explanations, recovery, the server's fold-in
// endpoint): its dataset, the frozen LM and tokenizer, the template it recorded, and the fit.
#include <torch/types.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/data/dataset.h"
#include "userip/lm/model.h"
#include "userip/profile/fit.h"
#include "userip/profile/template.h"
#include "userip/text/tokenizer.h"

namespace userip::profile {

struct FitSession {
  data::Dataset dataset;
  std::unique_ptr<lm::CausalLM> model;
  std::unique_ptr<text::Tokenizer> tokenizer;
  std::unique_ptr<ProfileTemplate> profile_template;
  SavedFit fit;
  std::filesystem::path model_path;
  FitInputs inputs() const;
};

struct SessionOptions {
  std::filesystem::path dataset;  // empty = the dataset the fit recorded
  std::filesystem::path model;    // empty = the LM the fit recorded
  torch::ScalarType dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
};

// Opens the output directory of `profile fit` (or `profile infer`). Errors name the file: no
// profile.json, malformed JSON, no recorded dataset or model. An LM whose weights differ from the
// fit's is a warning, not an error (a user may convert the checkpoint's format).
FitSession open_fit_session(const std::filesystem::path& dir, const SessionOptions& options = {});

// Fold-in of `users` (indices into session.dataset) from their rows of options.history (by default
// cold_history) into the fit opened from `fit_dir`, saved in `out` (profile.json, codes.csv, ...)
// with the fit's record and where it came from, and evaluated on the users' cold_test rows (valid
// rows when the history is the training part) (evaluation.json). Fold-in is
// deterministic, so a rerun for the same fit, users and rounds reuses `out` (its profile.json
// carries that fingerprint) and fits nothing.
struct FoldIn {
  Profiles profiles;            // empty when reused
  bool reused = false;
  NllComparison on_cold_test;   // tokens == 0 when reused or when the users have no cold_test rows
};
FoldIn fold_in_cold_users(const FitSession& session, const std::filesystem::path& fit_dir,
                          const std::vector<std::uint32_t>& users, const InferOptions& options,
                          const std::filesystem::path& out);

// The template a fit recorded in profile.json, parsed against `dataset`.
ProfileTemplate recorded_template(const nlohmann::json& record, const data::Dataset& dataset, const std::string& source);

}  // namespace userip::profile
