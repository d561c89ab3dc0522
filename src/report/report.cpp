// Assembles the report: each section reads its input, adds figures (drawn in the browser from the
// embedded JSON) and tables (written here, so they read without scripts), or a note saying why it
// is left out.
#include "userip/report/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "report/inputs.h"
#include "report/page.h"
#include "userip/quantize/codebook.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"

namespace userip::report {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

namespace {

// Significance level at which a difference to base is highlighted in the tables.
constexpr double kHighlightP = 0.05;

class Page {
 public:
  // A figure the page's script draws from `spec`; returns its HTML.
  std::string figure(const std::string& title, const std::string& subtitle, Json spec) {
    const std::string id = fmt::format("plot-{}", plots_.size() + 1);
    const std::string kind = spec.at("kind").get<std::string>();
    plots_[id] = std::move(spec);
    std::string caption = html_escape(title);
    if (!subtitle.empty()) caption += "<br><span class=\"sub\">" + html_escape(subtitle) + "</span>";
    return fmt::format("<figure class=\"plot\" id=\"{}\" data-kind=\"{}\"><figcaption>{}</figcaption></figure>\n", id,
                       kind, caption);
  }
  std::string table(const std::string& html) {
    ++tables_;
    return html;
  }
  void note(std::string text) { notes_.push_back(std::move(text)); }

  const Json& plots() const { return plots_; }
  std::size_t tables() const { return tables_; }
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  Json plots_ = Json::object();
  std::size_t tables_ = 0;
  std::vector<std::string> notes_;
};

struct Section {
  std::string id, title, html;
};

Json or_null(const Measured& value) { return value ? Json(*value) : Json(nullptr); }

// Coordinates with 5 significant digits: the page stays small and nothing visible changes.
double rounded(double value) { return std::stod(fmt::format("{:.5g}", value)); }

std::string cell(const Measured& value, const char* format_spec) {
  if (!value) return "<td class=\"num\">n/a</td>";
  return "<td class=\"num\">" + fmt::format(fmt::runtime(format_spec), *value) + "</td>";
}

bool any_value(const Json& series_list) {
  for (const auto& s : series_list)
    for (const auto& p : s.at("points"))
      if (!p[1].is_null()) return true;
  return false;
}

Json line_spec(const std::string& x_label, const std::string& y_label, Json series, bool log_y = false) {
  return {{"kind", "line"},   {"x_label", x_label}, {"y_label", y_label},
          {"log_y", log_y},  {"series", std::move(series)}};
}

// ---- 1. the language model's pretraining ----

std::string lm_section(const fs::path& dir, Page& page) {
  const auto points = read_pretrain_log(dir / "pretrain_log.jsonl");
  Json loss = Json::array(), perplexity = Json::array();
  for (const auto& p : points) {
    loss.push_back({p.step, or_null(p.train_loss)});
    // Drawn on a log scale, where only positive values exist (a perplexity is at least 1 anyway).
    const bool positive = p.heldout_perplexity && *p.heldout_perplexity > 0;
    perplexity.push_back({p.step, positive ? Json(*p.heldout_perplexity) : Json(nullptr)});
  }
  Json loss_series = Json::array(), perplexity_series = Json::array();
  loss_series.push_back({{"name", "train loss"}, {"points", loss}});
  perplexity_series.push_back({{"name", "held-out perplexity"}, {"points", perplexity}});
  std::string html;
  if (any_value(loss_series)) {
    html += page.figure("Training loss", "mean training loss of the steps since the previous point",
                        line_spec("step", "train loss (nats/token)", loss_series));
  } else {
    page.note(fmt::format("{} has no train_loss values: the training-loss curve is left out.",
                          (dir / "pretrain_log.jsonl").string()));
  }
  if (any_value(perplexity_series)) {
    const auto last = std::find_if(points.rbegin(), points.rend(),
                                   [](const PretrainPoint& p) { return p.heldout_perplexity > 0.0; });
    html += page.figure("Held-out perplexity",
                        fmt::format("last: {:.3f} at step {}", *last->heldout_perplexity, last->step),
                        line_spec("step", "perplexity", perplexity_series, /*log_y=*/true));
  } else {
    page.note(fmt::format("{} has no heldout_perplexity values: the perplexity curve is left out.",
                          (dir / "pretrain_log.jsonl").string()));
  }
  if (html.empty()) return "";
  return fmt::format("<p class=\"lead\">From <code>{}</code>: {} logged points.</p>\n<div class=\"plots\">\n{}</div>\n",
                     html_escape((dir / "pretrain_log.jsonl").string()), points.size(), html);
}

// ---- 2. the EM fit ----

// log.jsonl's objects have their keys sorted; the page keeps the template's order, which
// profile.json records (attributes it does not list go last).
void order_like_profile(std::vector<EmRound>& rounds, const std::vector<ProfileAttribute>& attributes) {
  auto rank = [&](const AttributeRound& a) {
    auto it = std::find_if(attributes.begin(), attributes.end(),
                           [&](const ProfileAttribute& p) { return p.name == a.name; });
    return it - attributes.begin();
  };
  for (auto& r : rounds)
    std::stable_sort(r.attributes.begin(), r.attributes.end(),
                     [&](const AttributeRound& a, const AttributeRound& b) { return rank(a) < rank(b); });
}

std::vector<std::string> attribute_names(const std::vector<EmRound>& rounds) {
  std::vector<std::string> names;
  for (const auto& r : rounds)
    for (const auto& a : r.attributes)
      if (std::find(names.begin(), names.end(), a.name) == names.end()) names.push_back(a.name);
  return names;
}

const AttributeRound* find_attribute(const EmRound& round, const std::string& name) {
  for (const auto& a : round.attributes)
    if (a.name == name) return &a;
  return nullptr;
}

std::string em_section(const fs::path& log_file, const std::vector<EmRound>& rounds, Page& page) {
  const auto names = attribute_names(rounds);
  Json train = Json::array(), valid = Json::array();
  for (const auto& r : rounds) {
    train.push_back({r.round, or_null(r.train_nll)});
    valid.push_back({r.round, or_null(r.valid_nll)});
  }
  Json nll = Json::array();
  nll.push_back({{"name", "train NLL"}, {"points", train}});
  Json valid_series = Json::array();
  valid_series.push_back({{"name", "validation NLL"}, {"points", valid}});
  if (any_value(valid_series)) nll.push_back(valid_series[0]);

  Json quantization = Json::array(), usage = Json::array();
  for (const auto& name : names) {
    Json errors = Json::array();
    std::size_t levels = 0;
    for (const auto& r : rounds) {
      const auto* a = find_attribute(r, name);
      errors.push_back({r.round, a ? or_null(a->quantization_error) : Json(nullptr)});
      if (a) levels = std::max(levels, a->code_perplexity.size());
    }
    quantization.push_back({{"name", name}, {"points", errors}});
    for (std::size_t level = 0; level < levels; ++level) {
      Json perplexity = Json::array();
      for (const auto& r : rounds) {
        const auto* a = find_attribute(r, name);
        perplexity.push_back(
            {r.round, a && level < a->code_perplexity.size() ? or_null(a->code_perplexity[level]) : Json(nullptr)});
      }
      usage.push_back({{"name", quantize::code_field_name(name, static_cast<int>(level))}, {"points", perplexity}});
    }
  }

  std::string html;
  if (any_value(nll)) {
    html += page.figure("Negative log-likelihood per behaviour token", "validation NLL where it was measured",
                        line_spec("EM round", "NLL (nats/token)", nll));
  } else {
    page.note(fmt::format("{} has no train_nll or valid_nll values: the NLL curve is left out.", log_file.string()));
  }
  if (any_value(quantization)) {
    html += page.figure("Quantization error", "mean squared distance of a profile to its codes' reconstruction",
                        line_spec("EM round", "quantization error", quantization));
  } else {
    page.note(fmt::format("{} has no quantization errors (a fit without codebooks?): that curve is left out.",
                          log_file.string()));
  }
  if (any_value(usage)) {
    html += page.figure("Code usage perplexity", "exp(entropy of the code counts): K when every code is used equally",
                        line_spec("EM round", "code perplexity", usage));
  } else {
    page.note(fmt::format("{} has no code perplexities: that curve is left out.", log_file.string()));
  }
  if (html.empty()) return "";
  return fmt::format("<p class=\"lead\">From <code>{}</code>: {} rounds.</p>\n<div class=\"plots\">\n{}</div>\n",
                     html_escape(log_file.string()), rounds.size(), html);
}

// ---- 3. how the codes are used ----

std::string usage_section(const std::vector<EmRound>& rounds, Page& page) {
  std::string html;
  for (const auto& name : attribute_names(rounds)) {
    // The last round that counted this attribute's codes.
    const EmRound* round = nullptr;
    const AttributeRound* attribute = nullptr;
    for (const auto& r : rounds) {
      const auto* a = find_attribute(r, name);
      if (a && !a->code_counts.empty()) round = &r, attribute = a;
    }
    if (!attribute) continue;
    std::size_t codes = 0;
    for (const auto& level : attribute->code_counts) codes = std::max(codes, level.size());
    Json categories = Json::array(), series = Json::array();
    for (std::size_t k = 0; k < codes; ++k) categories.push_back(k);
    std::vector<std::string> dead;
    for (std::size_t level = 0; level < attribute->code_counts.size(); ++level) {
      const auto& counts = attribute->code_counts[level];
      Json values = Json::array();
      for (std::size_t k = 0; k < codes; ++k)
        values.push_back(k < counts.size() ? Json{{"mean", counts[k]}, {"std", nullptr}} : Json(nullptr));
      series.push_back({{"name", fmt::format("level {}", level + 1)}, {"values", values}});
      dead.push_back(fmt::format("{}", std::count(counts.begin(), counts.end(), 0.0)));
    }
    Json spec = {{"kind", "bars"},    {"x_label", "code"}, {"y_label", "users"}, {"categories", categories},
                 {"series", series}, {"include_zero", true}};
    html += page.figure(fmt::format("{}: users per code", name),
                        fmt::format("EM round {}; unused codes per level: {}", round->round, join(dead, ", ")),
                        std::move(spec));
  }
  if (html.empty()) return "";
  return "<p class=\"lead\">How many users each code holds after the last round (an even spread uses the "
         "codebook fully; an empty code carries no information).</p>\n<div class=\"plots\">\n" +
         html + "</div>\n";
}

// ---- 4. the profiles in two dimensions ----

std::string projection_section(const std::vector<ProfileProjection>& projections, Page& page) {
  std::string html;
  for (const auto& p : projections) {
    Json points = Json::array();
    for (const auto& point : p.points) points.push_back({rounded(point.x), rounded(point.y), point.code});
    Json legend = Json::array();
    for (std::int64_t k = 0; k < p.codes; ++k) legend.push_back(fmt::format("code {}", k));
    Json spec = {{"kind", "scatter"},
                 {"x_label", fmt::format("PC1 ({:.1f}% of the variance)", 100 * p.explained_variance[0])},
                 {"y_label", fmt::format("PC2 ({:.1f}%)", 100 * p.explained_variance[1])},
                 {"points", points},
                 {"legend", legend}};
    const std::string shown = p.points.size() == p.users
                                  ? fmt::format("all {} users", p.users)
                                  : fmt::format("{} of {} users (evenly spaced)", p.points.size(), p.users);
    html += page.figure(fmt::format("{}: profiles on their first two principal components", p.attribute),
                        shown + (p.codes > 0 ? ", coloured by level-1 code" : "; the fit has no codes"),
                        std::move(spec));
  }
  if (html.empty()) return "";
  return "<p class=\"lead\">Each point is one user's profile vector for the attribute (its soft tokens "
         "concatenated), projected by PCA. Users sharing a code should sit together.</p>\n<div class=\"plots\">\n" +
         html + "</div>\n";
}

// ---- 5. what the codes mean ----

// Values with their share and lift, one per line.
std::string shares(const std::vector<CategoryShare>& values) {
  std::string out;
  for (const auto& c : values) {
    if (!out.empty()) out += "<br>";
    out += html_escape(c.value);
    if (c.share) out += fmt::format(" {:.0f}%", 100 * *c.share);
    if (c.lift) out += fmt::format(" ×{:.2f}", *c.lift);
  }
  return out;
}

std::string explanations_section(const fs::path& file, const std::vector<CodeExplanationRow>& rows, Page& page) {
  std::vector<std::string> attributes;
  for (const auto& r : rows)
    if (std::find(attributes.begin(), attributes.end(), r.attribute) == attributes.end())
      attributes.push_back(r.attribute);
  std::string html = fmt::format(
      "<p class=\"lead\">From <code>{}</code>: for each code, the frozen LM's greedy continuation of the "
      "attribute's probe with the codeword as soft tokens, and what its members did (lift: the members' "
      "share of a category over the population's).</p>\n",
      html_escape(file.string()));
  for (const auto& attribute : attributes) {
    std::vector<std::string> probes;
    std::string table =
        "<table>\n<tr><th>level</th><th>code</th><th>users</th><th>interactions / user</th><th>mean rating</th>"
        "<th>liked</th><th>top categories (share, lift)</th><th>typical items (share of members, lift)</th>"
        "<th>LM continuation</th></tr>\n";
    std::vector<std::string> notes;
    for (const auto& r : rows) {
      if (r.attribute != attribute) continue;
      if (!r.probe.empty() && std::find(probes.begin(), probes.end(), r.probe) == probes.end())
        probes.push_back(r.probe);
      if (!r.continuation_note.empty() && std::find(notes.begin(), notes.end(), r.continuation_note) == notes.end())
        notes.push_back(r.continuation_note);
      const Measured liked = r.like_rate ? Measured(100 * *r.like_rate) : std::nullopt;
      table += fmt::format("<tr><td class=\"num\">{}</td><td class=\"num\">{}</td>{}{}{}{}<td>{}</td><td>{}</td>"
                           "<td class=\"text mono\">{}</td></tr>\n",
                           r.level, r.code, cell(r.users, "{:.0f}"), cell(r.interactions_per_user, "{:.1f}"),
                           cell(r.mean_rating, "{:.2f}"), cell(liked, "{:.0f}%"), shares(r.top_categories),
                           shares(r.typical_items), html_escape(r.continuation));
    }
    table += "</table>\n";
    html += "<h3>" + html_escape(attribute) + "</h3>\n";
    for (const auto& probe : probes) html += "<p>Probe: <code>" + html_escape(probe) + "</code></p>\n";
    for (const auto& note : notes) html += "<p>LM continuation left out: " + html_escape(note) + ".</p>\n";
    html += page.table(table);
  }
  return html;
}

// ---- 6. the CTR experiment ----

std::string metric_name(const std::string& metric) {
  static const std::map<std::string, std::string> names = {{"auc", "AUC"}, {"log_loss", "LogLoss"}, {"gauc", "gAUC"}};
  auto it = names.find(metric);
  return it == names.end() ? metric : it->second;
}

// +1 when larger is better, -1 when smaller is, 0 when unknown.
int better_direction(const std::string& metric) {
  if (metric == "auc" || metric == "gauc") return 1;
  if (metric == "log_loss") return -1;
  return 0;
}

std::string json_scalar_text(const Json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string experiment_overview(const Experiment& e, Page& page) {
  std::vector<std::string> seeds;
  for (auto s : e.seeds) seeds.push_back(std::to_string(s));
  std::string html = "<table>\n";
  html += "<tr><th>file</th><td><code>" + html_escape(e.file.string()) + "</code></td></tr>\n";
  if (!e.dataset.empty()) html += "<tr><th>dataset</th><td><code>" + html_escape(e.dataset) + "</code></td></tr>\n";
  if (!e.config.empty()) html += "<tr><th>configuration</th><td><code>" + html_escape(e.config) + "</code></td></tr>\n";
  html += "<tr><th>seeds</th><td>" + html_escape(seeds.empty() ? "not listed" : join(seeds, ", ")) + "</td></tr>\n";
  html += "<tr><th>experiments (CTR models)</th><td>" + html_escape(join(e.experiments, ", ")) + "</td></tr>\n";
  html += "<tr><th>variants</th><td>" + html_escape(join(e.variants, ", ")) + "</td></tr>\n</table>\n";
  html = page.table(html);

  // Users and examples first, then whichever other keys the groups have (max_history, ...).
  std::vector<std::string> keys = {"users", "examples"};
  for (const auto& [name, info] : e.groups)
    for (const auto& [key, value] : info.items())
      if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  std::string groups = "<table>\n<tr><th>user group</th>";
  for (const auto& key : keys) groups += "<th>" + html_escape(key) + "</th>";
  groups += "</tr>\n";
  for (const auto& [name, info] : e.groups) {
    groups += "<tr><td>" + html_escape(name) + "</td>";
    for (const auto& key : keys)
      groups += "<td class=\"num\">" + (info.contains(key) ? html_escape(json_scalar_text(info[key])) : "") + "</td>";
    groups += "</tr>\n";
  }
  groups += "</table>\n";
  return html + page.table(groups);
}

Json metric_bars(const Experiment& e, const std::string& experiment, const std::string& metric, bool* any) {
  Json categories = Json::array(), series = Json::array();
  for (const auto& [group, info] : e.groups) categories.push_back(group);
  *any = false;
  for (const auto& variant : e.variants) {
    Json values = Json::array();
    for (const auto& [group, info] : e.groups) {
      const auto* s = e.find(experiment, variant, group, metric);
      if (!s || !s->mean) {
        values.push_back(nullptr);
        continue;
      }
      *any = true;
      Json seeds = Json::array();
      for (const auto& run : e.runs) {
        if (run.experiment != experiment || run.variant != variant) continue;
        auto g = run.groups.find(group);
        if (g == run.groups.end()) continue;
        auto m = g->find(metric);
        if (m != g->end() && m->is_number() && std::isfinite(m->get<double>())) seeds.push_back(m->get<double>());
      }
      values.push_back({{"mean", *s->mean}, {"std", or_null(s->std)}, {"seeds", seeds}});
    }
    series.push_back({{"name", variant}, {"values", values}});
  }
  return {{"kind", "bars"},    {"x_label", "user group"}, {"y_label", metric_name(metric)}, {"categories", categories},
          {"series", series}, {"include_zero", false}};
}

std::string difference_table(const Experiment& e, const std::string& experiment,
                             const std::vector<std::string>& metrics) {
  std::string html = "<table>\n<tr><th rowspan=\"2\">user group</th><th rowspan=\"2\">variant</th>";
  for (const auto& m : metrics) html += "<th colspan=\"3\">" + html_escape(metric_name(m)) + "</th>";
  html += "</tr>\n<tr>";
  for (std::size_t i = 0; i < metrics.size(); ++i) html += "<th>mean ± std</th><th>Δ vs base ± std</th><th>p</th>";
  html += "</tr>\n";
  for (const auto& [group, info] : e.groups) {
    for (const auto& variant : e.variants) {
      html += fmt::format("<tr{}><td>{}</td><td>{}</td>", variant == "base" ? " class=\"base\"" : "",
                          html_escape(group), html_escape(variant));
      for (const auto& metric : metrics) {
        const auto* s = e.find(experiment, variant, group, metric);
        if (!s || !s->mean) {
          html += "<td class=\"num\">n/a</td>";
        } else {
          html += fmt::format("<td class=\"num\">{:.4f}{}</td>", *s->mean,
                              s->std ? fmt::format(" ± {:.4f}", *s->std) : "");
        }
        if (!s || !s->diff_mean) {
          html += "<td class=\"num\">" + std::string(variant == "base" ? "" : "n/a") + "</td>";
        } else {
          const bool significant = s->p_value && *s->p_value < kHighlightP;
          const double signed_gain = *s->diff_mean * better_direction(metric);
          const char* verdict = !significant || signed_gain == 0 ? "" : signed_gain > 0 ? " better" : " worse";
          html += fmt::format("<td class=\"num{}\">{:+.4f}{}</td>", verdict, *s->diff_mean,
                              s->diff_std ? fmt::format(" ± {:.4f}", *s->diff_std) : "");
        }
        html += !s || !s->p_value ? "<td class=\"num\">" + std::string(variant == "base" ? "" : "n/a") + "</td>"
                                  : fmt::format("<td class=\"num\">{:.3g}</td>", *s->p_value);
      }
      html += "</tr>\n";
    }
  }
  return html + "</table>\n";
}

std::string ctr_section(const Experiment& e, Page& page) {
  std::string html =
      "<p class=\"lead\">Each variant of each CTR model trained with every seed; bars are the mean over seeds, "
      "whiskers ± one standard deviation, dots the single seeds. The value axes do not start at zero. In the "
      "tables, Δ is the paired difference to the base variant over the same seeds and p its two-sided paired "
      "t-test; a significant (p &lt; 0.05) improvement is green, a significant loss red. n/a: not measurable "
      "(e.g. the AUC of a group with one class).</p>\n";
  html += experiment_overview(e, page);
  const auto metrics = e.metrics();
  if (metrics.empty()) page.note(fmt::format("{} has an empty summary: no metric to plot.", e.file.string()));
  for (const auto& experiment : e.experiments) {
    html += "<h3>" + html_escape(experiment) + "</h3>\n<div class=\"plots\">\n";
    for (const auto& metric : metrics) {
      bool any = false;
      Json spec = metric_bars(e, experiment, metric, &any);
      if (!any) {
        page.note(fmt::format("{}: no measurable {} for any variant or group: that plot is left out.", experiment,
                              metric_name(metric)));
        continue;
      }
      const int direction = better_direction(metric);
      html += page.figure(fmt::format("{}: {}", experiment, metric_name(metric)),
                          direction == 0 ? "mean ± std over seeds"
                                         : fmt::format("mean ± std over seeds; {} is better",
                                                       direction > 0 ? "higher" : "lower"),
                          std::move(spec));
    }
    html += "</div>\n";
    if (!metrics.empty()) html += page.table(difference_table(e, experiment, metrics));
  }
  return html;
}

std::string inputs_table(const ReportInputs& in) {
  auto row = [](const char* what, const fs::path& path) {
    return fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", what,
                       path.empty() ? std::string("not given") : "<code>" + html_escape(path.string()) + "</code>");
  };
  return "<table>\n" + row("--experiment", in.experiment) + row("--lm", in.lm) + row("--profiles", in.profiles) +
         row("--explanations", in.explanations) + "</table>\n";
}

}  // namespace

std::string render_report(const ReportInputs& in, ReportSummary* summary) {
  USERIP_CHECK(!in.experiment.empty(), "the report needs an experiment (--experiment, a `userip experiment` output)");
  Page page;
  std::vector<Section> sections;
  const Experiment experiment = read_experiment(in.experiment);

  if (in.lm.empty()) {
    page.note("No --lm directory given: the language model's pretraining curves are left out.");
  } else if (auto html = lm_section(in.lm, page); !html.empty()) {
    sections.push_back({"lm", "Language-model pretraining", html});
  }

  if (in.profiles.empty()) {
    page.note("No --profiles directory given: the EM curves, code usage and profile projections are left out.");
  } else {
    const fs::path log_file = in.profiles / "log.jsonl";
    auto rounds = read_em_log(log_file);
    order_like_profile(rounds, read_profile_attributes(in.profiles / "profile.json"));
    if (rounds.empty()) {
      page.note(fmt::format("{} has no rounds: the EM curves and code usage are left out.", log_file.string()));
    } else {
      if (auto html = em_section(log_file, rounds, page); !html.empty())
        sections.push_back({"em", "Profile fit (EM)", html});
      if (auto html = usage_section(rounds, page); !html.empty()) {
        sections.push_back({"usage", "Code usage", html});
      } else {
        page.note(fmt::format("{} has no code counts (a fit without codebooks?): code usage is left out.",
                              log_file.string()));
      }
    }
    if (auto html = projection_section(project_profiles(in.profiles, in.max_projection_points), page); !html.empty())
      sections.push_back({"projection", "Profiles in two dimensions", html});
  }

  if (in.explanations.empty()) {
    page.note("No --explanations file given: the table of what each code means is left out.");
  } else {
    const auto rows = read_explanations(in.explanations);
    if (rows.empty()) {
      page.note(fmt::format("{} has no explanations: that table is left out.", in.explanations.string()));
    } else {
      sections.push_back({"explanations", "What the codes mean", explanations_section(in.explanations, rows, page)});
    }
  }

  sections.push_back({"ctr", "CTR experiment", ctr_section(experiment, page)});

  std::string body = "<header><h1>" + html_escape(in.title) + "</h1>\n";
  body += fmt::format(
      "<p class=\"lead\">UserIP-Tuning results{}: {} CTR model(s) × {} variant(s) × {} seed(s). Every number on this "
      "page is embedded in it; the plots are drawn by its own inline script, with no network access.</p>\n</header>\n",
      experiment.dataset.empty() ? "" : " on " + html_escape(experiment.dataset), experiment.experiments.size(),
      experiment.variants.size(), experiment.seeds.size());
  body += "<section id=\"about\"><h2>Inputs</h2>\n" + page.table(inputs_table(in));
  if (!page.notes().empty()) {
    body += "<ul class=\"notes\">\n";
    for (const auto& note : page.notes()) body += "<li>" + html_escape(note) + "</li>\n";
    body += "</ul>\n";
  }
  body += "<nav><ol>\n";
  for (const auto& s : sections) body += fmt::format("<li><a href=\"#{}\">{}</a></li>\n", s.id, html_escape(s.title));
  body += "</ol></nav>\n</section>\n";
  for (std::size_t i = 0; i < sections.size(); ++i) {
    body += fmt::format("<section id=\"{}\"><h2>{}. {}</h2>\n{}</section>\n", sections[i].id, i + 1,
                        html_escape(sections[i].title), sections[i].html);
  }

  Json data = {{"format", "userip-report"}, {"version", 1}, {"title", in.title}, {"plots", page.plots()}};
  if (summary) {
    summary->plots = page.plots().size();
    summary->tables = page.tables();
    summary->notes = page.notes();
  }
  return page_html(in.title, body, data);
}

ReportSummary write_report(const ReportInputs& inputs, const fs::path& out) {
  ReportSummary summary;
  const std::string html = render_report(inputs, &summary);
  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  write_file_atomic(out, html);
  return summary;
}

}  // namespace userip::report
