// `userip lm info | score | generate | export`, run as a user runs them, checked against numbers
// the test derives itself: parameter counts from config.json by the published architectures,
// log-probabilities from the independent float64 reference logits, greedy continuations from an
// argmax loop over the model API.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <sstream>

#include "support/temp_dir.h"
#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/util/fs.h"
#include "lm/lm_test_support.h"

namespace userip::lm {
namespace {

using namespace test_support;

namespace fs = std::filesystem;
using nlohmann::json;
using userip::testing::run_cli;
using userip::testing::TempDir;


std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

// Runs the CLI and expects success; returns its output (stdout and stderr).
std::string cli_ok(const std::string& args) {
  std::string output;
  const int rc = run_cli(args, &output);
  EXPECT_EQ(rc, 0) << args << "\n" << output;
  return output;
}

// Runs the CLI and expects a failure whose message says "error:" and names every part.
void cli_fails(const std::string& args, std::initializer_list<std::string> parts) {
  std::string output;
  const int rc = run_cli(args, &output);
  EXPECT_NE(rc, 0) << args << "\n" << output;
  EXPECT_NE(output.find("error:"), std::string::npos) << args << "\n" << output;
  for (const auto& part : parts) EXPECT_NE(output.find(part), std::string::npos) << "'" << part << "' not in:\n" << output;
}

// The JSON lines of an output (log lines on stderr start with '[').
std::vector<json> json_lines(const std::string& output) {
  std::vector<json> out;
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line.front() == '{') out.push_back(json::parse(line));
  return out;
}

std::string info_field(const std::string& output, const std::string& field) {
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + " ", 0) == 0) return line.substr(line.find_first_not_of(' ', field.size()));
  ADD_FAILURE() << "no '" << field << "' in:\n" << output;
  return {};
}

// ---------------------------------------------------------------------------------------------
// lm info

// Parameters of the Hugging Face architectures, from config.json alone.
std::int64_t expected_parameters(const fs::path& config_file) {
  json c = json::parse(read_file(config_file));
  if (c["model_type"] == "gpt2") {
    const std::int64_t d = c["n_embd"], v = c["vocab_size"], p = c["n_positions"], l = c["n_layer"];
    const std::int64_t inner = c.contains("n_inner") && !c["n_inner"].is_null() ? c["n_inner"].get<std::int64_t>() : 4 * d;
    const std::int64_t block = 2 * d                 // ln_1
                               + d * 3 * d + 3 * d   // attn.c_attn
                               + d * d + d           // attn.c_proj
                               + 2 * d               // ln_2
                               + d * inner + inner   // mlp.c_fc
                               + inner * d + d;      // mlp.c_proj
    return v * d + p * d + l * block + 2 * d;       // wte, wpe, blocks, ln_f; the head is tied
  }
  const std::int64_t d = c["hidden_size"], v = c["vocab_size"], l = c["num_hidden_layers"];
  const std::int64_t heads = c["num_attention_heads"], kv = c["num_key_value_heads"], ffn = c["intermediate_size"];
  const std::int64_t head_dim = d / heads;
  const std::int64_t block = d                                               // input_layernorm
                             + d * heads * head_dim + 2 * d * kv * head_dim  // q, k, v
                             + heads * head_dim * d                          // o
                             + d                                             // post_attention_layernorm
                             + 3 * d * ffn;                                  // gate, up, down
  const bool tied = c.value("tie_word_embeddings", false);
  return v * d + l * block + d + (tied ? 0 : v * d);
}

TEST(LmCli, InfoReportsArchitectureParametersVocabularyContext) {
  const auto llama = expected_parameters(repo_reference() / "tiny-llama-hf" / "config.json");
  EXPECT_EQ(llama, 220480);  // hand check: 64000 + 2 * 46208 + 64 + 64000
  for (const char* model : {"tiny-llama-hf", "tiny-llama.gguf"}) {
    const std::string out = cli_ok("lm info --model " + quoted(repo_reference() / model));
    EXPECT_EQ(info_field(out, "architecture").rfind("llama", 0), 0u) << out;
    EXPECT_EQ(info_field(out, "parameters").rfind(std::to_string(llama) + " ", 0), 0u) << out;
    EXPECT_EQ(info_field(out, "vocabulary").rfind("1000 ", 0), 0u) << out;
    EXPECT_EQ(info_field(out, "context"), "256 tokens") << out;
    EXPECT_NE(info_field(out, "stored dtype").find("F32"), std::string::npos) << out;
    EXPECT_NE(info_field(out, "vocabulary").find("sentencepiece"), std::string::npos) << out;
  }
  const auto gpt2 = expected_parameters(repo_reference() / "tiny-gpt2-hf" / "config.json");
  const std::string out = cli_ok("lm info --model " + quoted(repo_reference() / "tiny-gpt2-hf"));
  EXPECT_EQ(info_field(out, "architecture").rfind("gpt2", 0), 0u) << out;
  EXPECT_EQ(info_field(out, "parameters").rfind(std::to_string(gpt2) + " ", 0), 0u) << out;
  EXPECT_EQ(info_field(out, "vocabulary").rfind("50257 ", 0), 0u) << out;
  EXPECT_EQ(info_field(out, "context"), "64 tokens") << out;
  EXPECT_EQ(info_field(out, "tied head"), "yes") << out;
}

// ---------------------------------------------------------------------------------------------
// lm score

struct ReferencePrompt {
  std::vector<std::int64_t> tokens;
  std::int64_t first_position = 0, positions = 0, vocab = 0;
  at::Tensor exact_logp;  // log_softmax of the float64 reference logits, [positions, vocab]
};

std::vector<ReferencePrompt> reference(const std::string& name) {
  std::vector<ReferencePrompt> out;
  for (const auto& item : json::parse(read_file(repo_reference() / "logits" / (name + ".json")))) {
    ReferencePrompt p;
    p.tokens = item.at("tokens").get<std::vector<std::int64_t>>();
    p.first_position = item.at("first_position");
    p.positions = item.at("shape").at(0);
    p.vocab = item.at("shape").at(1);
    std::string bytes = read_file(repo_reference() / "logits" / item.at("logits_exact").get<std::string>());
    EXPECT_EQ(bytes.size(), static_cast<std::size_t>(p.positions * p.vocab * 4));
    auto logits = at::from_blob(bytes.data(), {p.positions, p.vocab}, at::kFloat).to(at::kDouble);
    p.exact_logp = at::log_softmax(logits, -1);
    out.push_back(std::move(p));
  }
  return out;
}

// `lm score` on the reference prompts reproduces the reference token ids and, where the
// reference has logits, log p(token t | tokens < t) within 1e-4; the summary is the perplexity of
// every scored token.
void check_score(const fs::path& model, const std::string& name, const std::string& prompts_file) {
  const std::string out = cli_ok("lm score --model " + quoted(model) + " --text-file " +
                                 quoted(repo_reference() / prompts_file));
  auto records = json_lines(out);
  auto prompts = reference(name);
  ASSERT_EQ(records.size(), prompts.size() + 1) << out;
  double nll = 0;
  std::int64_t scored = 0, compared = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto& r = records[i];
    const auto& p = prompts[i];
    EXPECT_EQ(r.at("line"), i + 1);
    ASSERT_EQ(r.at("tokens").get<std::vector<std::int64_t>>(), p.tokens) << model << " line " << i + 1;
    auto logprobs = r.at("logprobs").get<std::vector<double>>();
    ASSERT_EQ(logprobs.size(), p.tokens.size() - 1);
    double line_nll = 0;
    for (std::size_t t = 1; t < p.tokens.size(); ++t) {
      line_nll -= logprobs[t - 1];
      const auto row = static_cast<std::int64_t>(t) - 1 - p.first_position;  // logits of position t - 1
      if (row < 0 || row >= p.positions) continue;
      const double expected = p.exact_logp[row][p.tokens[t]].item<double>();
      EXPECT_NEAR(logprobs[t - 1], expected, 1e-4) << model << " line " << i + 1 << " token " << t;
      ++compared;
    }
    EXPECT_NEAR(r.at("perplexity").get<double>(), std::exp(line_nll / logprobs.size()), 1e-9 * std::exp(line_nll / logprobs.size()));
    nll += line_nll;
    scored += static_cast<std::int64_t>(logprobs.size());
  }
  EXPECT_GE(compared, name == "tiny-llama" ? 160 : 9);
  const auto& summary = records.back();
  EXPECT_TRUE(summary.at("summary").get<bool>());
  EXPECT_EQ(summary.at("lines"), prompts.size());
  EXPECT_EQ(summary.at("scored_tokens"), scored);
  const double perplexity = std::exp(nll / scored);
  EXPECT_NEAR(summary.at("perplexity").get<double>(), perplexity, 1e-9 * perplexity);
}

TEST(LmCli, ScoreMatchesReferenceLogProbabilities) {
  check_score(repo_reference() / "tiny-llama-hf", "tiny-llama", "prompts.txt");
  check_score(repo_reference() / "tiny-llama.gguf", "tiny-llama", "prompts.txt");
  check_score(repo_reference() / "tiny-gpt2-hf", "tiny-gpt2", "prompts-gpt2.txt");
  if (!fs::exists(shared_gpt2_gguf())) GTEST_SKIP() << shared_gpt2_gguf() << " is absent";
  check_score(shared_gpt2_gguf(), "tiny-gpt2", "prompts-gpt2.txt");
}

TEST(LmCli, ScoreHandlesBlankLinesCrlfAndOverlongLines) {
  TempDir dir;
  const fs::path llama = repo_reference() / "tiny-llama-hf";
  auto text = dir.write("text.txt", "Hello world\n\nHello world\r\n");
  auto records = json_lines(cli_ok("lm score --model " + quoted(llama) + " --text-file " + quoted(text)));
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(records[0].at("tokens"), json({1, 689, 916, 356, 918, 281, 273, 576}));
  EXPECT_EQ(records[1].at("line"), 2);
  EXPECT_TRUE(records[1].at("tokens").empty());
  EXPECT_TRUE(records[1].at("logprobs").empty());
  EXPECT_TRUE(records[1].at("perplexity").is_null());
  EXPECT_EQ(records[2].at("tokens"), records[0].at("tokens"));  // the \r is not part of the text
  EXPECT_EQ(records[2].at("logprobs"), records[0].at("logprobs"));
  EXPECT_EQ(records[3].at("scored_tokens"), 14);
  EXPECT_EQ(records[3].at("lines"), 3);

  // More tokens than the context (256 for tiny-llama, 64 for tiny-gpt2): an error naming the line.
  std::string long_line;
  for (int i = 0; i < 300; ++i) long_line += " word";
  auto overlong = dir.write("long.txt", "Hello world\n" + long_line + "\n");
  for (const char* model : {"tiny-llama-hf", "tiny-gpt2-hf"})
    cli_fails("lm score --model " + quoted(repo_reference() / model) + " --text-file " + quoted(overlong),
              {overlong.string() + ":2:", "context"});
  auto empty = dir.write("empty.txt", "\n\n");
  cli_fails("lm score --model " + quoted(llama) + " --text-file " + quoted(empty), {empty.string()});
  cli_fails("lm score --model " + quoted(llama) + " --text-file " + quoted(dir / "absent.txt"),
            {(dir / "absent.txt").string()});
}

// ---------------------------------------------------------------------------------------------
// lm generate

// Greedy decoding the slow, obvious way: the whole sequence through the model for every token.
std::vector<std::int32_t> argmax_continuation(const CausalLM& model, std::vector<std::int32_t> ids, int steps,
                                              std::int32_t eos) {
  at::NoGradGuard no_grad;
  std::vector<std::int32_t> out;
  for (int s = 0; s < steps; ++s) {
    std::vector<std::int64_t> input(ids.begin(), ids.end());
    auto logits = model.forward_tokens(at::tensor(input, at::kLong).view({1, -1}))[0][-1];
    const auto next = static_cast<std::int32_t>(logits.argmax().item<std::int64_t>());
    out.push_back(next);
    ids.push_back(next);
    if (next == eos) break;
  }
  return out;
}

TEST(LmCli, GenerateGreedyEqualsArgmaxContinuation) {
  const std::string prompt = "The user watched Toy Story";
  for (const char* name : {"tiny-llama-hf", "tiny-llama.gguf", "tiny-gpt2-hf"}) {
    const fs::path path = repo_reference() / name;
    CausalLM model = load_model(path);
    auto tokenizer = load_model_tokenizer(path);
    const auto ids = tokenizer->encode_for_model(prompt);
    const auto expected = argmax_continuation(model, ids, 12, tokenizer->specials().eos);
    const std::string args = "lm generate --model " + quoted(path) + " --prompt '" + prompt + "' --max-new-tokens 12";
    auto records = json_lines(cli_ok(args + " --json"));
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0].at("prompt_tokens").get<std::vector<std::int32_t>>(), ids) << name;
    EXPECT_EQ(records[0].at("tokens").get<std::vector<std::int32_t>>(), expected) << name;
    EXPECT_EQ(records[0].at("stop"), expected.size() == 12 ? "max_tokens" : "stop_token") << name;
    // The plain form prints the prompt and then the continuation, decoded with the prompt so that
    // a word-initial space survives.
    std::vector<std::int32_t> all = ids;
    all.insert(all.end(), expected.begin(), expected.end());
    const std::string full = tokenizer->decode(all), prefix = tokenizer->decode(ids);
    ASSERT_EQ(full.compare(0, prefix.size(), prefix), 0) << name;
    const std::string continuation = full.substr(prefix.size());
    const std::string out = cli_ok(args);
    EXPECT_NE(out.find(prompt + continuation + "\n"), std::string::npos) << name << "\n" << out;
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(LmCli, ErrorsSayErrorAndNameTheFile) {
  TempDir dir;
  const fs::path absent = dir / "no-such-model";
  const fs::path prompts = repo_reference() / "prompts.txt";
  cli_fails("lm info --model " + quoted(absent), {absent.string()});
  cli_fails("lm score --model " + quoted(absent) + " --text-file " + quoted(prompts), {absent.string()});
  cli_fails("lm generate --model " + quoted(absent) + " --prompt hi", {absent.string()});
  cli_fails("lm export --model " + quoted(absent) + " --out " + quoted(dir / "x.gguf"), {absent.string()});

  // A truncated copy of the weights.
  fs::copy(repo_reference() / "tiny-llama-hf", dir / "corrupt");
  const fs::path weights = dir / "corrupt" / "model.safetensors";
  fs::resize_file(weights, fs::file_size(weights) / 2);
  cli_fails("lm info --model " + quoted(dir / "corrupt"), {weights.string()});
  cli_fails("lm score --model " + quoted(dir / "corrupt") + " --text-file " + quoted(prompts), {weights.string()});
  cli_fails("lm generate --model " + quoted(dir / "corrupt") + " --prompt hi", {weights.string()});
  cli_fails("lm export --model " + quoted(dir / "corrupt") + " --out " + quoted(dir / "x.gguf"), {weights.string()});
  EXPECT_FALSE(fs::exists(dir / "x.gguf"));

  const std::string llama = quoted(repo_reference() / "tiny-llama-hf");
  cli_fails("lm generate --model " + llama + " --prompt hi --dtype f64", {"--dtype", "f64"});
  cli_fails("lm score --model " + llama + " --text-file " + quoted(prompts) + " --dtype int8", {"--dtype", "int8"});
  cli_fails("lm generate --model " + llama + " --prompt hi --device tpu", {"--device", "tpu"});
  cli_fails("lm score --model " + llama + " --text-file " + quoted(prompts) + " --device cuda:x", {"--device"});
  cli_fails("lm export --model " + llama + " --out " + quoted(dir / "y") + " --format onnx", {"--format", "onnx"});
  cli_fails("lm export --model " + llama + " --out " + quoted(dir / "y") + " --format hf --q8_0", {"--q8_0"});
}

// ---------------------------------------------------------------------------------------------
// lm export

TEST(LmCli, ExportRoundTripsThroughGgufAndHf) {
  TempDir dir;
  const fs::path prompts = repo_reference() / "prompts.txt";
  const std::string original = cli_ok("lm score --model " + quoted(repo_reference() / "tiny-llama-hf") +
                                      " --text-file " + quoted(prompts));
  cli_ok("lm export --model " + quoted(repo_reference() / "tiny-llama-hf") + " --out " + quoted(dir / "m.gguf"));
  ASSERT_TRUE(tensor::is_gguf_file(dir / "m.gguf"));
  cli_ok("lm export --model " + quoted(dir / "m.gguf") + " --out " + quoted(dir / "hf") + " --format hf");
  ASSERT_TRUE(fs::exists(dir / "hf" / "tokenizer.model"));
  // Identical weights and tokenizers score identically, to the last digit.
  for (const fs::path& model : {dir / "m.gguf", dir / "hf"}) {
    EXPECT_EQ(json_lines(cli_ok("lm score --model " + quoted(model) + " --text-file " + quoted(prompts))),
              json_lines(original))
        << model;
    const std::string info = cli_ok("lm info --model " + quoted(model));
    EXPECT_EQ(info_field(info, "parameters").rfind("220480 ", 0), 0u) << info;
  }
  // Q8_0 and f16 exports.
  cli_ok("lm export --model " + quoted(repo_reference() / "tiny-llama-hf") + " --out " + quoted(dir / "q8.gguf") +
         " --q8_0");
  EXPECT_NE(info_field(cli_ok("lm info --model " + quoted(dir / "q8.gguf")), "stored dtype").find("Q8_0"),
            std::string::npos);
  cli_ok("lm export --model " + quoted(repo_reference() / "tiny-gpt2-hf") + " --out " + quoted(dir / "g16") +
         " --format hf --dtype f16");
  EXPECT_NE(info_field(cli_ok("lm info --model " + quoted(dir / "g16")), "stored dtype").find("F16"),
            std::string::npos);
  auto scored = json_lines(cli_ok("lm score --model " + quoted(dir / "g16") + " --text-file " +
                                  quoted(repo_reference() / "prompts-gpt2.txt")));
  ASSERT_EQ(scored.size(), 4u);
  EXPECT_EQ(scored[0].at("tokens").get<std::vector<std::int64_t>>(), reference("tiny-gpt2")[0].tokens);
}

}  // namespace
}  // namespace userip::lm
