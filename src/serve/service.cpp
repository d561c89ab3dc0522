#include "userip/serve/service.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <fstream>

#include "userip/profile/fit.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::serve {

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::map<std::string, std::vector<nlohmann::json>> read_explanations(const std::filesystem::path& path) {
  std::map<std::string, std::vector<nlohmann::json>> out;
  std::ifstream in(path);
  USERIP_CHECK(in.good(), "{}: cannot open the explanations file", path.string());
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json e;
    try {
      e = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& error) {
      fail("{}:{}: malformed JSON: {}", path.string(), number, error.what());
    }
    USERIP_CHECK(e.is_object() && e.contains("attribute") && e["attribute"].is_string() && e.contains("level") &&
                     e["level"].is_number_integer() && e["level"].get<int>() >= 1 && e.contains("code") &&
                     e["code"].is_number_integer() && e["code"].get<std::int64_t>() >= 0 &&
                     e["code"].get<std::int64_t>() < 1'000'000,
                 "{}:{}: not a code explanation (expected \"attribute\", \"level\" >= 1 and \"code\" >= 0, as written "
                 "by `userip profile explain --json`)",
                 path.string(), number);
    auto& codes = out[quantize::code_field_name(e["attribute"].get<std::string>(), e["level"].get<int>() - 1)];
    const auto code = static_cast<std::size_t>(e["code"].get<std::int64_t>());
    if (codes.size() <= code) codes.resize(code + 1);
    codes[code] = std::move(e);
  }
  return out;
}

const nlohmann::json* explanation_of(const ServingState& state, const std::string& field, std::int64_t code) {
  auto it = state.explanations.find(field);
  if (it == state.explanations.end() || code < 0 || static_cast<std::size_t>(code) >= it->second.size()) return nullptr;
  const auto& e = it->second[static_cast<std::size_t>(code)];
  return e.is_null() ? nullptr : &e;
}

}  // namespace

nlohmann::json StateSource::to_json() const {
  nlohmann::json banks_json = nlohmann::json::array();
  for (const auto& b : banks) banks_json.push_back(b.string());
  return {{"model", model.string()}, {"banks", banks_json}, {"explanations", explanations.string()}};
}

nlohmann::json ServingState::describe() const {
  nlohmann::json banks_json = nlohmann::json::array();
  for (const auto& b : banks)
    banks_json.push_back({{"path", b.path().string()},
                          {"version", b.metadata().version},
                          {"users", b.size()},
                          {"created_at", b.metadata().created_at},
                          {"codebook_fingerprint", b.metadata().codebook_fingerprint}});
  return {{"generation", gauges.generation},
          {"model", {{"path", source.model.string()},
                     {"kind", gauges.model_kind},
                     {"fingerprint", gauges.model_fingerprint},
                     {"profile", ctr::to_string(model.encoder.config().profile)}}},
          {"banks", banks_json},
          {"explained_fields", explanations.size()}};
}

std::shared_ptr<const ServingState> load_state(const StateSource& source, std::int64_t generation) {
  USERIP_CHECK(!source.model.empty(), "no CTR model given");
  auto state = std::make_shared<ServingState>();
  state->source = source;
  state->model = ctr::load_model(source.model, torch::kCPU);
  const auto profile = state->model.encoder.config().profile;
  USERIP_CHECK(profile != ctr::ProfileInput::dense,
               "{}: this model reads dense profile vectors; the server serves models with profile codes (from a "
               "feature bank) or none. Train with \"profile\": \"codes\" to serve profiles without the LM",
               source.model.string());
  for (const auto& path : source.banks) state->banks.push_back(store::FeatureBank::open(path));
  if (profile == ctr::ProfileInput::codes) {
    USERIP_CHECK(!state->banks.empty(), "{}: this model reads profile codes: give the feature bank (--bank)",
                 source.model.string());
    state->codes = ctr::UserCodeTable::from_banks(state->banks);
  }
  if (!source.explanations.empty()) state->explanations = read_explanations(source.explanations);
  state->model.model->eval();

  // Warm-up, and a check that the bank fits the model before anything is served from it.
  ctr::EncodeCounts counts;
  const auto* codes = state->codes ? &*state->codes : nullptr;
  auto examples = state->model.encoder.encode_pairs({"\x01warm-up"}, {"\x01warm-up"}, codes, nullptr, &counts);
  {
    torch::NoGradGuard no_grad;
    state->model.model->forward(examples.batch(0, examples.size(), torch::kCPU));
  }

  auto& g = state->gauges;
  g.generation = generation;
  g.loaded_at_unix = unix_now();
  g.model_kind = state->model.record.contains("model") && state->model.record["model"].is_object()
                     ? state->model.record["model"].value("kind", "")
                     : "";
  g.model_fingerprint = state->model.record.value("weights_fingerprint", "");
  if (!state->banks.empty()) {
    g.bank_version = state->banks.front().metadata().version;
    g.bank_fingerprint = state->banks.front().metadata().codebook_fingerprint;
    for (const auto& b : state->banks) g.bank_users += static_cast<std::int64_t>(b.size());
  }
  return state;
}

ScoreResult score(const ServingState& state, const ScoreRequest& request, ScoringCounts* counts) {
  const auto& encoder = state.model.encoder;
  const auto* codes = state.codes ? &*state.codes : nullptr;
  const std::vector<std::string> users(request.items.size(), request.user);
  ctr::EncodeCounts encoded;
  auto examples = encoder.encode_pairs(users, request.items, codes, nullptr, &encoded);
  torch::Tensor probabilities;
  {
    // Lighter than NoGradGuard (no version counters or view tracking): 14% off a 100-candidate
    // DCN forward (bench/serve_bench, BM_ForwardCodes vs BM_ForwardCodesInferenceMode).
    c10::InferenceMode inference;
    probabilities =
        torch::sigmoid(state.model.model->forward(examples.batch(0, examples.size(), torch::kCPU))).to(torch::kFloat32).contiguous();
  }
  ScoreResult result;
  const float* p = probabilities.data_ptr<float>();
  result.scores.assign(p, p + probabilities.numel());
  result.unknown_items = encoded.unknown_items;
  result.user_in_vocabulary = !encoder.config().user_id || encoded.unknown_users == 0;
  result.profile = codes == nullptr ? "unused" : encoded.missing_profiles == 0 ? "bank" : "missing";
  if (counts) {
    counts->users += 1;
    counts->unknown_users += result.profile == "missing" ? 1 : 0;
    counts->oov_users += result.user_in_vocabulary ? 0 : 1;
    counts->items += static_cast<std::int64_t>(request.items.size());
    counts->unknown_items += encoded.unknown_items;
  }
  return result;
}

nlohmann::json profile_of(const ServingState& state, const std::string& user) {
  if (state.banks.empty()) throw RequestError(404, "no feature bank is loaded, so no user has a profile here");
  for (const auto& bank : state.banks) {
    const std::int32_t* codes = bank.find(user);
    if (codes == nullptr) continue;
    nlohmann::json fields = nlohmann::json::array();
    for (std::size_t f = 0; f < bank.fields().size(); ++f) {
      nlohmann::json field = {{"field", bank.fields()[f].name}, {"code", codes[f]}};
      if (const auto* e = explanation_of(state, bank.fields()[f].name, codes[f])) field["explanation"] = *e;
      fields.push_back(std::move(field));
    }
    return {{"user", user},
            {"codes", fields},
            {"bank", {{"path", bank.path().string()}, {"version", bank.metadata().version}}}};
  }
  throw RequestError(404, fmt::format("user '{}' is in no feature bank", user));
}

FoldIn::FoldIn(const std::filesystem::path& profile_dir, const profile::SessionOptions& options, int rounds)
    : session_(profile::open_fit_session(profile_dir, options)), rounds_(rounds) {
  USERIP_CHECK(session_.fit.profiles.has_codes(), "{}: these profiles have no codebooks, so fold-in gives no codes",
               profile_dir.string());
  fields_ = session_.fit.profiles.field_names();
  // Dataset builds its id index on first use; build it now, before requests look items up from
  // several threads at once.
  (void)session_.dataset.find_item("");
  catalogue_.item_ids = session_.dataset.item_ids;
  catalogue_.item_fields = session_.dataset.item_fields;
  catalogue_.label_kind = session_.dataset.label_kind;
  catalogue_.split.config = session_.dataset.split.config;
  catalogue_.provenance = session_.dataset.provenance;
}

FoldIn::Result FoldIn::infer(const std::string& user, const std::vector<HistoryEvent>& history) {
  const auto start = std::chrono::steady_clock::now();
  Result result;
  result.fields = fields_;
  data::Dataset d = catalogue_;
  d.user_ids = {user};
  for (const auto& e : history) {
    auto item = session_.dataset.find_item(e.item);
    if (!item) {
      result.unknown_items.push_back(e.item);
      continue;
    }
    d.interactions.user.push_back(0);
    d.interactions.item.push_back(*item);
    d.interactions.rating.push_back(e.rating);
    d.interactions.timestamp.push_back(e.timestamp);
    d.split.part.push_back(data::SplitPart::cold_history);
  }
  result.used_interactions = static_cast<std::int64_t>(d.interactions.size());
  if (result.used_interactions == 0)
    throw RequestError(422, fmt::format("none of the {} history items is in the catalogue the profiles were fitted on",
                                        history.size()));
  d.validate();
  std::lock_guard<std::mutex> lock(mutex_);
  auto in = session_.inputs();
  in.dataset = &d;
  profile::InferOptions options;
  options.rounds = rounds_;
  options.show_progress = false;
  const auto view = d.view({data::SplitPart::cold_history});
  auto profiles = profile::infer_profiles(in, session_.fit.profiles, session_.fit.options, view, {0}, options);
  auto codes = profiles.codes.reshape({-1}).contiguous();
  const auto* c = codes.data_ptr<std::int64_t>();
  result.codes.assign(c, c + codes.numel());
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

nlohmann::json FoldIn::Result::to_json(const ServingState* state) const {
  nlohmann::json list = nlohmann::json::array();
  for (std::size_t f = 0; f < fields.size(); ++f) {
    nlohmann::json field = {{"field", fields[f]}, {"code", codes[f]}};
    if (state)
      if (const auto* e = explanation_of(*state, fields[f], codes[f])) field["explanation"] = *e;
    list.push_back(std::move(field));
  }
  return {{"codes", list},
          {"used_interactions", used_interactions},
          {"unknown_items", unknown_items},
          {"seconds", seconds}};
}

StateHolder::StateHolder(StateSource source) : state_(load_state(source, 1)) {}

std::shared_ptr<const ServingState> StateHolder::reload(const StateSource* source) {
  std::lock_guard<std::mutex> lock(reload_mutex_);
  const auto old = current();
  auto fresh = load_state(source ? *source : old->source, old->gauges.generation + 1);
  std::atomic_store(&state_, fresh);
  return fresh;
}

}  // namespace userip::serve
