// The HTTP service on an ephemeral port: every route, every error path, metrics, admin reload,
// hot reload under concurrent load, graceful stop with a request in flight.
#include "userip/serve/server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "serve/serve_test_support.h"
#include "support/temp_dir.h"

namespace userip::serve {
namespace {

using nlohmann::json;
using testing::RunningServer;
using testing::ServeWorld;

json post(httplib::Client& client, const std::string& path, const std::string& body, int* status,
          const httplib::Headers& headers = {}) {
  auto res = client.Post(path.c_str(), headers, body, "application/json");
  if (!res) {
    *status = -1;
    return json();
  }
  *status = res->status;
  return json::parse(res->body);
}

json get(httplib::Client& client, const std::string& path, int* status) {
  auto res = client.Get(path.c_str());
  if (!res) {
    *status = -1;
    return json();
  }
  *status = res->status;
  return res->get_header_value("Content-Type") == "application/json" ? json::parse(res->body) : json(res->body);
}

// POSTs `piece` `times` over as one chunked body (no Content-Length).
httplib::Result post_chunked(httplib::Client& client, const std::string& path, const std::string& piece,
                             std::size_t times) {
  return client.Post(
      path,
      [&piece, times](std::size_t offset, httplib::DataSink& sink) {
        if (offset < times * piece.size()) {
          sink.write(piece.data(), piece.size());
        } else {
          sink.done();
        }
        return true;
      },
      "application/json");
}

TEST(ServeServer, ScoresEqualTheSavedModelsPredictions) {
  const auto& world = ServeWorld::get();
  RunningServer running(world.source());
  auto client = running.client();
  std::vector<std::string> items;
  for (int i = 0; i < 20; ++i) items.push_back("item" + std::to_string(i));
  int status = 0;
  auto body = post(client, "/v1/score", json{{"user", "user3"}, {"items", items}}.dump(), &status);
  ASSERT_EQ(status, 200) << body.dump();
  EXPECT_EQ(body["profile"], "bank");
  EXPECT_EQ(body["unknown_items"], 0);
  EXPECT_EQ(body["generation"], 1);

  auto saved = ctr::load_model(world.codes_model);
  auto codes = ctr::UserCodeTable::from_banks(std::vector<std::filesystem::path>{world.bank});
  auto examples = saved.encoder.encode_pairs(std::vector<std::string>(items.size(), "user3"), items, &codes, nullptr);
  auto expected = ctr::predict(*saved.model, examples);
  ASSERT_EQ(body["scores"].size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(body["scores"][i].get<double>(), expected[i], 1e-6) << i;

  // The batch route gives each user the scores the single route gives.
  auto batch = post(client, "/v1/score:batch",
                    json{{"requests", {{{"user", "user3"}, {"items", items}}, {{"user", "user4"}, {"items", {"item1"}}}}}}.dump(),
                    &status);
  ASSERT_EQ(status, 200) << batch.dump();
  ASSERT_EQ(batch["results"].size(), 2u);
  EXPECT_EQ(batch["results"][0]["scores"], body["scores"]);
  auto single = post(client, "/v1/score", json{{"user", "user4"}, {"items", {"item1"}}}.dump(), &status);
  EXPECT_EQ(batch["results"][1]["scores"], single["scores"]);
}

TEST(ServeServer, UnknownUsersAndItemsTakeTheOovPathAndAreCounted) {
  RunningServer running(ServeWorld::get().source());
  auto client = running.client();
  int status = 0;
  auto body = post(client, "/v1/score", R"({"user": "never-seen", "items": ["item1", "no-such-item", 12345]})", &status);
  ASSERT_EQ(status, 200) << body.dump();
  EXPECT_EQ(body["profile"], "missing");
  EXPECT_EQ(body["user_in_vocabulary"], false);
  EXPECT_EQ(body["unknown_items"], 2);
  ASSERT_EQ(body["scores"].size(), 3u);
  for (const auto& s : body["scores"]) {
    EXPECT_GT(s.get<double>(), 0.0);
    EXPECT_LT(s.get<double>(), 1.0);
  }
  post(client, "/v1/score", R"({"user": "user3", "items": ["item1"]})", &status);
  const auto counts = running.server().metrics().scoring();
  EXPECT_EQ(counts.users, 2);
  EXPECT_EQ(counts.unknown_users, 1);
  EXPECT_EQ(counts.oov_users, 1);
  EXPECT_EQ(counts.items, 4);
  EXPECT_EQ(counts.unknown_items, 2);
  auto metrics = get(client, "/metrics", &status).get<std::string>();
  EXPECT_NE(metrics.find("userip_unknown_users_total 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("userip_unknown_user_ratio 0.5\n"), std::string::npos) << metrics;
}

TEST(ServeServer, ProfileRouteGivesCodesWithExplanations) {
  const auto& world = ServeWorld::get();
  RunningServer running(world.source());
  auto client = running.client();
  int status = 0;
  auto body = get(client, "/v1/users/user3/profile", &status);
  ASSERT_EQ(status, 200) << body.dump();
  auto bank = store::FeatureBank::open(world.bank);
  ASSERT_EQ(body["codes"].size(), 1u);
  EXPECT_EQ(body["codes"][0]["field"], "taste");
  EXPECT_EQ(body["codes"][0]["code"], bank.find("user3")[0]);
  EXPECT_EQ(body["codes"][0]["explanation"]["continuation"], "likes " + std::to_string(bank.find("user3")[0]));
  EXPECT_EQ(body["bank"]["version"], bank.metadata().version);
  auto unknown = get(client, "/v1/users/nobody/profile", &status);
  EXPECT_EQ(status, 404);
  EXPECT_NE(unknown["error"].get<std::string>().find("'nobody' is in no feature bank"), std::string::npos);
}

TEST(ServeServer, EveryErrorPathIsA4xxWithAMessage) {
  ServerOptions options;
  options.limits.max_items = 10;
  options.limits.max_body_bytes = 4096;
  RunningServer running(ServeWorld::get().source(), options);
  auto client = running.client();
  struct Case {
    std::string method, path, body;
    int status;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"POST", "/v1/score", "{\"user\": ", 400, "malformed JSON"},
      {"POST", "/v1/score", "", 400, "empty body"},
      {"POST", "/v1/score", R"({"user": [], "items": ["item1"]})", 400, "user: expected a string or integer id"},
      {"POST", "/v1/score", R"({"user": "u", "items": [1,2,3,4,5,6,7,8,9,10,11]})", 400, "more than the limit of 10"},
      {"POST", "/v1/score", R"({"user": "u", "items": ["a"], "bogus": 1})", 400, "unknown key \"bogus\""},
      {"POST", "/v1/score", "{\"user\": \"u\", \"items\": [\"" + std::string(5000, 'x') + "\"]}", 413, "too large"},
      {"POST", "/v1/score:batch", R"({"requests": "x"})", 400, "requests: expected an array"},
      {"POST", "/v1/users/u1/profile:infer", R"({"history": [{"item": 1}]})", 404, "fold-in endpoint is off"},
      {"POST", "/admin/reload", "", 404, "admin endpoints are off"},
      {"GET", "/v1/nothing-here", "", 404, "no route GET /v1/nothing-here"},
      {"GET", "/v1/score", "", 404, "no route GET /v1/score"},
      {"GET", "/v1/users/nobody/profile", "", 404, "in no feature bank"},
  };
  for (const auto& c : cases) {
    auto res = c.method == "GET" ? client.Get(c.path.c_str()) : client.Post(c.path.c_str(), c.body, "application/json");
    ASSERT_TRUE(res) << c.method << " " << c.path;
    EXPECT_EQ(res->status, c.status) << c.method << " " << c.path << ": " << res->body;
    json body;
    ASSERT_NO_THROW(body = json::parse(res->body)) << res->body;
    EXPECT_EQ(body["status"], c.status);
    EXPECT_NE(body["error"].get<std::string>().find(c.message), std::string::npos)
        << c.method << " " << c.path << ": '" << c.message << "' not in " << res->body;
  }
  // Nothing above reached a 500, and the server still serves.
  int status = 0;
  post(client, "/v1/score", R"({"user": "user1", "items": ["item1"]})", &status);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(running.server().metrics().requests("POST /v1/score", 500), 0);
  EXPECT_EQ(running.server().metrics().requests("POST /v1/score", 400), 5);
  // The HTTP layer's own answers (the 413) are counted just after they are sent.
  for (int i = 0; i < 200 && running.server().metrics().requests("POST /v1/score", 413) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(running.server().metrics().requests("POST /v1/score", 413), 1);
}

TEST(ServeServer, AChunkedBodyOverTheLimitIsA413) {
  ServerOptions options;
  options.limits.max_body_bytes = 4096;
  RunningServer running(ServeWorld::get().source(), options);
  auto client = running.client();
  // No Content-Length: the limit can only be found while the body arrives.
  auto res = post_chunked(client, "/v1/score", std::string(1000, ' '), 10);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413) << res->body;
  EXPECT_EQ(json::parse(res->body)["error"], "request body too large");
  // A chunked body within the limit is read whole.
  auto ok = post_chunked(client, "/v1/score", R"({"user": "user1", "items": ["item1"]})", 1);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

// Connections are not tied to threads: one event loop serves many open keep-alive connections in
// turn (a thread-per-connection server with one worker would leave the second one waiting until
// the first idled out, past the clients' 2-second timeout).
TEST(ServeServer, OneWorkerServesManyKeepAliveConnections) {
  ServerOptions options;
  options.workers = 1;
  options.keep_alive_seconds = 30;
  RunningServer running(ServeWorld::get().source(), options);
  std::vector<std::unique_ptr<httplib::Client>> clients;
  for (int c = 0; c < 8; ++c) {
    clients.push_back(std::make_unique<httplib::Client>("127.0.0.1", running.port()));
    clients.back()->set_keep_alive(true);
    clients.back()->set_read_timeout(2, 0);
  }
  int answered = 0;
  for (int round = 0; round < 3; ++round) {
    for (auto& client : clients) {
      auto res = client->Post("/v1/score", R"({"user": "user1", "items": ["item1", "item2"]})", "application/json");
      ASSERT_TRUE(res) << "round " << round;
      EXPECT_EQ(res->status, 200);
      ++answered;
    }
  }
  EXPECT_EQ(answered, 24);
  EXPECT_EQ(running.server().metrics().requests("POST /v1/score", 200), 24);
}

TEST(ServeServer, HealthReadinessAndMetrics) {
  RunningServer running(ServeWorld::get().source());
  auto client = running.client();
  int status = 0;
  EXPECT_EQ(get(client, "/healthz", &status)["status"], "ok");
  EXPECT_EQ(status, 200);
  auto head = client.Head("/healthz");  // HEAD as GET, without a body
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->body.empty());
  auto ready = get(client, "/readyz", &status);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(ready["state"]["generation"], 1);
  EXPECT_EQ(ready["state"]["model"]["profile"], "codes");
  post(client, "/v1/score", R"({"user": "user1", "items": ["item1", "item2"]})", &status);
  post(client, "/v1/score", R"({"user": "user1"})", &status);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4");
  const std::string& m = res->body;
  for (const std::string& line : std::vector<std::string>{
           "userip_http_requests_total{route=\"POST /v1/score\",status=\"200\"} 1",
        "userip_http_requests_total{route=\"POST /v1/score\",status=\"400\"} 1",
        "userip_http_requests_total{route=\"GET /readyz\",status=\"200\"} 1",
        "userip_http_request_duration_seconds_count{route=\"POST /v1/score\"} 2",
        "userip_http_request_duration_seconds_bucket{route=\"POST /v1/score\",le=\"+Inf\"} 2",
        "userip_feature_bank_version " + std::to_string(store::FeatureBank::open(ServeWorld::get().bank).metadata().version),
        "userip_state_generation 1", "userip_scored_items_total 2", "# TYPE userip_http_request_duration_seconds histogram"})
    EXPECT_NE(m.find(line + "\n"), std::string::npos) << "'" << line << "' not in:\n" << m;
}

TEST(ServeServer, AdminReloadNeedsTheTokenAndKeepsTheOldVersionOnFailure) {
  const auto& world = ServeWorld::get();
  testing::TempDir dir;
  const auto source = world.source_with_bank_copy(dir.path());
  ServerOptions options;
  options.admin_token = "s3cret-token";
  RunningServer running(source, options);
  auto client = running.client();
  int status = 0;
  auto denied = post(client, "/admin/reload", "", &status);
  EXPECT_EQ(status, 401) << denied.dump();
  post(client, "/admin/reload", "", &status, {{"Authorization", "Bearer s3cret-tokeN"}});
  EXPECT_EQ(status, 401);
  const httplib::Headers auth = {{"Authorization", "Bearer s3cret-token"}};

  // A new bank version published at the same path is picked up.
  const auto before = store::FeatureBank::open(dir / "bank.sqlite").metadata().version;
  testing::write_control_bank(world.dataset, ServeWorld::kCodes, dir / "bank.sqlite");
  auto ok = post(client, "/admin/reload", "", &status, auth);
  ASSERT_EQ(status, 200) << ok.dump();
  EXPECT_EQ(ok["state"]["generation"], 2);
  EXPECT_EQ(ok["state"]["banks"][0]["version"], before + 1);

  // A model that needs a bank, given none: refused, generation 2 keeps serving.
  auto bad = post(client, "/admin/reload", R"({"banks": []})", &status, auth);
  EXPECT_EQ(status, 409) << bad.dump();
  EXPECT_NE(bad["error"].get<std::string>().find("give the feature bank"), std::string::npos) << bad.dump();
  post(client, "/admin/reload", R"({"model": "/no/such/model"})", &status, auth);
  EXPECT_EQ(status, 409);
  post(client, "/admin/reload", R"({"modle": "x"})", &status, auth);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(running.server().state()->gauges.generation, 2);

  // Switching to the base model by path works, and scores still come back.
  auto to_base = post(client, "/admin/reload", json{{"model", world.base_model.string()}}.dump(), &status, auth);
  ASSERT_EQ(status, 200) << to_base.dump();
  auto scored = post(client, "/v1/score", R"({"user": "user1", "items": ["item1"]})", &status);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(scored["profile"], "unused");
  EXPECT_EQ(scored["generation"], 3);
  auto metrics = get(client, "/metrics", &status).get<std::string>();
  EXPECT_NE(metrics.find("userip_reloads_total{result=\"ok\"} 2\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("userip_reloads_total{result=\"failed\"} 2\n"), std::string::npos) << metrics;
}

TEST(ServeServer, HotReloadUnderConcurrentLoadFailsNoRequest) {
  const auto& world = ServeWorld::get();
  testing::TempDir dir;
  const auto source = world.source_with_bank_copy(dir.path());
  RunningServer running(source);
  std::atomic<bool> done{false};
  std::atomic<std::int64_t> ok{0}, failed{0};
  std::mutex seen_mutex;
  std::set<std::int64_t> generations;
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      auto client = running.client();
      const std::string body = json{{"user", "user" + std::to_string(t)}, {"items", {"item1", "item2", "item3"}}}.dump();
      while (!done) {
        auto res = client.Post("/v1/score", body, "application/json");
        if (res && res->status == 200 && json::parse(res->body)["scores"].size() == 3) {
          ++ok;
          std::lock_guard<std::mutex> lock(seen_mutex);
          generations.insert(json::parse(res->body)["generation"].get<std::int64_t>());
        } else {
          ++failed;
        }
      }
    });
  }
  // Republish the bank and reload, again and again, while the clients score.
  for (int r = 0; r < 8; ++r) {
    std::this_thread::sleep_for(std::chrono::milliseconds(40));
    testing::write_control_bank(world.dataset, ServeWorld::kCodes, dir / "bank.sqlite");
    running.server().reload();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  done = true;
  for (auto& c : clients) c.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GT(ok.load(), 50);
  EXPECT_EQ(running.server().state()->gauges.generation, 9);
  EXPECT_GE(generations.size(), 3u) << "the clients should have been served by several versions";
}

TEST(ServeServer, StopFinishesTheRequestInFlight) {
  ServerOptions options;
  options.limits.max_items = 2000;
  options.limits.max_body_bytes = 16 << 20;
  RunningServer running(ServeWorld::get().source(), options);
  // A batch big enough to be in flight for a while: 100 users x 2,000 candidates.
  json requests = json::array();
  std::vector<std::string> items;
  for (int i = 0; i < 2000; ++i) items.push_back("item" + std::to_string(i % 60));
  for (int u = 0; u < 100; ++u) requests.push_back({{"user", "user" + std::to_string(u)}, {"items", items}});
  const std::string body = json{{"requests", requests}}.dump();
  int status = 0;
  json response;
  std::thread slow([&] {
    auto client = running.client();
    response = post(client, "/v1/score:batch", body, &status);
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (running.server().in_flight() == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  ASSERT_GT(running.server().in_flight(), 0) << "the batch never started";
  running.stop();  // returns once the server has finished
  slow.join();
  EXPECT_EQ(status, 200);
  ASSERT_EQ(response["results"].size(), 100u);
  EXPECT_EQ(response["results"][99]["scores"].size(), 2000u);
  // And nothing is accepted afterwards.
  auto client = running.client();
  client.set_connection_timeout(1, 0);
  EXPECT_FALSE(client.Get("/healthz"));
}

TEST(ServeServer, BadStartsAreRefusedWithTheFileNamed) {
  const auto& world = ServeWorld::get();
  auto source = world.source();
  source.banks.clear();
  testing::expect_error([&] { Server server(source, ServerOptions{}); }, {"reads profile codes", "--bank"});
  source = world.source();
  source.model = world.dir / "nothing";
  testing::expect_error([&] { Server server(source, ServerOptions{}); }, {"not a trained CTR model"});
  testing::TempDir dir;
  source = world.source();
  source.explanations = dir.write("bad.jsonl", "{\"attribute\": \"taste\", \"level\": 1, \"code\": 0}\nnot json\n");
  testing::expect_error([&] { Server server(source, ServerOptions{}); }, {"bad.jsonl:2", "malformed JSON"});
  ServerOptions options;
  options.workers = 0;
  testing::expect_error([&] { Server server(world.source(), options); }, {"--workers 0"});
}

}  // namespace
}  // namespace userip::serve
