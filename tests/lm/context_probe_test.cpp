// The context probe's scoring: each behaviour's NLL after a summary, batched by length, equals the
// difference of the two texts' NLLs computed one text at a time; a part altered to the same words
// reads as nothing, and a part with no other user's value is left out of its mean.
#include "userip/lm/context_probe.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lm_test_support.h"
#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/util/error.h"

namespace userip::lm {
namespace {

double text_nll(const CausalLM& model, const text::Tokenizer& tokenizer, const std::string& text) {
  const auto ids = tokenizer.encode_for_model(text);
  auto input = torch::tensor(std::vector<std::int64_t>(ids.begin(), ids.end())).unsqueeze(0);
  torch::NoGradGuard no_grad;
  auto logp = torch::log_softmax(model.forward_tokens(input)[0].to(torch::kDouble), -1);
  double nll = 0;
  for (std::size_t k = 0; k + 1 < ids.size(); ++k) nll -= logp[static_cast<std::int64_t>(k)][ids[k + 1]].item<double>();
  return nll;
}

TEST(ContextProbe, ScoresEachBehaviourAfterEachSummaryAsOneTextAtATimeWould) {
  const auto path = test_support::repo_reference() / "tiny-llama-hf";
  const CausalLM model = load_model(path);
  const auto tokenizer = load_model_tokenizer(path);
  text::ContextProbe probe;
  probe.parts = {"user.top.genres", "user.rating_style", "user.count"};
  probe.cases.push_back({"Likes: Drama; generous; 3.", "Rated 5; chose a Drama film: Heat.",
                         {"Likes: Horror; generous; 3.", "Likes: Drama; generous; 3.", ""}});
  probe.cases.push_back({"Likes: Comedy, Action; critical; 12.", "Rated 1; chose an Action film.",
                         {"Likes: Western; critical; 12.", "Likes: Comedy, Action; critical; 12.", ""}});
  BatchingOptions small;
  small.max_sequences = 3;  // several batches of different lengths
  const auto report = measure_context_reading(model, *tokenizer, probe, small);

  auto behaviour = [&](const std::string& summary, const std::string& b) {
    return text_nll(model, *tokenizer, summary + " " + b) - text_nll(model, *tokenizer, summary);
  };
  double own_sum = 0, extra[2];
  for (std::size_t c = 0; c < 2; ++c) {
    const auto& k = probe.cases[c];
    const double own = behaviour(k.summary, k.behaviour);
    own_sum += own;
    extra[c] = behaviour(k.altered[0], k.behaviour) - own;
  }
  EXPECT_EQ(report.cases, 2);
  EXPECT_NEAR(report.behaviour_nll, own_sum / 2, 1e-4);
  ASSERT_EQ(report.parts.size(), 3u);
  EXPECT_EQ(report.parts[0].part, "user.top.genres");
  EXPECT_EQ(report.parts[0].cases, 2);
  EXPECT_NEAR(report.parts[0].extra_nll, (extra[0] + extra[1]) / 2, 1e-4);
  EXPECT_NEAR(report.parts[0].standard_error, std::abs(extra[0] - extra[1]) / 2, 1e-4);
  // The same words: nothing to read.
  EXPECT_NEAR(report.parts[1].extra_nll, 0.0, 1e-4);
  EXPECT_FALSE(report.parts[1].read());
  // No other user differed: no cases, not read, and the report says the LM does not read every part.
  EXPECT_EQ(report.parts[2].cases, 0);
  EXPECT_FALSE(report.parts[2].read());
  EXPECT_FALSE(report.reads_every_part());
  EXPECT_EQ(report.reads_any_part(), report.parts[0].read());
  const auto json = report.to_json();
  EXPECT_EQ(json.at("parts").size(), 3u);
  EXPECT_EQ(json.at("parts")[0].at("part"), "user.top.genres");
}

TEST(ContextProbe, ReadingNeedsASizeableEffectBeyondItsNoise) {
  ContextReading r;
  r.cases = 400;
  r.extra_nll = 0.04, r.standard_error = 0.001;
  EXPECT_FALSE(r.read());  // clear but too small to matter
  r.extra_nll = 0.3, r.standard_error = 0.2;
  EXPECT_FALSE(r.read());  // large but noise
  r.extra_nll = 0.3, r.standard_error = 0.05;
  EXPECT_TRUE(r.read());
}

TEST(ContextProbe, CasesLongerThanTheContextAreLeftOut) {
  const auto path = test_support::repo_reference() / "tiny-llama-hf";
  const CausalLM model = load_model(path);
  const auto tokenizer = load_model_tokenizer(path);
  std::string long_summary;
  for (int i = 0; i < 200; ++i) long_summary += "Drama and comedy, ";
  text::ContextProbe probe;
  probe.parts = {"user.top.genres"};
  probe.cases.push_back({"Likes: Drama.", "Chose Heat.", {long_summary}});  // only its altered summary is too long
  probe.cases.push_back({long_summary, "Chose Heat.", {"Likes: Horror."}});   // the whole case is
  const auto report = measure_context_reading(model, *tokenizer, probe);
  EXPECT_EQ(report.cases, 1);
  EXPECT_EQ(report.skipped, 1);
  EXPECT_EQ(report.parts[0].cases, 0);
}

TEST(ContextProbe, AnEmptyProbeIsAnError) {
  const auto path = test_support::repo_reference() / "tiny-llama-hf";
  const CausalLM model = load_model(path);
  const auto tokenizer = load_model_tokenizer(path);
  EXPECT_THROW(measure_context_reading(model, *tokenizer, text::ContextProbe{}), Error);
}

}  // namespace
}  // namespace userip::lm
