// `userip serve` as a user runs it: prints the port it chose, reloads on SIGHUP, and on SIGTERM
// finishes the request in flight and exits 0.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "serve/serve_test_support.h"
#include "support/temp_dir.h"

namespace userip::serve {
namespace {

using nlohmann::json;

struct Child {
  pid_t pid = -1;
  FILE* out = nullptr;
};

// Starts the CLI with stdout on a pipe (stderr to `log`).
Child spawn(const std::vector<std::string>& args, const std::filesystem::path& log) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  Child child;
  child.pid = ::fork();
  if (child.pid == 0) {
    ::dup2(fds[1], 1);
    FILE* err = std::fopen(log.c_str(), "w");
    if (err) ::dup2(::fileno(err), 2);
    ::close(fds[0]);
    std::vector<char*> argv;
    std::string program = USERIP_CLI;
    argv.push_back(program.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(program.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  child.out = ::fdopen(fds[0], "r");
  return child;
}

std::string read_line(FILE* f) {
  std::string line;
  for (int c = std::fgetc(f); c != EOF && c != '\n'; c = std::fgetc(f)) line.push_back(static_cast<char>(c));
  return line;
}

TEST(ServeCli, PrintsItsPortReloadsOnSighupAndExitsCleanlyOnSigterm) {
  const auto& world = testing::ServeWorld::get();
  testing::TempDir dir;
  std::filesystem::copy_file(world.bank, dir / "bank.sqlite");
  auto child = spawn({"serve", "--model", world.codes_model.string(), "--bank", (dir / "bank.sqlite").string(),
                      "--port", "0", "--max-items", "5000", "--max-body-bytes", "33554432"},
                     dir / "stderr.txt");
  ASSERT_GT(child.pid, 0);
  const std::string first = read_line(child.out);
  const std::string prefix = "listening on http://127.0.0.1:";
  ASSERT_EQ(first.rfind(prefix, 0), 0u) << first << "\n" << userip::read_file(dir / "stderr.txt");
  const int port = std::stoi(first.substr(prefix.size()));
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  auto health = client.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);

  // SIGHUP: a republished bank is picked up.
  testing::write_control_bank(world.dataset, testing::ServeWorld::kCodes, dir / "bank.sqlite");
  ::kill(child.pid, SIGHUP);
  int generation = 1;
  for (int i = 0; i < 200 && generation == 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto ready = client.Get("/readyz");
    if (ready && ready->status == 200) generation = json::parse(ready->body)["state"]["generation"].get<int>();
  }
  EXPECT_EQ(generation, 2) << userip::read_file(dir / "stderr.txt");

  // SIGTERM while a large batch is being scored: the batch is answered, then the process exits 0.
  std::vector<std::string> items;
  for (int i = 0; i < 5000; ++i) items.push_back("item" + std::to_string(i % 60));
  json requests = json::array();
  for (int u = 0; u < 100; ++u) requests.push_back({{"user", "user" + std::to_string(u)}, {"items", items}});
  const std::string body = json{{"requests", requests}}.dump();
  int status = 0;
  std::size_t results = 0;
  std::thread slow([&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    auto res = c.Post("/v1/score:batch", body, "application/json");
    if (res) {
      status = res->status;
      if (res->status == 200) results = json::parse(res->body)["results"].size();
    }
  });
  // Wait until the batch is in flight (the gauge counts the /metrics request too).
  bool in_flight = false;
  for (int i = 0; i < 2000 && !in_flight; ++i) {
    auto m = client.Get("/metrics");
    in_flight = m && m->body.find("userip_http_requests_in_flight 2\n") != std::string::npos;
    if (!in_flight) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_TRUE(in_flight) << "the batch was never seen in flight";
  ::kill(child.pid, SIGTERM);
  slow.join();
  EXPECT_EQ(status, 200);
  EXPECT_EQ(results, 100u);
  int wait_status = 0;
  ASSERT_EQ(::waitpid(child.pid, &wait_status, 0), child.pid);
  EXPECT_TRUE(WIFEXITED(wait_status)) << "killed by signal " << (WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0);
  EXPECT_EQ(WEXITSTATUS(wait_status), 0) << userip::read_file(dir / "stderr.txt");
  EXPECT_EQ(read_line(child.out), "stopped");
  std::fclose(child.out);
}

TEST(ServeCli, BadOptionsFailWithAMessage) {
  const auto& world = testing::ServeWorld::get();
  std::string output;
  EXPECT_EQ(testing::run_cli("serve --model " + world.codes_model.string(), &output), 1);
  EXPECT_NE(output.find("reads profile codes: give the feature bank (--bank)"), std::string::npos) << output;
  EXPECT_EQ(testing::run_cli("serve --model " + world.base_model.string() + " --port 70000", &output), 1);
  EXPECT_NE(output.find("--port 70000 is out of range"), std::string::npos) << output;
  EXPECT_EQ(testing::run_cli("serve --model " + world.base_model.string() + " --lm x", &output), 1);
  EXPECT_NE(output.find("--lm and --profile go together"), std::string::npos) << output;
  testing::TempDir dir;
  auto empty_token = dir.write("token", "\n");
  EXPECT_EQ(testing::run_cli("serve --model " + world.base_model.string() + " --admin-token-file " + empty_token.string(),
                             &output),
            1);
  EXPECT_NE(output.find("the admin token file is empty"), std::string::npos) << output;
}

}  // namespace
}  // namespace userip::serve
