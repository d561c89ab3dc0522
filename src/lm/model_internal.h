#pragma once
// Small helpers shared by the model, loader and generation sources (not part of the public API).
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace userip::lm::detail {

// "[2, 3, 4]": shapes for error messages (fmt cannot format c10::ArrayRef by itself).
inline std::string shape_string(c10::ArrayRef<std::int64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

inline std::string dtype_string(c10::ScalarType dtype) { return c10::toString(dtype); }

// libtorch's CPU backend lacks float16 kernels (1.13 has no f16 GEMM, SiLU or GELU), so float16
// models on the CPU keep their weights in f16 and run activations in f32: each weight is widened
// just for its product. Elsewhere activations use the weights' dtype.
inline bool needs_float_gemm(const at::Tensor& weight) {
  return weight.scalar_type() == c10::ScalarType::Half && weight.device().is_cpu();
}
inline c10::ScalarType activation_dtype(const at::Tensor& weight) {
  return needs_float_gemm(weight) ? c10::ScalarType::Float : weight.scalar_type();
}

}  // namespace userip::lm::detail
