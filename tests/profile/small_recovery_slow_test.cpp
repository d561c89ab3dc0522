// The ground-truth recovery judgement of docs/RESULTS.md, small enough for the suite: a synthetic
// world with known taste and background classes, the LM in small_world_lm/ (pretrained on that
// world's training text by the disabled test below), a profile fit with refinement, and the NMI of
// the codes with the latent classes.
//
// The full-size run reads `Rated {rating}; chose a {price} item in {categories}: {title}, {year}.`
// through a 0.33 M-parameter LM pretrained for minutes. An LM small and quick enough for a fixture
// learns to read the user summary only from shorter text, so this world's behaviour text keeps only
// the kind of item, the part that depends on the user, and its users' choices are less noisy.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "profile/profile_world.h"
#include "support/temp_dir.h"
#include "text/text_test_support.h"
#include "userip/data/split.h"
#include "userip/data/synth.h"
#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/lm/pretrain.h"
#include "userip/profile/fit.h"
#include "userip/profile/recovery.h"
#include "userip/profile/template.h"
#include "userip/text/corpus.h"

namespace userip::profile {
namespace {

constexpr const char* kBehaviour = "Chose a {price} item in {categories}.";
constexpr std::uint64_t kSeed = 11;

std::filesystem::path fixture_lm_dir() { return std::filesystem::path(USERIP_SOURCE_DIR) / "tests/profile/small_world_lm"; }

data::SynthWorld small_world() {
  data::SynthOptions so;
  so.users = 160;
  so.items = 120;
  so.taste_classes = 3;
  so.background_classes = 2;
  so.categories = 6;
  so.mean_interactions = 40;
  so.noise = 0.1;
  so.seed = kSeed;
  so.show_progress = false;
  return testing::split_synthetic_world(so);
}

// Regenerates the fixture (about 90 s on 2 cores):
//   build/tests/test_profile_slow --gtest_also_run_disabled_tests --gtest_filter='SmallRecovery.DISABLED_*'
TEST(SmallRecovery, DISABLED_PretrainTheFixtureLm) {
  if (testing::text::find_program("spm_train").empty()) GTEST_SKIP() << "spm_train (Debian sentencepiece) not installed";
  const auto world = small_world();
  auto corpus_options = text::default_corpus_options(world.dataset);
  corpus_options.item_phrase = "";
  corpus_options.behaviour_phrase = kBehaviour;
  // One choice per document: each is predicted from the user summary alone, not copied from the
  // user's earlier choices, so the LM learns to read the summary.
  corpus_options.sentences_per_document = 1;
  corpus_options.shuffle_documents = false;  // as when the fixture was made (before shuffling was the default)
  const auto corpus = text::build_corpus(world.dataset, corpus_options);
  auto po = testing::tiny_lm_options(2000, kSeed);
  po.context = 48;
  po.batch_sequences = 32;
  po.learning_rate = 0.01;
  po.warmup_steps = 20;
  testing::TempDir dir;
  lm::pretrain_lm(corpus, po, dir / "lm");
  const auto out = fixture_lm_dir();
  std::filesystem::create_directories(out);
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json", "pretrain.json"})
    std::filesystem::copy_file(dir / "lm" / file, out / file, std::filesystem::copy_options::overwrite_existing);
}

// Background is not asserted here: in this world only the price word of the behaviour text carries
// it, and its codes' NMI ranged from 0.01 to 0.6 over fit seeds (docs/RESULTS.md); the full-size
// world, whose behaviour text also carries the rating, is where background is judged.
TEST(SmallRecovery, TasteCodesRecoverTheTasteClassesOfASmallWorld) {
  const auto world = small_world();
  const auto model = lm::load_model(fixture_lm_dir());
  const auto tokenizer = lm::load_model_tokenizer(fixture_lm_dir());

  // The evidence phrases and init texts of templates/synthetic.json, with this world's behaviour text.
  testing::TempDir dir;
  const auto template_path = dir / "template.json";
  std::ofstream(template_path) << R"({"attributes": [
    {"name": "taste", "evidence": "The user's taste in products:", "soft_tokens": 4, "init": "Comedy, Crime."},
    {"name": "background", "evidence": "About this user:", "soft_tokens": 4, "init": "standard, moderate."}],
    "behaviour": ")" << kBehaviour << "\"}\n";
  const auto tmpl = ProfileTemplate::load(template_path, world.dataset);

  FitInputs in;
  in.dataset = &world.dataset;
  in.model = &model;
  in.tokenizer = tokenizer.get();
  in.profile_template = &tmpl;
  FitOptions o;
  o.codes = 3;
  o.codes_per_attribute["background"] = 2;
  o.rounds = 2;
  o.refine_rounds = 4;
  o.refine_learning_rate = 0.03;
  o.samples.samples_per_user = 8;
  o.samples.max_tokens = 40;
  o.population_steps = 10;
  o.max_eval_users = 20;
  o.show_progress = false;
  o.seed = kSeed;
  const auto fit = fit_profiles(in, o, dir / "fit");

  const auto r = ground_truth_recovery(fit.profiles, world.truth, world.dataset.training_view(), "categories", kSeed);
  ASSERT_EQ(r.attributes, (std::vector<std::string>{"taste", "background"}));
  RecordProperty("taste_nmi", std::to_string(r.taste_nmi[0]));
  RecordProperty("background_nmi", std::to_string(r.background_nmi[1]));
  EXPECT_GE(r.taste_nmi[0], 0.8) << r.to_json().dump();
  // The codes of one attribute must not simply copy the other's classes.
  EXPECT_LT(r.taste_nmi[1], 0.3) << r.to_json().dump();
}

}  // namespace
}  // namespace userip::profile
