#include "userip/ctr/train.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <unordered_set>

#include "userip/ctr/metrics.h"
#include "userip/ctr/sharded_tables.h"
#include "userip/tensor/tensor_file.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/log.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"
#include "userip/tensor/threads.h"

namespace userip::ctr {

using nlohmann::json;

const OptionTable<TrainConfig>& TrainConfig::table() {
  static const OptionTable<TrainConfig> table = [] {
    using C = TrainConfig;
    OptionTable<C> t("train", /*flags_by_default=*/false);
    t.add("learning_rate", &C::learning_rate, "Adam learning rate of the dense layers (and of the tables, unless "
          "embedding_learning_rate is set)").above(0);
    t.add("l2", &C::l2, "Weight decay (L2) of the embedding tables only (`embedding.weight`, `linear.weight`)").at_least(0);
    t.add_enum("embedding_optimizer", &C::embedding_optimizer, kEmbeddingOptimizerNames, "embedding optimizer",
               "How the embedding tables learn: lazy_adam (only the batch's rows, a step's cost independent of the "
               "vocabulary), adam (every row every step) or adagrad (row-wise)")
        .flag("embedding-optimizer");
    t.add("embedding_learning_rate", &C::embedding_learning_rate,
          "Learning rate of the embedding tables; null: learning_rate")
        .above(0);
    t.add("batch_size", &C::batch_size, "Examples per step").at_least(1);
    t.add("max_epochs", &C::max_epochs, "Epochs at most (early stopping on validation AUC)")
        .at_least(1)
        .flag("max-epochs")
        .alias("epochs");
    t.add("patience", &C::patience, "Epochs without a better validation AUC before stopping").at_least(1);
    t.add("plateau_decay", &C::plateau_decay, "Learning rate multiplier after an epoch without improvement")
        .range(0, 1)
        .open_below();
    t.add("seed", &C::seed, "Seed of initialisation, shuffling and dropout").flag("seed");
    t.add("shards", &C::shards,
          "Compute each batch's gradient as this many fixed slices summed in order: under `userip launch` the ranks "
          "share the slices and the model is the same at every world size; 0 = one slice per rank")
        .range(0, 4096)
        .flag("shards")
        .written_when([](const C& c) { return c.shards > 0; });  // runs made before it keep their fingerprints
    t.add("shard_tables", &C::shard_tables,
          "Row-shard the embedding tables across the ranks of `userip launch`: each rank holds 1/W of every table's "
          "rows and their optimizer state, and the rows a batch reads travel by all-to-all (docs/DISTRIBUTED.md). "
          "Needs lazy_adam or adagrad")
        .flag("shard-tables")
        .written_when([](const C& c) { return c.shard_tables; });
    return t;
  }();
  return table;
}

void TrainConfig::validate() const {
  table().check(*this, Spelling::key, "train");
  USERIP_CHECK(!shard_tables || uses_sparse_gradients(embedding_optimizer),
               "train: \"shard_tables\" needs a row-wise embedding_optimizer (lazy_adam or adagrad), not {}: adam "
               "updates every row every step, which a sharded table cannot afford", to_string(embedding_optimizer));
}

json TrainConfig::to_json() const { return table().to_json(*this); }

OptimizerSettings TrainConfig::optimizer_settings() const {
  OptimizerSettings s;
  s.embedding = embedding_optimizer;
  s.learning_rate = learning_rate;
  s.embedding_learning_rate = embedding_learning_rate.value_or(learning_rate);
  s.embedding_l2 = l2;
  return s;
}

TrainConfig TrainConfig::from_json(const json& j, const TrainConfig& defaults) {
  TrainConfig c = defaults;
  table().read(j, c, "train", Absent::keep);
  c.validate();
  return c;
}

json Evaluation::to_json() const {
  auto number = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  return {{"auc", number(auc)}, {"log_loss", number(log_loss)}, {"gauc", number(gauc)}, {"examples", examples},
          {"positives", positives}};
}

Evaluation evaluate(const std::vector<float>& probabilities, const Examples& examples) {
  USERIP_CHECK(static_cast<std::int64_t>(probabilities.size()) == examples.size(), "{} scores for {} examples",
               probabilities.size(), examples.size());
  Evaluation e;
  e.examples = examples.size();
  const torch::Tensor label = examples.label.contiguous();
  std::vector<float> labels(label.data_ptr<float>(), label.data_ptr<float>() + label.numel());
  for (float l : labels) e.positives += l > 0.5f ? 1 : 0;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (e.examples == 0) {
    e.auc = e.log_loss = e.gauc = nan;
    return e;
  }
  e.auc = (e.positives == 0 || e.positives == e.examples) ? nan : auc(probabilities, labels);
  e.log_loss = log_loss(probabilities, labels);
  std::vector<std::int64_t> groups(examples.user.begin(), examples.user.end());
  e.gauc = grouped_auc(probabilities, labels, groups).value;
  return e;
}

json EpochLog::to_json() const {
  return {{"epoch", epoch},     {"train_loss", train_loss}, {"learning_rate", learning_rate}, {"valid", valid.to_json()},
          {"seconds", seconds}, {"samples_per_second", samples_per_second}};
}

json TrainResult::to_json() const {
  json log = json::array();
  for (const auto& e : epochs) log.push_back(e.to_json());
  return {{"best_epoch", best_epoch},
          {"best_valid", best_valid.to_json()},
          {"seconds", seconds},
          {"samples_per_second", samples_per_second},
          {"epochs", log}};
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// A copy of every parameter and buffer, to restore the best epoch's model.
std::vector<torch::Tensor> snapshot(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> copies;
  for (const auto& p : model.parameters()) copies.push_back(p.detach().clone());
  for (const auto& b : model.buffers()) copies.push_back(b.detach().clone());
  return copies;
}

void restore(torch::nn::Module& model, const std::vector<torch::Tensor>& copies) {
  torch::NoGradGuard no_grad;
  std::size_t i = 0;
  for (auto& p : model.parameters()) p.copy_(copies[i++]);
  for (auto& b : model.buffers()) b.copy_(copies[i++]);
}


// One optimizer step on the examples `rows` of `examples`, its gradient computed as `slices` fixed
// slices, each with its own dropout seed, summed in slice order. The slices are shared out across
// the world's ranks in consecutive groups and their gradients all-gathered, so every rank takes the
// same step, whatever the world size. Returns the batch's mean loss.
// With row-sharded tables (`sharded`), the rows that this rank's slices read are fetched first and the
// tables' gradients go to the rows' owners (ShardedTables) instead of to every rank.
double sliced_step(CtrModel& model, CtrOptimizer& optimizer, const Examples& examples, const torch::Tensor& rows,
                   int slices, bool sparse_tables, dist::World& world, std::uint64_t step_seed, torch::Device device,
                   ShardedTables* sharded) {
  const std::int64_t n = rows.size(0);
  const std::size_t per_rank = (static_cast<std::size_t>(slices) + static_cast<std::size_t>(world.size()) - 1) /
                               static_cast<std::size_t>(world.size());
  const auto [first, last] = dist::share_of_span(0, static_cast<std::size_t>(slices), per_rank, world.rank());
  std::vector<torch::Tensor> params = model.parameters();
  std::vector<bool> sparse(params.size(), false);
  for (std::size_t i = 0; i < params.size(); ++i) sparse[i] = sparse_tables && model.is_table(params[i]);
  // Per parameter, this rank's slices' gradients: dense ones as [slices, numel]; sparse ones (the
  // embedding tables under a sparse optimizer) as their entries' indices and values. A dense row
  // starts with 1 where the slice reached the parameter, so that one no slice reached keeps no
  // gradient, as in a one-slice step.
  std::vector<std::vector<torch::Tensor>> dense(params.size()), indices(params.size()), values(params.size());
  std::vector<double> losses;
  auto slice_bounds = [&](std::size_t s) {
    return std::make_pair(static_cast<std::int64_t>(s) * n / slices, static_cast<std::int64_t>(s + 1) * n / slices);
  };
  std::vector<FeatureBatch> batches;
  for (std::size_t s = first; s < last; ++s) {
    const auto [begin, end] = slice_bounds(s);
    batches.push_back(end > begin ? examples.batch(rows.slice(0, begin, end), device) : FeatureBatch{});
  }
  if (sharded) sharded->fetch(batches, /*for_training=*/true);
  for (std::size_t s = first; s < last; ++s) {
    const auto [begin, end] = slice_bounds(s);
    optimizer.zero_grad();
    double loss_value = 0;
    if (end > begin) {
      std::uint64_t state = step_seed ^ (0x9E3779B97F4A7C15ULL * (s + 1));
      torch::manual_seed(splitmix64(state));
      const FeatureBatch& fetched = batches[s - first];
      const FeatureBatch batch = sharded ? sharded->renumber(fetched) : fetched;
      const torch::Tensor loss =
          torch::binary_cross_entropy_with_logits(model.forward(batch), batch.label, {}, {}, at::Reduction::Sum) /
          static_cast<double>(n);
      loss.backward();
      loss_value = loss.item<double>();
      if (sharded) sharded->take_gradients();
    }
    losses.push_back(loss_value);
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto& g = params[i].grad();
      if (sparse[i]) {
        USERIP_ASSERT(!g.defined() || g.is_sparse());
        const std::int64_t entries = g.defined() ? g._values().size(0) : 0;
        if (entries > 0) {
          indices[i].push_back(g._indices().reshape({-1}).cpu());
          values[i].push_back(g._values().reshape({entries, -1}).cpu());
        }
      } else {
        auto row = torch::zeros({1, 1 + params[i].numel()}, params[i].options().device(torch::kCPU));
        if (g.defined()) {
          row[0][0] = 1;
          row.narrow(1, 1, params[i].numel()).copy_(g.reshape({1, -1}));
        }
        dense[i].push_back(row);
      }
    }
  }
  optimizer.zero_grad();
  double total_loss = 0;
  for (const auto& share : world.all_gather_rows(torch::tensor(losses, torch::kDouble)))
    for (std::int64_t k = 0; k < share.size(0); ++k) total_loss += share[k].item<double>();
  torch::NoGradGuard no_grad;
  if (sharded) sharded->push_gradients();
  for (std::size_t i = 0; i < params.size(); ++i) {
    auto& p = params[i];
    if (sparse[i] && sharded) continue;  // the owners' gradients, set above
    if (sparse[i]) {
      const std::int64_t width = p.numel() / p.size(0);
      const auto all_indices =
          world.all_gather_rows(indices[i].empty() ? torch::empty({0}, torch::kLong) : torch::cat(indices[i]));
      const auto all_values = world.all_gather_rows(values[i].empty() ? torch::empty({0, width}, p.options().device(torch::kCPU))
                                                                      : torch::cat(values[i]));
      // Ranks' slices follow one another in slice order, so the concatenation is in slice order.
      const auto joined_indices = torch::cat(all_indices).to(device).unsqueeze(0);
      auto joined_values = torch::cat(all_values).to(device);
      if (joined_values.size(0) == 0) continue;  // no slice reached the table
      auto shape = p.sizes().vec();
      shape[0] = joined_values.size(0);
      p.mutable_grad() = torch::sparse_coo_tensor(joined_indices, joined_values.view(shape), p.sizes());
    } else {
      const auto all = world.all_gather_rows(
          dense[i].empty() ? torch::empty({0, 1 + p.numel()}, p.options().device(torch::kCPU)) : torch::cat(dense[i]));
      auto sum = torch::zeros({1 + p.numel()}, p.options().device(torch::kCPU));
      for (const auto& share : all)
        for (std::int64_t k = 0; k < share.size(0); ++k) sum.add_(share[k]);
      if (sum[0].item<double>() > 0) p.mutable_grad() = sum.narrow(0, 1, p.numel()).view(p.sizes()).to(device);
    }
  }
  optimizer.step();
  return total_loss;
}

// The parameters and buffers of rank 0 on every rank; row-sharded tables keep each rank's own rows.
void broadcast_model(CtrModel& model, dist::World& world) {
  if (!world.distributed()) return;
  torch::NoGradGuard no_grad;
  for (auto tensors : {model.parameters(), model.buffers()}) {
    for (auto& t : tensors) {
      if (model.table_shard() && model.is_table(t)) continue;
      auto cpu = t.detach().cpu().contiguous();
      world.broadcast(cpu);
      t.copy_(cpu);
    }
  }
}

torch::Tensor probabilities(CtrModel& model, const FeatureBatch& batch) {
  return torch::sigmoid(model.forward(batch)).to(torch::kCPU).to(torch::kFloat32).contiguous();
}

// predict() of a model with row-sharded tables: the ranks take the batches in turn (batch b on rank
// b mod W), fetching the rows each reads, and every rank gets every probability.
std::vector<float> predict_sharded(CtrModel& model, const Examples& examples, torch::Device device,
                                   std::int64_t batch_size) {
  const std::int64_t batches = (examples.size() + batch_size - 1) / batch_size;
  if (batches == 0) return {};  // every rank has the same examples: none exchanges
  ShardedTables tables(model);
  dist::World& world = tables.world();
  const std::int64_t ranks = world.size();
  std::vector<torch::Tensor> mine;
  for (std::int64_t round = 0; round * ranks < batches; ++round) {
    const std::int64_t b = round * ranks + world.rank();
    if (b >= batches) {
      tables.fetch({}, false);
      continue;
    }
    const FeatureBatch batch = examples.batch(b * batch_size, std::min(examples.size(), (b + 1) * batch_size), device);
    tables.fetch({batch}, false);
    mine.push_back(probabilities(model, tables.renumber(batch)));
  }
  const auto all = world.all_gather_rows(mine.empty() ? torch::empty({0}, torch::kFloat32) : torch::cat(mine));
  std::vector<float> out;
  out.reserve(static_cast<std::size_t>(examples.size()));
  std::vector<std::int64_t> taken(static_cast<std::size_t>(ranks), 0);
  for (std::int64_t b = 0; b < batches; ++b) {
    const auto r = static_cast<std::size_t>(b % ranks);
    const std::int64_t count = std::min(examples.size(), (b + 1) * batch_size) - b * batch_size;
    const float* p = all[r].data_ptr<float>() + taken[r];
    out.insert(out.end(), p, p + count);
    taken[r] += count;
  }
  return out;
}

}  // namespace

std::vector<float> predict(CtrModel& model, const Examples& examples, torch::Device device, std::int64_t batch_size) {
  ScopedSingleThreadedAten thread_policy(device.is_cpu());
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  if (model.table_shard()) {
    auto out = predict_sharded(model, examples, device, batch_size);
    model.train(was_training);
    return out;
  }
  std::vector<float> out;
  out.reserve(static_cast<std::size_t>(examples.size()));
  for (std::int64_t begin = 0; begin < examples.size(); begin += batch_size) {
    const std::int64_t end = std::min(examples.size(), begin + batch_size);
    const torch::Tensor p = probabilities(model, examples.batch(begin, end, device));
    out.insert(out.end(), p.data_ptr<float>(), p.data_ptr<float>() + p.numel());
  }
  model.train(was_training);
  return out;
}

TrainResult train(CtrModel& model, const Examples& train_set, const Examples& valid_set, const TrainConfig& config,
                  const TrainOptions& options) {
  config.validate();
  // CTR steps are hundreds of tiny ops: with ATen's pool at N threads each becomes a fork/join that
  // fights OpenBLAS's spinning workers (bench/ctr_bench: 46 ms a step at 2+2 threads, 2.7 ms with
  // ATen single-threaded, docs/BENCHMARKS.md).
  ScopedSingleThreadedAten thread_policy(options.device.is_cpu());
  USERIP_CHECK(train_set.size() > 0, "train: no training examples");
  USERIP_CHECK(valid_set.size() > 0, "train: no validation examples (early stopping needs them)");
  torch::manual_seed(config.seed);
  model.to(options.device);

  // Weight decay on the embedding tables only: the usual L2 of CTR models, which keeps rare ids'
  // embeddings small without shrinking the dense layers.
  std::vector<torch::Tensor> embeddings = model.embedding_parameters();
  std::vector<torch::Tensor> others;
  for (const auto& p : model.parameters()) {
    if (!model.is_table(p)) others.push_back(p);
  }
  model.set_sparse_gradients(uses_sparse_gradients(config.embedding_optimizer));
  CtrOptimizer optimizer(embeddings, others, config.optimizer_settings());
  // The model leaves training as it came: scoring and saving never see the training-only mode.
  struct DenseAgain {
    CtrModel& model;
    ~DenseAgain() { model.set_sparse_gradients(false); }
  } dense_again{model};

  // Across ranks, or with fixed slices, each step is computed slice by slice (sliced_step).
  dist::World alone;
  dist::World& world = options.world ? *options.world : alone;
  std::optional<ShardedTables> sharded;
  if (model.table_shard()) {
    USERIP_CHECK(uses_sparse_gradients(config.embedding_optimizer), "train: a model with row-sharded tables needs embedding_optimizer "
                 "lazy_adam or adagrad, not {}", to_string(config.embedding_optimizer));
    sharded.emplace(model);
    USERIP_CHECK(&sharded->world() == &world || (!world.distributed() && !sharded->world().distributed()),
                 "train: the model's tables are sharded over other ranks than the training's");
  }
  const bool sliced = config.shards > 0 || world.distributed() || sharded;
  const int slices = config.shards > 0 ? config.shards : world.size();
  const bool sparse_tables = uses_sparse_gradients(config.embedding_optimizer);
  broadcast_model(model, world);
  // The sliced steps seed the global generator per slice; the epochs' orders then come from their own.
  auto order_generator = at::detail::createCPUGenerator(config.seed);

  TrainResult result;
  result.best_valid.auc = -1;
  std::vector<torch::Tensor> best = snapshot(model);
  double learning_rate = config.learning_rate;
  int epochs_without_gain = 0;
  const auto start = Clock::now();
  double train_seconds = 0;
  std::int64_t trained = 0;
  const std::int64_t n = train_set.size();
  const std::int64_t batches = (n + config.batch_size - 1) / config.batch_size;

  for (int epoch = 1; epoch <= config.max_epochs; ++epoch) {
    const auto epoch_start = Clock::now();
    model.train();
    const torch::Tensor order = sliced ? torch::randperm(n, order_generator, torch::TensorOptions().dtype(torch::kLong))
                                       : torch::randperm(n, torch::kLong);
    ProgressBar bar(fmt::format("ctr epoch {}/{}", epoch, config.max_epochs), static_cast<std::uint64_t>(batches), "batch");
    if (!options.show_progress) bar.disable();
    double loss_sum = 0;
    for (std::int64_t b = 0; b < batches; ++b) {
      const std::int64_t begin = b * config.batch_size, end = std::min(n, begin + config.batch_size);
      double value = 0;
      if (sliced) {
        std::uint64_t state = config.seed + (static_cast<std::uint64_t>(epoch) << 40) + static_cast<std::uint64_t>(b);
        value = sliced_step(model, optimizer, train_set, order.slice(0, begin, end), slices, sparse_tables, world,
                            splitmix64(state), options.device, sharded ? &*sharded : nullptr);
      } else {
        const FeatureBatch batch = train_set.batch(order.slice(0, begin, end), options.device);
        optimizer.zero_grad();
        const torch::Tensor loss = torch::binary_cross_entropy_with_logits(model.forward(batch), batch.label);
        loss.backward();
        optimizer.step();
        value = loss.item<double>();
      }
      USERIP_CHECK(std::isfinite(value), "train: the loss became {} at epoch {}, batch {}; lower learning_rate", value,
                   epoch, b + 1);
      loss_sum += value * static_cast<double>(end - begin);
      bar.advance();
      if (b % 50 == 0) bar.set_metric(fmt::format("loss {:.4f}", loss_sum / static_cast<double>(end)));
    }
    bar.finish();
    const double pass_seconds = seconds_since(epoch_start);
    train_seconds += pass_seconds;
    trained += n;

    EpochLog log;
    log.epoch = epoch;
    log.train_loss = loss_sum / static_cast<double>(n);
    log.learning_rate = learning_rate;
    log.valid = evaluate(predict(model, valid_set, options.device), valid_set);
    log.seconds = seconds_since(epoch_start);
    log.samples_per_second = static_cast<double>(n) / pass_seconds;
    result.epochs.push_back(log);
    spdlog::info("ctr epoch {}: train loss {:.4f}, valid AUC {:.4f}, LogLoss {:.4f}, {:.0f} samples/s", epoch,
                 log.train_loss, log.valid.auc, log.valid.log_loss, log.samples_per_second);

    // NaN AUC (one class in validation) never counts as a gain: the first epoch is kept.
    if (log.valid.auc > result.best_valid.auc || result.best_epoch == 0) {
      result.best_epoch = epoch;
      result.best_valid = log.valid;
      best = snapshot(model);
      epochs_without_gain = 0;
    } else {
      if (++epochs_without_gain >= config.patience) break;
      learning_rate *= config.plateau_decay;
      optimizer.scale_learning_rates(config.plateau_decay);
    }
  }
  restore(model, best);
  model.eval();
  result.seconds = seconds_since(start);
  result.samples_per_second = static_cast<double>(trained) / train_seconds;
  return result;
}

// --- saved models --------------------------------------------------------------------------------

namespace {
constexpr const char* kRecordFile = "ctr_model.json";
constexpr const char* kFeaturesFile = "features.json";
constexpr const char* kWeightsFile = "weights.safetensors";

std::vector<std::pair<std::string, torch::Tensor>> named_state(CtrModel& model) {
  std::vector<std::pair<std::string, torch::Tensor>> state;
  for (const auto& item : model.named_parameters()) state.emplace_back(item.key(), item.value().detach().to(torch::kCPU));
  for (const auto& item : model.named_buffers()) state.emplace_back(item.key(), item.value().detach().to(torch::kCPU));
  return state;
}
}  // namespace

void save_model(const std::filesystem::path& dir, CtrModel& model, const ModelConfig& model_config,
                const TrainConfig& train_config, const FeatureEncoder& encoder, const json& extra) {
  std::filesystem::create_directories(dir);
  const std::string features = encoder.to_json().dump();
  // Features and weights first, the record last: a directory whose ctr_model.json exists is whole,
  // and the record's fingerprint ties it to exactly these features.
  write_file_atomic(dir / kFeaturesFile, features);
  tensor::write_safetensors(dir / kWeightsFile, named_state(model));
  json record = {{"format", "userip-ctr-model"},
                 {"version", 1},
                 {"model", model_config.to_json()},
                 {"train", train_config.to_json()},
                 {"features_fingerprint", hex64(fnv1a64(features))},
                 {"weights_fingerprint", fingerprint_file(dir / kWeightsFile)}};
  for (auto it = extra.begin(); it != extra.end(); ++it) record[it.key()] = it.value();
  write_file_atomic(dir / kRecordFile, record.dump(2) + "\n");
}

SavedModel load_model(const std::filesystem::path& dir, torch::Device device) {
  const auto record_path = dir / kRecordFile;
  USERIP_CHECK(std::filesystem::exists(record_path), "{}: not a trained CTR model (no {})", dir.string(), kRecordFile);
  json record;
  try {
    record = json::parse(read_file(record_path));
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON: {}", record_path.string(), e.what());
  }
  USERIP_CHECK(record.is_object() && record.value("format", "") == "userip-ctr-model",
               "{}: not a userip CTR model record", record_path.string());
  SavedModel saved;
  try {
    saved.model_config = ModelConfig::from_json(record.at("model"));
    saved.train_config = TrainConfig::from_json(record.at("train"));
  } catch (const json::exception& e) {
    fail("{}: {}", record_path.string(), e.what());
  } catch (const Error& e) {
    fail("{}: {}", record_path.string(), e.what());
  }
  const auto features_path = dir / kFeaturesFile;
  USERIP_CHECK(std::filesystem::exists(features_path), "{}: missing", features_path.string());
  const std::string features = read_file(features_path);
  USERIP_CHECK(hex64(fnv1a64(features)) == record.value("features_fingerprint", ""),
               "{} does not belong to the model in {} (its fingerprint differs from the one recorded at training)",
               features_path.string(), record_path.string());
  saved.encoder = FeatureEncoder::load(features_path);
  saved.model = make_model(saved.model_config, saved.encoder.layout());

  const auto weights_path = dir / kWeightsFile;
  USERIP_CHECK(std::filesystem::exists(weights_path), "{}: missing", weights_path.string());
  auto source = tensor::open_safetensors(weights_path);
  std::unordered_set<std::string> expected;
  {
    torch::NoGradGuard no_grad;
    auto assign = [&](const std::string& name, torch::Tensor& target) {
      expected.insert(name);
      const tensor::TensorInfo* info = source->find(name);
      USERIP_CHECK(info != nullptr, "{}: tensor '{}' is missing", weights_path.string(), name);
      USERIP_CHECK(info->torch_shape() == target.sizes().vec(), "{}: tensor '{}' has shape [{}] but the model needs [{}]",
                   weights_path.string(), name, fmt::join(info->torch_shape(), ", "), fmt::join(target.sizes(), ", "));
      target.copy_(source->load(name, target.scalar_type()));
    };
    for (auto& item : saved.model->named_parameters()) assign(item.key(), item.value());
    for (auto& item : saved.model->named_buffers()) assign(item.key(), item.value());
  }
  for (const auto& name : source->names()) {
    USERIP_CHECK(expected.count(name), "{}: unexpected tensor '{}' (not a parameter of a {} model)", weights_path.string(),
                 name, to_string(saved.model_config.kind));
  }
  saved.model->to(device);
  saved.model->eval();
  saved.record = std::move(record);
  return saved;
}

}  // namespace userip::ctr
