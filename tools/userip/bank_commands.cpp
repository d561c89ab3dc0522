#include <fmt/format.h>

#include <iostream>
#include <sstream>

#include "commands.h"
#include "userip/store/bank_export.h"
#include "userip/store/feature_bank.h"
#include "userip/store/profile_dir.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::cli {

namespace {

struct BankBuildCommand {
  std::filesystem::path profile, out;

  void run() const {
    const store::BankContents contents = store::read_profile_dir(profile);
    const store::BankMetadata meta = store::write_bank(out, contents);
    std::cout << fmt::format("wrote feature bank {} version {} ({} users, {} fields)\n", out.string(), meta.version,
                             contents.users.size(), contents.fields.size());
  }
};

struct BankInfoCommand {
  std::filesystem::path bank;
  bool json = false;

  void run() const {
    const auto opened = store::FeatureBank::open(bank);
    std::cout << (json ? store::json_text(store::bank_info_json(opened), 2) + "\n" : store::bank_info_text(opened));
  }
};

struct BankGetCommand {
  std::filesystem::path bank;
  std::string user;

  void run() const {
    const auto opened = store::FeatureBank::open(bank);
    const std::int32_t* codes = opened.find(user);
    USERIP_CHECK(codes, "user '{}' is not in the feature bank {} ({} users)", user, bank.string(), opened.size());
    std::cout << store::json_text({{"user", user},
                                   {"codes", store::codes_json(opened, codes)},
                                   {"version", opened.metadata().version}})
              << "\n";
  }
};

struct BankExportCommand {
  std::filesystem::path bank, out;
  std::string format = "csv";  // checked when the command runs, so that a bad value is an "error:" like the others

  void run() const {
    store::CodesFormat codes_format;
    try {
      codes_format = store::codes_format_from_string(format);
    } catch (const Error& e) {
      fail("--format: {}", e.what());
    }
    const auto opened = store::FeatureBank::open(bank);
    if (out.empty()) {
      store::write_codes(opened, codes_format, std::cout);
      std::cout.flush();
      USERIP_CHECK(std::cout.good(), "cannot write the export to standard output");
      return;
    }
    std::ostringstream text;
    store::write_codes(opened, codes_format, text);
    write_file_atomic(out, text.str());
    std::cerr << fmt::format("exported {} users of {} version {} -> {}\n", opened.size(), bank.string(),
                             opened.metadata().version, out.string());
  }
};

}  // namespace

void add_bank_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* bank = app.add_subcommand("bank", "The feature bank: a SQLite file mapping each user to profile codes");
  bank->require_subcommand(1);
  {
    auto c = std::make_shared<BankBuildCommand>();
    auto* cmd = bank->add_subcommand(
        "build", "Write a new version of a feature bank from a profile-fit directory (codes.csv, profile.json)");
    cmd->add_option("--profile", c->profile, "Profile-fit output directory holding codes.csv and profile.json")
        ->required();
    cmd->add_option("--out", c->out, "Feature bank file; an existing bank is replaced atomically by the next version")
        ->required();
    on_run(cmd, [c] { c->run(); });
  }
  {
    auto c = std::make_shared<BankInfoCommand>();
    auto* cmd = bank->add_subcommand(
        "info", "Print a feature bank's version, creation time, fingerprint, fields and user count");
    cmd->add_option("bank", c->bank, "Feature bank file")->required();
    cmd->add_flag("--json", c->json, "Print JSON instead of text");
    on_run(cmd, [c] { c->run(); });
  }
  {
    auto c = std::make_shared<BankGetCommand>();
    auto* cmd = bank->add_subcommand("get", "Print one user's codes as JSON (exit status 1 if the user is unknown)");
    cmd->add_option("bank", c->bank, "Feature bank file")->required();
    cmd->add_option("user", c->user, "User id, as in the dataset")->required();
    on_run(cmd, [c] { c->run(); });
  }
  {
    auto c = std::make_shared<BankExportCommand>();
    auto* cmd = bank->add_subcommand("export", "Write every user's codes as CSV (the codes.csv layout) or JSON lines");
    cmd->add_option("bank", c->bank, "Feature bank file")->required();
    cmd->add_option("--format", c->format, "csv (header user,<fields...>) or jsonl ({\"user\", \"codes\"} per line)")
        ->capture_default_str();
    cmd->add_option("--out", c->out, "Output file, written atomically (default: standard output)");
    on_run(cmd, [c] { c->run(); });
  }
}

}  // namespace userip::cli
