#pragma once
// `userip report`: one self-contained HTML page of a run's results — the LM's pretraining curves,
// the EM fit's curves and code usage, a 2-D projection of the profiles, the CTR experiment's
// metrics with their paired differences to the base variant, and what each code means.
// Every number the page draws is embedded in it as JSON and drawn into SVG by a little inline
// JavaScript: the page needs no network and no library, so it can be mailed or archived as it is.
// docs/REPORT.md describes the page; scripts/render_report.sh renders it to a PNG.
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace userip::report {

// Paths of the inputs; an empty path is an input not given, whose sections are left out (the
// page says so). Only the experiment is required.
struct ReportInputs {
  std::filesystem::path experiment;    // a `ctr experiment` directory holding experiment.json, or the file
  std::filesystem::path lm;            // an `lm pretrain` directory holding pretrain_log.jsonl
  std::filesystem::path profiles;      // a `profile fit` directory (profile.json, log.jsonl, profiles.safetensors...)
  std::filesystem::path explanations;  // JSON lines of `userip profile explain --json`
  std::string title = "userip report";
  // Points of each profile scatter: a browser stays responsive and the page small.
  std::size_t max_projection_points = 2000;
};

struct ReportSummary {
  std::size_t plots = 0;           // figures the page draws (each has class "plot")
  std::size_t tables = 0;
  std::vector<std::string> notes;  // what was left out and why, as shown on the page
};

// The page as text. Throws userip::Error naming the file (and line or key) of a malformed input.
std::string render_report(const ReportInputs& inputs, ReportSummary* summary = nullptr);
// render_report() written atomically to `out`.
ReportSummary write_report(const ReportInputs& inputs, const std::filesystem::path& out);

// The profiles of one attribute projected on their first two principal components.
struct ProfileProjection {
  struct Point {
    double x = 0, y = 0;
    std::int64_t code = -1;  // the user's level-1 code of the attribute; -1 when the fit has no codes
  };
  std::string attribute;
  std::int64_t codes = 0;                          // number of distinct code values seen (max + 1)
  std::size_t users = 0;                           // all users of the fit, before subsampling
  std::array<double, 2> explained_variance{};      // share of the variance along each component
  std::vector<Point> points;                       // at most max_points, in users.txt order
};

// One projection per attribute of a `profile fit` directory. The rows are a deterministic,
// evenly spaced subsample of at most `max_points` users (all of them when fewer); the components
// are those of that subsample, centred, by SVD, each signed so its largest loading is positive
// (so the picture does not flip between BLAS builds).
std::vector<ProfileProjection> project_profiles(const std::filesystem::path& profiles_dir, std::size_t max_points);

// Building blocks, exposed for tests.
// `text` safe as HTML element content or a quoted attribute value (& < > " ' escaped; bytes that
// are not UTF-8 become U+FFFD so they cannot swallow markup).
std::string html_escape(std::string_view text);
// `value` as JSON text safe inside <script type="application/json">: every '<' is written \u003c,
// so neither "</script>" nor "<!--" in a user's string can end or change the script element.
std::string json_for_script(const nlohmann::ordered_json& value);

}  // namespace userip::report
