#include "userip/ctr/sharded_tables.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include <algorithm>

#include "userip/util/error.h"

namespace userip::ctr {

namespace {

// The ranks a sharded model's tables are shared by; a model sharded over no world is a world of one.
dist::World& world_of(const TableShard& shard, dist::World& alone) { return shard.world ? *shard.world : alone; }

// Per rank r, the places in `global` (int64 rows) of the rows that rank r owns, in their order there.
std::vector<torch::Tensor> places_by_owner(const torch::Tensor& global, int ranks) {
  const torch::Tensor owner = global.remainder(ranks);
  std::vector<torch::Tensor> places;
  for (int r = 0; r < ranks; ++r) places.push_back(owner.eq(r).nonzero().reshape({-1}));
  return places;
}

}  // namespace

struct ShardedTables::Impl {
  CtrModel& model;
  dist::World alone;
  dist::World& world;
  std::vector<torch::Tensor> shares;          // the model's table shares, embedding_parameters() order
  torch::Tensor ids;                          // sorted global rows fetched (CPU int64)
  torch::Tensor ids_on_device;
  std::vector<torch::Tensor> fetched;         // per table, the fetched rows [ids, width], on the model's device
  std::vector<std::vector<torch::Tensor>> entry_rows, entry_values;  // per table, gradient entries kept

  explicit Impl(CtrModel& m) : model(m), world(world_of(*m.table_shard(), alone)), shares(m.embedding_parameters()) {
    entry_rows.resize(shares.size());
    entry_values.resize(shares.size());
  }
};

ShardedTables::ShardedTables(CtrModel& model) {
  USERIP_CHECK(model.table_shard() != nullptr, "ShardedTables: the model's tables are not row-sharded");
  impl_ = std::make_unique<Impl>(model);
}

ShardedTables::~ShardedTables() { impl_->model.read_tables_from({}); }

void ShardedTables::fetch(const std::vector<FeatureBatch>& batches, bool for_training) {
  Impl& s = *impl_;
  if (s.shares.empty()) return;  // no table: every rank's model has the same layout, so none exchanges
  std::vector<torch::Tensor> read;
  for (const auto& b : batches) {
    if (b.categorical.defined()) read.push_back(b.categorical.reshape({-1}).cpu());
    if (b.multi_index.defined()) read.push_back(b.multi_index.reshape({-1}).cpu());
  }
  s.ids = read.empty() ? torch::empty({0}, torch::kLong) : std::get<0>(at::_unique(torch::cat(read), /*sorted=*/true));
  const int ranks = s.world.size();
  const auto places = places_by_owner(s.ids, ranks);
  std::vector<torch::Tensor> requests;
  for (const auto& p : places) requests.push_back(s.ids.index_select(0, p));
  const auto wanted = s.world.all_to_all_rows(requests);

  // All tables' rows travel together, side by side.
  std::vector<std::int64_t> widths;
  for (const auto& t : s.shares) widths.push_back(t.size(1));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> replies;
  for (const auto& rows : wanted) {
    const torch::Tensor local = rows.div(ranks, "floor");
    std::vector<torch::Tensor> parts;
    for (const auto& t : s.shares) parts.push_back(t.detach().index_select(0, local.to(t.device())).cpu());
    replies.push_back(torch::cat(parts, 1).contiguous());
  }
  const auto got = s.world.all_to_all_rows(replies);
  std::int64_t width = 0;
  for (auto w : widths) width += w;
  torch::Tensor rows = torch::empty({s.ids.size(0), width}, s.shares.front().options().device(torch::kCPU));
  for (int r = 0; r < ranks; ++r) rows.index_copy_(0, places[static_cast<std::size_t>(r)], got[static_cast<std::size_t>(r)]);

  const auto device = s.shares.front().device();
  s.fetched.clear();
  std::int64_t at = 0;
  for (auto w : widths) {
    torch::Tensor table = rows.narrow(1, at, w).contiguous().to(device);
    if (for_training) table.requires_grad_(true);
    s.fetched.push_back(table);
    at += w;
  }
  s.ids_on_device = s.ids.to(device);
  s.model.read_tables_from(s.fetched);
}

dist::World& ShardedTables::world() const { return impl_->world; }

FeatureBatch ShardedTables::renumber(const FeatureBatch& batch) const {
  FeatureBatch b = batch;
  if (impl_->shares.empty()) return b;
  if (b.categorical.defined()) b.categorical = torch::searchsorted(impl_->ids_on_device, b.categorical);
  if (b.multi_index.defined()) b.multi_index = torch::searchsorted(impl_->ids_on_device, b.multi_index);
  return b;
}

void ShardedTables::take_gradients() {
  Impl& s = *impl_;
  for (std::size_t t = 0; t < s.fetched.size(); ++t) {
    const torch::Tensor grad = s.fetched[t].grad();
    if (!grad.defined()) continue;
    USERIP_CHECK(grad.is_sparse(), "row-sharded tables need sparse gradients (embedding optimizer lazy_adam or adagrad)");
    const std::int64_t entries = grad._values().size(0);
    if (entries > 0) {
      s.entry_rows[t].push_back(s.ids.index_select(0, grad._indices().reshape({-1}).cpu()));
      s.entry_values[t].push_back(grad._values().reshape({entries, -1}).cpu());
    }
    s.fetched[t].mutable_grad() = torch::Tensor();
  }
}

void ShardedTables::push_gradients() {
  Impl& s = *impl_;
  if (s.shares.empty()) return;
  const int ranks = s.world.size();
  torch::Tensor reached = torch::zeros({static_cast<std::int64_t>(s.shares.size())}, torch::kLong);
  for (std::size_t t = 0; t < s.shares.size(); ++t)
    for (const auto& rows : s.entry_rows[t]) reached[static_cast<std::int64_t>(t)] += rows.size(0);
  s.world.all_reduce_sum(reached);
  for (std::size_t t = 0; t < s.shares.size(); ++t) {
    auto& share = s.shares[t];
    const std::int64_t width = share.size(1);
    const torch::Tensor rows =
        s.entry_rows[t].empty() ? torch::empty({0}, torch::kLong) : torch::cat(s.entry_rows[t]);
    const torch::Tensor values = s.entry_values[t].empty()
                                     ? torch::empty({0, width}, share.options().device(torch::kCPU))
                                     : torch::cat(s.entry_values[t]);
    s.entry_rows[t].clear();
    s.entry_values[t].clear();
    if (reached[static_cast<std::int64_t>(t)].item<std::int64_t>() == 0) continue;  // as one process: no gradient
    std::vector<torch::Tensor> rows_to, values_to;
    for (const auto& p : places_by_owner(rows, ranks)) {
      rows_to.push_back(rows.index_select(0, p));
      values_to.push_back(values.index_select(0, p));
    }
    // Received in rank order, which is slice order: the owner's entries keep one process's order.
    const torch::Tensor local = torch::cat(s.world.all_to_all_rows(rows_to)).div(ranks, "floor");
    const torch::Tensor received = torch::cat(s.world.all_to_all_rows(values_to));
    share.mutable_grad() = torch::sparse_coo_tensor(local.unsqueeze(0).to(share.device()),
                                                    received.to(share.device()), share.sizes());
  }
}

std::shared_ptr<CtrModel> assemble_on_root(CtrModel& sharded, const ModelConfig& config, const FieldLayout& layout,
                                           std::int64_t block_bytes) {
  const TableShard* shard = sharded.table_shard();
  USERIP_CHECK(shard != nullptr, "assemble_on_root: the model's tables are not row-sharded");
  dist::World alone;
  dist::World& world = world_of(*shard, alone);
  const int ranks = world.size();
  std::shared_ptr<CtrModel> whole;
  if (world.is_root()) whole = make_model(config, layout);
  torch::NoGradGuard no_grad;
  const auto shares = sharded.embedding_parameters();
  // Rank 0's share is the largest: its length sets the number of rounds every rank makes.
  const std::int64_t longest = (layout.vocabulary_size() + ranks - 1) / ranks;
  for (std::size_t t = 0; t < shares.size(); ++t) {
    const torch::Tensor mine = shares[t].detach();
    // The rows go to rank 0 a block at a time, so that it never holds a second whole table in transit.
    const std::int64_t block = std::max<std::int64_t>(1, block_bytes / std::max<std::int64_t>(1, mine.size(1) * mine.element_size()));
    torch::Tensor table = whole ? whole->embedding_parameters()[t] : torch::Tensor();
    for (std::int64_t first = 0; first < longest; first += block) {
      const std::int64_t begin = std::min(first, mine.size(0)), end = std::min(first + block, mine.size(0));
      std::vector<torch::Tensor> to_each(static_cast<std::size_t>(ranks), mine.narrow(0, 0, 0).cpu());
      to_each[0] = mine.narrow(0, begin, end - begin).cpu().contiguous();
      const auto got = world.all_to_all_rows(to_each);
      if (!whole) continue;
      for (int r = 0; r < ranks; ++r) {
        const auto& rows = got[static_cast<std::size_t>(r)];
        // Local row l of rank r is global row l·W + r.
        table.index_copy_(0, torch::arange(first * ranks + r, (first + rows.size(0)) * ranks + r, ranks, torch::kLong), rows);
      }
    }
  }
  if (!whole) return nullptr;
  auto parameters = whole->named_parameters();
  for (const auto& item : sharded.named_parameters()) {
    if (!sharded.is_table(item.value())) parameters[item.key()].copy_(item.value().detach().cpu());
  }
  auto buffers = whole->named_buffers();
  for (const auto& item : sharded.named_buffers()) buffers[item.key()].copy_(item.value().detach().cpu());
  whole->eval();
  return whole;
}

}  // namespace userip::ctr
