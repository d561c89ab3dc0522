#include <fmt/format.h>
#include <torch/types.h>

#include <fstream>
#include <iostream>
#include <optional>

#include "commands.h"
#include "option_flags.h"
#include "model_options.h"
#include "userip/data/dataset.h"
#include "userip/lm/config.h"
#include "userip/lm/context_probe.h"
#include "userip/lm/generate.h"
#include "userip/tensor/gguf.h"
#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/lm/pretrain.h"
#include "userip/lm/scoring.h"
#include "userip/tensor/tensor_file.h"
#include "userip/text/corpus.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/log.h"

namespace userip::cli {

namespace {

constexpr std::size_t kDefaultProbeCases = 400;

void print_info(const std::filesystem::path& path) {
  const auto summary = lm::summarize_checkpoint(path);
  const auto& config = summary.config;
  const auto parameters = summary.parameters;
  std::string types;
  for (auto& [type, n] : summary.parameters_by_type) types += fmt::format("{}{} ({:.1f}%)", types.empty() ? "" : ", ", type, 100.0 * n / parameters);
  auto tokenizer = lm::load_model_tokenizer(path);
  const auto& s = tokenizer->specials();
  std::cout << fmt::format(
      "model          {}\n"
      "architecture   {} (model_type {})\n"
      "parameters     {} ({:.2f} M) in {} tensors\n"
      "stored dtype   {}\n"
      "layers         {}, hidden {}, heads {} (kv {}), head dim {}, ffn {}\n"
      "context        {} tokens\n"
      "positions      {}\n"
      "vocabulary     {} ({} tokenizer, {} entries; bos {} eos {} pad {} unk {}; add bos {})\n"
      "tied head      {}\n",
      path.string(), lm::to_string(config.architecture), config.model_type, parameters, parameters / 1e6,
      summary.tensors, types, config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
      config.head_dim, config.intermediate_size, config.max_position_embeddings,
      config.architecture == lm::Architecture::gpt2
          ? std::string("learned")
          : fmt::format("RoPE theta {} scaling {}", config.rope_theta, lm::to_string(config.rope_scaling.type)),
      config.vocab_size, tokenizer->kind(), tokenizer->vocab_size(), s.bos, s.eos, s.pad, s.unk,
      s.add_bos ? "yes" : "no", config.tie_word_embeddings ? "yes" : "no");
}

// `lm pretrain` and `lm corpus` build the same corpus from the same options, so that `lm corpus` shows
// exactly what `lm pretrain` trains on.
struct CorpusFlags {
  std::size_t sentences_per_document = 0;  // 0: the dataset's default
  std::optional<bool> shuffle_documents;   // unset: the dataset's default
};

void add_corpus_flags(CLI::App* cmd, CorpusFlags& flags) {
  cmd->add_option("--sentences-per-document", flags.sentences_per_document,
                  "Behaviour sentences per corpus document, after the user's summary in most documents: with fewer, "
                  "the LM must read the summary, not the user's earlier sentences, to predict a choice (default: 1)")
      ->check(CLI::Range(1, 1000));
  auto* on = cmd->add_flag_callback(
      "--shuffle-documents", [&flags] { flags.shuffle_documents = true; },
      "Training documents in a seeded random order, not user by user, so that a training window holds no other "
      "document of the same user (default: on)");
  auto* off = cmd->add_flag_callback(
      "--no-shuffle-documents", [&flags] { flags.shuffle_documents = false; }, "Training documents user by user");
  on->excludes(off);
}

text::Corpus corpus_of(const data::Dataset& dataset, std::uint64_t seed, const CorpusFlags& flags) {
  auto options = text::default_corpus_options(dataset);
  options.seed = seed;
  if (flags.sentences_per_document > 0) options.sentences_per_document = flags.sentences_per_document;
  options.shuffle_documents = flags.shuffle_documents.value_or(options.shuffle_documents);
  return text::build_corpus(dataset, options);
}

// The phrases the model was pretrained with when `lm pretrain` wrote it, else the dataset's default text (what
// the default profile template mirrors).
text::CorpusOptions corpus_options_for(const std::filesystem::path& model, const data::Dataset& dataset) {
  auto options = text::default_corpus_options(dataset);
  if (const auto record = lm::pretrained_corpus(model)) {
    options.behaviour_phrase = record->value("behaviour_phrase", options.behaviour_phrase);
    options.user_phrase = record->value("user_phrase", options.user_phrase);
  }
  return options;
}

// Measures how much the model reads each part of the user summary in `options`' phrases, prints a line per part and writes
// `report_file` (the report, the probe's seed and size, the dataset).
lm::ContextReport probe_context(const lm::CausalLM& model, const std::filesystem::path& model_path,
                                const data::Dataset& dataset, const std::filesystem::path& dataset_path,
                                const text::CorpusOptions& options, std::size_t cases, std::uint64_t seed,
                                const std::filesystem::path& report_file) {
  const auto probe = text::build_context_probe(dataset, options, cases, seed);
  auto tokenizer = lm::load_model_tokenizer(model_path);
  const auto report = lm::measure_context_reading(model, *tokenizer, probe);
  std::cout << fmt::format("context probe ({} held-out behaviour sentences{}; mean NLL {:.3f} nats after their own "
                           "user's summary):\n",
                           report.cases,
                           report.skipped ? fmt::format(", {} left out as longer than the model's context", report.skipped)
                                          : std::string(),
                           report.behaviour_nll);
  for (const auto& p : report.parts)
    std::cout << fmt::format("  {{{}}} from another user: {:+.3f} ± {:.3f} nats per sentence ({} cases): {}\n", p.part,
                             p.extra_nll, p.standard_error, p.cases, p.read() ? "read" : "NOT read");
  std::string unread;
  for (const auto& p : report.parts)
    if (!p.read()) unread += (unread.empty() ? "{" : ", {") + p.part + "}";
  if (!report.reads_any_part())
    spdlog::warn("{}: the LM reads no part of the user summary (probe above), so profile tokens in its place have "
                 "nothing to carry; pretrain longer (--steps) before fitting profiles (docs/TEMPLATES.md, \"Does the "
                 "LM read the user context?\")",
                 model_path.string());
  else if (!unread.empty())
    spdlog::info("the LM does not read {} of the user summary: either the data does not depend on it or the LM "
                 "has not learnt to read it yet (docs/TEMPLATES.md, \"Does the LM read the user context?\")",
                 unread);
  if (!report_file.empty()) {
    auto record = report.to_json();
    record["seed"] = seed;
    record["dataset"] = dataset_path.string();
    record["user_phrase"] = options.user_phrase;
    write_file_atomic(report_file, record.dump(2) + "\n");
  }
  return report;
}

struct LmPretrainCommand {
  std::filesystem::path dataset, out;
  lm::PretrainOptions options;
  std::string device = "cpu";
  CorpusFlags corpus_flags;
  std::size_t probe_cases = kDefaultProbeCases;

  void run() {
    options.device = device_of(device);
    const auto d = data::Dataset::load(dataset);
    const auto corpus = corpus_of(d, options.seed, corpus_flags);
    spdlog::info("corpus: {} item lines, {} behaviour sentences -> {} training and {} held-out documents",
                 corpus.item_lines, corpus.behaviour_lines, corpus.train.size(), corpus.heldout.size());
    const auto result = lm::pretrain_lm(corpus, options, out);
    if (result.interrupted) return;
    std::cout << fmt::format("{} {}: {:.2f} M parameters, {} training tokens, held-out perplexity {:.2f}, {:.0f} s\n",
                             result.reused ? "reused" : "pretrained", out.string(), result.parameters / 1e6,
                             result.train_tokens, result.heldout_perplexity, result.seconds);
    if (probe_cases == 0 || corpus.options.user_phrase.empty()) return;
    ModelOptions model_options;
    model_options.model = out;
    model_options.device = device;
    // The probe informs; it never fails a finished pretraining.
    try {
      probe_context(load(model_options), out, d, dataset, corpus.options, probe_cases, options.seed,
                    out / "context_probe.json");
    } catch (const Error& e) {
      spdlog::warn("{}: no context probe: {}", out.string(), e.what());
    }
  }
};

struct LmProbeCommand {
  ModelOptions model;
  std::filesystem::path dataset, out;
  std::size_t cases = kDefaultProbeCases;
  std::uint64_t seed = 42;

  void run() const {
    const auto d = data::Dataset::load(dataset);
    probe_context(load(model), model.model, d, dataset, corpus_options_for(model.model, d), cases, seed, out);
  }
};

struct LmCorpusCommand {
  std::filesystem::path dataset, out;
  std::uint64_t seed = 42;
  CorpusFlags corpus_flags;

  void run() const {
    const auto corpus = corpus_of(data::Dataset::load(dataset), seed, corpus_flags);
    std::string text;
    for (const auto* part : {&corpus.train, &corpus.heldout})
      for (const auto& line : *part) text += line + "\n";
    write_file_atomic(out, text);
    std::cout << fmt::format("{} training and {} held-out documents -> {}\n", corpus.train.size(),
                             corpus.heldout.size(), out.string());
  }
};

struct LmInfoCommand {
  std::filesystem::path model;

  void run() const { print_info(model); }
};

struct LmScoreCommand {
  ModelOptions model_options;
  std::filesystem::path text_file;

  void run() const {
    std::ifstream in(text_file, std::ios::binary);
    USERIP_CHECK(in, "{}: cannot open the text file", text_file.string());
    const auto model = load(model_options);
    const auto tokenizer = lm::load_model_tokenizer(model_options.model);
    const std::int64_t context = model.config().max_position_embeddings;
    std::string line;
    double total_nll = 0;
    std::int64_t total_tokens = 0, line_number = 0;
    while (std::getline(in, line)) {
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
      std::vector<std::int32_t> ids;  // a blank line: nothing to score (not even a lone bos)
      if (!line.empty()) ids = tokenizer->encode_for_model(line);
      USERIP_CHECK(context <= 0 || static_cast<std::int64_t>(ids.size()) <= context,
                   "{}:{}: the line is {} tokens long, more than the model's context of {} tokens; split it into "
                   "shorter lines",
                   text_file.string(), line_number, ids.size(), context);
      for (auto id : ids)
        USERIP_CHECK(id >= 0 && id < model.vocab_size(), "{}:{}: token id {} is outside the model's vocabulary of {}",
                     text_file.string(), line_number, id, model.vocab_size());
      const std::vector<double> logprobs = lm::token_logprobs(model, ids);
      double nll = 0;
      for (double lp : logprobs) nll -= lp;
      nlohmann::json record = {{"line", line_number}, {"tokens", ids}};
      record["logprobs"] = logprobs;
      record["perplexity"] = logprobs.empty() ? nlohmann::json(nullptr) : nlohmann::json(std::exp(nll / logprobs.size()));
      std::cout << record.dump() << "\n";
      total_nll += nll;
      total_tokens += static_cast<std::int64_t>(logprobs.size());
    }
    USERIP_CHECK(total_tokens > 0, "{}: no line has two or more tokens to score", text_file.string());
    std::cout << nlohmann::json{{"summary", true}, {"lines", line_number}, {"scored_tokens", total_tokens},
                                {"perplexity", std::exp(total_nll / total_tokens)}}
                     .dump()
              << std::endl;
  }
};

struct LmGenerateCommand {
  ModelOptions model_options;
  std::string prompt;
  lm::GenerationOptions generation;
  bool json = false;

  void run() const {
    const auto model = load(model_options);
    const auto tokenizer = lm::load_model_tokenizer(model_options.model);
    const auto ids = tokenizer->encode_for_model(prompt);
    USERIP_CHECK(!ids.empty(), "the prompt encodes to no tokens");
    USERIP_CHECK(static_cast<std::int64_t>(ids.size()) <= model.config().max_position_embeddings,
                 "the prompt is {} tokens long; the model's context is {} tokens", ids.size(),
                 model.config().max_position_embeddings);
    torch::NoGradGuard no_grad;
    const auto result = lm::generate_from_tokens(model, ids, generation);
    const std::string continuation = lm::continuation_text(*tokenizer, ids, result.tokens);
    if (json) {
      std::cout << nlohmann::json{{"prompt_tokens", ids},
                                  {"tokens", result.tokens},
                                  {"text", continuation},
                                  {"stop", lm::to_string(result.reason)}}
                       .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                << std::endl;
    } else {
      std::cout << prompt << continuation << std::endl;
    }
    spdlog::info("{} new tokens, stopped by {}", result.tokens.size(), lm::to_string(result.reason));
  }
};

struct LmExportCommand {
  std::filesystem::path model, out;
  std::string format, dtype = "auto";
  bool q8 = false;

  void run() const {
    lm::ExportOptions options;
    std::string f = format;
    if (f.empty()) f = (out.extension() == ".gguf" || q8) ? "gguf" : "hf";
    if (f == "gguf") {
      options.format = lm::ExportFormat::gguf;
    } else if (f == "hf") {
      options.format = lm::ExportFormat::hf;
    } else {
      fail("--format: '{}' is not a format (expected gguf or hf)", f);
    }
    if (dtype != "auto") options.dtype = dtype_of(dtype);
    options.quantize_q8_0 = q8;
    USERIP_CHECK(!q8 || options.format == lm::ExportFormat::gguf, "--q8_0: Q8_0 is a GGUF type; use --format gguf");
    lm::export_model(model, out, options);
    std::cout << fmt::format("wrote {} ({})\n", out.string(), f);
  }
};

}  // namespace

void add_lm_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* lm_app = app.add_subcommand("lm", "Language models: pretrain the default LM, inspect, score, generate");
  lm_app->require_subcommand(1);

  {  // lm pretrain
    auto* cmd = lm_app->add_subcommand(
        "pretrain", "Pretrain the default LM (tokenizer + small Llama) on a dataset's catalogue and training text");
    auto c = std::make_shared<LmPretrainCommand>();
    cmd->add_option("--dataset", c->dataset, "Dataset directory (its training split is the behaviour text)")->required();
    cmd->add_option("--out", c->out, "Model directory to write (Hugging Face layout)")->required();
    add_option_flags(cmd, lm::PretrainOptions::table(), c->options);
    cmd->add_option("--device", c->device, "cpu or cuda[:N]")->capture_default_str();
    add_corpus_flags(cmd, c->corpus_flags);
    cmd->add_option("--probe-cases", c->probe_cases,
                    "Held-out behaviour sentences of the context probe run after pretraining (context_probe.json; "
                    "0 = no probe)")
        ->capture_default_str();
    on_run(cmd, [c] { c->run(); });
  }

  {  // lm probe
    auto* cmd = lm_app->add_subcommand(
        "probe",
        "Does the LM read the user summary before behaviour? For held-out (validation) interactions, how much less "
        "likely each becomes when one part of its user's summary is another user's; in the phrases the model was "
        "pretrained with, or the dataset's default text for any other model");
    auto c = std::make_shared<LmProbeCommand>();
    add_model_options(cmd, c->model);
    cmd->add_option("--dataset", c->dataset, "Dataset directory with a split")->required();
    cmd->add_option("--cases", c->cases, "Held-out behaviour sentences to score")
        ->check(CLI::Range(2, 1000000))
        ->capture_default_str();
    cmd->add_option("--seed", c->seed, "Seed of the draw of sentences and of the other users")->capture_default_str();
    cmd->add_option("--out", c->out, "Also write the report as JSON to this file");
    on_run(cmd, [c] { c->run(); });
  }

  {  // lm corpus
    auto* cmd = lm_app->add_subcommand(
        "corpus", "Write the text `lm pretrain` trains the default LM on (catalogue, user summaries, training behaviour), "
                  "one document per line");
    auto c = std::make_shared<LmCorpusCommand>();
    cmd->add_option("--dataset", c->dataset, "Dataset directory")->required();
    cmd->add_option("--out", c->out, "Text file to write (training documents, then held-out ones)")->required();
    cmd->add_option("--seed", c->seed, "Seed of the held-out draw (as lm pretrain --seed)")->capture_default_str();
    add_corpus_flags(cmd, c->corpus_flags);
    on_run(cmd, [c] { c->run(); });
  }

  {  // lm info
    auto* cmd = lm_app->add_subcommand("info", "Architecture, parameter count, dtype, vocabulary, context length");
    auto c = std::make_shared<LmInfoCommand>();
    cmd->add_option("--model", c->model, "Hugging Face model directory or .gguf file")->required();
    on_run(cmd, [c] { c->run(); });
  }

  {  // lm score
    auto* cmd = lm_app->add_subcommand(
        "score",
        "Per-token log-probabilities (JSON lines) and perplexity of each line of a text file: line n gives "
        "{\"line\": n, \"tokens\": ids as the model's tokenizer encodes them (with bos where it adds one), "
        "\"logprobs\": log p(tokens[i] | tokens[:i]) for i >= 1, \"perplexity\"}; blank lines give no log-probs; "
        "a last line {\"summary\": true, ...} has the perplexity over every scored token");
    auto c = std::make_shared<LmScoreCommand>();
    add_model_options(cmd, c->model_options);
    cmd->add_option("--text-file", c->text_file, "UTF-8 text, one sequence per line")->required();
    on_run(cmd, [c] { c->run(); });
  }

  {  // lm generate
    auto* cmd = lm_app->add_subcommand("generate", "Continue a prompt (greedy or top-k/top-p sampling, KV cache)");
    auto c = std::make_shared<LmGenerateCommand>();
    auto& g = c->generation;
    add_model_options(cmd, c->model_options);
    cmd->add_option("--prompt", c->prompt, "Prompt text")->required();
    cmd->add_option("--max-new-tokens", g.max_new_tokens, "Tokens to generate at most")->capture_default_str();
    cmd->add_option("--temperature", g.temperature, "0 = greedy; otherwise sample at this temperature")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd->add_option("--top-k", g.top_k, "Sample among the k most likely tokens (0 = all)")->capture_default_str();
    cmd->add_option("--top-p", g.top_p, "Nucleus sampling mass (1 = off)")->check(CLI::Range(0.0, 1.0))->capture_default_str();
    cmd->add_option("--seed", g.seed, "Sampling seed")->capture_default_str();
    cmd->add_flag("--json", c->json,
                  "Print one JSON object: prompt_tokens, tokens (the new ones), text (the continuation), stop");
    on_run(cmd, [c] { c->run(); });
  }

  {  // lm export
    auto* cmd = lm_app->add_subcommand(
        "export", "Convert a model with its tokenizer: to GGUF (llama.cpp and compatible tools) or to a Hugging Face "
                  "directory (transformers)");
    auto c = std::make_shared<LmExportCommand>();
    cmd->add_option("--model", c->model, "Hugging Face model directory or .gguf file")->required();
    cmd->add_option("--out", c->out, "The .gguf file or the model directory to write")->required();
    cmd->add_option("--format", c->format, "gguf or hf (default: gguf when --out ends in .gguf, else hf)");
    cmd->add_option("--dtype", c->dtype, "Weights' dtype: auto (the source's), f32, f16 or bf16")->capture_default_str();
    cmd->add_flag("--q8_0", c->q8, "GGUF: store matrices as Q8_0 (norms and biases stay f32)");
    on_run(cmd, [c] { c->run(); });
  }
}

}  // namespace userip::cli
