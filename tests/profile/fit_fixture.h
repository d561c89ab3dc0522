#pragma once
// The fixture of the profile-fitting tests (fit_test.cpp and fit_slow_test.cpp): the small world of
// profile_world.h, built once per test program, and helpers that rebuild profiles from codes.
#include <gtest/gtest.h>

#include <filesystem>
#include <system_error>

#include "profile/profile_world.h"
#include "userip/profile/fit.h"

namespace userip::profile::testing_fit {

inline userip::testing::ProfileWorld* g_world = nullptr;

class ProfileFit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!g_world) g_world = userip::testing::make_profile_world().release();
  }
  static void TearDownTestSuite() {
    if (!g_world) return;
    std::error_code ignored;
    std::filesystem::remove_all(g_world->dir, ignored);
    delete g_world;
    g_world = nullptr;
  }
  void SetUp() override {
    if (!g_world) GTEST_SKIP() << "spm_train not installed (Debian package sentencepiece)";
  }

  static FitOptions small_options() { return userip::testing::small_fit_options(); }

  // One EM round and four refinement rounds with a merge-margin ratio of 1, which makes the
  // lowest-margin code of every attribute redundant (it is under the median): a move is made at the
  // first round that allows one, the second refinement round, with two rounds after it.
  static FitOptions split_and_merge_options() {
    auto options = small_options();
    options.rounds = 1;
    options.refine_rounds = 4;
    options.merge_margin_ratio = 1.0;
    options.checkpoint_seconds = 1e9;  // only a stop writes a checkpoint
    return options;
  }
};

// Each attribute's profile vectors [U, L·d] rebuilt from the codes' codewords.
inline torch::Tensor codeword_vectors(const Profiles& p, const torch::Tensor& codes, std::size_t a) {
  return p.codebooks[a].reconstruct(codes.select(1, static_cast<std::int64_t>(a)));
}

}  // namespace userip::profile::testing_fit
