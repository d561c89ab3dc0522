#pragma once
// Profile inference: per-user soft tokens fitted through the frozen LM, organised as EM with one
// codebook per attribute (see ../shared/METHOD.md §3 and docs/PROFILES.md).
//
//   alternating (default): E-step = a few Adam steps per user batch on the users' soft tokens,
//     maximising log p(behaviour | template, z) - λ · Σ_a ||z_a - reconstruction_a||², then hard
//     assignment; M-step = closed-form codeword means (k-means++ after the first E-step, empty
//     codes re-seeded); T rounds with λ annealed upward.
//   joint: the authors' released scheme, one AdamW step per batch on soft tokens and codebooks
//     together, with codebook loss 0.5 · MSE(stopgrad(z), nearest codeword).
//
// Fitting state is checkpointed at batch boundaries; a rerun with the same inputs and options
// resumes from the last checkpoint and, because every random choice is derived from (seed,
// round, user), reaches the same profiles as an uninterrupted run.
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/data/dataset.h"
#include "userip/lm/model.h"
#include "userip/quantize/codebook.h"
#include "userip/profile/samples.h"
#include "userip/util/option_table.h"
#include "userip/profile/template.h"
#include "userip/text/tokenizer.h"

namespace userip::profile {

enum class EmMode { alternating, joint };
std::string to_string(EmMode mode);
EmMode em_mode_from_string(std::string_view name);

// What stands in for the fitted profiles, for ablations and controls.
enum class ProfileAblation {
  none,         // the method
  no_codebook,  // dense profiles only: λ = 0, no codes
  random,       // no fitting: profiles drawn from the initial distribution, then quantized
  mean,         // fitted, then every user gets the mean profile (one code per attribute)
};
std::string to_string(ProfileAblation ablation);
ProfileAblation profile_ablation_from_string(std::string_view name);

// How the fitted users get their final codes.
enum class CodesBy {
  automatic,   // likelihood where it applies (alternating mode, one level, no ablation), else distance
  distance,    // the codeword nearest each profile (the EM rounds' own assignment)
  likelihood,  // the fold-in's rule: the codes under which the LM finds the user's whole history likeliest
};
std::string to_string(CodesBy rule);
CodesBy codes_by_from_string(std::string_view name);

struct FitOptions {
  EmMode mode = EmMode::alternating;
  AttentionStructure attention = AttentionStructure::segment;
  ProfileAblation ablation = ProfileAblation::none;

  // Codebooks: K codes per attribute (overridable per attribute by name), R residual levels.
  std::int64_t codes = 8;
  std::map<std::string, std::int64_t> codes_per_attribute;
  int levels = 1;

  // Alternating EM.
  int rounds = 8;                 // T
  int estep_steps = 3;            // Adam steps per batch in each E-step
  double learning_rate = 0.05;    // Adam, soft tokens
  double lambda_start = 0.05;     // prior weight in round 2 (round 1 has none: codes do not exist yet)
  double lambda_end = 2.0;        // ... rising geometrically to this in the last round
  int mstep_iterations = 5;       // Lloyd iterations of the M-step at fixed profiles
  // k-means++ seedings tried for the first codebooks, each judged by its quantization error after
  // mstep_iterations Lloyd steps; the best is kept. The later rounds keep the partition the first
  // one finds. Default 1: more seedings traded one attribute's recovery for the other's rather than
  // improving both (docs/RESULTS.md, `--kmeans-restarts`).
  int kmeans_restarts = 1;
  // Rounds in the λ → ∞ limit of the same objective, after the T rounds: every profile is its
  // codeword, so the E-step picks, per user and attribute, the code under which the frozen LM gives
  // the user's behaviour the highest likelihood (coordinate ascent over the attributes), and the
  // M-step moves each codeword by gradient on its members' likelihood. Distances between profile
  // vectors weigh every direction alike, including the many the LM hardly reads; the likelihood
  // weighs them as the LM does. Needs codebooks with one level. 0 = off.
  int refine_rounds = 0;
  double refine_learning_rate = 0.01;  // Adam on the codewords in refinement rounds
  // Adam steps per refinement round, each on the gradient summed over an equal share of the round's
  // batches; 0 = one step per batch (so the codewords move further per round the more users there are).
  int refine_steps = 0;
  // Users (a seeded draw, the same every round) whose codes the refinement rounds assign and whose
  // samples fit the codewords; the final pass gives every user its codes. 0 = all users.
  std::int64_t refine_users = 0;
  // The split-and-merge move (codebook.h, redundant_code): at the end of every second refinement
  // round (the 2nd, 4th, ...) that leaves two or more rounds to follow, the code whose members' mean
  // likelihood margin is under this fraction of the median code's is dissolved (its members take
  // their second-best codes) and its codeword splits the code whose members' likelihood gradients
  // spread most, along their main direction, each member going to the side its gradient descends
  // to. At most one move per attribute and round. 0 = off.
  double merge_margin_ratio = 0;
  // The final codes of the fitted users. By likelihood, each user takes them as a new user does at
  // fold-in (from the population's codes, two sweeps over the attributes, over the user's whole
  // training history) and its profile becomes their codewords: warm and cold users' codes then come
  // from one rule, which the CTR model learns the codes' meaning under (docs/RESULTS.md, step 6).
  // Refinement rounds end with codes by likelihood of their own.
  CodesBy codes_by = CodesBy::automatic;
  bool final_codes_by_likelihood() const;
  // Codes by likelihood (the final codes, refinement's final pass, fold-in) read each user's most
  // recent interactions, at most this many (0 = all): the cost per user is bounded whatever the
  // history's length (docs/PROFILES.md).
  std::int64_t likelihood_interactions = 128;

  // Joint mode (the released code's defaults).
  double joint_learning_rate = 0.01;
  std::int64_t joint_batch = 8;
  double codebook_loss_weight = 0.5;
  double weight_decay = 0.01;     // AdamW, joint mode only

  // Before the per-user E-steps, one profile shared by everyone is fitted for this many batches and
  // every user starts from it (plus noise of init_range). Per-user Adam steps taken from a common
  // random start would mostly learn the direction every user shares (Adam's first steps are close
  // to sign(gradient), which drowns the user-specific part); from the population's optimum the
  // gradients are the users' own deviations. 0 = start from the random initialisation.
  int population_steps = 40;
  double init_range = 0.1;        // soft tokens start uniform in [-init_range, init_range]
  // Tokens per sample; samples drawn from each user's packed history per round (E-steps) or history
  // windows per user and round (joint mode).
  SampleOptions samples{192, 4, 42};
  std::int64_t max_batch_tokens = 8192;  // rows × longest row
  std::int64_t max_batch_rows = 64;
  std::int64_t max_eval_users = 2000;    // validation NLL on at most this many users (0 = all)
  std::uint64_t seed = 42;
  torch::Device device = torch::kCPU;
  double checkpoint_seconds = 60;  // checkpoint at the first batch boundary after this long
  bool show_progress = true;
  // Stop as an interruption would, after this many batches of the whole run (checkpoint written,
  // no outputs); 0 = run to the end. Not part of the fingerprint. For tests.
  std::int64_t stop_after_batches = 0;

  // Every option above, declared once: JSON key, flag, meaning, range (util/option_table.h).
  static const OptionTable<FitOptions>& table();
  void validate() const;  // the table's ranges, then the options' combinations; errors name the flags
  nlohmann::json to_json() const;  // everything that shapes the result
  std::int64_t codes_for(const std::string& attribute) const;
};

// One line of the fit log (log.jsonl), written after every round.
struct RoundLog {
  int round = 0;
  double lambda = 0;
  bool refinement = false;     // a refinement round (codes by likelihood; λ is the last EM round's)
  double train_nll = 0;        // per behaviour token, over the round's E-step (last step of each batch)
  double valid_nll = -1;       // per token on validation interactions with the users' own profiles; -1 = not measured
  std::vector<double> quantization_error;            // per attribute, mean ||z - reconstruction||²
  std::vector<std::vector<double>> code_perplexity;  // per attribute, per level
  std::vector<std::vector<std::int64_t>> dead_codes; // per attribute, per level
  std::vector<std::vector<std::vector<std::int64_t>>> code_counts;  // per attribute, level, code
  // Refinement rounds with an E-step: per attribute and level-0 code, its members' mean likelihood
  // margin (NLL per token under their second-best code minus under theirs; NaN = no members).
  std::vector<std::vector<double>> code_margins;
  struct CodeMove {
    std::size_t attribute = 0;
    std::int64_t dissolved = 0;      // its members went to their second-best codes
    double margin_ratio = 0;         // its mean margin over the median code's
    std::int64_t split = 0;          // the code whose codeword `dissolved` split off; -1 = none could be
    std::int64_t moved = 0;          // members of `split` that went to the new codeword
    std::int64_t split_members = 0;  // members of `split` before
  };
  std::vector<CodeMove> moves;  // the split-and-merge moves made at the end of the round
  double seconds = 0;          // since the start of the fit (resumed runs continue the clock)
  std::int64_t tokens = 0;     // behaviour tokens processed in the round's E-step
  nlohmann::json to_json(const std::vector<AttributeSpec>& attributes) const;
  // The inverse of to_json (a log.jsonl line or a checkpoint's log); errors name `source`.
  static RoundLog from_json(const nlohmann::json& j, const std::vector<AttributeSpec>& attributes,
                            const std::string& source);
};

// What the fitted engine holds: profiles of the users it was fitted on, and codebooks.
struct Profiles {
  std::vector<std::uint32_t> users;              // dense ids into the dataset, in row order
  std::vector<std::string> user_ids;             // their original ids
  torch::Tensor vectors;                         // [U, P, d] float32 (P = total soft tokens)
  std::vector<quantize::ResidualCodebook> codebooks;       // per attribute (empty when there is no codebook)
  torch::Tensor codes;                           // [U, A, R] int64 (undefined without codebooks)
  std::vector<AttributeSpec> attributes;
  std::vector<std::int64_t> attribute_offset;    // first soft-token index of each attribute in P
  // Per attribute, the level-0 code from which codes by likelihood start (the population's codes),
  // when the fit gave its users their codes that way; fold-in then starts from the same codes.
  // Saved in profile.json ("likelihood_start_codes"). Empty: fold-in takes the codes of the mean profile.
  std::vector<std::int64_t> likelihood_start_codes;

  bool has_codes() const { return codes.defined(); }
  // The attribute's vectors flattened: [U, L_a * d].
  torch::Tensor attribute_vectors(std::size_t attribute) const;
  std::string codebook_fingerprint() const;
  // Field names of the codes, attribute-major: "taste", "taste.2", ... (level 1 has no suffix).
  std::vector<std::string> field_names() const;
};

// Validation NLL per token for a set of profiles (rows of `vectors` aligned with `users`).
struct NllComparison {
  double own = 0;         // each user's own profile
  double quantized = -1;  // each user's codeword reconstruction (-1 without codebooks)
  double mean = 0;        // the mean profile for everyone
  double shuffled = 0;    // another (random) user's profile
  std::int64_t tokens = 0;
  std::int64_t users = 0;
  nlohmann::json to_json() const;
};

struct FitResult {
  Profiles profiles;
  std::vector<RoundLog> log;
  NllComparison evaluation;
  bool resumed = false;
  bool interrupted = false;  // stopped at stop_after_batches
  double seconds = 0;
  std::int64_t tokens = 0;   // behaviour tokens through the E-steps
};

// Everything a fit reads. The LM must stay frozen (a guard checks its fingerprint before and after).
struct FitInputs {
  const data::Dataset* dataset = nullptr;
  const lm::CausalLM* model = nullptr;
  const text::Tokenizer* tokenizer = nullptr;
  const ProfileTemplate* profile_template = nullptr;
  std::string model_path;     // recorded in the outputs
  std::string template_path;
  std::string dataset_path;
};

// The soft tokens [P, d] a fit starts from: for each attribute whose template gives an `init` text, the
// embeddings of that text's tokens, cycled or cut to the attribute's soft tokens (float32, on `otherwise`'s
// device); for the others, their rows of `otherwise` [P, d]. Throws naming the attribute when its text has no
// tokens under the tokenizer, or when `otherwise` does not have the template's shape.
torch::Tensor initial_soft_tokens(const FitInputs& in, const torch::Tensor& otherwise);

// Fits profiles on the training split and writes `out` (see docs/PROFILES.md for the files):
// profile.json, profiles.safetensors, users.txt, codes.csv, log.jsonl, evaluation.json, and while
// running checkpoint/. Resumes from out/checkpoint when it matches the inputs and options.
FitResult fit_profiles(const FitInputs& inputs, const FitOptions& options, const std::filesystem::path& out);

// How fold-in gives a new user its profile.
enum class FoldInMethod {
  automatic,   // likelihood when the fit has codebooks of one level, else estep (docs/RESULTS.md, fold-in
               // by likelihood: it raised the cold users' AUC gain on MovieLens)
  estep,       // E-steps from the mean profile, the prior annealed as in the fit; codes by distance
  likelihood,  // the codes under which the LM finds the user's whole history likeliest (coordinate
               // ascent over the attributes, two sweeps); the profile is their codeword. One level only.
};
std::string to_string(FoldInMethod method);
FoldInMethod fold_in_method_from_string(std::string_view name);
// The method a fold-in into `fitted` runs: `requested`, with automatic resolved (never automatic).
FoldInMethod resolve_fold_in_method(const Profiles& fitted, FoldInMethod requested);

struct InferOptions {
  int rounds = 0;            // E-step rounds; 0 = the fit's number of rounds
  FoldInMethod method = FoldInMethod::automatic;
  bool show_progress = true;
  // The part of the split whose rows a fold-in reads (fold_in_cold_users): the cold users' history,
  // or the training rows, to give fitted users codes by the fold-in's rule too.
  data::SplitPart history = data::SplitPart::cold_history;
};
// Fold-in, LM and codebooks frozen, for users of `history` that the fit did not see (e.g. the cold
// users' cold_history part), by options.method.
Profiles infer_profiles(const FitInputs& inputs, const Profiles& fitted, const FitOptions& fit_options,
                        const data::SplitView& history, const std::vector<std::uint32_t>& users,
                        const InferOptions& options);

// Validation NLL of profiles on `view` (rows of profiles.users); the comparisons of NllComparison.
NllComparison evaluate_profiles(const FitInputs& inputs, const Profiles& profiles, const FitOptions& options,
                                const data::SplitView& history, const data::SplitView& view);

// Reading a finished fit back (profile.json + profiles.safetensors + users.txt).
struct SavedFit {
  Profiles profiles;
  FitOptions options;
  nlohmann::json record;  // profile.json
};
SavedFit load_fit(const std::filesystem::path& dir, const data::Dataset& dataset, const ProfileTemplate& profile_template);
// Writes the output files of `profiles` into `dir` (atomically each); `record` goes into profile.json.
void save_profiles(const Profiles& profiles, const std::filesystem::path& dir, const nlohmann::json& record);

}  // namespace userip::profile
