#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <iostream>
#include <memory>

#include "commands.h"
#include "model_options.h"
#include "option_flags.h"
#include "userip/dist/world.h"
#include "userip/data/dataset.h"
#include "userip/lm/model_tokenizer.h"
#include "userip/lm/pretrain.h"
#include "userip/profile/explain.h"
#include "userip/profile/fit.h"
#include "userip/profile/recovery.h"
#include "userip/profile/session.h"
#include "userip/data/synth.h"
#include "userip/store/feature_bank.h"
#include "userip/store/profile_dir.h"
#include "userip/text/corpus.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::cli {

namespace {

// The template of a run: a file, or the default made from the dataset's fields (or, for later
// commands, the copy the fit recorded). `soft_tokens` > 0 overrides every attribute's number of
// soft tokens (an ablation).
profile::ProfileTemplate load_template(const std::filesystem::path& file, const data::Dataset& dataset,
                                       int soft_tokens, std::string* used_path) {
  if (used_path) *used_path = file.empty() ? std::string() : file.string();
  nlohmann::json j;
  std::string source;
  if (file.empty()) {
    auto generated = profile::default_template(dataset);
    if (soft_tokens <= 0) return generated;
    j = generated.to_json();
    for (const char* derived : {"source", "total_soft_tokens", "one_interaction_per_sample"}) j.erase(derived);
    source = generated.source();
  } else {
    if (soft_tokens <= 0) return profile::ProfileTemplate::load(file, dataset);
    try {
      j = nlohmann::json::parse(read_file(file));
    } catch (const nlohmann::json::parse_error&) {
      return profile::ProfileTemplate::load(file, dataset);  // reports the syntax error with its line
    }
    source = file.string();
  }
  if (j.contains("attributes") && j["attributes"].is_array())
    for (auto& a : j["attributes"]) a["soft_tokens"] = soft_tokens;
  return profile::ProfileTemplate::parse(j.dump(2), fmt::format("{} (with --soft-tokens {})", source, soft_tokens),
                                         dataset);
}

struct FitCommand {
  std::filesystem::path dataset, template_file, out, bank;
  ModelOptions model;
  profile::FitOptions options;
  nlohmann::json given = nlohmann::json::object();  // the fit options given on the command line, by key
  int soft_tokens = 0;
  bool no_bank = false;

  void run();  // below choose_sample_shape and the report helpers it uses
};

// Interactions of each user that an E-step sees per round by default, when samples hold a few each.
constexpr std::int64_t kInteractionsPerRound = 8;

// The sample shape the LM reads its prompt in: the default LM was pretrained on documents of a few behaviour
// sentences after a user summary, and takes a later sentence of a longer sample as a new document without one.
void choose_sample_shape(const FitCommand& c, profile::SampleOptions& samples) {
  if (!c.given.contains("max_interactions")) {
    const auto per_document = lm::pretrained_sentences_per_document(c.model.model);
    samples.max_interactions = per_document ? static_cast<std::int64_t>(*per_document) : 0;
  }
  if (!c.given.contains("samples_per_user")) {
    samples.samples_per_user = samples.max_interactions > 0
                                   ? static_cast<int>((kInteractionsPerRound + samples.max_interactions - 1) /
                                                      samples.max_interactions)
                                   : 1;
  }
}

void print_comparison(const profile::NllComparison& c) {
  std::cout << fmt::format("validation NLL per token ({} users, {} tokens): own profile {:.4f}", c.users, c.tokens, c.own);
  if (c.quantized >= 0) std::cout << fmt::format(", own codes {:.4f}", c.quantized);
  std::cout << fmt::format(", mean profile {:.4f}, another user's profile {:.4f}\n", c.mean, c.shuffled);
}

// Publishes the codes a fit or fold-in wrote to `dir` as a feature bank (as `bank build` does).
void publish_bank(const std::filesystem::path& dir, const std::filesystem::path& bank) {
  const auto contents = store::read_profile_dir(dir);
  auto meta = store::write_bank(bank, contents);
  std::cout << fmt::format("feature bank {} version {}: {} users, {} fields\n", bank.string(), meta.version,
                           contents.users.size(), contents.fields.size());
}

profile::FitSession load_fit_dir(const std::filesystem::path& dir, const std::filesystem::path& dataset_dir,
                                 const ModelOptions& model) {
  profile::SessionOptions options;
  options.dataset = dataset_dir;
  options.model = model.model;
  options.dtype = dtype_of(model.dtype);
  options.device = device_of(model.device);
  return profile::open_fit_session(dir, options);
}

void FitCommand::run() {
  auto& o = options;
  o.samples.seed = o.seed;
  choose_sample_shape(*this, o.samples);
  o.device = device_of(model.device);
  o.validate();
  const auto ds = data::Dataset::load(dataset);
  std::string template_path;
  auto tmpl = load_template(template_file, ds, soft_tokens, &template_path);
  if (const auto corpus = lm::pretrained_corpus(model.model)) {
    const std::string pretrained = corpus->value("behaviour_phrase", "");
    if (!pretrained.empty() && pretrained != tmpl.behaviour())
      spdlog::warn("the template's behaviour phrase \"{}\" is not the one {} was pretrained on (\"{}\"): the LM "
                   "will score text it has not seen; re-pretrain it (`userip lm pretrain`) or pass a --template "
                   "with its phrase",
                   tmpl.behaviour(), model.model.string(), pretrained);
  }
  for (const auto& [name, k] : o.codes_per_attribute) {
    bool known = false;
    for (const auto& a : tmpl.attributes()) known = known || a.name == name;
    USERIP_CHECK(known, "--attribute-codes: the template has no attribute '{}'", name);
  }
  auto lm = load(model);
  auto tokenizer = lm::load_model_tokenizer(model.model);
  profile::FitInputs in;
  in.dataset = &ds;
  in.model = &lm;
  in.tokenizer = tokenizer.get();
  in.profile_template = &tmpl;
  in.model_path = std::filesystem::absolute(model.model).string();
  in.template_path = template_path;
  in.dataset_path = std::filesystem::absolute(dataset).string();
  auto result = profile::fit_profiles(in, o, out);
  if (!dist::World::get().is_root()) return;  // rank 0 reports and publishes
  if (result.interrupted) {
    std::cout << fmt::format("stopped early as asked; rerun the same command to resume from {}\n",
                             (out / "checkpoint").string());
    return;
  }
  std::cout << fmt::format("profiles of {} users ({} attributes) in {}\n", result.profiles.users.size(),
                           result.profiles.attributes.size(), out.string());
  print_comparison(result.evaluation);
  if (!no_bank && result.profiles.has_codes()) publish_bank(out, bank.empty() ? out / "bank.sqlite" : bank);
}

struct InferCommand {
  std::filesystem::path dir, dataset, out, bank;
  ModelOptions model;
  std::vector<std::string> users;
  int rounds = 0;
  std::string method = "auto";
  std::string history_part = "cold_history";

  void run() const {
    profile::InferOptions options;
    options.history = data::split_part_from_string(history_part);
    options.rounds = rounds;
    options.method = profile::fold_in_method_from_string(method);
    auto f = load_fit_dir(dir, dataset, model);
    const auto history = f.dataset.view({options.history});
    std::vector<std::uint32_t> chosen;
    if (users.empty()) {
      chosen = history.users();
      USERIP_CHECK(!chosen.empty(), "the dataset has no users with {} interactions; name users with --user", history_part);
    } else {
      for (const auto& id : users) {
        auto u = f.dataset.find_user(id);
        USERIP_CHECK(u.has_value(), "--user '{}' is not in the dataset", id);
        chosen.push_back(*u);
      }
    }
    const auto folded = profile::fold_in_cold_users(f, dir, chosen, options, out);
    if (!dist::World::get().is_root()) return;  // rank 0 reports and publishes
    if (folded.reused) {
      std::cout << fmt::format("{}: these users were folded in from this fit already; reusing them\n", out.string());
      if (!bank.empty() && !std::filesystem::exists(bank) && f.fit.profiles.has_codes()) publish_bank(out, bank);
      return;
    }
    std::cout << fmt::format("profiles of {} folded-in users in {}\n", folded.profiles.users.size(), out.string());
    if (folded.on_cold_test.tokens > 0) {
      std::cout << (options.history == data::SplitPart::cold_history ? "on their cold_test interactions: "
                                                                     : "on their valid interactions: ");
      print_comparison(folded.on_cold_test);
    }
    if (!bank.empty() && folded.profiles.has_codes()) publish_bank(out, bank);
  }
};

struct RecoveryCommand {
  std::filesystem::path dir, dataset;
  ModelOptions model;
  std::string field;
  bool as_json = false;

  void run() const {
    auto f = load_fit_dir(dir, dataset, model);
    std::string histogram_field = field;
    if (histogram_field.empty()) {
      const auto roles = text::field_roles(f.dataset);
      USERIP_CHECK(roles.taste, "profile recovery: the dataset has no category field of 3 or more values for the "
                                "control's histograms; name one with --field");
      histogram_field = f.dataset.item_fields[*roles.taste].name;
    }
    const std::filesystem::path data_dir =
        dataset.empty() ? std::filesystem::path(f.fit.record.value("dataset", "")) : dataset;
    auto truth = data::load_ground_truth(f.dataset, data_dir);
    auto report = profile::ground_truth_recovery(f.fit.profiles, truth, f.dataset.training_view(), histogram_field,
                                                 f.fit.options.seed);
    write_file_atomic(dir / "recovery.json", report.to_json().dump(2));
    if (as_json) {
      std::cout << report.to_json().dump(2) << "\n";
      return;
    }
    std::cout << fmt::format("{} users; NMI with the latent classes (taste / background):\n", report.users);
    for (std::size_t a = 0; a < report.attributes.size(); ++a)
      std::cout << fmt::format("  codes of {:<12} {:.3f} / {:.3f}\n", report.attributes[a], report.taste_nmi[a],
                               report.background_nmi[a]);
    std::cout << fmt::format("  control (k-means of {} histograms, no LM): {:.3f} / {:.3f}\n", histogram_field,
                             report.control_taste_nmi, report.control_background_nmi);
    const auto print_table = [](const std::string& attribute, const std::string& classes,
                                const std::vector<std::vector<std::int64_t>>& table) {
      if (table.empty()) return;
      std::cout << fmt::format("users by code of {} (rows) and {} class (columns):\n", attribute, classes);
      for (std::size_t code = 0; code < table.size(); ++code)
        std::cout << fmt::format("  {:>4} {:>6}\n", code, fmt::join(table[code], " "));
    };
    for (std::size_t a = 0; a < report.attributes.size(); ++a) {
      // Each attribute against its namesake latent class (the synthetic template's), else against
      // the classes it recovers best.
      const auto& name = report.attributes[a];
      const bool taste = name == "taste" || (name != "background" && report.taste_nmi[a] >= report.background_nmi[a]);
      if (taste)
        print_table(report.attributes[a], "taste", report.taste_table[a]);
      else
        print_table(report.attributes[a], "background", report.background_table[a]);
    }
  }
};

struct ExplainCommand {
  std::filesystem::path dir, dataset;
  ModelOptions model;
  std::string user;
  bool as_json = false;
  profile::ExplainOptions options;

  static std::string describe(const profile::MemberStatistics& m) {
    std::string top;
    for (const auto& c : m.top_categories)
      top += fmt::format("{}{} ({:.0f}%, lift {:.2f})", top.empty() ? "" : ", ", c.value, 100 * c.share, c.lift);
    std::string items;
    for (const auto& i : m.typical_items)
      items += fmt::format("{}{} ({:.0f}%, lift {:.1f})", items.empty() ? "" : "; ", i.name, 100 * i.share, i.lift);
    return fmt::format("{} users, {:.1f} interactions each, mean rating {:.2f}, {:.0f}% liked; top: {}{}", m.users,
                       m.interactions_per_user, m.mean_rating, 100 * m.like_rate, top.empty() ? "-" : top,
                       items.empty() ? "" : "\n    typical items: " + items);
  }

  void run() const {
    auto f = load_fit_dir(dir, dataset, model);
    const auto history = f.fit.record.contains("folded_in_from") ? f.dataset.view({data::SplitPart::cold_history})
                                                                 : f.dataset.training_view();
    auto in = f.inputs();
    if (!user.empty()) {
      auto e = profile::explain_user(in, f.fit.profiles, history, user, options);
      if (as_json) {
        std::cout << e.to_json().dump() << "\n";
        return;
      }
      std::cout << "user " << e.user << "\n";
      for (std::size_t i = 0; i < e.fields.size(); ++i) std::cout << fmt::format("  {} = {}\n", e.fields[i], e.codes[i]);
      for (std::size_t a = 0; a < e.continuations.size(); ++a)
        std::cout << fmt::format("  {}: {}…{}\n", f.fit.profiles.attributes[a].name, f.fit.profiles.attributes[a].probe,
                                 e.continuations[a]);
      std::cout << "  history: " << describe(e.own) << "\n";
      return;
    }
    for (const auto& e : profile::explain_codes(in, f.fit.profiles, history, options)) {
      if (as_json) {
        std::cout << e.to_json().dump() << "\n";
        continue;
      }
      std::cout << fmt::format("{} level {} code {}: {}\n", e.attribute, e.level + 1, e.code, describe(e.members));
      if (e.continuation_note.empty()) {
        std::cout << fmt::format("    probe: {} → \"{}\"\n", e.probe, e.continuation);
      } else if (e.code == 0) {
        std::cout << fmt::format("    probe: {}: {}\n", e.probe, e.continuation_note);
      }
    }
  }
};

}  // namespace

void add_profile_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* profile_app = app.add_subcommand(
      "profile", "User profiles: fit soft profile tokens through the frozen LM (EM with codebooks), fold in new "
                 "users, explain codes");
  profile_app->require_subcommand(1);

  {
    auto* cmd = profile_app->add_subcommand(
        "fit", "Fit every training user's profile (soft tokens per attribute) and the codebooks; write profiles, "
               "codes, the fit log and a feature bank");
    auto c = std::make_shared<FitCommand>();
    cmd->add_option("--dataset", c->dataset, "Dataset directory (profiles use its training split only)")->required();
    add_model_options(cmd, c->model);
    cmd->add_option("--template", c->template_file,
                    "Template file (JSON, docs/TEMPLATES.md); default: one made from the dataset's fields");
    cmd->add_option("--out", c->out, "Output directory")->required();
    cmd->add_option("--bank", c->bank, "Feature bank to write (default: OUT/bank.sqlite)");
    cmd->add_flag("--no-bank", c->no_bank, "Do not write a feature bank");
    cmd->add_option("--soft-tokens", c->soft_tokens, "Soft tokens per attribute, overriding the template (0 = keep)")
        ->capture_default_str();
    add_option_flags(cmd, profile::FitOptions::table(), c->options, &c->given);
    on_run(cmd, [c] { c->run(); });
  }
  {
    auto* cmd = profile_app->add_subcommand(
        "infer", "Fold in users the fit did not see (LM and codebooks frozen): by default the "
                 "dataset's cold users from their cold_history interactions");
    auto c = std::make_shared<InferCommand>();
    cmd->add_option("--profile", c->dir, "Directory of a finished `profile fit`")->required();
    cmd->add_option("--dataset", c->dataset, "Dataset directory (default: the one the fit recorded)");
    add_model_options(cmd, c->model, false);
    cmd->add_option("--user", c->users, "Original id of a user to fold in (repeatable; default: every cold user)");
    cmd->add_option("--rounds", c->rounds, "E-step rounds of --method estep (0 = as many as the fit had)")
        ->capture_default_str();
    cmd->add_option("--method", c->method,
                    "estep: E-steps from the mean profile, the prior annealed as in the fit, codes by distance; "
                    "likelihood: the codes under which the LM finds the user's whole cold history likeliest "
                    "(codebooks of one level); auto: likelihood when the fit has codebooks of one level, else estep")
        ->capture_default_str();
    cmd->add_option("--history", c->history_part,
                    "The split part whose rows are read: cold_history (the cold users'), or train (every fitted user "
                    "again, by the fold-in's rule; evaluated on the valid part)")
        ->check(CLI::IsMember({"cold_history", "train"}))
        ->capture_default_str();
    cmd->add_option("--out", c->out, "Output directory for the new users' profiles and codes")->required();
    cmd->add_option("--bank", c->bank, "Also publish the new users' codes as a feature bank here");
    on_run(cmd, [c] { c->run(); });
  }
  {
    auto* cmd = profile_app->add_subcommand(
        "recovery", "Synthetic datasets: NMI of each attribute's codes with the ground-truth taste and background "
                    "classes, beside the no-LM control (k-means of the users' category histograms)");
    auto c = std::make_shared<RecoveryCommand>();
    cmd->add_option("--profile", c->dir, "Directory of a finished `profile fit`")->required();
    cmd->add_option("--dataset", c->dataset, "Synthetic dataset directory with ground_truth.csv (default: the fit's)");
    add_model_options(cmd, c->model, false);
    cmd->add_option("--field", c->field,
                    "Category field of the control's histograms (default: the taste field of the default text, the "
                    "category field with the most values)");
    cmd->add_flag("--json", c->as_json, "JSON instead of text");
    on_run(cmd, [c] { c->run(); });
  }
  {
    auto* cmd = profile_app->add_subcommand(
        "explain", "For every code: the frozen LM's continuation of the attribute's probe with the codeword as "
                   "soft token, and its members' statistics; or one user's codes and history");
    auto c = std::make_shared<ExplainCommand>();
    cmd->add_option("--profile", c->dir, "Directory of a finished `profile fit` (or `profile infer`)")->required();
    cmd->add_option("--dataset", c->dataset, "Dataset directory (default: the one the fit recorded)");
    add_model_options(cmd, c->model, false);
    cmd->add_option("--user", c->user, "Explain this user (original id) instead of every code");
    cmd->add_option("--max-new-tokens", c->options.max_new_tokens, "Tokens of each continuation")->capture_default_str();
    cmd->add_option("--top", c->options.top_categories, "Top categories listed per code")->capture_default_str();
    cmd->add_option("--category-field", c->options.category_field,
                    "Item field to describe members by (default: the first category field)");
    cmd->add_flag("--json", c->as_json, "JSON lines instead of text");
    on_run(cmd, [c] { c->run(); });
  }
}

}  // namespace userip::cli
