#include "userip/data/movielens.h"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include "userip/util/error.h"
#include "userip/util/log.h"

namespace userip::data {

namespace {
constexpr const char* kSetupHint =
    "install it with `bash scripts/setup.sh` (Debian packages r-base-core and r-cran-dslabs)";

// Single quotes for a POSIX shell; the paths come from the user.
std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

// R string literal.
std::string r_quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}
}  // namespace

void export_movielens_csv(const MovieLensOptions& options, const std::filesystem::path& csv_path) {
  namespace fs = std::filesystem;
  USERIP_CHECK(fs::exists(options.dslabs_data_dir / "Rdata.rdb"),
               "the R package dslabs is not installed (no {}): {}", (options.dslabs_data_dir / "Rdata.rdb").string(),
               kSetupHint);
  std::string script = fmt::format(
      "e <- new.env(); lazyLoad({}, envir = e); "
      "if (!exists('movielens', envir = e)) stop('dslabs has no movielens data set'); "
      "m <- get('movielens', envir = e); m$genres <- as.character(m$genres); "
      "write.csv(m, {}, row.names = FALSE, na = '', fileEncoding = 'UTF-8')",
      r_quote((options.dslabs_data_dir / "Rdata").string()), r_quote(csv_path.string()));
  std::string command = fmt::format("{} --vanilla -e {} 2>&1", shell_quote(options.rscript.string()),
                                    shell_quote(script));
  spdlog::info("exporting MovieLens ml-latest-small from the R package dslabs");
  FILE* pipe = popen(command.c_str(), "r");
  USERIP_CHECK(pipe != nullptr, "cannot run {}: {}", options.rscript.string(), kSetupHint);
  std::string output;
  char buffer[4096];
  std::size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  int status = pclose(pipe);
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  USERIP_CHECK(code != 127, "Rscript was not found: {}", kSetupHint);
  USERIP_CHECK(code == 0 && fs::exists(csv_path), "exporting MovieLens with R failed (exit {}): {}", code, output);
}

ImportReport import_movielens(const MovieLensOptions& options) {
  namespace fs = std::filesystem;
  fs::path work = fs::temp_directory_path() / fmt::format("userip-movielens-{}", ::getpid());
  fs::create_directories(work);
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } cleanup{work};
  fs::path csv = work / "movielens.csv";
  export_movielens_csv(options, csv);

  ImportOptions import;
  import.interactions = csv;
  import.out = options.out;
  import.user_column = "userId";
  import.item_column = "movieId";
  import.rating_column = "rating";
  import.timestamp_column = "timestamp";
  // The export repeats each movie's attributes on every rating row.
  import.item_fields_from_interactions = {"title", "year", "genres"};
  import.field_kinds = {{"title", FieldKind::text}, {"year", FieldKind::number}, {"genres", FieldKind::category_list}};
  import.show_progress = options.show_progress;
  ImportReport report = import_dataset(import);
  return report;
}

}  // namespace userip::data
