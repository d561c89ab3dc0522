// The optional fold-in endpoint: a new user's history in, codes out, equal to what the profile
// engine's fold-in gives the same history with the same fit.
#include <gtest/gtest.h>

#include <thread>

#include "profile/profile_world.h"
#include "serve/serve_test_support.h"
#include "support/temp_dir.h"
#include "userip/profile/fit.h"

namespace userip::serve {
namespace {

using nlohmann::json;

TEST(ServeFoldIn, EndpointGivesTheCodesOfTheProfileEnginesFoldIn) {
  auto world = testing::make_profile_world();
  if (!world) GTEST_SKIP() << "spm_train not installed (Debian package sentencepiece)";
  testing::TempDir dir;
  world->dataset.save(dir / "data");
  auto in = world->inputs();
  in.dataset_path = (dir / "data").string();
  in.model_path = world->lm_dir.string();
  profile::fit_profiles(in, testing::small_fit_options(), dir / "fit");

  // A cold user's fold-in history, sent as a new user, with one item the catalogue lacks.
  const auto history = world->dataset.view({data::SplitPart::cold_history});
  const std::uint32_t cold = history.users().front();
  json events = json::array();
  data::Dataset one;
  one.item_ids = world->dataset.item_ids;
  one.item_fields = world->dataset.item_fields;
  one.label_kind = world->dataset.label_kind;
  one.split.config = world->dataset.split.config;
  one.user_ids = {"newcomer"};
  for (std::size_t i = history.user_begin(cold); i < history.user_end(cold); ++i) {
    events.push_back({{"item", world->dataset.item_ids[history.item(i)]},
                      {"rating", history.rating(i)},
                      {"timestamp", history.timestamp(i)}});
    one.interactions.user.push_back(0);
    one.interactions.item.push_back(history.item(i));
    one.interactions.rating.push_back(history.rating(i));
    one.interactions.timestamp.push_back(history.timestamp(i));
    one.split.part.push_back(data::SplitPart::cold_history);
  }
  events.push_back({{"item", "no-such-item"}});

  auto fold_in = std::make_unique<FoldIn>(dir / "fit", profile::SessionOptions{}, 0);
  // One event loop: the fold-in must not hold it (see below).
  ServerOptions options;
  options.workers = 1;
  testing::RunningServer running(testing::ServeWorld::get().source(), options, std::move(fold_in));
  auto client = running.client();
  const std::string body = json{{"history", events}}.dump();
  auto res = client.Post("/v1/users/newcomer/profile:infer", body, "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  auto answer = json::parse(res->body);
  EXPECT_EQ(answer["user"], "newcomer");
  EXPECT_EQ(answer["used_interactions"], events.size() - 1);
  EXPECT_EQ(answer["unknown_items"], json::array({"no-such-item"}));
  ASSERT_EQ(answer["codes"].size(), 2u);
  EXPECT_EQ(answer["codes"][0]["field"], "taste");
  EXPECT_EQ(answer["codes"][1]["field"], "background");

  auto one_in = world->inputs();
  one_in.dataset = &one;
  profile::InferOptions infer;
  infer.show_progress = false;
  const auto saved = profile::load_fit(dir / "fit", world->dataset, *world->tmpl);
  auto expected = profile::infer_profiles(one_in, saved.profiles, saved.options,
                                          one.view({data::SplitPart::cold_history}), {0}, infer);
  EXPECT_EQ(answer["codes"][0]["code"].get<std::int64_t>(), expected.codes[0][0][0].item<std::int64_t>());
  EXPECT_EQ(answer["codes"][1]["code"].get<std::int64_t>(), expected.codes[0][1][0].item<std::int64_t>());

  // Deterministic: the same history gives the same codes.
  auto again = client.Post("/v1/users/newcomer/profile:infer", body, "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(json::parse(again->body)["codes"], answer["codes"]);
  // The fold-in runs off the event loop: a score sent while one is in flight is answered before it.
  const auto fold_ins = [&] { return running.server().metrics().render(running.server().state()->gauges, 0); };
  std::thread slow([&] { client.Post("/v1/users/newcomer/profile:infer", body, "application/json"); });
  while (running.server().in_flight() == 0) std::this_thread::yield();
  auto quick = running.client();
  auto scored = quick.Post("/v1/score", R"({"user": "user1", "items": ["item1"]})", "application/json");
  const bool fold_in_still_running = fold_ins().find("userip_fold_in_duration_seconds_count 2\n") != std::string::npos;
  slow.join();
  ASSERT_TRUE(scored);
  EXPECT_EQ(scored->status, 200);
  EXPECT_TRUE(fold_in_still_running) << "the score waited for the fold-in";
  // A history with no known item is refused.
  auto unknown = client.Post("/v1/users/x/profile:infer", R"({"history": [{"item": "nope"}]})", "application/json");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 422) << unknown->body;
  EXPECT_NE(running.server().metrics().render(running.server().state()->gauges, 0).find("userip_fold_in_duration_seconds_count 3"),
            std::string::npos);
}

}  // namespace
}  // namespace userip::serve
