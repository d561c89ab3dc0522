#pragma once
// Embedding tables larger than one process: each rank holds a share of every table's rows and the
// optimizer state of those rows (TableShard, ctr/models.h), and the rows a batch reads travel to
// the rank that reads them. A step (docs/DISTRIBUTED.md, "Tables larger than one process"):
//   1. fetch: every rank sends the sorted global indices its slices read to their owners (rank
//      g mod W) by all-to-all, and receives the rows back by a second all-to-all;
//   2. each slice runs forward and backward on those rows (renumber() maps the batch's indices
//      into them), and take_gradients() keeps the rows' sparse gradient entries in slice order;
//   3. push_gradients: the entries go back to the owners by all-to-all; an owner lists what it
//      receives in rank order, which is slice order, so the row-wise optimizer (lazy Adam,
//      Adagrad) sums every row's gradient in the order one process would: the tables come out
//      bitwise the same at every world size.
// Every call marked collective must be made by every rank of the model's world, the same number
// of times, even by a rank with nothing to read.
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "userip/ctr/batch.h"
#include "userip/ctr/models.h"
#include "userip/dist/world.h"

namespace userip::ctr {

class ShardedTables {
 public:
  // `model` must have row-sharded tables (make_model with a TableShard).
  explicit ShardedTables(CtrModel& model);
  ~ShardedTables();  // the model reads its own share again
  ShardedTables(const ShardedTables&) = delete;
  ShardedTables& operator=(const ShardedTables&) = delete;

  // Collective. Brings every row that `batches` index (any number of batches, none included) from
  // its rank; the model then reads them. With `for_training` they take gradients.
  void fetch(const std::vector<FeatureBatch>& batches, bool for_training);
  // `batch` (one of those fetched) with its table indices renumbered into the fetched rows.
  FeatureBatch renumber(const FeatureBatch& batch) const;
  // After a backward: keeps the fetched rows' gradient entries, as global rows, and clears them.
  void take_gradients();
  // Collective. Sends the kept entries to the rows' owners and sets each table share's sparse
  // gradient; a table that no rank's batch reached gets none (as in one process).
  void push_gradients();
  // The ranks the tables are shared by.
  dist::World& world() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Collective. The whole model, its tables assembled from every rank's share, on rank 0 and on the
// CPU (null on the other ranks): what `ctr train` saves and `serve` loads. It stays off the GPU,
// where a table too large for one process would least fit. Only this step needs a whole table in one
// process, without its optimizer state. The rows travel in blocks of about `block_bytes` per rank.
std::shared_ptr<CtrModel> assemble_on_root(CtrModel& sharded, const ModelConfig& config, const FieldLayout& layout,
                                           std::int64_t block_bytes = std::int64_t{64} << 20);

}  // namespace userip::ctr
