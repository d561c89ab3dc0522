#include "userip/dist/launch.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::dist {

namespace fs = std::filesystem;

void validate(const LaunchOptions& o) {
  USERIP_CHECK(o.nproc_per_node >= 1 && o.nproc_per_node <= 1024, "--nproc-per-node must be in [1, 1024], got {}",
               o.nproc_per_node);
  USERIP_CHECK(o.nnodes >= 1, "--nnodes must be at least 1, got {}", o.nnodes);
  USERIP_CHECK(o.node_rank >= 0 && o.node_rank < o.nnodes, "--node-rank must be in [0, --nnodes={}), got {}", o.nnodes,
               o.node_rank);
  USERIP_CHECK(o.master_port >= 1 && o.master_port <= 65535, "--master-port must be in [1, 65535], got {}",
               o.master_port);
  USERIP_CHECK(!(o.file_store && o.nnodes > 1), "--file-store joins the ranks of one host only (--nnodes is {})",
               o.nnodes);
  USERIP_CHECK(o.timeout_seconds >= 1, "--timeout must be at least 1 second, got {}", o.timeout_seconds);
  USERIP_CHECK(o.threads_per_rank >= 0, "--threads-per-rank must be >= 0, got {}", o.threads_per_rank);
  USERIP_CHECK(!o.command.empty(), "no command to launch: put it after --, e.g. userip launch --nproc-per-node 2 -- "
                                   "userip profile fit ...");
}

namespace {

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("ended with wait status {}", status);
}

std::string this_executable() {
  std::error_code error;
  const auto path = fs::read_symlink("/proc/self/exe", error);
  USERIP_CHECK(!error, "cannot find this executable's path (/proc/self/exe): {}", error.message());
  return path.string();
}

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
};

}  // namespace

void launch(const LaunchOptions& o) {
  validate(o);
  const int world = o.nproc_per_node * o.nnodes;
  std::vector<std::string> command = o.command;
  if (command[0] == "userip") command[0] = this_executable();
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = o.threads_per_rank > 0 ? o.threads_per_rank
                                             : std::max(1, static_cast<int>(cores) / o.nproc_per_node);
  fs::path store_dir;
  if (o.file_store) {
    std::string pattern = (fs::temp_directory_path() / "userip-launch-XXXXXX").string();
    USERIP_CHECK(mkdtemp(pattern.data()) != nullptr, "cannot make a temporary directory for the rendezvous file: {}",
                 std::strerror(errno));
    store_dir = pattern;
  }
  spdlog::info("launching {} rank{} of {} on this host (node {} of {}), {} thread{} each: {}", o.nproc_per_node,
               o.nproc_per_node == 1 ? "" : "s", world, o.node_rank, o.nnodes, threads, threads == 1 ? "" : "s",
               join(o.command, " "));
  std::vector<Rank> ranks(static_cast<std::size_t>(o.nproc_per_node));
  for (int local = 0; local < o.nproc_per_node; ++local) {
    Rank& r = ranks[static_cast<std::size_t>(local)];
    r.rank = o.node_rank * o.nproc_per_node + local;
    const pid_t pid = fork();
    USERIP_CHECK(pid >= 0, "fork failed: {}", std::strerror(errno));
    if (pid == 0) {
      setenv("RANK", std::to_string(r.rank).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node).c_str(), 1);
      setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
      setenv("MASTER_PORT", std::to_string(o.master_port).c_str(), 1);
      setenv("USERIP_DIST_TIMEOUT", std::to_string(o.timeout_seconds).c_str(), 1);
      setenv("USERIP_THREADS", std::to_string(threads).c_str(), 1);
      if (o.file_store) setenv("USERIP_DIST_STORE", (store_dir / "store").c_str(), 1);
      else unsetenv("USERIP_DIST_STORE");
      std::vector<char*> argv;
      for (auto& word : command) argv.push_back(word.data());
      argv.push_back(nullptr);
      execvp(argv[0], argv.data());
      std::fprintf(stderr, "error: rank %d: cannot run %s: %s\n", r.rank, argv[0], std::strerror(errno));
      _exit(127);
    }
    r.pid = pid;
    r.running = true;
  }
  // Wait for every rank; the first failure stops the rest.
  int running = o.nproc_per_node;
  std::string failure;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  bool killed = false;
  while (running > 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, failure.empty() ? 0 : WNOHANG);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pid == 0) {  // stopping the others after a failure: give them the grace period, then kill
      if (!killed && std::chrono::steady_clock::now() >= stop_deadline) {
        for (auto& r : ranks)
          if (r.running) kill(r.pid, SIGKILL);
        killed = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    for (auto& r : ranks) {
      if (r.pid != pid || !r.running) continue;
      r.running = false;
      --running;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && failure.empty()) {
        failure = fmt::format("rank {} (pid {}) {}", r.rank, r.pid, describe(status));
        for (auto& other : ranks)
          if (other.running) kill(other.pid, SIGTERM);
        stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.grace_seconds);
      }
    }
  }
  if (!store_dir.empty()) {
    std::error_code ignored;
    fs::remove_all(store_dir, ignored);
  }
  if (!failure.empty())
    fail("{}{}", failure, o.nproc_per_node > 1 ? "; the other ranks of this host were stopped" : "");
}

}  // namespace userip::dist
