#include "model_options.h"

#include "userip/lm/loader.h"
#include "userip/util/error.h"

namespace userip::cli {

void add_model_options(CLI::App* cmd, ModelOptions& o, bool model_required) {
  auto* model = cmd->add_option("--model", o.model, "Hugging Face model directory or .gguf file");
  if (model_required) model->required();
  // Checked when the command runs (dtype_of), so that a bad value is an "error:" like the others.
  cmd->add_option("--dtype", o.dtype, "Compute dtype: f32, bf16 or f16")->capture_default_str();
  cmd->add_option("--device", o.device, "cpu or cuda[:N]")->capture_default_str();
}

torch::ScalarType dtype_of(const std::string& name) {
  if (name == "bf16") return torch::kBFloat16;
  if (name == "f16") return torch::kHalf;
  if (name == "f32") return torch::kFloat;
  fail("--dtype: '{}' is not a dtype (expected f32, bf16 or f16)", name);
}

torch::Device device_of(const std::string& name) {
  try {
    torch::Device device(name);
    USERIP_CHECK(!device.is_cuda() || torch::hasCUDA(), "--device {}: this build of libtorch has no CUDA", name);
    return device;
  } catch (const c10::Error&) {
    fail("--device: '{}' is not a device (expected cpu or cuda[:N])", name);
  }
}

lm::CausalLM load(const ModelOptions& o) { return lm::load_model(o.model, dtype_of(o.dtype), device_of(o.device)); }

}  // namespace userip::cli
