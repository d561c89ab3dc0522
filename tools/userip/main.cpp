// userip: infer user profiles with a frozen language model, quantize them into profile IDs,
// and use them in CTR models. This file wires the subcommands; the work is in the library.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <exception>
#include <vector>

#include "commands.h"
#include "userip/util/allocator.h"
#include "userip/util/crash.h"
#include "userip/util/error.h"
#include "userip/util/log.h"
#include "userip/dist/world.h"
#include "userip/lm/precision.h"
#include "userip/tensor/tensor_memory.h"
#include "userip/tensor/threads.h"

namespace userip::cli {

namespace {
std::vector<std::pair<CLI::App*, Action>>& actions() {
  static std::vector<std::pair<CLI::App*, Action>> registered;
  return registered;
}
}  // namespace

void on_run(CLI::App* command, Action action) { actions().emplace_back(command, std::move(action)); }

}  // namespace userip::cli

int main(int argc, char** argv) {
  using namespace userip;
  install_crash_handler();
  CLI::App app{
      "userip: infer each user's latent profile with a frozen language model (UserIP-Tuning),\n"
      "quantize it into profile IDs, and measure and serve them in CTR models."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "userip 0.1.0");
  cli::GlobalOptions global;
  app.add_option("--threads", global.threads, "Threads for ATen and OpenBLAS; the profile fit's E-step runs this many batches side by side, each single-threaded (0 = all cores)")
      ->check(CLI::NonNegativeNumber)
      ->envname("USERIP_THREADS")
      ->capture_default_str();
  app.add_option("--log-level", global.log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();

  cli::add_data_commands(app, global);
  cli::add_lm_commands(app, global);
  cli::add_profile_commands(app, global);
  cli::add_bank_commands(app, global);
  cli::add_ctr_commands(app, global);
  cli::add_report_commands(app, global);
  cli::add_serve_commands(app, global);
  cli::add_dist_commands(app, global);
  cli::add_options_commands(app, global);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    // Ranks other than 0 of a launched run say only what goes wrong: rank 0 reports for all.
    const char* rank = std::getenv("RANK");
    if (rank && std::string(rank) != "0" && global.log_level != "off" && global.log_level != "error")
      global.log_level = "warn";
    log_init(global.log_level);
    // A launched rank joins its world before any work, so that a missing rank is named at once.
    dist::World::get();
    configure_allocator();
#if defined(__SANITIZE_ADDRESS__)
    tensor::use_caching_tensor_allocator();  // see its header: ASan has no cache for large blocks
#endif
    int threads = configure_threads(global.threads);
    BlasInfo blas = detect_blas();
    if (blas.is_reference) {
      spdlog::warn("the BLAS in use is {} rather than OpenBLAS: linear algebra will be about 10x slower; "
                   "install it with scripts/setup.sh (package libopenblas0-pthread)",
                   blas.name);
    }
    const std::string bf16 = lm::cpu_bf16_instructions();
    spdlog::debug("threads: {}; BLAS: {} {}; CPU bfloat16: {}", threads, blas.name, blas.config,
                  bf16.empty() ? "none (bf16 is emulated)" : bf16);
    for (auto& [command, action] : cli::actions()) {
      if (command->parsed()) action();
    }
  } catch (const std::exception& e) {
    // A rank of a launched run says which one it is, unless the message already does.
    const char* rank = std::getenv("RANK");
    const std::string message = e.what();
    if (rank && std::getenv("WORLD_SIZE") && message.rfind("rank ", 0) != 0)
      std::fprintf(stderr, "error: rank %s: %s\n", rank, message.c_str());
    else
      std::fprintf(stderr, "error: %s\n", message.c_str());
    return 1;
  }
  return 0;
}
