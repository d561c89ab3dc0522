#pragma once
// Which low-precision dtypes this machine computes natively, for choosing `--dtype`.
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace userip::lm {

// The CPU instructions that give bfloat16 GEMMs their speed ("AMX-BF16", "AVX512-BF16"), or ""
// when this CPU has neither. libtorch's oneDNN then emulates bf16 products, slower than float32.
std::string cpu_bf16_instructions();

// What running `dtype` on `device` means for speed, when it is worse than float32: "" otherwise.
// bf16 on a CPU without the instructions above is emulated; f16 on a CPU is computed in float32
// (libtorch has no CPU f16 kernels), so it saves memory and costs time.
std::string low_precision_caveat(c10::ScalarType dtype, c10::Device device);

}  // namespace userip::lm
