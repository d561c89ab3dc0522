#pragma once
// The HTTP scoring service (libmicrohttpd's event loops): routes, error bodies, metrics, hot reload,
// graceful shutdown. docs/SERVING.md is the API reference. No LLM is on the request path except the
// optional fold-in endpoint, which exists to measure what the feature bank saves.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "userip/serve/metrics.h"
#include "userip/serve/requests.h"
#include "userip/serve/service.h"

namespace userip::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;            // 0 = any free port (bind() returns it)
  // Event-loop threads. Each one accepts, parses and scores on its own thread, so a request never
  // waits for a thread hand-off; any number of keep-alive connections share them. The fold-in and
  // reload routes, which take up to seconds, run on one background thread instead.
  int workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int keep_alive_seconds = 5;  // an idle connection is closed after this
  RequestLimits limits;
  std::string admin_token;     // empty = admin endpoints off (404)
  void validate() const;
};

class Server {
 public:
  // Loads the state (throws naming the file when it cannot). `fold_in` may be null (endpoint off).
  Server(const StateSource& source, const ServerOptions& options, std::unique_ptr<FoldIn> fold_in = nullptr);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket; returns the port. Throws naming host and port on failure.
  int bind();
  // Serves until stop(); returns when every accepted request has been answered.
  void run();
  // Stops accepting; requests in flight finish. Safe from any thread, idempotent.
  void stop();

  // Loads a new state (from `source`, or the current paths) and swaps it in atomically; on error the
  // old state keeps serving, the failure is counted and the error propagates.
  std::shared_ptr<const ServingState> reload(const StateSource* source = nullptr);

  std::shared_ptr<const ServingState> state() const { return state_.current(); }
  const Metrics& metrics() const { return metrics_; }
  std::int64_t in_flight() const { return in_flight_.load(); }
  int port() const { return port_; }

 private:
  struct Http;
  friend struct Http;
  StateHolder state_;
  ServerOptions options_;
  std::unique_ptr<FoldIn> fold_in_;
  Metrics metrics_;
  std::atomic<std::int64_t> in_flight_{0};
  std::atomic<bool> stopping_{false};
  int port_ = -1;
  std::unique_ptr<Http> http_;
};

// Runs `server` (bound already) until SIGTERM or SIGINT (stop, in-flight requests finish, return),
// reloading on SIGHUP (a failed reload is logged; the old version keeps serving). The handlers only
// write to a pipe; a watcher thread does the work. The previous handlers are restored on return.
void serve_until_terminated(Server& server);

}  // namespace userip::serve
