#pragma once
// The processes of one run (ranks) and the collectives between them, on torch.distributed's c10d:
// Gloo between CPU processes. A process that was not launched as a rank is a world of one, and
// every collective is then a no-op, so the library's code paths are the same at every size.
//
// A rank learns its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which `userip launch` sets too, or from
// USERIP_DIST_STORE (a file every rank on one host can reach, instead of the TCP rendezvous).
// Every collective and the rendezvous have a timeout (USERIP_DIST_TIMEOUT, seconds; default 300):
// a rank that never arrives is named in the error instead of hanging the others.
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>
#include <algorithm>

namespace userip::dist {

struct WorldOptions {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string master_addr;  // TCP rendezvous: rank 0 serves the store at master_addr:master_port
  int master_port = 0;
  std::string store_file;   // file rendezvous (one host): used instead of TCP when set
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
};

// The options from the environment; size 1 when WORLD_SIZE is absent. Malformed or inconsistent
// values (RANK outside [0, WORLD_SIZE), a port out of range) are errors naming the variable.
WorldOptions options_from_environment();

class World {
 public:
  // The process's world: joined on first use from options_from_environment().
  static World& get();

  World();  // a world of one
  explicit World(const WorldOptions& options);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return options_.rank; }
  int size() const { return options_.size; }
  int local_size() const { return options_.local_size; }
  bool is_root() const { return options_.rank == 0; }
  bool distributed() const { return options_.size > 1; }

  // Element-wise sum over ranks, in place (CPU tensor).
  void all_reduce_sum(torch::Tensor& tensor);
  // Rank r's `tensor` for every r, in rank order. Shapes may differ in their first dimension only.
  std::vector<torch::Tensor> all_gather_rows(const torch::Tensor& tensor);
  // `tensor` replaced by root's, in place (same shape on every rank).
  void broadcast(torch::Tensor& tensor, int root = 0);
  // Personalised exchange: `to_each[r]` goes to rank r, and the result's entry r is what rank r sent
  // here. One entry per rank; the tensors are CPU tensors of one dtype whose shapes differ in their
  // first dimension only (any row count, 0 included), the same trailing shape on every rank.
  std::vector<torch::Tensor> all_to_all_rows(const std::vector<torch::Tensor>& to_each);
  void barrier();
  // Blocks until every rank has called it with the same `name`, however long that takes: for ranks
  // that finish work of different lengths, where a collective's timeout would mistake the slowest
  // for a dead one. Every minute it logs which ranks it still waits for. A rank that fails stops
  // the others through the launcher (or torchrun), so this never waits for a dead rank.
  void wait_for_all(const std::string& name);

 private:
  struct Impl;
  WorldOptions options_;
  int waits_ = 0;  // wait_for_all calls so far: every rank makes them in the same order
  std::unique_ptr<Impl> impl_;
};

// Each rank updated `rows` (of the first dimension) of every tensor in `tensors`, on any device;
// afterwards every rank's tensors hold every rank's rows. The ranks' rows must be disjoint.
void share_rows(World& world, const std::vector<std::int64_t>& rows, const std::vector<torch::Tensor*>& tensors);

// The first item of [first, end) that `rank` owns when the items are dealt out in consecutive
// groups of `group` per rank, W·group at a time, and one past its last.
inline std::pair<std::size_t, std::size_t> share_of_span(std::size_t first, std::size_t end, std::size_t group,
                                                          int rank) {
  const std::size_t begin = std::min(end, first + group * static_cast<std::size_t>(rank));
  return {begin, std::min(end, begin + group)};
}


}  // namespace userip::dist
