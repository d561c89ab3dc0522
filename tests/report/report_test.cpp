// `userip report` on small hand-written inputs: what the page holds, that it needs nothing from the
// network, that hostile strings stay text, that bad inputs fail naming the file, and (in headless
// Chromium) that its scripts draw every plot without an error.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>
#include <torch/utils.h>

#include <sys/wait.h>

#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "support/temp_dir.h"
#include "userip/tensor/tensor_file.h"
#include "userip/report/report.h"
#include "userip/util/fs.h"

namespace userip::report {
namespace {

using userip::testing::expect_error;
using userip::testing::run_cli;
using userip::testing::TempDir;

// A string a careless page would turn into markup or use to break out of its JSON block.
const std::string kHostile = "</script><script>alert(\"pwned\")</script><!-- & 'q'";

// One CTR model, two variants, three groups (in the writer's sorted key order), two seeds. gAUC is
// null everywhere (e.g. every user had one class), so its plot must be left out; the cold group's AUC
// of `codes` is null too, and the sparse group has only AUC.
const char* const kExperimentJson = R"({
  "format": "userip-experiment", "version": 1, "dataset": "tiny <synthetic>", "config": "ctr.json",
  "seeds": [1, 2], "experiments": ["dcn"], "variants": ["base", "codes"],
  "groups": {"all": {"users": 40, "examples": 400}, "cold": {"users": 8, "examples": 60},
             "sparse": {"users": 10, "examples": 90, "max_history": 5}},
  "runs": [
    {"experiment": "dcn", "model": "dcn", "variant": "base", "seed": 1, "best_epoch": 2, "epochs": [], "seconds": 0.5,
     "groups": {"all": {"auc": 0.70, "log_loss": 0.60, "gauc": null, "examples": 400, "positives": 200},
                "cold": {"auc": 0.66, "log_loss": 0.63, "gauc": null, "examples": 60, "positives": 31}}},
    {"experiment": "dcn", "model": "dcn", "variant": "base", "seed": 2, "best_epoch": 2, "epochs": [], "seconds": 0.5,
     "groups": {"all": {"auc": 0.72, "log_loss": 0.59, "gauc": null, "examples": 400, "positives": 200},
                "cold": {"auc": 0.68, "log_loss": 0.62, "gauc": null, "examples": 60, "positives": 31}}},
    {"experiment": "dcn", "model": "dcn", "variant": "codes", "seed": 1, "best_epoch": 3, "epochs": [], "seconds": 0.6,
     "groups": {"all": {"auc": 0.74, "log_loss": 0.57, "gauc": null, "examples": 400, "positives": 200},
                "cold": {"auc": null, "log_loss": 0.61, "gauc": null, "examples": 60, "positives": 31}}},
    {"experiment": "dcn", "model": "dcn", "variant": "codes", "seed": 2, "best_epoch": 3, "epochs": [], "seconds": 0.6,
     "groups": {"all": {"auc": 0.75, "log_loss": 0.56, "gauc": null, "examples": 400, "positives": 200},
                "cold": {"auc": null, "log_loss": 0.60, "gauc": null, "examples": 60, "positives": 31}}}],
  "summary": [
    {"experiment": "dcn", "variant": "base", "group": "all", "metric": "auc", "mean": 0.71, "std": 0.0141, "n": 2,
     "diff_mean": null, "diff_std": null, "t": null, "p_value": null},
    {"experiment": "dcn", "variant": "base", "group": "cold", "metric": "auc", "mean": 0.67, "std": 0.0141, "n": 2,
     "diff_mean": null, "diff_std": null, "t": null, "p_value": null},
    {"experiment": "dcn", "variant": "base", "group": "sparse", "metric": "auc", "mean": 0.64, "std": 0.02, "n": 2,
     "diff_mean": null, "diff_std": null, "t": null, "p_value": null},
    {"experiment": "dcn", "variant": "codes", "group": "sparse", "metric": "auc", "mean": 0.69, "std": 0.01, "n": 2,
     "diff_mean": 0.05, "diff_std": 0.01, "t": 7.07, "p_value": 0.089},
    {"experiment": "dcn", "variant": "codes", "group": "all", "metric": "auc", "mean": 0.745, "std": 0.0071, "n": 2,
     "diff_mean": 0.035, "diff_std": 0.0071, "t": 7.0, "p_value": 0.0903},
    {"experiment": "dcn", "variant": "codes", "group": "cold", "metric": "auc", "mean": null, "std": null, "n": 2,
     "diff_mean": null, "diff_std": null, "t": null, "p_value": null},
    {"experiment": "dcn", "variant": "base", "group": "all", "metric": "log_loss", "mean": 0.595, "std": 0.0071,
     "n": 2, "diff_mean": null, "diff_std": null, "t": null, "p_value": null},
    {"experiment": "dcn", "variant": "base", "group": "cold", "metric": "log_loss", "mean": 0.625, "std": 0.0071,
     "n": 2, "diff_mean": null, "diff_std": null, "t": null, "p_value": null},
    {"experiment": "dcn", "variant": "codes", "group": "all", "metric": "log_loss", "mean": 0.565, "std": 0.0071,
     "n": 2, "diff_mean": -0.03, "diff_std": 0.0001, "t": -424.3, "p_value": 0.0015},
    {"experiment": "dcn", "variant": "codes", "group": "cold", "metric": "log_loss", "mean": 0.605, "std": 0.0071,
     "n": 2, "diff_mean": -0.02, "diff_std": 0.0001, "t": -282.8, "p_value": 0.0023},
    {"experiment": "dcn", "variant": "base", "group": "all", "metric": "gauc", "mean": null, "std": null, "n": 2,
     "diff_mean": null, "diff_std": null, "t": null, "p_value": null},
    {"experiment": "dcn", "variant": "codes", "group": "all", "metric": "gauc", "mean": null, "std": null, "n": 2,
     "diff_mean": null, "diff_std": null, "t": null, "p_value": null}]
})";

// Held-out perplexity is measured only every other point: null in between.
const char* const kPretrainLog =
    R"({"heldout_perplexity":40.5,"seconds":1.0,"step":0,"train_loss":4.9})"
    "\n"
    R"({"heldout_perplexity":null,"seconds":2.0,"step":25,"train_loss":3.8})"
    "\n"
    R"({"heldout_perplexity":12.25,"seconds":3.1,"step":50,"train_loss":3.1})"
    "\n"
    R"({"heldout_perplexity":7.5,"seconds":4.2,"step":75,"train_loss":2.6})"
    "\n";

// Round 1 did not measure the validation NLL (-1); "background" has one codebook level, "taste" two.
// As `profile fit` writes it, the attributes' keys are sorted (background before taste).
const char* const kEmLog =
    R"({"attributes":{"background":{"code_counts":[[25,15]],"code_perplexity":[1.9],"dead_codes":[0],)"
    R"("quantization_error":2.5},"taste":{"code_counts":[[10,9,11,10],[20,0,12,8]],"code_perplexity":[3.99,2.9],)"
    R"("dead_codes":[0,1],"quantization_error":4.17}},)"
    R"("lambda":0.0,"round":1,"seconds":10.5,"tokens":5000,"train_nll":1.30,"valid_nll":-1})"
    "\n"
    R"({"attributes":{"background":{"code_counts":[[22,18]],"code_perplexity":[1.98],"dead_codes":[0],)"
    R"("quantization_error":1.1},"taste":{"code_counts":[[12,8,10,10],[18,2,12,8]],"code_perplexity":[3.95,3.1],)"
    R"("dead_codes":[0,0],"quantization_error":2.05}},)"
    R"("lambda":0.1,"round":2,"seconds":9.8,"tokens":5000,"train_nll":1.10,"valid_nll":1.25})"
    "\n";

constexpr std::int64_t kUsers = 40, kHidden = 3;

struct Fixture {
  std::filesystem::path experiment, lm, profiles, explanations;
  ReportInputs inputs() const {
    ReportInputs in;
    in.experiment = experiment;
    in.lm = lm;
    in.profiles = profiles;
    in.explanations = explanations;
    in.title = "Report " + kHostile;
    return in;
  }
};

// Profiles whose "taste" slice (2 soft tokens) varies mostly along one direction, split by code,
// and whose "background" slice (1 soft token) is small noise.
torch::Tensor fixture_profiles() {
  torch::manual_seed(7);
  auto profiles = torch::randn({kUsers, 3, kHidden}, torch::kFloat32) * 0.05;
  auto direction = torch::tensor({1.0f, -2.0f, 0.5f});
  for (std::int64_t u = 0; u < kUsers; ++u) {
    const float position = static_cast<float>(u % 4) - 1.5f;  // the user's taste code is u % 4
    profiles[u][0] += direction * position;
    profiles[u][1] += direction * (0.5f * position);
  }
  return profiles;
}

Fixture make_fixture(const TempDir& dir) {
  Fixture f{dir / "experiment", dir / "lm", dir / "profiles", dir / "explanations.jsonl"};
  for (const auto& d : {f.experiment, f.lm, f.profiles}) std::filesystem::create_directories(d);
  dir.write("experiment/experiment.json", kExperimentJson);
  dir.write("lm/pretrain_log.jsonl", kPretrainLog);
  dir.write("profiles/log.jsonl", kEmLog);
  dir.write("profiles/profile.json",
            R"({"attributes": [{"name": "taste", "soft_tokens": 2, "codes": 4, "levels": 2},
                               {"name": "background", "soft_tokens": 1, "codes": 2, "levels": 1}], "dim": 3})");
  std::string users, codes = "user,taste,taste.2,background\n";
  for (std::int64_t u = 0; u < kUsers; ++u) {
    users += "user-" + std::to_string(u) + "\n";
    codes += fmt::format("user-{},{},{},{}\n", u, u % 4, u % 3, u % 2);
  }
  dir.write("profiles/users.txt", users);
  dir.write("profiles/codes.csv", codes);
  tensor::write_safetensors(f.profiles / "profiles.safetensors", {{"profiles", fixture_profiles()}});
  std::string explanations;
  for (int code = 0; code < 4; ++code) {
    nlohmann::json line = {
        {"attribute", "taste"},
        {"level", 1},
        {"code", code},
        {"probe", "The user's taste in movies: <soft>. Their favourite kind of movie is"},
        {"continuation", code == 2 ? kHostile : " action films (19"},
        {"members",
         {{"users", 10},
          {"interactions_per_user", 85.8},
          {"like_rate", 0.55},
          {"mean_rating", 3.67},
          {"top_categories", {{{"value", code == 1 ? kHostile : "Adventure"}, {"share", 0.27}, {"lift", 1.18}}}}}}};
    explanations += line.dump() + "\n";
  }
  dir.write("explanations.jsonl", explanations);
  return f;
}

std::size_t count(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + part.size())) ++n;
  return n;
}

std::string lower(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

// Everything in `html` that would make a browser fetch something: any src/href that is not an
// in-page anchor, stylesheets, imports, frames, images, embeds.
std::vector<std::string> external_references(const std::string& html) {
  const std::string page = lower(html);
  std::vector<std::string> found;
  for (const char* tag : {"<link", "<img", "<iframe", "<object", "<embed", "<base", "@import", "url("})
    if (page.find(tag) != std::string::npos) found.push_back(tag);
  for (const char* attribute : {"src=", "href="}) {
    for (auto at = page.find(attribute); at != std::string::npos; at = page.find(attribute, at + 1)) {
      auto value = page.substr(at + std::string(attribute).size(), 40);
      if (!value.empty() && (value[0] == '"' || value[0] == '\'')) value.erase(0, 1);
      if (value.empty() || value[0] != '#') found.push_back(page.substr(at, 50));
    }
  }
  // The only URL the page may name is SVG's namespace, which is an identifier, never fetched.
  const std::size_t urls = count(page, "http://") + count(page, "https://");
  if (urls != count(page, "http://www.w3.org/2000/svg")) found.push_back("a http(s) URL other than SVG's namespace");
  return found;
}

// The JSON the page's script draws from.
nlohmann::json embedded_data(const std::string& html) {
  const std::string open = "<script type=\"application/json\" id=\"report-data\">";
  const auto begin = html.find(open);
  EXPECT_NE(begin, std::string::npos);
  const auto end = html.find("</script>", begin);
  return nlohmann::json::parse(html.substr(begin + open.size(), end - begin - open.size()));
}

TEST(Report, WritesOneSelfContainedPageWithEveryPlotAndTable) {
  TempDir dir;
  const auto fixture = make_fixture(dir);
  const auto out = dir / "out" / "report.html";
  const auto summary = write_report(fixture.inputs(), out);
  const std::string html = read_file(out);

  // LM: loss + perplexity; EM: NLL, quantization error, code perplexity; usage and projection: one
  // per attribute; CTR: AUC and LogLoss (gAUC has no value at all, so it is left out).
  EXPECT_EQ(summary.plots, 2u + 3u + 2u + 2u + 2u);
  EXPECT_EQ(count(html, "<figure class=\"plot\""), summary.plots);
  const auto data = embedded_data(html);
  EXPECT_EQ(data["plots"].size(), summary.plots);
  EXPECT_EQ(data["title"], "Report " + kHostile);
  // Inputs, experiment, groups, differences, explanations.
  EXPECT_EQ(summary.tables, 5u);
  ASSERT_EQ(summary.notes.size(), 1u);
  EXPECT_NE(summary.notes[0].find("no measurable gAUC"), std::string::npos) << summary.notes[0];

  EXPECT_EQ(external_references(html), std::vector<std::string>{});
  // The hostile strings stay text: exactly the page's own three script elements exist.
  EXPECT_EQ(count(html, "<script"), 3u);
  EXPECT_EQ(count(html, "</script>"), 3u);
  EXPECT_EQ(html.find("<script>alert"), std::string::npos);
  EXPECT_EQ(html.find("<!-- &"), std::string::npos);
  EXPECT_NE(html.find("&lt;/script&gt;&lt;script&gt;alert(&quot;pwned&quot;)"), std::string::npos);

  // Null means missing: the cold group's AUC of `codes` is n/a; the significant LogLoss gain is marked.
  EXPECT_NE(html.find("n/a"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"num better\">-0.0300 ± 0.0001</td>"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"num\">+0.0350 ± 0.0071</td>"), std::string::npos);  // p = 0.09: no mark

  // The bars carry each seed, and a null mean is a null bar rather than a zero.
  const nlohmann::json* auc = nullptr;
  for (const auto& [id, spec] : data["plots"].items())
    if (spec["kind"] == "bars" && spec["y_label"] == "AUC") auc = &spec;
  ASSERT_NE(auc, nullptr);
  EXPECT_EQ((*auc)["categories"], nlohmann::json({"all", "sparse", "cold"}));
  EXPECT_EQ((*auc)["series"][0]["values"][0]["seeds"], nlohmann::json({0.70, 0.72}));
  EXPECT_EQ((*auc)["series"][1]["values"][1]["mean"], 0.69);
  EXPECT_TRUE((*auc)["series"][1]["values"][2].is_null());

  // The EM curves follow the template's order (profile.json), not log.jsonl's sorted keys; the
  // validation NLL of round 1 (-1: not measured) is a gap.
  int checked = 0;
  for (const auto& [id, spec] : data["plots"].items()) {
    if (spec["kind"] != "line") continue;
    if (spec["y_label"] == "code perplexity") {
      ++checked;
      std::vector<std::string> names;
      for (const auto& s : spec["series"]) names.push_back(s["name"]);
      EXPECT_EQ(names, (std::vector<std::string>{"taste", "taste.2", "background"}));
    }
    if (spec["y_label"] == "NLL (nats/token)") {
      ++checked;
      ASSERT_EQ(spec["series"].size(), 2u);
      EXPECT_EQ(spec["series"][1]["points"], nlohmann::json::parse("[[1, null], [2, 1.25]]"));
    }
  }
  EXPECT_EQ(checked, 2);

  // Writing the same inputs again gives the same page, byte for byte.
  EXPECT_EQ(render_report(fixture.inputs()), html);
}

TEST(Report, LeavesOutWhatWasNotGivenAndSaysSo) {
  TempDir dir;
  const auto fixture = make_fixture(dir);
  ReportInputs in;
  in.experiment = fixture.experiment / "experiment.json";  // the file itself works as well as its directory
  ReportSummary summary;
  const std::string html = render_report(in, &summary);
  EXPECT_EQ(summary.plots, 2u);
  EXPECT_EQ(count(html, "<figure class=\"plot\""), 2u);
  ASSERT_EQ(summary.notes.size(), 4u);
  for (const char* option : {"--lm", "--profiles", "--explanations"})
    EXPECT_NE(html.find(std::string("No ") + option), std::string::npos) << option;
  EXPECT_EQ(html.find("Language-model pretraining"), std::string::npos);
  EXPECT_EQ(html.find("What the codes mean"), std::string::npos);
}

TEST(Report, ProjectsProfilesOnTheirPrincipalComponents) {
  TempDir dir;
  const auto fixture = make_fixture(dir);
  const auto projections = project_profiles(fixture.profiles, 2000);
  ASSERT_EQ(projections.size(), 2u);
  const auto& taste = projections[0];
  EXPECT_EQ(taste.attribute, "taste");
  EXPECT_EQ(taste.users, static_cast<std::size_t>(kUsers));
  ASSERT_EQ(taste.points.size(), static_cast<std::size_t>(kUsers));
  EXPECT_EQ(taste.codes, 4);
  // Almost all the variance lies along the planted direction, ordered by code along PC1.
  EXPECT_GT(taste.explained_variance[0], 0.95);
  EXPECT_LT(taste.explained_variance[1], 0.05);
  for (std::int64_t u = 0; u < kUsers; ++u) EXPECT_EQ(taste.points[u].code, u % 4);
  const double step = taste.points[1].x - taste.points[0].x;
  EXPECT_GT(std::abs(step), 0.5);
  for (std::int64_t u = 4; u < kUsers; u += 4) EXPECT_NEAR(taste.points[u].x, taste.points[0].x, std::abs(step) / 4);
  EXPECT_EQ(projections[1].codes, 2);

  // A subsample is evenly spaced and the same every time.
  const auto few = project_profiles(fixture.profiles, 10);
  ASSERT_EQ(few[0].points.size(), 10u);
  EXPECT_EQ(few[0].users, static_cast<std::size_t>(kUsers));
  const auto again = project_profiles(fixture.profiles, 10);
  for (std::size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(few[0].points[i].code, 0);  // rows 0, 4, 8, ...: all of taste code 0
    EXPECT_EQ(few[0].points[i].x, again[0].points[i].x);
  }

  // Without codes.csv (a fit without codebooks) every point is uncoloured.
  std::filesystem::remove(fixture.profiles / "codes.csv");
  const auto uncoded = project_profiles(fixture.profiles, 2000);
  EXPECT_EQ(uncoded[0].codes, 0);
  EXPECT_EQ(uncoded[0].points[3].code, -1);
}

TEST(Report, EscapesTextAndScriptData) {
  EXPECT_EQ(html_escape("a<b>&\"c\"'d'"), "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;");
  EXPECT_EQ(html_escape("名前 ok"), "名前 ok");
  EXPECT_EQ(html_escape(std::string("bad\xff<", 5)), "bad\xEF\xBF\xBD&lt;");
  EXPECT_EQ(html_escape(std::string("cut\xE5\x90", 5)), "cut\xEF\xBF\xBD\xEF\xBF\xBD");
  const nlohmann::ordered_json value = {{"text", "</script><!--<x>"}};
  const std::string text = json_for_script(value);
  EXPECT_EQ(text.find('<'), std::string::npos) << text;
  EXPECT_EQ(nlohmann::ordered_json::parse(text), value);
}

TEST(Report, BadInputsFailNamingTheFile) {
  TempDir dir;
  const auto fixture = make_fixture(dir);
  auto report_with = [&](const std::function<void(ReportInputs&)>& change) {
    ReportInputs in = fixture.inputs();
    change(in);
    return [in] { render_report(in); };
  };
  const std::string experiment_json = (fixture.experiment / "experiment.json").string();

  expect_error(report_with([&](ReportInputs& in) { in.experiment = dir / "nowhere"; }),
               {(dir / "nowhere" / "experiment.json").string(), "does not exist", "userip experiment"});
  expect_error(report_with([&](ReportInputs& in) { in.experiment.clear(); }), {"--experiment"});

  dir.write("experiment/experiment.json", "{\"format\": \"userip-experiment\", ");
  expect_error(report_with([](ReportInputs&) {}), {experiment_json, "not valid JSON"});
  auto without = [&](const std::string& key) {
    auto j = nlohmann::ordered_json::parse(kExperimentJson);
    j.erase(key);
    dir.write("experiment/experiment.json", j.dump());
  };
  without("summary");
  expect_error(report_with([](ReportInputs&) {}), {experiment_json, "'summary'"});
  without("variants");
  expect_error(report_with([](ReportInputs&) {}), {experiment_json, "'variants'"});
  auto j = nlohmann::ordered_json::parse(kExperimentJson);
  j["summary"][5].erase("metric");
  dir.write("experiment/experiment.json", j.dump());
  expect_error(report_with([](ReportInputs&) {}), {experiment_json, "summary[5]", "'metric'"});
  j = nlohmann::ordered_json::parse(kExperimentJson);
  j["summary"][0]["mean"] = "high";
  dir.write("experiment/experiment.json", j.dump());
  expect_error(report_with([](ReportInputs&) {}), {experiment_json, "summary[0]", "'mean'", "number or null"});
  j = nlohmann::ordered_json::parse(kExperimentJson);
  j["format"] = "something-else";
  dir.write("experiment/experiment.json", j.dump());
  expect_error(report_with([](ReportInputs&) {}), {experiment_json, "'format'"});
  dir.write("experiment/experiment.json", kExperimentJson);

  dir.write("lm/pretrain_log.jsonl", std::string(kPretrainLog) + "{\"step\": 100, \"train_loss\": 2.\n");
  expect_error(report_with([](ReportInputs&) {}),
               {(fixture.lm / "pretrain_log.jsonl").string() + ":5", "not valid JSON"});
  dir.write("lm/pretrain_log.jsonl", "{\"train_loss\": 2.5}\n");
  expect_error(report_with([](ReportInputs&) {}), {(fixture.lm / "pretrain_log.jsonl").string() + ":1", "'step'"});
  expect_error(report_with([&](ReportInputs& in) { in.lm = dir / "no-lm"; }),
               {(dir / "no-lm" / "pretrain_log.jsonl").string(), "does not exist"});
  dir.write("lm/pretrain_log.jsonl", kPretrainLog);

  dir.write("profiles/log.jsonl", std::string(kEmLog) + "[1, 2]\n");
  expect_error(report_with([](ReportInputs&) {}),
               {(fixture.profiles / "log.jsonl").string() + ":3", "expected a JSON object"});
  dir.write("profiles/log.jsonl", kEmLog);

  dir.write("explanations.jsonl", "\n{\"code\": 1, \"level\": 1}\n");
  expect_error(report_with([](ReportInputs&) {}), {fixture.explanations.string() + ":2", "'attribute'"});
  dir.write("explanations.jsonl", "");

  dir.write("profiles/profile.json", R"({"attributes": [{"name": "taste", "soft_tokens": 5}]})");
  expect_error(report_with([](ReportInputs&) {}),
               {(fixture.profiles / "profiles.safetensors").string(), "'profiles' has shape"});
  dir.write("profiles/profile.json", R"({"dim": 3})");
  expect_error(report_with([](ReportInputs&) {}), {(fixture.profiles / "profile.json").string(), "'attributes'"});
}

TEST(ReportCli, WritesTheReportAndReportsErrors) {
  TempDir dir;
  const auto fixture = make_fixture(dir);
  const auto out = dir / "cli.html";
  std::string output;
  ASSERT_EQ(run_cli("report --experiment " + fixture.experiment.string() + " --out " + out.string() + " --lm " +
                        fixture.lm.string() + " --profiles " + fixture.profiles.string() + " --explanations " +
                        fixture.explanations.string() + " --title 'CLI run' --max-points 25",
                    &output),
            0)
      << output;
  EXPECT_NE(output.find("wrote " + out.string() + " (11 plots, 5 tables)"), std::string::npos) << output;
  const std::string html = read_file(out);
  EXPECT_NE(html.find("<title>CLI run</title>"), std::string::npos);
  EXPECT_NE(html.find("25 of 40 users (evenly spaced)"), std::string::npos);

  ASSERT_EQ(run_cli("report --experiment " + (dir / "missing").string() + " --out " + out.string(), &output), 1)
      << output;
  EXPECT_NE(output.find("error: " + (dir / "missing" / "experiment.json").string() + " does not exist"),
            std::string::npos)
      << output;
  EXPECT_NE(run_cli("report --out " + out.string(), &output), 0);
  EXPECT_NE(output.find("--experiment"), std::string::npos) << output;
}

// ---- in the browser ----

const char* const kChromium = "/usr/bin/chromium";

// The browser tests need Chromium; a machine without it fails them (the suite should not pass
// silently without checking the page) unless the caller opts out explicitly.
#define USERIP_REQUIRE_BROWSER()                                                                            \
  do {                                                                                                      \
    const char* skip = std::getenv("USERIP_SKIP_BROWSER_TESTS");                                            \
    if (skip && std::string(skip) == "1") GTEST_SKIP() << "USERIP_SKIP_BROWSER_TESTS=1";                    \
    if (!std::filesystem::exists(kChromium))                                                                \
      FAIL() << kChromium << " is missing: run scripts/setup.sh to install Chromium (Debian package "       \
             << "'chromium'), or set USERIP_SKIP_BROWSER_TESTS=1 to skip the browser tests";                \
  } while (0)

struct Rendered {
  int status = -1;
  std::string output;
};

Rendered render(const std::filesystem::path& html, const std::filesystem::path& png, const std::filesystem::path& dom) {
  const std::string command = "bash '" + std::string(USERIP_SOURCE_DIR) + "/scripts/render_report.sh' '" +
                              html.string() + "' '" + png.string() + "' --dom '" + dom.string() + "' 2>&1";
  Rendered r;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buffer{};
  for (std::size_t n; (n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0;) r.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Width and height from a PNG's IHDR chunk, or {0, 0} when `bytes` is not a PNG.
std::pair<std::uint32_t, std::uint32_t> png_size(const std::string& bytes) {
  if (bytes.size() < 24 || bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0 || bytes.compare(12, 4, "IHDR") != 0)
    return {0, 0};
  auto be32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

TEST(ReportBrowser, DrawsEveryPlotWithoutScriptErrors) {
  USERIP_REQUIRE_BROWSER();
  TempDir dir;
  const auto fixture = make_fixture(dir);
  const auto page = dir / "report.html";
  const auto summary = write_report(fixture.inputs(), page);
  const auto rendered = render(page, dir / "report.png", dir / "dom.html");
  ASSERT_EQ(rendered.status, 0) << rendered.output;
  EXPECT_NE(rendered.output.find(fmt::format("{0} of {0} plots drawn, 0 script errors", summary.plots)),
            std::string::npos)
      << rendered.output;

  const std::string dom = read_file(dir / "dom.html");
  EXPECT_NE(dom.find("data-errors=\"0\""), std::string::npos);
  EXPECT_NE(dom.find("data-rendered=\"true\""), std::string::npos);
  EXPECT_EQ(count(dom, "data-drawn=\"true\""), summary.plots);
  // The hostile strings are still text once the scripts ran (the title went through textContent too).
  EXPECT_EQ(dom.find("<script>alert"), std::string::npos);
  // A scatter holds one circle per drawn user.
  EXPECT_GE(count(dom, "<circle"), static_cast<std::size_t>(2 * kUsers));

  const std::string png = read_file(dir / "report.png");
  const auto [width, height] = png_size(png);
  EXPECT_EQ(width, 1400u);
  EXPECT_GT(height, 2000u) << "the screenshot should be as tall as the page";
  // A blank page of that size compresses to a few kilobytes; plots, text and tables do not.
  EXPECT_GT(png.size(), 60000u);
}

TEST(ReportBrowser, RenderScriptFailsOnScriptErrorsAndUndrawnPlots) {
  USERIP_REQUIRE_BROWSER();
  TempDir dir;
  const auto fixture = make_fixture(dir);
  std::string html = render_report(fixture.inputs());
  // A drawing spec no drawer knows: its figure stays empty and the page reports the error.
  const std::string kind = "\"kind\":\"scatter\"";
  const auto at = html.find(kind);
  ASSERT_NE(at, std::string::npos);
  html.replace(at, kind.size(), "\"kind\":\"pie\"");
  dir.write("broken.html", html);
  const auto rendered = render(dir / "broken.html", dir / "broken.png", dir / "broken-dom.html");
  EXPECT_EQ(rendered.status, 1) << rendered.output;
  EXPECT_NE(rendered.output.find("1 script error(s)"), std::string::npos) << rendered.output;
  EXPECT_NE(rendered.output.find("no drawer for plots of kind 'pie'"), std::string::npos) << rendered.output;
  EXPECT_NE(rendered.output.find("1 of 11 plots were not drawn"), std::string::npos) << rendered.output;
}

}  // namespace
}  // namespace userip::report
