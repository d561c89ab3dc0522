#pragma once
// `userip launch`: starts the ranks of one host as child processes with torchrun's environment
// (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), watches them, and
// stops the others when one fails.
#include <string>
#include <vector>

namespace userip::dist {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  // TCP rendezvous (several hosts, or one host when file_store is false): node 0's first rank serves it.
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // One host only: rendezvous through a file in a fresh temporary directory instead of TCP.
  bool file_store = true;
  int timeout_seconds = 300;   // the rendezvous' and every collective's (USERIP_DIST_TIMEOUT)
  int threads_per_rank = 0;    // USERIP_THREADS of each rank; 0 = the cores divided by the local ranks
  int grace_seconds = 5;       // after a failure, how long the others get between SIGTERM and SIGKILL
  std::vector<std::string> command;  // program and arguments; "userip" means this executable
};

void validate(const LaunchOptions& options);

// Runs the node's ranks to the end. Returns 0 when all succeeded; otherwise stops the others and
// throws an Error naming the first rank that failed and how.
void launch(const LaunchOptions& options);

}  // namespace userip::dist
