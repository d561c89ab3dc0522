#include <memory>

#include "commands.h"
#include "userip/dist/launch.h"

namespace userip::cli {

namespace {

struct LaunchCommand {
  dist::LaunchOptions launch;
  bool tcp = false;
  CLI::Option* master_addr = nullptr;
  CLI::Option* master_port = nullptr;

  void run() {
    launch.file_store = !tcp && launch.nnodes == 1 && master_addr->count() == 0 && master_port->count() == 0;
    dist::launch(launch);
  }
};

}  // namespace

void add_dist_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* cmd = app.add_subcommand(
      "launch",
      "Run COMMAND as N ranks on this host (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, "
      "LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). `profile fit` and `profile infer` share their batches "
      "out across the ranks and `ctr train` trains data-parallel (docs/DISTRIBUTED.md). When a rank fails the others are stopped and the exit status "
      "is non-zero. Example: userip launch --nproc-per-node 2 -- userip profile fit --dataset D --model M --out F");
  auto c = std::make_shared<LaunchCommand>();
  auto* o = &c->launch;
  cmd->add_option("--nproc-per-node", o->nproc_per_node, "Ranks to start on this host")->capture_default_str();
  cmd->add_option("--nnodes", o->nnodes, "Hosts taking part (each runs its own launcher)")->capture_default_str();
  cmd->add_option("--node-rank", o->node_rank, "This host's place among them, from 0")->capture_default_str();
  c->master_addr = cmd->add_option("--master-addr", o->master_addr,
                               "Address of node 0, whose first rank serves the TCP rendezvous (it listens on "
                               "every interface: keep the port closed to untrusted networks)")
                   ->capture_default_str();
  c->master_port = cmd->add_option("--master-port", o->master_port, "TCP port of the rendezvous on node 0")
                   ->capture_default_str();
  cmd->add_flag("--tcp", c->tcp,
                "Rendezvous over TCP even on one host (default on one host: a file in a temporary directory; "
                "implied by --nnodes > 1, --master-addr or --master-port)");
  cmd->add_option("--timeout", o->timeout_seconds,
                  "Seconds a rank waits for the others at the rendezvous and in each collective before failing "
                  "with the names of the ranks missing")
      ->capture_default_str();
  cmd->add_option("--threads-per-rank", o->threads_per_rank,
                  "Threads of each rank (0 = this host's cores divided by --nproc-per-node)")
      ->capture_default_str();
  cmd->add_option("command", o->command, "The program and its arguments, after --; `userip` means this executable")
      ->required();
  on_run(cmd, [c] { c->run(); });
}

}  // namespace userip::cli
