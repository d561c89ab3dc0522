#include "userip/serve/server.h"

#include <microhttpd.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "userip/util/error.h"

// Why libmicrohttpd and not cpp-httplib (docs/BENCHMARKS.md, "Serving"): with no handler at all,
// cpp-httplib's thread-per-connection model alone had a p99 of 1.07 ms at 1,000 requests/s on the
// 2-core machine, where libmicrohttpd's epoll loops had 0.18-0.20 ms. It also lets the server
// answer an over-long body with its own JSON 413 and park a slow request (fold-in, reload) on a
// background thread without holding an event loop (suspend / resume, safe from any thread).

namespace userip::serve {

using Clock = std::chrono::steady_clock;

// Outside the anonymous namespace because Server::Http's lambdas hold them.
struct Reply {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
};

// One request from its headers to its completion: what the event loop and, for the slow routes,
// the background thread know of it.
struct Exchange {
  Clock::time_point start = Clock::now();
  std::string method, path, route, authorization, body;
  bool body_too_large = false;
  bool counted = false;
  std::optional<Reply> deferred_reply;  // set by the background thread before it resumes the connection
};

namespace {

Reply json_reply(int status, const nlohmann::json& body) {
  // Ids from the path may hold invalid UTF-8; they are echoed with replacement characters.
  return {status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

Reply error_reply(int status, const std::string& message) {
  return json_reply(status, {{"error", message}, {"status", status}});
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

// The user id in /v1/users/{id}/<suffix>, or nullopt when `path` is not of that form.
std::optional<std::string> user_in_path(const std::string& path, const std::string& suffix) {
  const std::string prefix = "/v1/users/";
  if (path.size() <= prefix.size() + suffix.size() || path.compare(0, prefix.size(), prefix) != 0 ||
      path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0)
    return std::nullopt;
  std::string id = path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
  if (id.find('/') != std::string::npos) return std::nullopt;
  return id;
}

// The route a request counts under in the metrics: the pattern, not the path, so that user ids do
// not make one time series each.
std::string route_of(const std::string& method, const std::string& path) {
  if (path == "/v1/score" || path == "/v1/score:batch" || path == "/healthz" || path == "/readyz" ||
      path == "/metrics" || path == "/admin/reload")
    return method + " " + path;
  if (user_in_path(path, "/profile")) return method + " /v1/users/{id}/profile";
  if (user_in_path(path, "/profile:infer")) return method + " /v1/users/{id}/profile:infer";
  return "other";
}

void log_from_microhttpd(void*, const char* format, va_list args) {
  char line[512];
  std::vsnprintf(line, sizeof line, format, args);
  std::string text(line);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  spdlog::warn("http: {}", text);
}

}  // namespace

void ServerOptions::validate() const {
  USERIP_CHECK(port >= 0 && port <= 65535, "--port {} is out of range (0-65535; 0 = any free port)", port);
  USERIP_CHECK(workers >= 1 && workers <= 1024, "--workers {} is out of range (1-1024)", workers);
  USERIP_CHECK(keep_alive_seconds >= 1 && keep_alive_seconds <= 3600, "keep-alive {} s is out of range (1-3600)",
               keep_alive_seconds);
  limits.validate();
}

struct Server::Http {
  explicit Http(Server& server) : server(server), background([this] { run_background(); }) {}
  ~Http() {
    {
      std::lock_guard<std::mutex> lock(jobs_mutex);
      quit = true;
    }
    jobs_ready.notify_all();
    background.join();
    if (listen_fd >= 0) ::close(listen_fd);
  }

  Server& server;
  int listen_fd = -1;
  MHD_Daemon* daemon = nullptr;

  std::mutex state_mutex;               // guards stop_requested and running
  std::condition_variable state_changed;
  bool stop_requested = false;
  bool running = false;

  // The slow routes' queue: one thread, so fold-ins run one at a time as they always have.
  std::atomic<int> jobs_running{0};  // suspended connections, until their resume has returned
  std::mutex jobs_mutex;
  std::condition_variable jobs_ready;
  std::deque<std::function<void()>> jobs;
  bool quit = false;
  std::thread background;

  void run_background() {
    while (true) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(jobs_mutex);
        jobs_ready.wait(lock, [this] { return quit || !jobs.empty(); });
        if (jobs.empty()) return;
        job = std::move(jobs.front());
        jobs.pop_front();
      }
      job();
    }
  }

  void defer(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(jobs_mutex);
      jobs.push_back(std::move(job));
    }
    jobs_ready.notify_one();
  }

  // The routes that may take seconds, when they are on: they run on the background thread.
  bool is_slow(const std::string& method, const std::string& path) const {
    if (method != "POST") return false;
    if (path == "/admin/reload") return !server.options_.admin_token.empty();
    return server.fold_in_ && user_in_path(path, "/profile:infer");
  }

  // Counted before the response is queued, so that a client that reads /metrics right after a
  // response sees it counted.
  MHD_Result respond(MHD_Connection* connection, Exchange& exchange, const Reply& reply) {
    if (!exchange.counted) {
      server.metrics_.record_request(exchange.route, reply.status,
                                     std::chrono::duration<double>(Clock::now() - exchange.start).count());
      exchange.counted = true;
    }
    MHD_Response* response = MHD_create_response_from_buffer(reply.body.size(), const_cast<char*>(reply.body.data()),
                                                             MHD_RESPMEM_MUST_COPY);
    if (!response) return MHD_NO;
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, reply.content_type.c_str());
    // Once shutdown has begun, keep-alive connections close after their current request, so that
    // the requests in flight run out.
    if (server.stopping_) MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close");
    const MHD_Result queued = MHD_queue_response(connection, static_cast<unsigned>(reply.status), response);
    MHD_destroy_response(response);
    return queued;
  }

  // Every route, with request errors as 4xx bodies and anything else as a 500 that is logged.
  Reply dispatch(const Exchange& exchange) {
    try {
      return route(exchange);
    } catch (const RequestError& e) {
      return error_reply(e.status, e.what());
    } catch (const std::exception& e) {
      spdlog::error("{} {}: {}", exchange.method, exchange.path, e.what());
      return error_reply(500, std::string("internal error: ") + e.what());
    }
  }

  Reply route(const Exchange& exchange) {
    const std::string& method = exchange.method;
    const std::string& path = exchange.path;
    const std::string& body = exchange.body;
    if (method == "GET" || method == "HEAD") {  // libmicrohttpd sends no body for HEAD
      if (path == "/healthz") return json_reply(200, {{"status", "ok"}});
      if (path == "/readyz") {
        if (server.stopping_) return json_reply(503, {{"status", "stopping"}});
        return json_reply(200, {{"status", "ready"}, {"state", server.state()->describe()}});
      }
      if (path == "/metrics")
        return {200, server.metrics_.render(server.state()->gauges, server.in_flight_.load()), "text/plain; version=0.0.4"};
      if (auto user = user_in_path(path, "/profile")) return json_reply(200, profile_of(*server.state(), check_path_id(*user)));
    } else if (method == "POST") {
      if (path == "/v1/score") {
        const auto request = parse_score_request(body, server.options_.limits);
        const auto snapshot = server.state();
        ScoringCounts counts;
        auto result = score(*snapshot, request, &counts);
        server.metrics_.record_scoring(counts);
        auto out = score_json(request, result);
        out["generation"] = snapshot->gauges.generation;
        return json_reply(200, out);
      }
      if (path == "/v1/score:batch") {
        const auto requests = parse_batch_request(body, server.options_.limits);
        const auto snapshot = server.state();  // one version for the whole batch
        ScoringCounts counts;
        nlohmann::json results = nlohmann::json::array();
        for (const auto& r : requests) results.push_back(score_json(r, score(*snapshot, r, &counts)));
        server.metrics_.record_scoring(counts);
        return json_reply(200, {{"results", results}, {"generation", snapshot->gauges.generation}});
      }
      if (auto user = user_in_path(path, "/profile:infer")) return fold_in(check_path_id(*user), body);
      if (path == "/admin/reload") return admin_reload(exchange.authorization, body);
    }
    throw RequestError(404, "no route " + method + " " + path + " (see docs/SERVING.md)");
  }

  Reply fold_in(const std::string& user, const std::string& body) {
    if (!server.fold_in_)
      throw RequestError(404, "the fold-in endpoint is off; start the server with --lm and --profile to enable it");
    const auto request = parse_infer_request(body, server.options_.limits);
    auto result = server.fold_in_->infer(user, request.history);
    server.metrics_.record_fold_in(result.seconds);
    auto out = result.to_json(server.state().get());
    out["user"] = user;
    return json_reply(200, out);
  }

  Reply admin_reload(const std::string& authorization, const std::string& body) {
    if (server.options_.admin_token.empty()) throw RequestError(404, "admin endpoints are off (no admin token configured)");
    const std::string prefix = "Bearer ";
    if (authorization.compare(0, prefix.size(), prefix) != 0 ||
        !same_token(authorization.substr(prefix.size()), server.options_.admin_token))
      throw RequestError(401, "missing or wrong admin token (send \"Authorization: Bearer TOKEN\")");
    StateSource source = server.state()->source;
    if (!body.empty()) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(body);
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
      fresh = server.reload(&source);
    } catch (const Error& e) {
      throw RequestError(409, std::string("reload failed; the previous version keeps serving: ") + e.what());
    }
    return json_reply(200, {{"status", "reloaded"}, {"state", fresh->describe()}});
  }

  // libmicrohttpd calls this on an event-loop thread: once when the headers are in, once per piece
  // of body, and once more when the request is complete (again after a resume).
  MHD_Result on_request(MHD_Connection* connection, const char* url, const char* method, const char* upload,
                        std::size_t* upload_size, void** context) {
    auto* exchange = static_cast<Exchange*>(*context);
    if (!exchange) {
      exchange = new Exchange;
      *context = exchange;
      server.in_flight_.fetch_add(1);
      exchange->method = method;
      exchange->path = url;
      exchange->route = route_of(exchange->method, exchange->path);
      if (const char* auth = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION))
        exchange->authorization = auth;
      // A declared length over the limit is refused before its body is read (the connection then closes).
      if (const char* length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        char* end = nullptr;
        errno = 0;
        const unsigned long long declared = std::strtoull(length, &end, 10);
        if (errno == ERANGE || declared > server.options_.limits.max_body_bytes)
          return respond(connection, *exchange, error_reply(413, "request body too large"));
      }
      return MHD_YES;
    }
    if (*upload_size > 0) {
      // A body without a declared length (chunked) that outgrows the limit is read and dropped.
      if (!exchange->body_too_large) {
        if (exchange->body.size() + *upload_size > server.options_.limits.max_body_bytes) {
          exchange->body_too_large = true;
          std::string().swap(exchange->body);
        } else {
          exchange->body.append(upload, *upload_size);
        }
      }
      *upload_size = 0;
      return MHD_YES;
    }
    if (exchange->deferred_reply) return respond(connection, *exchange, *exchange->deferred_reply);
    if (exchange->body_too_large) return respond(connection, *exchange, error_reply(413, "request body too large"));
    if (is_slow(exchange->method, exchange->path)) {
      // libmicrohttpd must not be stopped with a connection suspended: once shutdown has begun,
      // no new slow request is parked (run() waits for those parked before).
      if (server.stopping_) return respond(connection, *exchange, error_reply(503, "the server is stopping"));
      jobs_running.fetch_add(1);
      MHD_suspend_connection(connection);
      defer([this, exchange, connection] {
        exchange->deferred_reply = dispatch(*exchange);
        MHD_resume_connection(connection);
        // Counted down only now: MHD_resume_connection still touches the daemon after it has
        // handed the connection back, and run() stops the daemon once this count is zero.
        jobs_running.fetch_sub(1);
        wake_run_if_stopping();
      });
      return MHD_YES;
    }
    return respond(connection, *exchange, dispatch(*exchange));
  }

  void on_completed(void** context) {
    auto* exchange = static_cast<Exchange*>(*context);
    if (!exchange) return;
    *context = nullptr;
    delete exchange;
    server.in_flight_.fetch_sub(1);
    wake_run_if_stopping();
  }

  // run() waits for the last request only once stopping_ is set; taking the mutex here orders a
  // count's decrement against its check, so the wake-up cannot fall between check and wait.
  void wake_run_if_stopping() {
    if (!server.stopping_) return;
    { std::lock_guard<std::mutex> lock(state_mutex); }
    state_changed.notify_all();
  }

  static MHD_Result request_trampoline(void* self, MHD_Connection* connection, const char* url, const char* method,
                                       const char* /*version*/, const char* upload, std::size_t* upload_size,
                                       void** context) {
    try {
      return static_cast<Http*>(self)->on_request(connection, url, method, upload, upload_size, context);
    } catch (const std::exception& e) {
      spdlog::error("{} {}: {}", method, url, e.what());
      return MHD_NO;  // closes the connection; never let an exception into the C library
    }
  }

  static void completed_trampoline(void* self, MHD_Connection*, void** context, MHD_RequestTerminationCode) {
    static_cast<Http*>(self)->on_completed(context);
  }
};

Server::Server(const StateSource& source, const ServerOptions& options, std::unique_ptr<FoldIn> fold_in)
    : state_(source), options_(options), fold_in_(std::move(fold_in)) {
  options_.validate();
  http_ = std::make_unique<Http>(*this);
}

Server::~Server() {
  stop();
  std::unique_lock<std::mutex> lock(http_->state_mutex);
  http_->state_changed.wait(lock, [this] { return !http_->running; });
}

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
  USERIP_CHECK(http_->listen_fd < 0, "Server::bind() called twice");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(options_.port);
  const int resolved = ::getaddrinfo(options_.host.c_str(), service.c_str(), &hints, &found);
  USERIP_CHECK(resolved == 0, "cannot listen on {}:{}: {}", options_.host, options_.port, ::gai_strerror(resolved));
  std::string why = "no address";
  for (addrinfo* a = found; a && http_->listen_fd < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, SOMAXCONN) == 0) {
      http_->listen_fd = fd;
    } else {
      why = std::strerror(errno);
      ::close(fd);
    }
  }
  ::freeaddrinfo(found);
  USERIP_CHECK(http_->listen_fd >= 0, "cannot listen on {}:{}: {} (in use, or not an address of this machine)",
               options_.host, options_.port, why);
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  ::getsockname(http_->listen_fd, reinterpret_cast<sockaddr*>(&bound), &length);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return port_;
}

void Server::run() {
  USERIP_CHECK(port_ > 0, "Server::run() before bind()");
  Http& http = *http_;
  {
    std::lock_guard<std::mutex> lock(http.state_mutex);
    if (http.stop_requested || http.running) return;
    http.running = true;
  }
  // libmicrohttpd gets its own descriptor of the socket: it may close it on a failed start, and
  // this one stays ours to close.
  const int daemon_listener = ::fcntl(http.listen_fd, F_DUPFD_CLOEXEC, 0);
  if (daemon_listener < 0) {
    const std::string why = std::strerror(errno);
    std::lock_guard<std::mutex> lock(http.state_mutex);
    http.running = false;
    http.state_changed.notify_all();
    throw Error(fmt::format("cannot start the HTTP server: {}", why));
  }
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO |
                   MHD_USE_ERROR_LOG;
  http.daemon = MHD_start_daemon(
      flags, 0, nullptr, nullptr, &Http::request_trampoline, &http, MHD_OPTION_EXTERNAL_LOGGER, &log_from_microhttpd,
      nullptr, MHD_OPTION_LISTEN_SOCKET, daemon_listener, MHD_OPTION_THREAD_POOL_SIZE,
      static_cast<unsigned>(options_.workers), MHD_OPTION_CONNECTION_TIMEOUT,
      static_cast<unsigned>(options_.keep_alive_seconds), MHD_OPTION_NOTIFY_COMPLETED, &Http::completed_trampoline,
      &http, MHD_OPTION_END);
  if (!http.daemon) {
    // daemon_listener is left open: libmicrohttpd closes it on some failed starts and not on
    // others, and closing a number it has closed could close another thread's file.
    std::lock_guard<std::mutex> lock(http.state_mutex);
    http.running = false;
    http.state_changed.notify_all();
    throw Error(fmt::format("cannot start the HTTP server on {}:{}", options_.host, port_));
  }
  std::unique_lock<std::mutex> lock(http.state_mutex);
  http.state_changed.wait(lock, [&http] { return http.stop_requested; });
  // No new connections; the requests in flight (suspended ones included, which libmicrohttpd must
  // not see stopped) finish; then the idle keep-alive connections close. The listening socket is
  // closed only after the daemon has stopped: its loops may still call accept() on it until then.
  const MHD_socket quiesced = MHD_quiesce_daemon(http.daemon);
  http.state_changed.wait(lock, [this, &http] { return in_flight_.load() == 0 && http.jobs_running.load() == 0; });
  lock.unlock();
  MHD_stop_daemon(http.daemon);
  http.daemon = nullptr;
  if (quiesced != MHD_INVALID_SOCKET) ::close(quiesced);
  ::close(http.listen_fd);
  http.listen_fd = -1;
  lock.lock();
  http.running = false;
  http.state_changed.notify_all();
}

void Server::stop() {
  stopping_ = true;
  {
    std::lock_guard<std::mutex> lock(http_->state_mutex);
    http_->stop_requested = true;
  }
  http_->state_changed.notify_all();
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
  std::exception_ptr failure;
  try {
    server.run();
  } catch (...) {
    failure = std::current_exception();
  }
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
  if (failure) std::rethrow_exception(failure);
}

}  // namespace userip::serve
