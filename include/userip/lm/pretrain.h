#pragma once
// Pretraining of the project's own small Llama-architecture LM, for users without a checkpoint
// (and for our machines, which cannot download one). The result is an ordinary Hugging Face
// model directory that every other command loads through the same code path as a real model.
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/text/corpus.h"
#include "userip/util/option_table.h"

namespace userip::lm {

struct PretrainOptions {
  // Shape (Llama architecture; see docs/BENCHMARKS.md "The default LM" for why these values: on
  // ml-latest-small, with a fixed compute budget of about 3 minutes on 2 cores, held-out
  // perplexity improved as models got cheaper per step, so more steps fit; 2 layers is the floor
  // we keep so that attention can compose across layers).
  std::int64_t hidden_size = 96;
  std::int64_t num_layers = 2;
  std::int64_t num_heads = 4;
  std::int64_t intermediate_size = 256;
  std::int32_t vocab_size = 2000;  // SentencePiece BPE trained on the corpus
  std::int64_t context = 128;      // tokens per training sequence (and max_position_embeddings)
  bool tie_embeddings = true;

  // Optimisation: AdamW with linear warm-up and cosine decay to 10% of the peak rate.
  std::int64_t steps = 1250;
  std::int64_t batch_sequences = 16;
  double learning_rate = 3e-3;
  std::int64_t warmup_steps = 30;
  double weight_decay = 0.1;
  double grad_clip = 1.0;

  std::int64_t eval_every = 125;        // held-out perplexity every N steps (and at the end)
  std::int64_t checkpoint_every = 125;  // resumable checkpoint every N steps
  std::int64_t max_eval_tokens = 32768; // held-out tokens scored per evaluation (windows spread evenly)
  std::uint64_t seed = 42;
  torch::Device device = torch::kCPU;
  bool show_progress = true;
  // Stop after this many steps as an interruption would (checkpoint written, no model), so that a
  // later call resumes; 0 = run to the end. Not part of the fingerprint. For tests and for
  // splitting a long run into sessions.
  std::int64_t stop_after_step = 0;

  // Every option above but the device, declared once: JSON key, flag, meaning, range.
  static const OptionTable<PretrainOptions>& table();
  void validate() const;  // the table's ranges, then the shape's constraints; errors name the flags
  nlohmann::json to_json() const;
};

struct PretrainPoint {
  std::int64_t step = 0;
  double train_loss = 0;       // mean over the steps since the previous point
  double heldout_perplexity = 0;
  double seconds = 0;          // since the start of training (resumed runs continue the clock)
};

struct PretrainResult {
  std::vector<PretrainPoint> curve;
  double heldout_perplexity = 0;
  std::int64_t parameters = 0;
  std::int64_t train_tokens = 0, heldout_tokens = 0;
  double seconds = 0;
  bool resumed = false;  // continued from a checkpoint
  bool reused = false;   // an identical finished model was already there; nothing was trained
  bool interrupted = false;  // stopped at options.stop_after_step; out/checkpoint/ holds the state
};

// Trains a tokenizer and a model on `corpus` and writes the model directory `out`:
// config.json, model.safetensors, tokenizer.model, tokenizer_config.json, pretrain.json (options,
// seed, corpus fingerprint, curve) and pretrain_log.jsonl. While training, `out/checkpoint/`
// holds the latest resumable state; a rerun with the same corpus and options continues from it,
// and a rerun after completion returns the finished model without training.
PretrainResult pretrain_lm(const text::Corpus& corpus, const PretrainOptions& options,
                           const std::filesystem::path& out);

// The "corpus" record (phrases, sentences per document, ...) of the model at `model` when it is a
// directory written by pretrain_lm; nullopt for any other model (a user's checkpoint, a GGUF file).
// Throws userip::Error naming the file when its pretrain.json is malformed.
std::optional<nlohmann::json> pretrained_corpus(const std::filesystem::path& model);
// Its behaviour sentences per document; nullopt where pretrained_corpus is, or when it does not say.
std::optional<std::size_t> pretrained_sentences_per_document(const std::filesystem::path& model);

// Fingerprint of a corpus and the options that shape the result (not the progress settings).
std::string pretrain_fingerprint(const text::Corpus& corpus, const PretrainOptions& options);

}  // namespace userip::lm
