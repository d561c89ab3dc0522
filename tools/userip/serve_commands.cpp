#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <iostream>
#include <memory>

#include "commands.h"
#include "model_options.h"
#include "userip/serve/server.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"
#include "userip/tensor/threads.h"

namespace userip::cli {

namespace {

constexpr const char* kTokenEnv = "USERIP_ADMIN_TOKEN";

struct ServeCommand {
  serve::StateSource source;
  serve::ServerOptions server;
  std::filesystem::path admin_token_file;
  std::filesystem::path lm;
  std::filesystem::path profile;
  int fold_in_rounds = 0;

  std::string read_admin_token() const {
    if (!admin_token_file.empty()) {
      std::string token = read_file(admin_token_file);
      while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
      USERIP_CHECK(!token.empty(), "{}: the admin token file is empty", admin_token_file.string());
      return token;
    }
    const char* env = std::getenv(kTokenEnv);
    return env ? std::string(env) : std::string();
  }

  void run() {
    USERIP_CHECK(lm.empty() == profile.empty(), "--lm and --profile go together (the fold-in endpoint needs both)");
    USERIP_CHECK(fold_in_rounds >= 0, "--fold-in-rounds {} must be >= 0", fold_in_rounds);
    server.admin_token = read_admin_token();
    server.validate();
    // Each request runs single-threaded; concurrency comes from the event loops, so ATen and
    // OpenBLAS pools would only oversubscribe the cores.
    configure_threads(1);
    std::unique_ptr<serve::FoldIn> fold_in;
    if (!lm.empty()) {
      profile::SessionOptions options;
      options.model = lm;
      fold_in = std::make_unique<serve::FoldIn>(profile, options, fold_in_rounds);
    }
    serve::Server http(source, server, std::move(fold_in));
    const int port = http.bind();
    spdlog::info("serving {} ({})", source.model.string(), http.state()->describe().dump());
    spdlog::info("admin endpoints {}; fold-in endpoint {}", server.admin_token.empty() ? "off" : "on",
                 lm.empty() ? "off" : "on");
    // The line scripts wait for (stdout, flushed): the port, also when --port 0 chose it.
    std::cout << fmt::format("listening on http://{}:{}", server.host, port) << std::endl;
    serve::serve_until_terminated(http);
    std::cout << "stopped" << std::endl;
  }
};

}  // namespace

void add_serve_commands(CLI::App& app, GlobalOptions& /*global*/) {
  auto* cmd = app.add_subcommand(
      "serve",
      "HTTP scoring service over a trained CTR model and the feature bank: scores, profiles with their "
      "explanations, Prometheus metrics, hot reload on SIGHUP or POST /admin/reload, graceful shutdown on SIGTERM. "
      "No LLM on the request path unless --lm enables the fold-in endpoint (docs/SERVING.md)");
  auto c = std::make_shared<ServeCommand>();
  cmd->add_option("--model", c->source.model, "`userip ctr train` output directory")->required();
  cmd->add_option("--bank", c->source.banks,
                  "Feature bank (repeatable: e.g. the fitted users' and the folded-in users' banks); needed by a model "
                  "trained with profile codes");
  cmd->add_option("--explanations", c->source.explanations,
                  "JSON lines of `userip profile explain --json`, returned with each profile");
  cmd->add_option("--host", c->server.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", c->server.port, "Port (0 = any free port; the chosen one is printed)")->capture_default_str();
  cmd->add_option("--workers", c->server.workers,
                  "Event-loop threads (default: one per core); each accepts, parses and scores requests for any "
                  "number of connections. Each request runs single-threaded (the global --threads does not apply); "
                  "fold-in and reload requests run on one background thread")
      ->capture_default_str();
  cmd->add_option("--keep-alive", c->server.keep_alive_seconds, "Seconds an idle keep-alive connection is kept")
      ->capture_default_str();
  cmd->add_option("--max-items", c->server.limits.max_items, "Most candidate items per scored user")->capture_default_str();
  cmd->add_option("--max-batch-users", c->server.limits.max_batch_users, "Most users per /v1/score:batch request")
      ->capture_default_str();
  cmd->add_option("--max-body-bytes", c->server.limits.max_body_bytes, "Largest request body (larger: 413)")
      ->capture_default_str();
  cmd->add_option("--admin-token-file", c->admin_token_file,
                  fmt::format("File holding the token of POST /admin/reload (default: the {} environment variable; "
                              "neither = admin endpoints off)",
                              kTokenEnv));
  cmd->add_option("--lm", c->lm,
                  "Language model: enables POST /v1/users/{id}/profile:infer (fold-in through the LM; off by default)");
  cmd->add_option("--profile", c->profile, "`userip profile fit` output directory the fold-in endpoint uses (with --lm)");
  cmd->add_option("--fold-in-rounds", c->fold_in_rounds,
                  "E-step rounds of a fold-in (0 = as many as the fit had; unused when the fit has codebooks of "
                  "one level, whose fold-in assigns codes by likelihood)")
      ->capture_default_str();
  on_run(cmd, [c] { c->run(); });
}

}  // namespace userip::cli
