// The fit and the fold-in shared out across ranks by `userip launch` (FileStore, one thread per
// rank, the small world of profile_world.h): world sizes 1, 2 and 3 give the same bytes, a fit
// stopped at one world size resumes at another to the same result, and two launchers of two
// "hosts" joined over loopback TCP run the same code path as separate machines.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>

#include "profile/fit_fixture.h"
#include "support/temp_dir.h"
#include "userip/data/synth.h"
#include "userip/util/fs.h"

namespace userip::profile::testing_fit {
namespace {

namespace fs = std::filesystem;

class Distributed : public ProfileFit {
 protected:
  void SetUp() override {
    ProfileFit::SetUp();
    if (!g_world) return;
    data::save_synthetic({g_world->dataset, g_world->truth}, dir_ / "data");
    fit_args_ = "profile fit --dataset " + (dir_ / "data").string() + " --model " + g_world->lm_dir.string() +
                " --rounds 2 --samples-per-user 2 --population-steps 2 --eval-users 10 --no-bank --batch-tokens 1024"
                " --codes-by distance";  // the likelihood pass is shared out in the fold-in below
  }

  // Runs `args` at world size `ranks` (0: one process without the launcher), one thread per rank.
  void run(int ranks, const std::string& args) {
    std::string output;
    const std::string command = ranks == 0 ? "--threads 1 --log-level warn " + args
                                           : "launch --nproc-per-node " + std::to_string(ranks) +
                                                 " --threads-per-rank 1 -- userip --log-level warn " + args;
    ASSERT_EQ(testing::run_cli(command, &output), 0) << command << "\n" << output;
  }

  static void expect_same_outputs(const fs::path& a, const fs::path& b) {
    for (const char* file : {"profiles.safetensors", "codes.csv", "users.txt"})
      EXPECT_EQ(read_file(a / file), read_file(b / file)) << file << " of " << a << " and " << b;
  }

  testing::TempDir dir_;
  std::string fit_args_;
};

// A TCP port nobody listens on now.
int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  bind(s, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t length = sizeof address;
  getsockname(s, reinterpret_cast<sockaddr*>(&address), &length);
  close(s);
  return ntohs(address.sin_port);
}

TEST_F(Distributed, FitAndFoldInGiveTheSameBytesAtWorldSizesOneTwoAndThree) {
  for (int ranks : {0, 2, 3}) run(ranks, fit_args_ + " --out " + (dir_ / ("fit" + std::to_string(ranks))).string());
  for (int ranks : {2, 3}) expect_same_outputs(dir_ / "fit0", dir_ / ("fit" + std::to_string(ranks)));
  for (int ranks : {0, 3})
    run(ranks, "profile infer --profile " + (dir_ / "fit0").string() + " --out " +
                   (dir_ / ("cold" + std::to_string(ranks))).string());
  expect_same_outputs(dir_ / "cold0", dir_ / "cold3");
}

TEST_F(Distributed, AFitStoppedAtWorldSizeTwoResumesAtThreeAndAtOneToTheSameCodes) {
  run(0, fit_args_ + " --out " + (dir_ / "whole").string());
  for (int resume_ranks : {3, 0}) {
    const auto out = dir_ / ("stopped" + std::to_string(resume_ranks));
    run(2, fit_args_ + " --out " + out.string() + " --stop-after-batches 3");
    ASSERT_TRUE(fs::exists(out / "checkpoint" / "state.json"));
    run(resume_ranks, fit_args_ + " --out " + out.string());
    expect_same_outputs(dir_ / "whole", out);
  }
}

TEST_F(Distributed, TwoLaunchersJoinedOverLoopbackTcpFitAsOneProcess) {
  run(0, fit_args_ + " --out " + (dir_ / "one").string());
  const std::string port = std::to_string(free_port());
  const auto out = dir_ / "two-hosts";
  auto node = [&](int rank, std::string* output) {
    return testing::run_cli("launch --nnodes 2 --node-rank " + std::to_string(rank) + " --master-port " + port +
                                " --threads-per-rank 1 --timeout 60 -- userip --log-level warn " + fit_args_ +
                                " --out " + out.string(),
                            output);
  };
  std::string output1;
  int status1 = -1;
  std::thread second([&] { status1 = node(1, &output1); });
  std::string output0;
  EXPECT_EQ(node(0, &output0), 0) << output0;
  second.join();
  EXPECT_EQ(status1, 0) << output1;
  expect_same_outputs(dir_ / "one", out);
}

}  // namespace
}  // namespace userip::profile::testing_fit
