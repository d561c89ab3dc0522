// The HTTP layer's own latency, with no handler: a server that answers every request with the
// same 1.5 KB JSON body (the size of a 100-candidate score response), built on cpp-httplib (the
// thread-per-connection server `userip serve` used before) or on libmicrohttpd (its epoll event
// loops, what it uses now). scripts/bench/http_floor.sh loads both with wrk; docs/BENCHMARKS.md
// ("Serving") has the figures.
//
//   http_floor --server httplib|microhttpd --port P [--threads N]
#include <httplib.h>
#include <microhttpd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

const std::string kBody = "{\"scores\":[" + std::string(1480, '0') + "]}";

MHD_Result answer(void*, MHD_Connection* connection, const char*, const char*, const char*, const char*,
                  std::size_t* upload_size, void** context) {
  static int started;
  if (*context == nullptr) {
    *context = &started;
    return MHD_YES;
  }
  if (*upload_size > 0) {
    *upload_size = 0;
    return MHD_YES;
  }
  MHD_Response* response =
      MHD_create_response_from_buffer(kBody.size(), const_cast<char*>(kBody.data()), MHD_RESPMEM_PERSISTENT);
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  const MHD_Result queued = MHD_queue_response(connection, 200, response);
  MHD_destroy_response(response);
  return queued;
}

int usage() {
  std::fprintf(stderr, "usage: http_floor --server httplib|microhttpd --port P [--threads N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string server;
  int port = 0, threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--server")) server = argv[i + 1];
    else if (!std::strcmp(argv[i], "--port")) port = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else return usage();
  }
  if (port <= 0 || port > 65535) return usage();
  if (server == "httplib") {
    // As `userip serve` configured it: a pool of workers (32 in the benchmarks), TCP_NODELAY.
    const std::size_t workers = threads > 0 ? static_cast<std::size_t>(threads) : 32;
    httplib::Server http;
    http.new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
    http.set_tcp_nodelay(true);
    http.Post(R"(.*)", [](const httplib::Request&, httplib::Response& res) { res.set_content(kBody, "application/json"); });
    if (!http.listen("127.0.0.1", port)) {
      std::fprintf(stderr, "http_floor: cannot listen on port %d\n", port);
      return 1;
    }
    return 0;
  }
  if (server == "microhttpd") {
    const unsigned loops = threads > 0 ? static_cast<unsigned>(threads) : 1;
    MHD_Daemon* daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_TURBO,
                                          static_cast<std::uint16_t>(port), nullptr, nullptr, &answer, nullptr,
                                          MHD_OPTION_THREAD_POOL_SIZE, loops, MHD_OPTION_END);
    if (!daemon) {
      std::fprintf(stderr, "http_floor: cannot listen on port %d\n", port);
      return 1;
    }
    ::pause();
    MHD_stop_daemon(daemon);
    return 0;
  }
  return usage();
}
