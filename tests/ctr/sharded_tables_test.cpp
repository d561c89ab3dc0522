// Row-sharded embedding tables (ctr/sharded_tables.h): ranks as threads of one process, joined by a
// FileStore. What one rank holds, what a forward reads and what a step changes must not depend on
// the number of ranks.
#include "userip/ctr/sharded_tables.h"

#include <gtest/gtest.h>
#include <torch/types.h>

#include <string>
#include <vector>

#include "support/ranks.h"
#include "userip/ctr/optimizer.h"
#include "userip/ctr/train.h"
#include "userip/util/error.h"

namespace userip::ctr {
namespace {

// Two categorical fields and one multi-hot field: 5 + 7 + 6 = 18 rows, which 3 ranks share unevenly.
FieldLayout layout() {
  FieldLayout l;
  l.categorical = {{"user", FieldKind::categorical, 0, 5}, {"item", FieldKind::categorical, 5, 7}};
  l.multi_hot = {{"genres", FieldKind::multi_hot, 12, 6}};
  l.max_values = 2;
  return l;
}

FeatureBatch batch(std::vector<std::int64_t> users, std::vector<std::int64_t> items) {
  const auto n = static_cast<std::int64_t>(users.size());
  FeatureBatch b;
  b.categorical = torch::stack({torch::tensor(users), torch::tensor(items) + 5}, 1);
  b.multi_index = torch::empty({n, 1, 2}, torch::kLong);
  b.multi_weight = torch::zeros({n, 1, 2});
  for (std::int64_t i = 0; i < n; ++i) {
    b.multi_index[i][0][0] = 12 + (users[static_cast<std::size_t>(i)] + 1) % 6;
    b.multi_weight[i][0][0] = 0.5;
    b.multi_index[i][0][1] = 12 + (items[static_cast<std::size_t>(i)] + 3) % 6;
    b.multi_weight[i][0][1] = 0.5;
  }
  b.label = torch::tensor(std::vector<float>(static_cast<std::size_t>(n), 1.0f));
  return b;
}

ModelConfig config() {
  ModelConfig c;
  c.kind = ModelKind::deepfm;
  c.embedding_dim = 3;
  c.mlp = {4};
  c.dropout = 0;
  return c;
}

using userip::testing::on_ranks;

// The reference: one rank holding every row, sharded the same way (same seed).
struct OneRank {
  std::shared_ptr<CtrModel> model;
  std::vector<torch::Tensor> tables;
  OneRank() {
    torch::manual_seed(3);
    model = make_model(config(), layout(), TableShard{nullptr, 99});
    tables = model->embedding_parameters();
  }
};

TEST(ShardedTables, EachRankHoldsEveryWorldSizesValuesOfItsRows) {
  const OneRank one;
  ASSERT_EQ(one.tables.size(), 2u);
  EXPECT_EQ(one.tables[0].sizes(), torch::IntArrayRef({18, 3}));
  EXPECT_NEAR(one.tables[0].std().item<double>(), 0.01, 0.004);  // the whole tables' scale
  // A different seed gives other rows.
  EXPECT_FALSE(torch::equal(make_model(config(), layout(), TableShard{nullptr, 98})->embedding_parameters()[0],
                            one.tables[0]));
  const auto errors = on_ranks(3, [&](dist::World& world) {
    auto model = make_model(config(), layout(), TableShard{&world, 99});
    const auto tables = model->embedding_parameters();
    ASSERT_EQ(tables[0].size(0), 6);  // 18 rows: 6 each
    ASSERT_EQ(tables[1].size(0), 6);
    const auto global = torch::arange(world.rank(), 18, 3, torch::kLong);
    EXPECT_TRUE(torch::equal(tables[0], one.tables[0].index_select(0, global)));
    EXPECT_TRUE(torch::equal(tables[1], one.tables[1].index_select(0, global)));
  });
  for (const auto& e : errors) EXPECT_EQ(e, "");
}

TEST(ShardedTables, AForwardAndAStepGiveOneRanksResultsAtEveryWorldSize) {
  // Each rank reads its own batch (rank 2 none); one rank reads all three in rank order.
  const std::vector<FeatureBatch> batches = {batch({0, 3, 3}, {1, 6, 2}), batch({4, 0}, {6, 5}), FeatureBatch{}};
  OptimizerSettings settings;
  settings.learning_rate = 0.1;
  settings.embedding_learning_rate = 0.1;

  const OneRank one;
  const torch::Tensor initial = one.tables[0].detach().clone();
  std::vector<torch::Tensor> one_logits;
  {
    ShardedTables tables(*one.model);
    tables.fetch(batches, /*for_training=*/true);
    CtrOptimizer optimizer(one.tables, {}, settings);
    one.model->set_sparse_gradients(true);
    for (const auto& b : batches) {
      if (!b.categorical.defined()) continue;
      const auto logits = one.model->forward(tables.renumber(b));
      one_logits.push_back(logits.detach().clone());
      logits.sum().backward();
      tables.take_gradients();
    }
    tables.push_gradients();
    optimizer.step();
  }
  EXPECT_THROW(one.model->forward(batches[0]), Error);  // a sharded model reads through ShardedTables
  // Lazy Adam: row 2 (user 2) was in no batch and kept its value; row 0 moved.
  EXPECT_TRUE(torch::equal(one.tables[0][2], initial[2]));
  EXPECT_FALSE(torch::equal(one.tables[0][0], initial[0]));
  torch::Tensor one_after;
  {
    torch::NoGradGuard no_grad;
    ShardedTables tables(*one.model);
    tables.fetch({batches[0]}, false);
    one_after = one.model->forward(tables.renumber(batches[0]));
  }

  const auto errors = on_ranks(3, [&](dist::World& world) {
    auto model = make_model(config(), layout(), TableShard{&world, 99});
    const auto shares = model->embedding_parameters();
    // The dense layers come from torch's generator, which these threads share and draw from at once:
    // the one rank's here, as broadcast_model gives every rank rank 0's. (Across processes a shard
    // draws nothing from it, so every world size builds the same dense layers: CtrCli's DCN test.)
    {
      torch::NoGradGuard no_grad;
      auto reference = one.model->named_parameters();
      for (auto& item : model->named_parameters())
        if (item.key() != "embedding.weight" && item.key() != "linear.weight") item.value().copy_(reference[item.key()]);
    }
    CtrOptimizer optimizer(shares, {}, settings);
    model->set_sparse_gradients(true);
    ShardedTables tables(*model);
    const auto& mine = batches[static_cast<std::size_t>(world.rank())];
    tables.fetch(mine.categorical.defined() ? std::vector<FeatureBatch>{mine} : std::vector<FeatureBatch>{}, true);
    if (mine.categorical.defined()) {
      const auto logits = model->forward(tables.renumber(mine));
      EXPECT_TRUE(torch::equal(logits, one_logits[static_cast<std::size_t>(world.rank())])) << world.rank();
      logits.sum().backward();
      tables.take_gradients();
    }
    tables.push_gradients();
    optimizer.step();
    // After the step every rank's share equals the same rows of the one rank's tables.
    const auto global = torch::arange(world.rank(), 18, 3, torch::kLong);
    EXPECT_TRUE(torch::equal(shares[0], one.tables[0].index_select(0, global))) << world.rank();
    EXPECT_TRUE(torch::equal(shares[1], one.tables[1].index_select(0, global))) << world.rank();
    // The whole model, assembled on rank 0, holds the one rank's tables.
    auto whole = assemble_on_root(*model, config(), layout());
    EXPECT_EQ(whole != nullptr, world.is_root());
    // Two rows per round: the ranks' shares (6 rows each) take three rounds, and the result is the same.
    auto in_blocks = assemble_on_root(*model, config(), layout(), /*block_bytes=*/2 * 3 * 4);
    if (in_blocks) {
      EXPECT_TRUE(torch::equal(in_blocks->embedding_parameters()[0], one.tables[0]));
      EXPECT_TRUE(torch::equal(in_blocks->embedding_parameters()[1], one.tables[1]));
    }
    if (whole) {
      EXPECT_EQ(whole->table_shard(), nullptr);
      EXPECT_TRUE(torch::equal(whole->embedding_parameters()[0], one.tables[0]));
      EXPECT_TRUE(torch::equal(whole->embedding_parameters()[1], one.tables[1]));
      // It reads its own tables: the same logits as the sharded forward.
      EXPECT_TRUE(torch::equal(whole->forward(batches[0]), one_after));
    }
  });
  for (const auto& e : errors) EXPECT_EQ(e, "");
}

// Fewer rows than ranks: rank 2 holds none of a 2-row table, yet takes part in every exchange, and
// the step and the assembled model are the one rank's.
TEST(ShardedTables, ARankWithoutRowsTakesPartInEveryExchange) {
  FieldLayout small;
  small.categorical = {{"user", FieldKind::categorical, 0, 2}};
  ModelConfig lr;
  lr.kind = ModelKind::lr;
  OptimizerSettings settings;
  settings.embedding_learning_rate = 0.1;
  FeatureBatch b;
  b.categorical = torch::tensor(std::vector<std::int64_t>{1, 0, 1}).unsqueeze(1);
  b.label = torch::ones({3});
  // Only the rank `reads` has the batch; the others exchange nothing.
  auto step = [&](CtrModel& model, bool reads) {
    CtrOptimizer optimizer(model.embedding_parameters(), {}, settings);
    model.set_sparse_gradients(true);
    ShardedTables tables(model);
    tables.fetch(reads ? std::vector<FeatureBatch>{b} : std::vector<FeatureBatch>{}, true);
    if (reads) {
      model.forward(tables.renumber(b)).sum().backward();
      tables.take_gradients();
    }
    tables.push_gradients();
    optimizer.step();
  };
  auto one = make_model(lr, small, TableShard{nullptr, 5});
  step(*one, true);
  const torch::Tensor expected = one->embedding_parameters()[0].detach().clone();
  const auto errors = on_ranks(3, [&](dist::World& world) {
    auto model = make_model(lr, small, TableShard{&world, 5});
    EXPECT_EQ(model->embedding_parameters()[0].size(0), world.rank() < 2 ? 1 : 0);
    step(*model, world.rank() == 2);  // the rank without rows reads both
    auto whole = assemble_on_root(*model, lr, small);
    if (whole) {
      EXPECT_TRUE(torch::equal(whole->embedding_parameters()[0], expected));
    }
  });
  for (const auto& e : errors) EXPECT_EQ(e, "");
}

TEST(ShardedTables, NeedARowWiseOptimizer) {
  TrainConfig config;
  config.shard_tables = true;
  config.embedding_optimizer = EmbeddingOptimizer::adam;
  try {
    config.validate();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shard_tables"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("lazy_adam or adagrad"), std::string::npos) << e.what();
  }
  config.embedding_optimizer = EmbeddingOptimizer::adagrad;
  EXPECT_NO_THROW(config.validate());
}

}  // namespace
}  // namespace userip::ctr
