// The world of one process, the environment a rank reads, and the launcher's handling of failing
// and missing ranks (the sharded fit itself: tests/profile/distributed_test.cpp).
#include "userip/dist/world.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <thread>

#include "support/ranks.h"
#include "support/temp_dir.h"
#include "userip/dist/launch.h"
#include "userip/util/error.h"

namespace userip::dist {
namespace {

// Sets environment variables for a scope and restores them afterwards.
class ScopedEnvironment {
 public:
  explicit ScopedEnvironment(const std::map<std::string, std::string>& values) {
    for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                             "USERIP_DIST_STORE", "USERIP_DIST_TIMEOUT"}) {
      const char* old = std::getenv(name);
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
      unsetenv(name);
    }
    for (const auto& [name, value] : values) setenv(name.c_str(), value.c_str(), 1);
  }
  ~ScopedEnvironment() {
    for (const auto& [name, value] : saved_) {
      if (value) setenv(name.c_str(), value->c_str(), 1);
      else unsetenv(name.c_str());
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST(World, WithoutALaunchItIsAWorldOfOneWhoseCollectivesChangeNothing) {
  ScopedEnvironment env({});
  const auto o = options_from_environment();
  EXPECT_EQ(o.size, 1);
  EXPECT_EQ(o.rank, 0);
  World world(o);
  EXPECT_FALSE(world.distributed());
  EXPECT_TRUE(world.is_root());
  auto t = torch::arange(6, torch::kDouble);
  world.all_reduce_sum(t);
  world.broadcast(t);
  world.barrier();
  EXPECT_TRUE(torch::equal(t, torch::arange(6, torch::kDouble)));
  const auto gathered = world.all_gather_rows(t);
  ASSERT_EQ(gathered.size(), 1u);
  EXPECT_TRUE(torch::equal(gathered[0], t));
}

TEST(World, ReadsTorchrunsEnvironmentAndNamesTheVariableThatIsWrong) {
  {
    ScopedEnvironment env({{"RANK", "2"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "2"},
                           {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29500"}, {"USERIP_DIST_TIMEOUT", "7"}});
    const auto o = options_from_environment();
    EXPECT_EQ(o.rank, 2);
    EXPECT_EQ(o.size, 4);
    EXPECT_EQ(o.local_rank, 0);
    EXPECT_EQ(o.local_size, 2);
    EXPECT_EQ(o.master_addr, "10.0.0.1");
    EXPECT_EQ(o.master_port, 29500);
    EXPECT_EQ(o.timeout, std::chrono::seconds(7));
  }
  {
    ScopedEnvironment env({{"RANK", "4"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}});
    testing::expect_error([] { options_from_environment(); }, {"RANK=4", "WORLD_SIZE=4"});
  }
  {
    ScopedEnvironment env({{"RANK", "0"}, {"WORLD_SIZE", "two"}});
    testing::expect_error([] { options_from_environment(); }, {"WORLD_SIZE=two", "not an integer"});
  }
  {
    ScopedEnvironment env({{"RANK", "0"}, {"WORLD_SIZE", "2"}});
    testing::expect_error([] { options_from_environment(); }, {"MASTER_ADDR"});
  }
  {
    ScopedEnvironment env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}});
    testing::expect_error([] { options_from_environment(); }, {"MASTER_PORT=70000"});
  }
}

TEST(World, ItemsAreDealtOutInConsecutiveGroupsInRankOrder) {
  // Items 10..16 (7 of them), 2 per rank, 3 ranks: [10,12) [12,14) [14,16); item 16 is the next span's.
  EXPECT_EQ(share_of_span(10, 16, 2, 0), std::make_pair(std::size_t{10}, std::size_t{12}));
  EXPECT_EQ(share_of_span(10, 16, 2, 2), std::make_pair(std::size_t{14}, std::size_t{16}));
  // A short last span: rank 1 gets the rest, rank 2 nothing.
  EXPECT_EQ(share_of_span(16, 19, 2, 1), std::make_pair(std::size_t{18}, std::size_t{19}));
  EXPECT_EQ(share_of_span(16, 19, 2, 2), std::make_pair(std::size_t{19}, std::size_t{19}));
}

// Ranks that finish work of different lengths: wait_for_all outlasts the collectives' timeout
// (1 s here), where a barrier would call the late rank dead. Two ranks as threads of one process.
TEST(World, WaitForAllOutlastsTheCollectiveTimeout) {
  std::vector<std::int64_t> gathered(2, -1);
  const auto errors = testing::on_ranks(
      2,
      [&](World& world) {
        if (world.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // the long share
        world.wait_for_all("work");
        world.wait_for_all("work");  // a second wait of the same name is a new one
        const auto all = world.all_gather_rows(torch::full({1}, 10 + world.rank(), torch::kLong));
        gathered[static_cast<std::size_t>(world.rank())] = all[0].item<std::int64_t>() + all[1].item<std::int64_t>();
      },
      std::chrono::seconds(1));
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
  EXPECT_EQ(gathered[0], 21);
  EXPECT_EQ(gathered[1], 21);
}

// Rank r sends r + d rows to rank d (none from rank 0 to rank 0), each row naming its sender and
// receiver: every rank receives, in rank order, exactly what was meant for it.
TEST(World, AllToAllDeliversUnevenSharesInRankOrder) {
  constexpr int kRanks = 3;
  const auto errors = testing::on_ranks(kRanks, [](World& world) {
    const int r = world.rank();
    std::vector<torch::Tensor> to_each;
    for (int d = 0; d < kRanks; ++d) to_each.push_back(torch::full({r + d, 2}, 10 * r + d, torch::kLong));
    const auto got = world.all_to_all_rows(to_each);
    ASSERT_EQ(got.size(), static_cast<std::size_t>(kRanks));
    for (int from = 0; from < kRanks; ++from) {
      const auto& rows = got[static_cast<std::size_t>(from)];
      EXPECT_EQ(rows.sizes(), torch::IntArrayRef({from + r, 2})) << r << " from " << from;
      EXPECT_TRUE(rows.eq(10 * from + r).all().item<bool>()) << r << " from " << from;
    }
    // Nothing to send anywhere is an exchange too.
    const auto none = world.all_to_all_rows(std::vector<torch::Tensor>(kRanks, torch::empty({0}, torch::kFloat)));
    EXPECT_EQ(none.size(), static_cast<std::size_t>(kRanks));
    // One tensor per rank is required.
    EXPECT_THROW(world.all_to_all_rows({torch::zeros({1})}), Error);
  });
  for (const auto& e : errors) EXPECT_EQ(e, "");
}

TEST(Launch, BadOptionsAreErrorsNamingTheOption) {
  LaunchOptions o;
  o.command = {"true"};
  o.nproc_per_node = 0;
  testing::expect_error([&] { validate(o); }, {"--nproc-per-node"});
  o.nproc_per_node = 1;
  o.node_rank = 2;
  o.nnodes = 2;
  o.file_store = false;
  testing::expect_error([&] { validate(o); }, {"--node-rank"});
  o.node_rank = 0;
  o.command.clear();
  testing::expect_error([&] { validate(o); }, {"no command"});
}

TEST(Launch, EveryRankGetsTorchrunsEnvironmentAndAShareOfTheCores) {
  std::string output;
  ASSERT_EQ(testing::run_cli("launch --nproc-per-node 3 --threads-per-rank 1 -- /bin/sh -c "
                             "'echo \"rank $RANK of $WORLD_SIZE local $LOCAL_RANK/$LOCAL_WORLD_SIZE threads "
                             "$USERIP_THREADS store ${USERIP_DIST_STORE:+file}\"'",
                             &output),
            0)
      << output;
  for (int r = 0; r < 3; ++r)
    EXPECT_NE(output.find(fmt::format("rank {} of 3 local {}/3 threads 1 store file", r, r)), std::string::npos)
        << output;
}

TEST(Launch, AFailingRankStopsTheOthersAndIsNamed) {
  std::string output;
  EXPECT_EQ(testing::run_cli("launch --nproc-per-node 3 -- /bin/sh -c 'if [ \"$RANK\" = 1 ]; then exit 3; fi; "
                             "exec sleep 60'",
                             &output),
            1);
  EXPECT_NE(output.find("rank 1"), std::string::npos) << output;
  EXPECT_NE(output.find("exited with status 3"), std::string::npos) << output;
  EXPECT_NE(output.find("other ranks of this host were stopped"), std::string::npos) << output;
}

TEST(Launch, AKilledRankIsNamedWithItsSignal) {
  std::string output;
  EXPECT_EQ(testing::run_cli("launch --nproc-per-node 2 -- /bin/sh -c 'if [ \"$RANK\" = 1 ]; then kill -9 $$; fi; "
                             "exec sleep 60'",
                             &output),
            1);
  EXPECT_NE(output.find("rank 1"), std::string::npos) << output;
  EXPECT_NE(output.find("killed by signal 9"), std::string::npos) << output;
}

TEST(Launch, ARankThatNeverArrivesTimesOutNamingIt) {
  // Node 0 of two, and node 1 never started: rank 0 names rank 1 after the timeout.
  std::string output;
  EXPECT_EQ(testing::run_cli("launch --nnodes 2 --node-rank 0 --master-port 29731 --timeout 2 -- userip data stats "
                             "--dataset /nonexistent",
                             &output),
            1);
  EXPECT_NE(output.find("rank 1 of 2 did not join within 2 s"), std::string::npos) << output;
  EXPECT_NE(output.find("rank 0 (pid"), std::string::npos) << output;
}

}  // namespace
}  // namespace userip::dist
