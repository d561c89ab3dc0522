// The profile-fitting tests that run several whole fits each (a minute or more in Release, several
// under the sanitizers): labelled `slow`, so scripts/test.sh runs them in the Release suite only. The
// code paths they drive (refinement, split-and-merge, resume) are also run under the sanitizers by
// fit_test.cpp's single-fit tests.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

#include "profile/fit_fixture.h"
#include "support/temp_dir.h"
#include "userip/profile/fit.h"

namespace userip::profile {
namespace {

using testing_fit::codeword_vectors;
using testing_fit::g_world;
using testing_fit::ProfileFit;
using userip::testing::TempDir;

// One refinement round after one EM round: from the same EM codebook, --refine-steps 1 moves each codeword
// coordinate by at most one Adam step (the learning rate), one step per batch moves it further, and
// --refine-users fits on fewer users' tokens while every user still ends on its codewords.
TEST_F(ProfileFit, RefinementStepsBoundHowFarCodewordsMoveAndRefinementUsersLimitWhoseSamplesFitThem) {
  auto options = small_options();
  options.rounds = 1;
  const auto fit_with = [&](int refine_rounds, int refine_steps, std::int64_t refine_users) {
    TempDir dir;
    auto o = options;
    o.refine_rounds = refine_rounds;
    o.refine_steps = refine_steps;
    o.refine_users = refine_users;
    return fit_profiles(g_world->inputs(), o, dir.path());
  };
  const auto em = fit_with(0, 0, 0);
  const auto moved = [&](const FitResult& fit) {
    double most = 0;
    for (std::size_t a = 0; a < em.profiles.codebooks.size(); ++a)
      most = std::max(most, (fit.profiles.codebooks[a].codewords()[0] - em.profiles.codebooks[a].codewords()[0])
                                .abs().max().item<double>());
    return most;
  };
  const double lr = options.refine_learning_rate;
  const auto one_step = fit_with(1, 1, 0);
  const auto all = fit_with(1, 0, 0);
  EXPECT_GT(moved(one_step), 0.5 * lr);
  EXPECT_LE(moved(one_step), lr * (1 + 1e-4));
  EXPECT_GT(moved(all), 1.5 * lr);

  const auto few = fit_with(1, 0, 10);
  ASSERT_EQ(few.log.size(), 2u);
  EXPECT_GT(few.log[1].tokens, 0);
  EXPECT_LT(few.log[1].tokens, all.log[1].tokens / 4);
  for (std::size_t a = 0; a < few.profiles.attributes.size(); ++a)
    EXPECT_TRUE(torch::allclose(few.profiles.attribute_vectors(a), codeword_vectors(few.profiles, few.profiles.codes, a)));
}

// The state after a split-and-merge move lives in the profiles and codebooks, so a fit stopped at every
// round boundary and resumed ends where the uninterrupted one does (the move itself: fit_test.cpp).
TEST_F(ProfileFit, AFitWithSplitAndMergeStoppedAtEveryRoundEndsTheSame) {
  TempDir dir;
  const auto options = split_and_merge_options();
  const auto whole = fit_profiles(g_world->inputs(), options, dir / "whole");
  ASSERT_EQ(whole.log.size(), 5u);
  ASSERT_EQ(whole.log[2].moves.size(), 2u);

  // In a refinement round, a stop takes effect at the round's end: one round per call.
  auto stopping = options;
  stopping.stop_after_batches = 1;
  int calls = 0;
  FitResult resumed;
  do {
    resumed = fit_profiles(g_world->inputs(), stopping, dir / "stopped");
    ASSERT_LT(++calls, 50);
  } while (resumed.interrupted);
  EXPECT_GE(calls, 5);
  EXPECT_TRUE(torch::equal(resumed.profiles.codes, whole.profiles.codes));
  for (std::size_t a = 0; a < whole.profiles.codebooks.size(); ++a)
    EXPECT_TRUE(torch::allclose(resumed.profiles.codebooks[a].codewords()[0], whole.profiles.codebooks[a].codewords()[0],
                                1e-5, 1e-6));
}

}  // namespace
}  // namespace userip::profile
