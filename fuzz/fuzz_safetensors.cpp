// libFuzzer harness: any byte string given to the safetensors reader must either parse (and then
// every tensor must load) or raise userip::Error. Anything else (a crash, a sanitizer report, an
// exception of another type) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "userip/tensor/tensor_file.h"
#include "userip/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    auto source = userip::tensor::SafetensorsSource::from_bytes(std::string(reinterpret_cast<const char*>(data), size),
                                                            "fuzz.safetensors");
    (void)source->metadata();
    for (const auto& info : source->tensors()) {
      (void)info.torch_shape();
      if (info.type == userip::tensor::StoredType::other) continue;
      source->load(info.name, torch::kFloat32);
      source->load(info.name, torch::kBFloat16);
    }
  } catch (const userip::Error&) {
  }
  return 0;
}
