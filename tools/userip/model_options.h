#pragma once
// The options every command that runs a language model shares (--model, --dtype, --device).
#include <CLI/CLI.hpp>
#include <torch/types.h>

#include <filesystem>
#include <string>

#include "userip/lm/model.h"

namespace userip::cli {

struct ModelOptions {
  std::filesystem::path model;
  std::string dtype = "f32";
  std::string device = "cpu";
};

// `model_required` = false for commands that can take the model from an earlier run's record.
void add_model_options(CLI::App* cmd, ModelOptions& o, bool model_required = true);

torch::ScalarType dtype_of(const std::string& name);
torch::Device device_of(const std::string& name);
lm::CausalLM load(const ModelOptions& o);

}  // namespace userip::cli
