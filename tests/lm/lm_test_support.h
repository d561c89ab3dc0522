#pragma once
// Helpers shared by the lm tests: where the reference checkpoints live, and tensor distance.
#include <ATen/ATen.h>

#include <filesystem>

namespace userip::lm::test_support {

// The repository's own small reference fixtures.
inline std::filesystem::path repo_reference() {
  return std::filesystem::path(USERIP_SOURCE_DIR) / "tests" / "data" / "reference";
}
// The shared folder's GPT-2 GGUF, beside the checkout (tests that need it skip when it is absent).
inline std::filesystem::path shared_gpt2_gguf() {
  return std::filesystem::path(USERIP_SOURCE_DIR) / ".." / "shared" / "reference" / "tiny-gpt2.gguf";
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace userip::lm::test_support
