// libFuzzer harness: any byte string given to the GGUF reader must either parse (and then every
// metadata value must be readable and every supported tensor must load) or raise userip::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "userip/tensor/gguf.h"
#include "userip/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    auto file = userip::tensor::GgufFile::from_bytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz.gguf");
    (void)file->architecture();
    for (const auto& key : file->keys()) {
      const auto& value = file->value(key);
      (void)value.array_size();
      // The typed getters must refuse mismatches with userip::Error, never misbehave.
      try {
        (void)file->get_i64(key);
      } catch (const userip::Error&) {
      }
      try {
        (void)file->get_f32_array(key);
      } catch (const userip::Error&) {
      }
      try {
        (void)file->get_i32_array(key);
      } catch (const userip::Error&) {
      }
      try {
        (void)file->get_string_array(key);
      } catch (const userip::Error&) {
      }
    }
    for (const auto& info : file->tensors()) {
      if (info.type == userip::tensor::StoredType::other) continue;
      file->load(info.name, torch::kFloat32);
    }
  } catch (const userip::Error&) {
  }
  return 0;
}
