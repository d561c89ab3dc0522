#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <sstream>

#include "commands.h"
#include "userip/data/export.h"
#include "userip/data/records.h"
#include "userip/store/feature_bank.h"
#include "userip/store/profile_dir.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"

namespace userip::cli {

namespace {

// JSON text that never throws on ids that are not UTF-8 (they are bytes to the bank).
std::string to_json_text(const nlohmann::ordered_json& value, int indent = -1) {
  return value.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

nlohmann::ordered_json info_json(const store::FeatureBank& bank) {
  const auto& m = bank.metadata();
  nlohmann::ordered_json fields = nlohmann::ordered_json::array();
  for (const auto& f : m.fields) fields.push_back({{"name", f.name}, {"cardinality", f.cardinality}});
  return {{"path", bank.path().string()},
          {"version", m.version},
          {"created_at", m.created_at},
          {"codebook_fingerprint", m.codebook_fingerprint},
          {"users", bank.size()},
          {"fields", fields},
          {"extra", nlohmann::ordered_json::parse(m.extra.dump())}};
}

std::string info_text(const store::FeatureBank& bank) {
  const auto& m = bank.metadata();
  std::string text = fmt::format(
      "feature bank {}\n  version:              {}\n  created_at:           {}\n  codebook_fingerprint: {}\n"
      "  users:                {}\n  fields ({}):\n",
      bank.path().string(), m.version, m.created_at, m.codebook_fingerprint, bank.size(), m.fields.size());
  for (const auto& f : m.fields) text += fmt::format("    {:<20} {} codes\n", f.name, f.cardinality);
  if (!m.extra.empty()) text += "  extra:                " + m.extra.dump() + "\n";
  return text;
}

nlohmann::ordered_json codes_json(const store::FeatureBank& bank, const std::int32_t* codes) {
  nlohmann::ordered_json object = nlohmann::ordered_json::object();
  for (std::size_t f = 0; f < bank.fields().size(); ++f) object[bank.fields()[f].name] = codes[f];
  return object;
}

void export_bank(const store::FeatureBank& bank, const std::string& format, std::ostream& out) {
  const auto& fields = bank.fields();
  if (format == "csv") {
    std::string line = "user";
    for (const auto& f : fields) line += "," + data::csv_escape(f.name);
    out << line << "\n";
  }
  for (std::size_t i = 0; i < bank.size(); ++i) {
    const std::int32_t* codes = bank.codes_at(i);
    if (format == "csv") {
      std::string line = data::csv_escape(bank.user_at(i));
      for (std::size_t f = 0; f < fields.size(); ++f) line += "," + std::to_string(codes[f]);
      out << line << "\n";
    } else {
      out << to_json_text({{"user", bank.user_at(i)}, {"codes", codes_json(bank, codes)}}) << "\n";
    }
  }
}

}  // namespace

void add_bank_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* bank = app.add_subcommand("bank", "The feature bank: a SQLite file mapping each user to profile codes");
  bank->require_subcommand(1);

  {  // bank build
    auto* cmd = bank->add_subcommand(
        "build", "Write a new version of a feature bank from a profile-fit directory (codes.csv, profile.json)");
    auto profile = std::make_shared<std::filesystem::path>();
    auto out = std::make_shared<std::filesystem::path>();
    cmd->add_option("--profile", *profile, "Profile-fit output directory holding codes.csv and profile.json")
        ->required();
    cmd->add_option("--out", *out,
                    "Feature bank file; an existing bank is replaced atomically by the next version")
        ->required();
    on_run(cmd, [profile, out] {
      auto contents = store::read_profile_dir(*profile);
      auto meta = store::write_bank(*out, contents);
      std::cout << fmt::format("wrote feature bank {} version {} ({} users, {} fields)\n", out->string(),
                               meta.version, contents.users.size(), contents.fields.size());
    });
  }

  {  // bank info
    auto* cmd = bank->add_subcommand("info", "Print a feature bank's version, creation time, fingerprint, fields and "
                                             "user count");
    auto path = std::make_shared<std::filesystem::path>();
    auto json = std::make_shared<bool>(false);
    cmd->add_option("bank", *path, "Feature bank file")->required();
    cmd->add_flag("--json", *json, "Print JSON instead of text");
    on_run(cmd, [path, json] {
      auto bank = store::FeatureBank::open(*path);
      std::cout << (*json ? to_json_text(info_json(bank), 2) + "\n" : info_text(bank));
    });
  }

  {  // bank get
    auto* cmd = bank->add_subcommand("get", "Print one user's codes as JSON (exit status 1 if the user is unknown)");
    auto path = std::make_shared<std::filesystem::path>();
    auto user = std::make_shared<std::string>();
    cmd->add_option("bank", *path, "Feature bank file")->required();
    cmd->add_option("user", *user, "User id, as in the dataset")->required();
    on_run(cmd, [path, user] {
      auto bank = store::FeatureBank::open(*path);
      const std::int32_t* codes = bank.find(*user);
      USERIP_CHECK(codes, "user '{}' is not in the feature bank {} ({} users)", *user, path->string(), bank.size());
      std::cout << to_json_text({{"user", *user},
                                 {"codes", codes_json(bank, codes)},
                                 {"version", bank.metadata().version}})
                << "\n";
    });
  }

  {  // bank export
    auto* cmd = bank->add_subcommand("export", "Write every user's codes as CSV (the codes.csv layout) or JSON lines");
    auto path = std::make_shared<std::filesystem::path>();
    auto format = std::make_shared<std::string>("csv");
    auto out = std::make_shared<std::filesystem::path>();
    cmd->add_option("bank", *path, "Feature bank file")->required();
    // Checked when the command runs, so that a bad value is an "error:" like the others.
    cmd->add_option("--format", *format, "csv (header user,<fields...>) or jsonl ({\"user\", \"codes\"} per line)")
        ->capture_default_str();
    cmd->add_option("--out", *out, "Output file, written atomically (default: standard output)");
    on_run(cmd, [path, format, out] {
      USERIP_CHECK(*format == "csv" || *format == "jsonl", "--format: '{}' is not a format (expected csv or jsonl)",
                   *format);
      auto bank = store::FeatureBank::open(*path);
      if (out->empty()) {
        export_bank(bank, *format, std::cout);
        std::cout.flush();
        USERIP_CHECK(std::cout.good(), "cannot write the export to standard output");
        return;
      }
      std::ostringstream text;
      export_bank(bank, *format, text);
      write_file_atomic(*out, text.str());
      std::cerr << fmt::format("exported {} users of {} version {} -> {}\n", bank.size(), path->string(),
                               bank.metadata().version, out->string());
    });
  }
}

}  // namespace userip::cli
