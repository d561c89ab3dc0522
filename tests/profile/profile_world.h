#pragma once
// A small synthetic world with a tiny LM pretrained on its own training text (the same code path
// as the default LM), for the tests that need the profile engine: profile fitting and the
// server's fold-in endpoint. Pretraining is the expensive part, so the LM is trained once into a
// shared temporary folder and reused by every test process (pretrain_lm reuses a finished model of
// the same corpus and options; a lock keeps parallel test processes from training into it at once).
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "text/text_test_support.h"
#include "userip/data/split.h"
#include "userip/data/synth.h"
#include "userip/lm/loader.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/lm/pretrain.h"
#include "userip/profile/fit.h"
#include "userip/profile/template.h"
#include "userip/text/corpus.h"

namespace userip::testing {

struct ProfileWorld {
  std::filesystem::path dir;     // a scratch folder of this process, removed by the owner
  std::filesystem::path lm_dir;  // the shared tiny LM
  data::Dataset dataset;
  data::SynthGroundTruth truth;
  std::unique_ptr<lm::CausalLM> model;
  std::unique_ptr<userip::text::Tokenizer> tokenizer;
  std::unique_ptr<profile::ProfileTemplate> tmpl;

  profile::FitInputs inputs() const {
    profile::FitInputs in;
    in.dataset = &dataset;
    in.model = model.get();
    in.tokenizer = tokenizer.get();
    in.profile_template = tmpl.get();
    return in;
  }
};

// Fit options small enough for a test on this world: 2 rounds, 2 samples per user.
inline profile::FitOptions small_fit_options() {
  profile::FitOptions o;
  o.codes = 4;  // the world has 4 taste classes
  o.codes_per_attribute["background"] = 3;
  o.rounds = 2;
  o.samples.samples_per_user = 2;
  o.population_steps = 4;
  o.show_progress = false;
  o.max_eval_users = 30;
  // The final codes by likelihood read every user's whole history under every code (about 15 times an
  // E-step round here): the tests of that pass ask for it (fit_test.cpp, distributed_test.cpp).
  o.codes_by = profile::CodesBy::distance;
  return o;
}

// A synthetic world with its train/validation/test/cold split cut by the world's own seed.
inline data::SynthWorld split_synthetic_world(const data::SynthOptions& options) {
  auto world = data::generate_synthetic(options);
  data::SplitConfig split;
  split.seed = options.seed;
  world.dataset.split = data::make_split(world.dataset, split);
  return world;
}

// The shape of the profile tests' LMs (0.1 M parameters), trained for `steps` from `seed`, quietly.
inline lm::PretrainOptions tiny_lm_options(std::int64_t steps, std::uint64_t seed) {
  lm::PretrainOptions po;
  po.hidden_size = 48;
  po.num_layers = 2;
  po.num_heads = 2;
  po.intermediate_size = 128;
  po.vocab_size = 400;
  po.steps = steps;
  po.eval_every = po.checkpoint_every = steps;
  po.show_progress = false;
  po.seed = seed;
  return po;
}

// nullptr when spm_train (Debian package sentencepiece) is not installed.
inline std::unique_ptr<ProfileWorld> make_profile_world() {
  namespace fs = std::filesystem;
  if (testing::text::find_program("spm_train").empty()) return nullptr;
  auto w = std::make_unique<ProfileWorld>();
  w->dir = fs::temp_directory_path() / ("userip-profile-world-" + std::to_string(::getpid()));
  fs::remove_all(w->dir);
  data::SynthOptions so;
  so.users = 120;
  so.items = 300;
  so.taste_classes = 4;
  so.background_classes = 3;
  so.categories = 8;
  so.mean_interactions = 20;
  so.seed = 5;
  so.show_progress = false;
  auto world = split_synthetic_world(so);
  w->dataset = std::move(world.dataset);
  w->truth = world.truth;

  auto corpus = userip::text::build_corpus(w->dataset, userip::text::default_corpus_options(w->dataset));
  auto po = tiny_lm_options(60, 3);
  po.context = 128;
  po.batch_sequences = 16;
  po.learning_rate = 5e-3;
  po.warmup_steps = 10;
  w->lm_dir = fs::temp_directory_path() / "userip-test-profile-fit-lm";
  {
    const int lock = ::open((fs::temp_directory_path() / "userip-test-profile-fit-lm.lock").c_str(), O_CREAT | O_RDWR, 0644);
    if (lock >= 0) ::flock(lock, LOCK_EX);
    lm::pretrain_lm(corpus, po, w->lm_dir);
    if (lock >= 0) ::close(lock);
  }
  w->model = std::make_unique<lm::CausalLM>(lm::load_model(w->lm_dir));
  w->tokenizer = lm::load_model_tokenizer(w->lm_dir);
  w->tmpl = std::make_unique<profile::ProfileTemplate>(
      profile::ProfileTemplate::load(fs::path(USERIP_SOURCE_DIR) / "templates" / "synthetic.json", w->dataset));
  return w;
}

}  // namespace userip::testing
