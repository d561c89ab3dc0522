// Pretraining of the default LM, on a tiny shape and a corpus of a few hundred tokens:
// 1. the loss goes down and the held-out perplexity is finite and far below the uniform
//    vocabulary's;
// 2. the output directory is an ordinary checkpoint: load_model + load_model_tokenizer give a
//    model whose held-out perplexity, recomputed here from its logits, is the one reported;
// 3. a rerun with the same corpus and options reuses the model without training;
// 4. a run interrupted after a checkpoint resumes to bit-identical weights and the same curve,
//    also with a half-written checkpoint file of a later step lying around.
#include "userip/lm/pretrain.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "support/temp_dir.h"
#include "text/text_test_support.h"
#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/util/fs.h"

namespace userip::lm {
namespace {

namespace fs = std::filesystem;
using userip::testing::TempDir;
using userip::testing::text::find_program;

// Hand-written catalogue and behaviour lines in the corpus's style.
text::Corpus tiny_corpus() {
  const std::vector<std::string> movies = {
      "Toy Story (1995): Adventure, Animation, Children, Comedy",
      "Heat (1995): Action, Crime, Thriller",
      "Casablanca (1942): Drama, Romance",
      "Alien (1979): Horror, Sci-Fi",
      "Fargo (1996): Comedy, Crime, Drama, Thriller",
      "The Matrix (1999): Action, Sci-Fi, Thriller",
      "Amelie (2001): Comedy, Romance",
      "Up (2009): Adventure, Animation, Children, Drama",
  };
  text::Corpus corpus;
  for (const auto& m : movies) corpus.train.push_back(m);
  // Behaviour: each "user" watches the movies in a fixed rotation with a rating.
  for (int user = 0; user < 12; ++user) {
    std::string document;
    for (int k = 0; k < 4; ++k) {
      const auto& m = movies[static_cast<std::size_t>((user * 3 + k) % movies.size())];
      const std::string title = m.substr(0, m.find(':'));
      document += (k ? " " : "") + std::string("Watched ") + title + "; rated " + std::to_string(1 + (user + k) % 5) +
                  ".";
    }
    (user % 6 == 5 ? corpus.heldout : corpus.train).push_back(document);
  }
  corpus.heldout.push_back(movies[1]);
  corpus.item_lines = movies.size();
  corpus.behaviour_lines = 48;
  return corpus;
}

PretrainOptions tiny_options() {
  PretrainOptions o;
  o.hidden_size = 32;
  o.num_layers = 2;
  o.num_heads = 2;
  o.intermediate_size = 64;
  o.vocab_size = 400;  // 256 byte pieces, the characters, and what merges the text holds (spm_train shrinks it)
  o.context = 16;
  o.steps = 20;
  o.batch_sequences = 8;
  o.learning_rate = 1e-2;
  o.warmup_steps = 2;
  o.eval_every = 10;
  o.checkpoint_every = 5;
  o.max_eval_tokens = 4096;
  o.seed = 7;
  o.show_progress = false;
  return o;
}

// The held-out perplexity of a loaded model, computed independently of pretrain.cpp's code path
// through the model's own logits: the held-out lines as <bos> ids <eos>, the same windows
// (ceil-free even spacing as documented in pretrain.cpp), mean NLL from log_softmax.
double perplexity_of(const CausalLM& model, const text::Tokenizer& tokenizer, const text::Corpus& corpus,
                     const PretrainOptions& o) {
  std::vector<std::int64_t> stream;
  for (const auto& line : corpus.heldout) {
    stream.push_back(1);
    for (auto id : tokenizer.encode(line)) stream.push_back(id);
    stream.push_back(2);
  }
  const std::int64_t windows = (static_cast<std::int64_t>(stream.size()) - 1) / o.context;
  const std::int64_t sequences = std::min(windows, o.max_eval_tokens / o.context);
  double total = 0;
  for (std::int64_t i = 0; i < sequences; ++i) {
    const std::int64_t start = i * windows / sequences * o.context;
    std::vector<std::int64_t> ids(stream.begin() + start, stream.begin() + start + o.context + 1);
    auto t = at::tensor(ids).unsqueeze(0);
    auto log_probs = at::log_softmax(model.forward_tokens(t.narrow(1, 0, o.context)).to(at::kDouble), -1);
    auto targets = t.narrow(1, 1, o.context).unsqueeze(-1);
    total -= log_probs.gather(-1, targets).mean().item<double>();
  }
  return std::exp(total / static_cast<double>(sequences));
}

class Pretrain : public ::testing::Test {
 protected:
  void SetUp() override {
    if (find_program("spm_train").empty()) GTEST_SKIP() << "spm_train not installed (Debian package sentencepiece)";
  }
};

TEST_F(Pretrain, LearnsSavesLoadsAndReuses) {
  TempDir dir;
  const auto corpus = tiny_corpus();
  const auto o = tiny_options();
  const auto out = dir / "lm";
  const auto result = pretrain_lm(corpus, o, out);
  EXPECT_FALSE(result.reused);
  EXPECT_FALSE(result.resumed);
  EXPECT_FALSE(result.interrupted);
  ASSERT_EQ(result.curve.size(), 2u);
  EXPECT_EQ(result.curve[0].step, 10);
  EXPECT_EQ(result.curve[1].step, 20);
  EXPECT_LT(result.curve[1].train_loss, result.curve[0].train_loss);
  EXPECT_LT(result.curve[1].heldout_perplexity, result.curve[0].heldout_perplexity);
  EXPECT_GT(result.train_tokens, 200);
  EXPECT_GT(result.heldout_tokens, o.context);

  // The output is a Hugging Face directory like any other, its checkpoint state gone.
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
                           "pretrain.json", "pretrain_log.jsonl"})
    EXPECT_TRUE(fs::exists(out / file)) << file;
  EXPECT_FALSE(fs::exists(out / "checkpoint"));
  // The record says how the corpus was cut, which the weights depend on as much as on the options.
  const auto record = nlohmann::json::parse(read_file(out / "pretrain.json"));
  EXPECT_EQ(record["corpus"]["sentences_per_document"], corpus.options.sentences_per_document);
  EXPECT_EQ(record["corpus"]["shuffle_documents"], corpus.options.shuffle_documents);
  const CausalLM model = load_model(out);
  const auto tokenizer = load_model_tokenizer(out);
  EXPECT_TRUE(model.is_frozen());
  EXPECT_EQ(model.num_parameters(), result.parameters);
  EXPECT_EQ(model.config().vocab_size, tokenizer->vocab_size());
  EXPECT_EQ(model.config().num_layers, o.num_layers);
  EXPECT_EQ(model.config().max_position_embeddings, o.context);

  // Finite, and far below the perplexity of a uniform guess over the vocabulary.
  const double uniform = static_cast<double>(tokenizer->vocab_size());
  ASSERT_TRUE(std::isfinite(result.heldout_perplexity));
  EXPECT_LT(result.heldout_perplexity, uniform / 10) << "vocabulary " << uniform;
  // The saved weights and tokenizer reproduce the trained model's held-out perplexity.
  EXPECT_NEAR(perplexity_of(model, *tokenizer, corpus, o), result.heldout_perplexity,
              1e-4 * result.heldout_perplexity);

  // Same corpus and options: nothing is trained again.
  const auto fingerprint = model.fingerprint();
  const auto again = pretrain_lm(corpus, o, out);
  EXPECT_TRUE(again.reused);
  EXPECT_EQ(again.heldout_perplexity, result.heldout_perplexity);
  EXPECT_EQ(again.curve.size(), result.curve.size());
  EXPECT_EQ(load_model(out).fingerprint(), fingerprint);

  // Other options are another model.
  auto longer = o;
  longer.steps = 22;
  EXPECT_NE(pretrain_fingerprint(corpus, longer), pretrain_fingerprint(corpus, o));
  longer = o;
  longer.show_progress = true;
  longer.eval_every = 3;
  longer.checkpoint_every = 4;
  longer.stop_after_step = 9;
  EXPECT_EQ(pretrain_fingerprint(corpus, longer), pretrain_fingerprint(corpus, o)) << "progress settings only";
}

TEST_F(Pretrain, AnInterruptedRunResumesToIdenticalWeights) {
  TempDir dir;
  const auto corpus = tiny_corpus();
  const auto o = tiny_options();
  const auto whole = pretrain_lm(corpus, o, dir / "whole");

  // Stop after step 7 (a checkpoint at 5, then one at 7 on the way out), as a kill after the
  // step-7 checkpoint would leave it.
  auto first = o;
  first.stop_after_step = 7;
  const auto part = pretrain_lm(corpus, first, dir / "split");
  EXPECT_TRUE(part.interrupted);
  EXPECT_FALSE(fs::exists(dir / "split" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "split" / "pretrain.json"));
  const auto state = userip::testing::text::read_json(dir / "split" / "checkpoint" / "state.json");
  EXPECT_EQ(state.at("step").get<int>(), 7);
  // Only the newest checkpoint's files are kept.
  EXPECT_TRUE(fs::exists(dir / "split" / "checkpoint" / "weights-7.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "split" / "checkpoint" / "weights-5.safetensors"));
  // A kill in the middle of writing the next checkpoint leaves partial files; state.json does not
  // name them, so they must not be read.
  dir.write("split/checkpoint/weights-10.safetensors.next", "garbage");
  dir.write("split/checkpoint/weights-10.safetensors", "garbage");

  const auto rest = pretrain_lm(corpus, o, dir / "split");
  EXPECT_TRUE(rest.resumed);
  EXPECT_FALSE(rest.interrupted);
  EXPECT_EQ(rest.heldout_perplexity, whole.heldout_perplexity);
  ASSERT_EQ(rest.curve.size(), whole.curve.size());
  for (std::size_t i = 0; i < whole.curve.size(); ++i) {
    EXPECT_EQ(rest.curve[i].step, whole.curve[i].step);
    EXPECT_EQ(rest.curve[i].train_loss, whole.curve[i].train_loss) << "point " << i;
    EXPECT_EQ(rest.curve[i].heldout_perplexity, whole.curve[i].heldout_perplexity) << "point " << i;
  }
  EXPECT_EQ(load_model(dir / "split").fingerprint(), load_model(dir / "whole").fingerprint());
  // The same tokenizer (tokenizer.model's bytes differ: spm_train records its input file's path).
  const auto split_tokenizer = load_model_tokenizer(dir / "split");
  const auto whole_tokenizer = load_model_tokenizer(dir / "whole");
  ASSERT_EQ(split_tokenizer->vocab_size(), whole_tokenizer->vocab_size());
  for (std::int32_t id = 0; id < whole_tokenizer->vocab_size(); ++id)
    ASSERT_EQ(split_tokenizer->token_text(id), whole_tokenizer->token_text(id)) << id;
  EXPECT_FALSE(fs::exists(dir / "split" / "checkpoint"));
}

TEST_F(Pretrain, ACheckpointOfOtherOptionsIsNotResumed) {
  TempDir dir;
  const auto corpus = tiny_corpus();
  auto first = tiny_options();
  first.stop_after_step = 5;
  EXPECT_TRUE(pretrain_lm(corpus, first, dir / "lm").interrupted);
  auto other = tiny_options();
  other.learning_rate = 5e-3;
  other.steps = 10;
  const auto result = pretrain_lm(corpus, other, dir / "lm");
  EXPECT_FALSE(result.resumed);
  const auto fresh = pretrain_lm(corpus, other, dir / "fresh");
  EXPECT_EQ(load_model(dir / "lm").fingerprint(), load_model(dir / "fresh").fingerprint());
}

}  // namespace
}  // namespace userip::lm
