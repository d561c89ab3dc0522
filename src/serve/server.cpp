#include "userip/serve/server.h"

#include <httplib.h>
#include <signal.h>
#include <unistd.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <regex>
#include <thread>

#include "userip/util/error.h"

namespace userip::serve {

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kJson = "application/json";

// The route a request counts under in the metrics: the pattern, not the path, so that user ids do
// not make one time series each.
std::string route_of(const std::string& method, const std::string& path) {
  static const std::regex profile(R"(/v1/users/[^/]+/profile)");
  static const std::regex infer(R"(/v1/users/[^/]+/profile:infer)");
  if (path == "/v1/score" || path == "/v1/score:batch" || path == "/healthz" || path == "/readyz" ||
      path == "/metrics" || path == "/admin/reload")
    return method + " " + path;
  if (std::regex_match(path, profile)) return method + " /v1/users/{id}/profile";
  if (std::regex_match(path, infer)) return method + " /v1/users/{id}/profile:infer";
  return "other";
}

// The request's start, set when routing begins, and whether an API handler has already counted it;
// both live on the worker thread that serves the request.
thread_local Clock::time_point request_start{};
thread_local bool request_timed = false;
thread_local bool request_counted = false;

double seconds_since_start() {
  return request_timed ? std::chrono::duration<double>(Clock::now() - request_start).count() : 0.0;
}

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  // Ids from the path may hold invalid UTF-8; they are echoed with replacement characters.
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), kJson);
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, status, {{"error", message}, {"status", status}});
}

// Constant-time comparison, so that response timing does not reveal how much of a token matched.
bool same_token(const std::string& given, const std::string& expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i] ^ expected[i % (expected.empty() ? 1 : expected.size())]);
  return diff == 0 && !expected.empty();
}

nlohmann::json score_json(const ScoreRequest& request, const ScoreResult& r) {
  return {{"user", request.user},
          {"scores", r.scores},
          {"unknown_items", r.unknown_items},
          {"user_in_vocabulary", r.user_in_vocabulary},
          {"profile", r.profile}};
}

}  // namespace

void ServerOptions::validate() const {
  USERIP_CHECK(port >= 0 && port <= 65535, "--port {} is out of range (0-65535; 0 = any free port)", port);
  USERIP_CHECK(workers >= 1 && workers <= 4096, "--workers {} is out of range (1-4096)", workers);
  USERIP_CHECK(keep_alive_seconds >= 1 && keep_alive_seconds <= 3600, "keep-alive {} s is out of range (1-3600)",
               keep_alive_seconds);
  limits.validate();
}

struct Server::Http {
  httplib::Server server;
};

Server::Server(const StateSource& source, const ServerOptions& options, std::unique_ptr<FoldIn> fold_in)
    : state_(source), options_(options), fold_in_(std::move(fold_in)), http_(std::make_unique<Http>()) {
  options_.validate();
  install_routes();
}

Server::~Server() { stop(); }

std::shared_ptr<const ServingState> Server::reload(const StateSource* source) {
  try {
    auto fresh = state_.reload(source);
    metrics_.record_reload(true);
    spdlog::info("reloaded: generation {}, {}", fresh->gauges.generation, fresh->describe().dump());
    return fresh;
  } catch (...) {
    metrics_.record_reload(false);
    throw;
  }
}

int Server::bind() {
  port_ = options_.port == 0 ? http_->server.bind_to_any_port(options_.host)
                             : (http_->server.bind_to_port(options_.host, options_.port) ? options_.port : -1);
  USERIP_CHECK(port_ > 0, "cannot listen on {}:{} (in use, or not an address of this machine)", options_.host,
               options_.port);
  return port_;
}

void Server::run() {
  USERIP_CHECK(port_ > 0, "Server::run() before bind()");
  if (stopping_) return;
  http_->server.listen_after_bind();
}

void Server::stop() {
  stopping_ = true;
  http_->server.stop();
}

void Server::install_routes() {
  auto& svr = http_->server;
  const int workers = options_.workers;
  svr.new_task_queue = [workers] { return new httplib::ThreadPool(static_cast<std::size_t>(workers)); };
  svr.set_payload_max_length(options_.limits.max_body_bytes);
  svr.set_keep_alive_timeout(options_.keep_alive_seconds);
  // cpp-httplib writes headers and body in separate sends: with Nagle's algorithm on, the body
  // waits for the client's delayed ACK, adding about 40 ms to every response.
  svr.set_tcp_nodelay(true);
  svr.set_read_timeout(10, 0);
  svr.set_write_timeout(10, 0);

  svr.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
    request_start = Clock::now();
    request_timed = true;
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // API handlers count their requests before the response is sent, so that a client that reads
  // /metrics right after a response sees it counted; the logger (called after sending) counts the
  // rest: unknown routes, bodies over the limit, malformed HTTP.
  svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    if (!request_counted) metrics_.record_request(route_of(req.method, req.path), res.status, seconds_since_start());
    request_counted = false;
    request_timed = false;
  });
  // Bodies for the errors the HTTP layer produces itself (unknown route, body too large, ...).
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string message = "HTTP error " + std::to_string(res.status);
    if (res.status == 400) message = "malformed HTTP request";
    if (res.status == 404) message = "no route " + req.method + " " + req.path + " (see docs/SERVING.md)";
    if (res.status == 413) message = "request body too large";
    if (res.status == 414) message = "request line too long";
    send_error(res, res.status, message);
  });
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      message = std::string("internal error: ") + e.what();
    } catch (...) {
    }
    spdlog::error("{}", message);
    send_error(res, 500, message);
  });

  // Every API handler runs through this: the in-flight count, and request errors as 4xx bodies.
  auto handle = [this](auto&& body) {
    return [this, body](const httplib::Request& req, httplib::Response& res) {
      in_flight_.fetch_add(1);
      try {
        body(req, res);
      } catch (const RequestError& e) {
        send_error(res, e.status, e.what());
      } catch (const std::exception& e) {
        spdlog::error("{} {}: {}", req.method, req.path, e.what());
        send_error(res, 500, std::string("internal error: ") + e.what());
      }
      metrics_.record_request(route_of(req.method, req.path), res.status, seconds_since_start());
      request_counted = true;
      in_flight_.fetch_sub(1);
    };
  };

  svr.Get("/healthz", handle([](const httplib::Request&, httplib::Response& res) {
            send_json(res, 200, {{"status", "ok"}});
          }));
  svr.Get("/readyz", handle([this](const httplib::Request&, httplib::Response& res) {
            if (stopping_) return send_json(res, 503, {{"status", "stopping"}});
            send_json(res, 200, {{"status", "ready"}, {"state", state()->describe()}});
          }));
  svr.Get("/metrics", handle([this](const httplib::Request&, httplib::Response& res) {
            res.set_content(metrics_.render(state()->gauges, in_flight_.load()), "text/plain; version=0.0.4");
          }));
  svr.Get(R"(/v1/users/([^/]+)/profile)", handle([this](const httplib::Request& req, httplib::Response& res) {
            send_json(res, 200, profile_of(*state(), check_path_id(req.matches[1].str())));
          }));
  svr.Post("/v1/score", handle([this](const httplib::Request& req, httplib::Response& res) {
             const auto request = parse_score_request(req.body, options_.limits);
             const auto snapshot = state();
             ScoringCounts counts;
             auto result = score(*snapshot, request, &counts);
             metrics_.record_scoring(counts);
             auto body = score_json(request, result);
             body["generation"] = snapshot->gauges.generation;
             send_json(res, 200, body);
           }));
  svr.Post("/v1/score:batch", handle([this](const httplib::Request& req, httplib::Response& res) {
             const auto requests = parse_batch_request(req.body, options_.limits);
             const auto snapshot = state();  // one version for the whole batch
             ScoringCounts counts;
             nlohmann::json results = nlohmann::json::array();
             for (const auto& r : requests) results.push_back(score_json(r, score(*snapshot, r, &counts)));
             metrics_.record_scoring(counts);
             send_json(res, 200, {{"results", results}, {"generation", snapshot->gauges.generation}});
           }));
  svr.Post(R"(/v1/users/([^/]+)/profile:infer)", handle([this](const httplib::Request& req, httplib::Response& res) {
             if (!fold_in_)
               throw RequestError(404, "the fold-in endpoint is off; start the server with --lm and --profile to enable it");
             const std::string user = check_path_id(req.matches[1].str());
             const auto request = parse_infer_request(req.body, options_.limits);
             auto result = fold_in_->infer(user, request.history);
             metrics_.record_fold_in(result.seconds);
             auto body = result.to_json(state().get());
             body["user"] = user;
             send_json(res, 200, body);
           }));
  svr.Post("/admin/reload", handle([this](const httplib::Request& req, httplib::Response& res) {
             if (options_.admin_token.empty())
               throw RequestError(404, "admin endpoints are off (no admin token configured)");
             const std::string auth = req.get_header_value("Authorization");
             const std::string prefix = "Bearer ";
             if (auth.compare(0, prefix.size(), prefix) != 0 || !same_token(auth.substr(prefix.size()), options_.admin_token))
               throw RequestError(401, "missing or wrong admin token (send \"Authorization: Bearer TOKEN\")");
             StateSource source = state()->source;
             if (!req.body.empty()) {
               nlohmann::json j;
               try {
                 j = nlohmann::json::parse(req.body);
               } catch (const nlohmann::json::exception& e) {
                 throw RequestError(400, std::string("malformed JSON: ") + e.what());
               }
               if (!j.is_object()) throw RequestError(400, "expected a JSON object");
               for (auto it = j.begin(); it != j.end(); ++it) {
                 const auto& key = it.key();
                 if (key == "model" && it->is_string()) {
                   source.model = it->get<std::string>();
                 } else if (key == "explanations" && it->is_string()) {
                   source.explanations = it->get<std::string>();
                 } else if (key == "banks" && it->is_array()) {
                   source.banks.clear();
                   for (const auto& b : *it) {
                     if (!b.is_string()) throw RequestError(400, "banks: expected an array of paths");
                     source.banks.emplace_back(b.get<std::string>());
                   }
                 } else {
                   throw RequestError(400, "unknown key or wrong type: \"" + key +
                                               "\" (expected \"model\": path, \"banks\": [paths], \"explanations\": path)");
                 }
               }
             }
             std::shared_ptr<const ServingState> fresh;
             try {
               fresh = reload(&source);
             } catch (const Error& e) {
               throw RequestError(409, std::string("reload failed; the previous version keeps serving: ") + e.what());
             }
             send_json(res, 200, {{"status", "reloaded"}, {"state", fresh->describe()}});
           }));
}

namespace {
// The write end of the self-pipe: the only thing the signal handler touches (write() is
// async-signal-safe), so shutdown and reload run as ordinary code on the watcher thread whichever
// thread the kernel delivered the signal to (libtorch and OpenBLAS start threads of their own).
std::atomic<int> signal_pipe_write{-1};

extern "C" void forward_signal(int signal) {
  const int saved_errno = errno;
  const char code = signal == SIGHUP ? 'H' : 'T';
  const int fd = signal_pipe_write.load();
  if (fd >= 0) {
    [[maybe_unused]] auto n = ::write(fd, &code, 1);
  }
  errno = saved_errno;
}
}  // namespace

void serve_until_terminated(Server& server) {
  int fds[2];
  USERIP_CHECK(::pipe(fds) == 0, "cannot create the signal pipe: {}", std::strerror(errno));
  signal_pipe_write = fds[1];
  struct sigaction action {};
  action.sa_handler = forward_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  struct sigaction old_term {}, old_int {}, old_hup {};
  sigaction(SIGTERM, &action, &old_term);
  sigaction(SIGINT, &action, &old_int);
  sigaction(SIGHUP, &action, &old_hup);

  std::atomic<bool> finished{false};
  std::thread watcher([&server, &finished, read_fd = fds[0]] {
    char code = 0;
    while (true) {
      const auto n = ::read(read_fd, &code, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || code == 'Q') return;
      if (code == 'H') {
        try {
          server.reload();
        } catch (const std::exception& e) {
          spdlog::error("reload on SIGHUP failed; the previous version keeps serving: {}", e.what());
        }
        continue;
      }
      spdlog::info("SIGTERM/SIGINT: no new connections; finishing the requests in flight");
      // Repeated until run() returns: a signal that lands before the listener is up must not be lost.
      while (!finished) {
        server.stop();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      return;
    }
  });
  server.run();
  finished = true;
  const char quit = 'Q';
  [[maybe_unused]] auto n = ::write(fds[1], &quit, 1);
  watcher.join();
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGHUP, &old_hup, nullptr);
  signal_pipe_write = -1;
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace userip::serve
