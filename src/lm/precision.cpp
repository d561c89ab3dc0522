#include "userip/lm/precision.h"

namespace userip::lm {

std::string cpu_bf16_instructions() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("amx-bf16")) return "AMX-BF16";
  if (__builtin_cpu_supports("avx512bf16")) return "AVX512-BF16";
#endif
  return "";
}

std::string low_precision_caveat(c10::ScalarType dtype, c10::Device device) {
  if (!device.is_cpu()) return "";
  if (dtype == c10::ScalarType::BFloat16 && cpu_bf16_instructions().empty())
    return "this CPU has no bfloat16 instructions (AVX512-BF16 or AMX-BF16): bf16 is emulated and slower than "
           "f32; use --dtype f32";
  if (dtype == c10::ScalarType::Half)
    return "f16 on the CPU is computed in f32 (libtorch has no CPU f16 kernels): it halves the weights' memory "
           "and costs time; use --dtype f32, or bf16 where the CPU has bfloat16 instructions";
  return "";
}

}  // namespace userip::lm
