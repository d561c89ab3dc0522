// The fit's state (fit_internal.h): its start, and its checkpoint, saved and restored symmetrically.
#include "profile/fit_internal.h"

#include <spdlog/spdlog.h>
#include <torch/serialize.h>

#include <fmt/format.h>

#include "userip/tensor/tensor_file.h"

namespace userip::profile::detail {

namespace fs = std::filesystem;

FitState FitState::initial(const FitInputs& in, const FitOptions& o, std::int64_t users) {
  FitState state;
  const std::int64_t P = in.profile_template->total_soft_tokens();
  const std::int64_t d = in.model->hidden_size();
  state.z = initial_vectors(o, users, P, d, 1);
  state.adam.reset(state.z);
  if (uses_codebooks(o)) {
    for (const auto& spec : in.profile_template->attributes())
      state.codebooks.emplace_back(spec.soft_tokens * d, o.codes_for(spec.name), o.levels);
    if (o.mode == EmMode::joint) {
      for (std::size_t a = 0; a < state.codebooks.size(); ++a)
        state.codebooks[a].init_uniform(Rng::derive(o.seed, 200 + a).next_u64(), o.device);
      state.codebooks_ready = true;
      state.make_codebook_optimizer(o);
    }
  }
  return state;
}

void FitState::make_codebook_optimizer(const FitOptions& o) {
  std::vector<torch::Tensor> params;
  for (auto& c : codebooks)
    for (auto& w : c.codewords()) params.push_back(w.requires_grad_(true));
  codebook_optimizer = std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(o.joint_learning_rate).weight_decay(o.weight_decay));
}

namespace {
const std::vector<std::string> kFileKeys = {"tensors", "optimizer"};
}

void FitState::save(const CheckpointDir& checkpoint, const std::vector<AttributeSpec>& attributes,
                    double fit_seconds) const {
  fs::create_directories(checkpoint.dir());
  const std::string tensors_name = fmt::format("state-{}-{}.safetensors", round, batch);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"z", z.detach().cpu()}, {"adam_m", adam.m.cpu()}, {"adam_v", adam.v.cpu()}, {"adam_steps", adam.steps.cpu()}};
  if (codebooks_ready)
    for (std::size_t a = 0; a < codebooks.size(); ++a) codebooks[a].save(tensors, "codebook." + attributes[a].name);
  tensor::write_safetensors(checkpoint.file(tensors_name), tensors);
  std::string optimizer_name;
  if (codebook_optimizer && codebooks_ready) {
    optimizer_name = fmt::format("optimizer-{}-{}.pt", round, batch);
    torch::save(*codebook_optimizer, checkpoint.file(optimizer_name + ".next").string());
    fs::rename(checkpoint.file(optimizer_name + ".next"), checkpoint.file(optimizer_name));
  }
  nlohmann::json rounds = nlohmann::json::array();
  for (const auto& r : log) rounds.push_back(r.to_json(attributes));
  checkpoint.commit({{"round", round},
                     {"batch", batch},
                     {"seconds", fit_seconds},
                     {"pass_nll", pass.nll},
                     {"pass_tokens", pass.tokens},
                     {"batches_done", batches_done},
                     {"tokens", tokens},
                     {"codebooks_ready", codebooks_ready},
                     {"tensors", tensors_name},
                     {"optimizer", optimizer_name},
                     {"log", rounds}},
                    kFileKeys);
}

bool FitState::restore(const CheckpointDir& checkpoint, const FitOptions& o,
                       const std::vector<AttributeSpec>& attributes) {
  const auto state = checkpoint.load(kFileKeys);
  if (!state) return false;
  // Everything is read before anything is replaced, so that a damaged checkpoint leaves the fresh state to
  // start over from (CheckpointDir's policy).
  FitState loaded;
  try {
    loaded.round = state->at("round").get<int>();
    loaded.batch = state->at("batch").get<std::size_t>();
    loaded.seconds = state->at("seconds").get<double>();
    loaded.pass.nll = state->at("pass_nll").get<double>();
    loaded.pass.tokens = state->at("pass_tokens").get<std::int64_t>();
    loaded.batches_done = state->at("batches_done").get<std::int64_t>();
    loaded.tokens = state->at("tokens").get<std::int64_t>();
    loaded.codebooks_ready = state->at("codebooks_ready").get<bool>();
    for (const auto& l : state->at("log"))
      loaded.log.push_back(RoundLog::from_json(l, attributes, checkpoint.file("state.json").string()));
    auto source = tensor::open_safetensors(checkpoint.file(state->at("tensors").get<std::string>()));
    loaded.z = source->load("z", torch::kFloat, o.device);
    loaded.adam.m = source->load("adam_m", torch::kFloat, o.device);
    loaded.adam.v = source->load("adam_v", torch::kFloat, o.device);
    loaded.adam.steps = source->load("adam_steps", torch::kFloat, o.device);
    loaded.codebooks = codebooks;
    if (loaded.codebooks_ready) {
      for (std::size_t a = 0; a < codebooks.size(); ++a)
        loaded.codebooks[a] = quantize::ResidualCodebook::from_source(*source, "codebook." + attributes[a].name, o.device);
      if (o.mode == EmMode::joint) {
        loaded.make_codebook_optimizer(o);
        torch::load(*loaded.codebook_optimizer, checkpoint.file(state->at("optimizer").get<std::string>()).string());
      }
    }
  } catch (const std::exception& e) {
    spdlog::warn("{}: damaged checkpoint ({}); starting over", checkpoint.dir().string(), e.what());
    return false;
  }
  if (!loaded.codebook_optimizer) loaded.codebook_optimizer = std::move(codebook_optimizer);
  *this = std::move(loaded);
  return true;
}

}  // namespace userip::profile::detail
