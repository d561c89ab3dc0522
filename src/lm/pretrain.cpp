#include "userip/lm/pretrain.h"

#include <ATen/Parallel.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <chrono>
#include <cmath>
#include <fstream>

#include "userip/lm/loader.h"
#include "userip/lm/model.h"
#include "userip/tensor/tensor_file.h"
#include "userip/text/sentencepiece.h"
#include "userip/util/error.h"
#include "userip/util/checkpoint.h"
#include "userip/util/fs.h"
#include "userip/util/log.h"
#include "userip/tensor/threads.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"

namespace userip::lm {

namespace fs = std::filesystem;

namespace {

constexpr const char* kCheckpointDir = "checkpoint";
constexpr double kMinLearningRateRatio = 0.1;

ModelConfig config_for(const PretrainOptions& o, std::int32_t vocab_size) {
  ModelConfig c;
  c.architecture = Architecture::llama;
  c.model_type = "llama";
  c.hidden_size = o.hidden_size;
  c.intermediate_size = o.intermediate_size;
  c.num_layers = o.num_layers;
  c.num_heads = o.num_heads;
  c.num_kv_heads = o.num_heads;
  c.head_dim = o.hidden_size / o.num_heads;
  c.vocab_size = vocab_size;
  c.max_position_embeddings = o.context;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = o.tie_embeddings;
  c.activation = Activation::silu;
  // SentencePiece's fixed ids: unk 0, bos 1, eos 2.
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

double learning_rate_at(const PretrainOptions& o, std::int64_t step) {
  // Short runs (tests, smoke runs) warm up over at most a tenth of their steps.
  std::int64_t warmup = std::min(o.warmup_steps, std::max<std::int64_t>(1, o.steps / 10));
  if (step < warmup) return o.learning_rate * static_cast<double>(step + 1) / static_cast<double>(warmup);
  double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<std::int64_t>(1, o.steps - warmup));
  double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return o.learning_rate * (kMinLearningRateRatio + (1.0 - kMinLearningRateRatio) * cosine);
}

// Every line as <bos> tokens <eos>, concatenated: the model learns document boundaries and
// batches need no padding at all.
std::vector<std::int32_t> token_stream(const std::vector<std::string>& lines, const text::Tokenizer& tokenizer) {
  std::vector<std::int32_t> stream;
  for (const auto& line : lines) {
    stream.push_back(1);
    auto ids = tokenizer.encode(line);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(2);
  }
  return stream;
}

// Sequences of context + 1 tokens (inputs and their next-token targets) starting at `starts`.
torch::Tensor gather_sequences(const std::vector<std::int32_t>& stream, const std::vector<std::int64_t>& starts,
                               std::int64_t context) {
  auto batch = torch::empty({static_cast<std::int64_t>(starts.size()), context + 1}, torch::kLong);
  auto* out = batch.data_ptr<std::int64_t>();
  for (std::size_t b = 0; b < starts.size(); ++b) {
    for (std::int64_t t = 0; t <= context; ++t) out[b * (context + 1) + t] = stream[starts[b] + t];
  }
  return batch;
}

torch::Tensor sequence_loss(const ModelConfig& config, const ModelWeights& weights, const torch::Tensor& batch,
                            torch::Device device) {
  std::int64_t context = batch.size(1) - 1;
  auto ids = batch.to(device);
  auto inputs = ids.narrow(1, 0, context);
  auto targets = ids.narrow(1, 1, context);
  auto embeds = weights.token_embedding.index_select(0, inputs.reshape(-1)).view({inputs.size(0), context, -1});
  auto hidden = forward_hidden(config, weights, embeds);
  const auto& head = weights.lm_head.defined() ? weights.lm_head : weights.token_embedding;
  auto logits = torch::matmul(hidden, head.t()).to(torch::kFloat);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape(-1));
}

// Held-out perplexity over at most max_eval_tokens predicted tokens, in non-overlapping windows of
// `context` spread evenly over the whole held-out stream (its documents come in corpus order:
// item lines first, then behaviour text user by user, so a prefix would favour one kind).
double heldout_perplexity(const ModelConfig& config, const ModelWeights& weights,
                          const std::vector<std::int32_t>& stream, const PretrainOptions& o) {
  torch::NoGradGuard no_grad;
  const std::int64_t windows = (static_cast<std::int64_t>(stream.size()) - 1) / o.context;
  const std::int64_t sequences = std::min(windows, o.max_eval_tokens / o.context);
  if (sequences == 0) return NAN;
  // No activations are kept for backward, so evaluation batches can be larger (bigger GEMMs).
  const std::int64_t batch = std::max<std::int64_t>(o.batch_sequences, 32);
  double total = 0;
  std::int64_t done = 0;
  while (done < sequences) {
    std::int64_t n = std::min(batch, sequences - done);
    std::vector<std::int64_t> starts;
    for (std::int64_t s = 0; s < n; ++s) starts.push_back((done + s) * windows / sequences * o.context);
    total += sequence_loss(config, weights, gather_sequences(stream, starts, o.context), o.device).item<double>() *
             static_cast<double>(n);
    done += n;
  }
  return std::exp(total / static_cast<double>(sequences));
}

nlohmann::json point_json(const PretrainPoint& p) {
  return {{"step", p.step}, {"train_loss", p.train_loss}, {"heldout_perplexity", p.heldout_perplexity},
          {"seconds", p.seconds}};
}

PretrainPoint point_from_json(const nlohmann::json& j) {
  return {j.at("step").get<std::int64_t>(), j.at("train_loss").get<double>(),
          j.at("heldout_perplexity").get<double>(), j.at("seconds").get<double>()};
}

void write_lines(const fs::path& path, const std::vector<std::string>& lines) {
  AtomicFileWriter out(path);
  for (const auto& line : lines) {
    out.write(line);
    out.write(std::string_view("\n"));
  }
  out.commit();
}

}  // namespace

const OptionTable<PretrainOptions>& PretrainOptions::table() {
  static const OptionTable<PretrainOptions> table = [] {
    using O = PretrainOptions;
    OptionTable<O> t("pretrain");
    t.add("hidden_size", &O::hidden_size, "Hidden size").at_least(8).alias("hidden");
    t.add("num_layers", &O::num_layers, "Transformer layers").at_least(1).alias("layers");
    t.add("num_heads", &O::num_heads, "Attention heads").at_least(1).alias("heads");
    t.add("intermediate_size", &O::intermediate_size, "SwiGLU hidden size").at_least(1).alias("ffn");
    t.add("vocab_size", &O::vocab_size, "SentencePiece vocabulary size (at most)").range(100, 1'000'000).alias("vocab");
    t.add("context", &O::context, "Tokens per training sequence (and the model's positions)").range(8, 8192);
    t.add("tie_embeddings", &O::tie_embeddings, "Output layer shares the input embedding");
    t.add("steps", &O::steps, "Optimizer steps").at_least(1);
    t.add("batch_sequences", &O::batch_sequences, "Sequences per step").at_least(1).alias("batch");
    t.add("learning_rate", &O::learning_rate, "Peak AdamW learning rate (cosine decay to 10% of it)")
        .range(0, 1)
        .open_below()
        .open_above();
    t.add("warmup_steps", &O::warmup_steps, "Steps of linear warm-up").at_least(1);
    t.add("weight_decay", &O::weight_decay, "AdamW weight decay").at_least(0);
    t.add("grad_clip", &O::grad_clip, "Gradient norm clip").above(0);
    t.add("max_eval_tokens", &O::max_eval_tokens, "Held-out tokens scored per evaluation (windows spread evenly)");
    t.add("seed", &O::seed, "Seed of weights, batches and tokenizer");
    t.add("eval_every", &O::eval_every, "Steps between held-out perplexity evaluations").at_least(1).not_saved();
    t.add("checkpoint_every", &O::checkpoint_every, "Steps between resumable checkpoints").at_least(1).not_saved();
    t.add("stop_after_step", &O::stop_after_step,
          "Stop after this many steps as an interruption would (checkpoint written, no model; 0 = run to the end)")
        .at_least(0)
        .not_saved();
    return t;
  }();
  return table;
}

void PretrainOptions::validate() const {
  const auto& t = table();
  t.check(*this, Spelling::flag);
  auto flag = [&](const char* key) { return t.name_of(key, Spelling::flag); };
  USERIP_CHECK(hidden_size % num_heads == 0 && (hidden_size / num_heads) % 2 == 0,
               "{} {} must split into {} {} of an even size (RoPE rotates pairs)", flag("hidden_size"), hidden_size,
               flag("num_heads"), num_heads);
  USERIP_CHECK(max_eval_tokens >= context, "{} must hold at least one sequence of {} {} tokens, got {}",
               flag("max_eval_tokens"), flag("context"), context, max_eval_tokens);
}

nlohmann::json PretrainOptions::to_json() const { return table().to_json(*this); }

std::string pretrain_fingerprint(const text::Corpus& corpus, const PretrainOptions& options) {
  std::uint64_t h = fnv1a64(options.to_json().dump());
  for (const auto& line : corpus.train) h = fnv1a64(line, fnv1a64("\n", h));
  h = fnv1a64("|heldout|", h);
  for (const auto& line : corpus.heldout) h = fnv1a64(line, fnv1a64("\n", h));
  return hex64(h);
}

PretrainResult pretrain_lm(const text::Corpus& corpus, const PretrainOptions& o, const fs::path& out) {
  o.validate();
  USERIP_CHECK(!corpus.train.empty(), "the pretraining corpus is empty");
  const std::string fingerprint = pretrain_fingerprint(corpus, o);
  PretrainResult result;

  // A finished model of the same corpus and options: reuse it.
  if (fs::exists(out / "pretrain.json") && fs::exists(out / "model.safetensors")) {
    // An unreadable record of an earlier model is replaced, as a damaged checkpoint is.
    const auto done = nlohmann::json::parse(read_file(out / "pretrain.json"), nullptr, /*allow_exceptions=*/false);
    if (done.is_object() && done.value("fingerprint", "") == fingerprint) {
      for (const auto& p : done.at("curve")) result.curve.push_back(point_from_json(p));
      result.heldout_perplexity = done.at("heldout_perplexity").get<double>();
      result.parameters = done.at("parameters").get<std::int64_t>();
      result.train_tokens = done.at("train_tokens").get<std::int64_t>();
      result.heldout_tokens = done.at("heldout_tokens").get<std::int64_t>();
      result.seconds = done.at("seconds").get<double>();
      result.reused = true;
      spdlog::info("{}: a finished model of the same corpus and options is there; reusing it", out.string());
      return result;
    }
  }
  fs::create_directories(out / kCheckpointDir);
  const fs::path checkpoint = out / kCheckpointDir;
  const CheckpointDir checkpoint_dir(checkpoint, fingerprint);
  const std::vector<std::string> checkpoint_files = {"weights", "optimizer"};
  const nlohmann::json state = checkpoint_dir.load(checkpoint_files).value_or(nlohmann::json());

  // Tokenizer: trained once; a resumed run must reuse the exact same one.
  const fs::path tokenizer_file = checkpoint / "tokenizer.model";
  std::unique_ptr<text::SentencePieceTokenizer> tokenizer;
  if (!state.is_null() && fs::exists(tokenizer_file)) {
    tokenizer = text::load_sentencepiece(tokenizer_file);
  } else {
    write_lines(checkpoint / "corpus.txt", corpus.train);
    text::SentencePieceTrainOptions spm;
    spm.corpus = checkpoint / "corpus.txt";
    spm.vocab_size = o.vocab_size;
    spm.model_type = "bpe";
    spm.byte_fallback = true;
    spm.hard_vocab_limit = false;
    spm.seed = static_cast<std::uint32_t>(o.seed);
    spdlog::info("training a SentencePiece BPE tokenizer ({} pieces) on {} lines", o.vocab_size, corpus.train.size());
    tokenizer = text::train_sentencepiece(spm, tokenizer_file);
    fs::remove(checkpoint / "corpus.txt");
  }
  const auto train_stream = token_stream(corpus.train, *tokenizer);
  const auto heldout_stream = token_stream(corpus.heldout, *tokenizer);
  result.train_tokens = static_cast<std::int64_t>(train_stream.size());
  result.heldout_tokens = static_cast<std::int64_t>(heldout_stream.size());
  USERIP_CHECK(result.train_tokens > o.context + 1, "the corpus has {} tokens, fewer than one sequence of {}",
               result.train_tokens, o.context + 1);

  const ModelConfig config = config_for(o, tokenizer->vocab_size());
  // Measured on 2 cores (hidden 192 x 4, batch 16 x 128): 1.4-2.8 s per step with both pools at
  // two threads, 0.65 s with ATen at one.
  ScopedSingleThreadedAten aten_threads(o.device.is_cpu());
  // Weights live in float32 on the training device; a leaf tensor per parameter.
  ModelWeights weights = random_weights(config, o.seed, torch::kFloat, o.device);
  std::vector<torch::Tensor> decayed, not_decayed;
  for (auto& [name, tensor] : weights.named()) {
    tensor.requires_grad_(true);
    (tensor.dim() >= 2 ? decayed : not_decayed).push_back(tensor);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decayed, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(o.learning_rate).weight_decay(o.weight_decay).betas({0.9, 0.95})));
  groups.emplace_back(not_decayed, std::make_unique<torch::optim::AdamWOptions>(
                                       torch::optim::AdamWOptions(o.learning_rate).weight_decay(0.0).betas({0.9, 0.95})));
  torch::optim::AdamW optimizer(groups);

  std::int64_t start_step = 0;
  double clock_offset = 0;
  double loss_sum = 0;  // training loss since the last curve point (kept across a resume)
  std::int64_t loss_count = 0;
  if (!state.is_null()) {
    torch::NoGradGuard no_grad;
    auto source = tensor::open_safetensors(checkpoint / state.at("weights").get<std::string>());
    for (auto& [name, tensor] : weights.named()) {
      tensor.copy_(source->load(name, torch::kFloat, o.device));
    }
    torch::load(optimizer, (checkpoint / state.at("optimizer").get<std::string>()).string());
    start_step = state.at("step").get<std::int64_t>();
    clock_offset = state.at("seconds").get<double>();
    loss_sum = state.value("loss_sum", 0.0);
    loss_count = state.value("loss_count", std::int64_t{0});
    for (const auto& p : state.at("curve")) result.curve.push_back(point_from_json(p));
    result.resumed = true;
    spdlog::info("resuming pretraining at step {} of {}", start_step, o.steps);
  }

  std::int64_t parameters = 0;
  for (const auto& [name, tensor] : weights.named()) parameters += tensor.numel();
  result.parameters = parameters;
  spdlog::info("pretraining a {}-parameter Llama ({} layers, hidden {}) on {} tokens ({} held out)", parameters,
               o.num_layers, o.hidden_size, result.train_tokens, result.heldout_tokens);

  // Weights and optimizer state go to files named after their step; state.json, replaced
  // atomically last, names the pair it belongs to, and only then are older pairs deleted. A kill at
  // any moment leaves state.json naming two complete files of one step.
  auto save_checkpoint = [&](std::int64_t step, double seconds) {
    const std::string weights_name = fmt::format("weights-{}.safetensors", step);
    const std::string optimizer_name = fmt::format("optimizer-{}.pt", step);
    std::vector<std::pair<std::string, torch::Tensor>> named;
    for (const auto& [name, tensor] : weights.named()) named.emplace_back(name, tensor.detach().cpu());
    tensor::write_safetensors(checkpoint / (weights_name + ".next"), named);
    torch::save(optimizer, (checkpoint / (optimizer_name + ".next")).string());
    fs::rename(checkpoint / (weights_name + ".next"), checkpoint / weights_name);
    fs::rename(checkpoint / (optimizer_name + ".next"), checkpoint / optimizer_name);
    nlohmann::json curve = nlohmann::json::array();
    for (const auto& p : result.curve) curve.push_back(point_json(p));
    checkpoint_dir.commit({{"step", step},
                           {"seconds", seconds},
                           {"loss_sum", loss_sum},
                           {"loss_count", loss_count},
                           {"weights", weights_name},
                           {"optimizer", optimizer_name},
                           {"curve", curve}},
                          checkpoint_files);
  };

  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return clock_offset + std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  ProgressBar progress("pretrain", static_cast<std::uint64_t>(o.steps), "steps");
  if (!o.show_progress) progress.disable();
  progress.set(static_cast<std::uint64_t>(start_step));
  // All parameters, clipped by their global norm.
  std::vector<torch::Tensor> parameters_list;
  for (const auto& [name, tensor] : weights.named()) parameters_list.push_back(tensor);
  const std::int64_t max_start = result.train_tokens - o.context - 1;
  for (std::int64_t step = start_step; step < o.steps; ++step) {
    // Each step's batch depends only on (seed, step): a resumed run sees the same data.
    Rng rng = Rng::derive(o.seed, static_cast<std::uint64_t>(step));
    std::vector<std::int64_t> starts(o.batch_sequences);
    for (auto& s : starts) s = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(max_start + 1)));
    double lr = learning_rate_at(o, step);
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    optimizer.zero_grad();
    auto loss = sequence_loss(config, weights, gather_sequences(train_stream, starts, o.context), o.device);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(parameters_list, o.grad_clip);
    optimizer.step();
    double value = loss.item<double>();
    USERIP_CHECK(std::isfinite(value), "pretraining diverged at step {} (loss {}); lower --learning-rate", step, value);
    loss_sum += value;
    ++loss_count;
    progress.set_metric(fmt::format("loss {:.3f} lr {:.2e}", value, lr));
    progress.advance();
    std::int64_t done = step + 1;
    if (done % o.eval_every == 0 || done == o.steps) {
      PretrainPoint p{done, loss_sum / static_cast<double>(loss_count), NAN, 0};
      p.heldout_perplexity = heldout_perplexity(config, weights, heldout_stream, o);
      p.seconds = elapsed();
      result.curve.push_back(p);
      loss_sum = 0;
      loss_count = 0;
      spdlog::info("step {}: train loss {:.3f}, held-out perplexity {:.2f}, {:.0f} s", p.step, p.train_loss,
                   p.heldout_perplexity, p.seconds);
    }
    if (done < o.steps && (done % o.checkpoint_every == 0 || done == o.stop_after_step)) {
      save_checkpoint(done, elapsed());
    }
    if (done == o.stop_after_step && done < o.steps) {
      progress.finish();
      result.seconds = elapsed();
      result.interrupted = true;
      result.heldout_perplexity = result.curve.empty() ? NAN : result.curve.back().heldout_perplexity;
      spdlog::info("stopping at step {} of {} as asked; a rerun resumes from {}", done, o.steps, checkpoint.string());
      return result;
    }
  }
  progress.finish();
  result.seconds = elapsed();
  result.heldout_perplexity = result.curve.empty() ? NAN : result.curve.back().heldout_perplexity;

  // The finished model, in the Hugging Face layout; CausalLM freezes the weights for good.
  CausalLM model(config, weights, out.string());
  write_file_atomic(checkpoint / "tokenizer_config.json",
                    nlohmann::json{{"add_bos_token", true}, {"add_eos_token", false}, {"bos_token", "<s>"},
                                   {"eos_token", "</s>"}, {"unk_token", "<unk>"},
                                   {"model_max_length", o.context}}
                        .dump(2));
  save_model_hf(model, out, {tokenizer_file, checkpoint / "tokenizer_config.json"});
  nlohmann::json curve = nlohmann::json::array();
  std::string log;
  for (const auto& p : result.curve) {
    curve.push_back(point_json(p));
    log += point_json(p).dump() + "\n";
  }
  write_file_atomic(out / "pretrain_log.jsonl", log);
  write_file_atomic(out / "pretrain.json", nlohmann::json{{"fingerprint", fingerprint},
                                                          {"options", o.to_json()},
                                                          {"seed", o.seed},
                                                          {"parameters", result.parameters},
                                                          {"train_tokens", result.train_tokens},
                                                          {"heldout_tokens", result.heldout_tokens},
                                                          {"train_lines", corpus.train.size()},
                                                          {"heldout_lines", corpus.heldout.size()},
                                                          {"corpus",
                                                           {{"behaviour_phrase", corpus.options.behaviour_phrase},
                                                            {"user_phrase", corpus.options.user_phrase},
                                                            {"user_phrase_share", corpus.options.user_phrase_share},
                                                            {"sentences_per_document",
                                                             corpus.options.sentences_per_document},
                                                            {"shuffle_documents", corpus.options.shuffle_documents}}},
                                                          {"heldout_perplexity", result.heldout_perplexity},
                                                          {"seconds", result.seconds},
                                                          {"curve", curve}}
                                                .dump(2) + "\n");
  fs::remove_all(checkpoint);
  return result;
}

std::optional<nlohmann::json> pretrained_corpus(const fs::path& model) {
  const fs::path record = model / "pretrain.json";
  std::error_code error;
  if (!fs::is_directory(model, error) || !fs::is_regular_file(record, error)) return std::nullopt;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(record));
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: malformed JSON: {}", record.string(), e.what());
  }
  const auto corpus = j.find("corpus");
  if (corpus == j.end()) return std::nullopt;
  USERIP_CHECK(corpus->is_object(), "{}: \"corpus\" must be an object, not {}", record.string(), corpus->dump());
  return *corpus;
}

std::optional<std::size_t> pretrained_sentences_per_document(const fs::path& model) {
  const auto corpus = pretrained_corpus(model);
  if (!corpus) return std::nullopt;
  const auto sentences = corpus->find("sentences_per_document");
  if (sentences == corpus->end()) return std::nullopt;
  USERIP_CHECK(sentences->is_number_unsigned() && sentences->get<std::size_t>() >= 1,
               "{}: corpus.sentences_per_document must be a positive integer, not {}",
               (model / "pretrain.json").string(), sentences->dump());
  return sentences->get<std::size_t>();
}

}  // namespace userip::lm
