#include "userip/dist/world.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <thread>

#include "userip/util/error.h"
#include "userip/util/strings.h"

#if defined(USE_C10D_GLOO)
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#define USERIP_HAVE_GLOO 1
#endif

namespace userip::dist {

namespace {

// An integer environment variable, or `otherwise` when unset.
long env_int(const char* name, long otherwise) {
  const char* text = std::getenv(name);
  if (!text || !*text) return otherwise;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  USERIP_CHECK(end && *end == '\0', "environment variable {}={} is not an integer", name, text);
  return value;
}

std::string env_string(const char* name) {
  const char* text = std::getenv(name);
  return text ? text : "";
}

}  // namespace

WorldOptions options_from_environment() {
  WorldOptions o;
  o.size = static_cast<int>(env_int("WORLD_SIZE", 1));
  USERIP_CHECK(o.size >= 1, "environment variable WORLD_SIZE={} must be at least 1", o.size);
  o.rank = static_cast<int>(env_int("RANK", 0));
  USERIP_CHECK(o.rank >= 0 && o.rank < o.size, "environment variable RANK={} must lie in [0, WORLD_SIZE={})", o.rank,
               o.size);
  o.local_size = static_cast<int>(env_int("LOCAL_WORLD_SIZE", o.size == 1 ? 1 : o.size));
  o.local_rank = static_cast<int>(env_int("LOCAL_RANK", o.rank));
  USERIP_CHECK(o.local_size >= 1 && o.local_rank >= 0 && o.local_rank < o.local_size,
               "environment variables LOCAL_RANK={} and LOCAL_WORLD_SIZE={} are inconsistent", o.local_rank,
               o.local_size);
  o.store_file = env_string("USERIP_DIST_STORE");
  o.master_addr = env_string("MASTER_ADDR");
  o.master_port = static_cast<int>(env_int("MASTER_PORT", 0));
  const long timeout = env_int("USERIP_DIST_TIMEOUT", 300);
  USERIP_CHECK(timeout >= 1, "environment variable USERIP_DIST_TIMEOUT={} must be at least 1 (seconds)", timeout);
  o.timeout = std::chrono::seconds(timeout);
  if (o.size > 1 && o.store_file.empty()) {
    USERIP_CHECK(!o.master_addr.empty(), "WORLD_SIZE={} needs MASTER_ADDR (or USERIP_DIST_STORE on one host)", o.size);
    USERIP_CHECK(o.master_port >= 1 && o.master_port <= 65535,
                 "environment variable MASTER_PORT={} must lie in [1, 65535]", o.master_port);
  }
  return o;
}

#if USERIP_HAVE_GLOO
struct World::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

namespace {

// Runs a collective and waits for it; c10d's failures (a timeout, a peer gone) become errors naming
// the collective and this rank.
template <typename Start>
void collective(const char* what, int rank, Start start) {
  try {
    start()->wait();
  } catch (const c10::Error& e) {
    fail("rank {}: {} failed: {}", rank, what, e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail("rank {}: {} failed: {}", rank, what, e.what());
  }
}

}  // namespace
#else
struct World::Impl {};
#endif

World::World() = default;

World::World(const WorldOptions& options) : options_(options) {
  if (options_.size == 1) return;
#if USERIP_HAVE_GLOO
  impl_ = std::make_unique<Impl>();
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(options_.timeout).count();
  std::string where;
  try {
    if (!options_.store_file.empty()) {
      where = "the file " + options_.store_file;
      impl_->store = c10::make_intrusive<c10d::FileStore>(options_.store_file, options_.size);
    } else {
      where = options_.master_addr + ":" + std::to_string(options_.master_port);
      c10d::TCPStoreOptions tcp;
      tcp.port = static_cast<std::uint16_t>(options_.master_port);
      tcp.isServer = options_.rank == 0;
      tcp.waitWorkers = false;  // arrivals are checked below, so that a missing rank is named
      tcp.timeout = options_.timeout;
      impl_->store = c10::make_intrusive<c10d::TCPStore>(options_.master_addr, tcp);
    }
    impl_->store->setTimeout(options_.timeout);
  } catch (const std::exception& e) {
    fail("rank {}: could not reach the rendezvous at {} within {} s: {}", options_.rank, where, seconds, e.what());
  }
  impl_->store = c10::make_intrusive<c10d::PrefixStore>("userip", impl_->store);
  // Every rank announces itself, then waits for the others, polling so that the ones missing at the
  // deadline can be named.
  // Two processes claiming one rank, or ranks started with different world sizes (another
  // --nproc-per-node on another host), are errors rather than a hang.
  const auto claims = impl_->store->add("claimed/" + std::to_string(options_.rank), 1);
  USERIP_CHECK(claims == 1, "rank {}: another process already joined as rank {} (rendezvous at {}); is "
               "--nproc-per-node the same on every host, and --node-rank different?", options_.rank, options_.rank, where);
  const std::string size_text = std::to_string(options_.size);
  if (options_.rank == 0) impl_->store->set("world_size", std::vector<std::uint8_t>(size_text.begin(), size_text.end()));
  impl_->store->set("arrived/" + std::to_string(options_.rank), std::vector<std::uint8_t>{1});
  const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
  bool size_checked = false;
  for (;;) {
    if (!size_checked && impl_->store->check({"world_size"})) {
      const auto value = impl_->store->get("world_size");
      const std::string root_size(value.begin(), value.end());
      USERIP_CHECK(root_size == size_text, "rank {}: this rank was started for a world of {} ranks, rank 0 for {} "
                   "(is --nproc-per-node the same on every host?)", options_.rank, size_text, root_size);
      size_checked = true;
    }
    std::vector<int> missing;
    for (int r = 0; r < options_.size; ++r)
      if (!impl_->store->check({"arrived/" + std::to_string(r)})) missing.push_back(r);
    if (missing.empty()) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      std::vector<std::string> names;
      for (int r : missing) names.push_back(std::to_string(r));
      fail("rank {}: rank{} {} of {} did not join within {} s (rendezvous at {})", options_.rank,
           missing.size() == 1 ? "" : "s", join(names, ", "), options_.size, seconds, where);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto gloo = c10d::ProcessGroupGloo::Options::create();
  gloo->timeout = options_.timeout;
  // One host: loopback. Several: the interface this host's name resolves to.
  const bool one_host = !options_.store_file.empty() || options_.master_addr == "127.0.0.1" ||
                        options_.master_addr == "localhost";
  gloo->devices.push_back(one_host ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                   : c10d::ProcessGroupGloo::createDefaultDevice());
  try {
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, options_.rank, options_.size, gloo);
  } catch (const std::exception& e) {
    fail("rank {}: could not connect the {} ranks: {}", options_.rank, options_.size, e.what());
  }
  spdlog::debug("rank {} of {} joined (rendezvous at {})", options_.rank, options_.size, where);
#else
  fail("this build of userip has no Gloo backend (libtorch without c10d Gloo): WORLD_SIZE={} cannot be run",
       options_.size);
#endif
}

World::~World() = default;

World& World::get() {
  static World world(options_from_environment());
  return world;
}

void World::all_reduce_sum(torch::Tensor& tensor) {
  if (!distributed()) return;
#if USERIP_HAVE_GLOO
  USERIP_CHECK(tensor.device().is_cpu() && tensor.is_contiguous(), "all_reduce_sum: a contiguous CPU tensor is needed");
  std::vector<at::Tensor> tensors{tensor};
  collective("all-reduce", rank(), [&] { return impl_->group->allreduce(tensors); });
#endif
}

std::vector<torch::Tensor> World::all_gather_rows(const torch::Tensor& tensor) {
  if (!distributed()) return {tensor};
  std::vector<torch::Tensor> result;
#if USERIP_HAVE_GLOO
  USERIP_CHECK(tensor.dim() >= 1 && tensor.device().is_cpu(), "all_gather_rows: a CPU tensor of at least one dimension is needed");
  // Gloo gathers equal shapes: the row counts first, then every tensor padded to the longest.
  std::vector<at::Tensor> count{at::full({1}, tensor.size(0), at::kLong)};
  std::vector<std::vector<at::Tensor>> counts(1);
  for (int r = 0; r < size(); ++r) counts[0].push_back(at::empty({1}, at::kLong));
  collective("all-gather (row counts)", rank(), [&] { return impl_->group->allgather(counts, count); });
  std::int64_t longest = 0;
  for (const auto& c : counts[0]) longest = std::max(longest, c.item<std::int64_t>());
  auto shape = tensor.sizes().vec();
  shape[0] = longest;
  auto padded = at::zeros(shape, tensor.options());
  padded.narrow(0, 0, tensor.size(0)).copy_(tensor);
  std::vector<at::Tensor> input{padded};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int r = 0; r < size(); ++r) output[0].push_back(at::empty(shape, tensor.options()));
  collective("all-gather", rank(), [&] { return impl_->group->allgather(output, input); });
  for (int r = 0; r < size(); ++r)
    result.push_back(output[0][static_cast<std::size_t>(r)].narrow(0, 0, counts[0][static_cast<std::size_t>(r)].item<std::int64_t>()));
#endif
  return result;
}

void World::broadcast(torch::Tensor& tensor, int root) {
  if (!distributed()) return;
#if USERIP_HAVE_GLOO
  USERIP_CHECK(tensor.device().is_cpu() && tensor.is_contiguous(), "broadcast: a contiguous CPU tensor is needed");
  std::vector<at::Tensor> tensors{tensor};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  collective("broadcast", rank(), [&] { return impl_->group->broadcast(tensors, options); });
#endif
}

std::vector<torch::Tensor> World::all_to_all_rows(const std::vector<torch::Tensor>& to_each) {
  USERIP_CHECK(static_cast<int>(to_each.size()) == size(), "all_to_all_rows: {} tensors for {} ranks", to_each.size(),
               size());
  if (!distributed()) return {to_each[0]};
  std::vector<torch::Tensor> result;
#if USERIP_HAVE_GLOO
  const auto& first = to_each[0];
  USERIP_CHECK(first.dim() >= 1, "all_to_all_rows: tensors of at least one dimension are needed");
  for (const auto& t : to_each) {
    USERIP_CHECK(t.device().is_cpu() && t.scalar_type() == first.scalar_type() && t.dim() == first.dim() &&
                     t.sizes().slice(1) == first.sizes().slice(1),
                 "all_to_all_rows: the tensors for the ranks differ in device, dtype or trailing shape");
  }
  // Every rank's row counts for every rank, so that each knows what it receives from whom.
  std::vector<std::int64_t> sent;
  for (const auto& t : to_each) sent.push_back(t.size(0));
  const auto counts = all_gather_rows(torch::tensor(sent, torch::kLong));
  std::vector<std::int64_t> input_counts = sent, output_counts;
  for (const auto& from : counts) output_counts.push_back(from[rank()].item<std::int64_t>());
  auto input = torch::cat(to_each).contiguous();
  auto shape = first.sizes().vec();
  shape[0] = 0;
  for (auto c : output_counts) shape[0] += c;
  auto output = torch::empty(shape, first.options());
  // Gloo's alltoall wants at least one element somewhere; an exchange of nothing needs no call.
  std::int64_t total = 0;
  for (const auto& from : counts) total += from.sum().item<std::int64_t>();
  if (total > 0) {
    // Gloo moves the split sizes out of the vectors it is given: it gets copies.
    std::vector<std::int64_t> output_splits = output_counts, input_splits = input_counts;
    collective("all-to-all", rank(), [&] { return impl_->group->alltoall_base(output, input, output_splits, input_splits); });
  }
  std::int64_t at = 0;
  for (auto c : output_counts) {
    result.push_back(output.narrow(0, at, c));
    at += c;
  }
#endif
  return result;
}

void World::barrier() {
  if (!distributed()) return;
#if USERIP_HAVE_GLOO
  collective("barrier", rank(), [&] { return impl_->group->barrier(); });
#endif
}

void World::wait_for_all(const std::string& name) {
  if (!distributed()) return;
#if USERIP_HAVE_GLOO
  const std::string prefix = "waited/" + std::to_string(waits_++) + "/" + name + "/";
  impl_->store->set(prefix + std::to_string(rank()), std::vector<std::uint8_t>{1});
  const auto started = std::chrono::steady_clock::now();
  auto next_report = started + std::chrono::minutes(1);
  while (true) {
    std::vector<std::string> missing;
    for (int r = 0; r < size(); ++r)
      if (!impl_->store->check({prefix + std::to_string(r)})) missing.push_back(std::to_string(r));
    if (missing.empty()) return;
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_report) {
      spdlog::info("rank {}: waiting {} min for rank{} {} to finish {}", rank(),
                   std::chrono::duration_cast<std::chrono::minutes>(now - started).count(),
                   missing.size() == 1 ? "" : "s", join(missing, ", "), name);
      next_report += std::chrono::minutes(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
#endif
}

void share_rows(World& world, const std::vector<std::int64_t>& rows, const std::vector<torch::Tensor*>& tensors) {
  if (!world.distributed()) return;
  const auto mine = torch::tensor(rows, torch::TensorOptions().dtype(torch::kLong));
  const auto all_rows = world.all_gather_rows(mine);
  for (torch::Tensor* tensor : tensors) {
    const auto device = tensor->device();
    const auto gathered = world.all_gather_rows(tensor->index_select(0, mine.to(device)).cpu().contiguous());
    for (int r = 0; r < world.size(); ++r) {
      if (r == world.rank() || all_rows[static_cast<std::size_t>(r)].numel() == 0) continue;
      tensor->index_copy_(0, all_rows[static_cast<std::size_t>(r)].to(device), gathered[static_cast<std::size_t>(r)].to(device));
    }
  }
}

}  // namespace userip::dist
