// The request parser: every way a client can get a body wrong is a RequestError with a 4xx status
// and a message naming the field; a randomized run over mutated and random bodies finds no other
// outcome (no crash, no other exception type).
#include "userip/serve/requests.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace userip::serve {
namespace {

RequestLimits limits() {
  RequestLimits l;
  l.max_items = 5;
  l.max_batch_users = 3;
  l.max_history = 4;
  return l;
}

// Parses and expects a RequestError with `status` whose message contains `part`.
template <typename Fn>
void expect_rejected(Fn&& parse, int status, const std::string& part) {
  try {
    parse();
    ADD_FAILURE() << "expected RequestError containing '" << part << "'";
  } catch (const RequestError& e) {
    EXPECT_EQ(e.status, status) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "'" << part << "' not in: " << e.what();
  }
}

TEST(ServeRequests, ScoreRequestTakesStringAndIntegerIds) {
  auto r = parse_score_request(R"({"user": 17, "items": ["a", 2, "c"], "context": {"page": "home"}})", limits());
  EXPECT_EQ(r.user, "17");
  EXPECT_EQ(r.items, (std::vector<std::string>{"a", "2", "c"}));
  EXPECT_EQ(r.context["page"], "home");
  auto no_context = parse_score_request(R"({"user": "u", "items": ["i"]})", limits());
  EXPECT_TRUE(no_context.context.is_object());
  EXPECT_TRUE(no_context.context.empty());
}

TEST(ServeRequests, ScoreRequestErrorsNameTheField) {
  const auto l = limits();
  auto score = [&](const std::string& body) { return [body, l] { parse_score_request(body, l); }; };
  expect_rejected(score(""), 400, "empty body");
  expect_rejected(score("{\"user\": 1, "), 400, "malformed JSON at byte");
  expect_rejected(score("[1, 2]"), 400, "expected a JSON object, got array");
  expect_rejected(score(R"({"items": ["a"]})"), 400, "missing \"user\"");
  expect_rejected(score(R"({"user": "u"})"), 400, "missing \"items\"");
  expect_rejected(score(R"({"user": 1.5, "items": ["a"]})"), 400, "user: expected a string or integer id, got number");
  expect_rejected(score(R"({"user": "", "items": ["a"]})"), 400, "user: empty id");
  expect_rejected(score(R"({"user": "u", "items": "a"})"), 400, "items: expected an array, got string");
  expect_rejected(score(R"({"user": "u", "items": []})"), 400, "items: empty");
  expect_rejected(score(R"({"user": "u", "items": ["a", null]})"), 400, "items[1]: expected a string or integer id, got null");
  expect_rejected(score(R"({"user": "u", "items": [1,2,3,4,5,6]})"), 400, "6 items, more than the limit of 5");
  expect_rejected(score(R"({"user": "u", "items": ["a"], "context": [1]})"), 400, "context: expected an object");
  expect_rejected(score(R"({"user": "u", "items": ["a"], "extra": 1})"), 400, "unknown key \"extra\"");
  expect_rejected(score(R"({"user": "u", "items": ["a"], "context": {"a": [[[[[[[[[[1]]]]]]]]]]}})"), 400,
                  "nested deeper than 8 levels");
  expect_rejected(score(R"({"user": ")" + std::string(300, 'x') + R"(", "items": ["a"]})"), 400, "longer than 256 bytes");
}

TEST(ServeRequests, BatchRequestsNameTheEntry) {
  const auto l = limits();
  auto batch = parse_batch_request(R"({"requests": [{"user": "a", "items": [1]}, {"user": "b", "items": [2, 3]}]})", l);
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[1].items, (std::vector<std::string>{"2", "3"}));
  auto parse = [&](const std::string& body) { return [body, l] { parse_batch_request(body, l); }; };
  expect_rejected(parse(R"({"requests": []})"), 400, "requests: empty");
  expect_rejected(parse(R"({"requests": {}})"), 400, "requests: expected an array");
  expect_rejected(parse(R"({"requests": [1]})"), 400, "requests[0]: expected an object, got number");
  expect_rejected(parse(R"({"requests": [{"user": "a", "items": [1]}, {"user": "b", "items": [true]}]})"), 400,
                  "requests[1].items[0]");
  expect_rejected(parse(R"({"requests": [{"user":"a","items":[1]},{"user":"a","items":[1]},{"user":"a","items":[1]},{"user":"a","items":[1]}]})"),
                  400, "4 users, more than the limit of 3");
}

TEST(ServeRequests, InferRequestDefaultsAndErrors) {
  const auto l = limits();
  auto r = parse_infer_request(R"({"history": [{"item": 5, "rating": 4.5}, {"item": "x", "timestamp": 99}]})", l);
  ASSERT_EQ(r.history.size(), 2u);
  EXPECT_EQ(r.history[0].item, "5");
  EXPECT_FLOAT_EQ(r.history[0].rating, 4.5f);
  EXPECT_EQ(r.history[0].timestamp, 0);  // position in the list
  EXPECT_EQ(r.history[1].timestamp, 99);
  EXPECT_FLOAT_EQ(r.history[1].rating, 0.0f);
  auto parse = [&](const std::string& body) { return [body, l] { parse_infer_request(body, l); }; };
  expect_rejected(parse(R"({"history": []})"), 400, "history: empty");
  expect_rejected(parse(R"({"history": [{"rating": 1}]})"), 400, "history[0]: missing \"item\"");
  expect_rejected(parse(R"({"history": [{"item": 1, "rating": "5"}]})"), 400, "history[0].rating: expected a number");
  expect_rejected(parse(R"({"history": [{"item": 1, "timestamp": 1.5}]})"), 400, "history[0].timestamp: expected an integer");
  expect_rejected(parse(R"({"history": [{"item": 1, "when": 1}]})"), 400, "unknown key \"when\"");
  expect_rejected(parse(R"({"history": [{"item":1},{"item":1},{"item":1},{"item":1},{"item":1}]})"), 400,
                  "5 interactions, more than the limit of 4");
}

TEST(ServeRequests, PathIdsAreChecked) {
  EXPECT_EQ(check_path_id("user 7"), "user 7");
  expect_rejected([] { check_path_id(""); }, 400, "empty");
  expect_rejected([] { check_path_id(std::string("a\nb")); }, 400, "control character");
  expect_rejected([] { check_path_id(std::string(257, 'a')); }, 400, "longer than 256 bytes");
}

// The fuzzing run: mutations of valid bodies (byte flips, insertions, deletions, truncations,
// splices of JSON tokens) and random bytes through every parser. Only two outcomes are allowed: a
// parsed request within the limits, or a RequestError with a 4xx status. Seeded, so a failure
// reproduces; the iteration count keeps it under a few seconds.
TEST(ServeRequests, RandomizedBodiesNeverCrashTheParsers) {
  const auto l = limits();
  const std::vector<std::string> seeds = {
      R"({"user": 17, "items": ["a", 2, "c"], "context": {"page": "home", "n": [1, {"x": null}]}})",
      R"({"requests": [{"user": "a", "items": [1]}, {"user": "b", "items": [2, 3], "context": {}}]})",
      R"({"history": [{"item": 5, "rating": 4.5}, {"item": "x", "timestamp": 99}]})",
      R"({"user": "\u00e9\ud83d\ude00", "items": ["\\", "\"", 18446744073709551615, -1, 1e400]})"};
  const std::vector<std::string> tokens = {"{", "}", "[", "]", ",", ":", "\"", "\\", "null", "true", "1e999", "-0",
                                           "\"items\"", "\"user\"", "\"requests\"", "\"history\"", "\xff", "\xc3",
                                           std::string(1, '\0'), "[[[[[[[[[[[[[[[[[[", "\"\\u0000\""};
  std::mt19937_64 rng(20261126);
  auto below = [&](std::size_t n) { return n == 0 ? std::size_t{0} : static_cast<std::size_t>(rng() % n); };
  std::int64_t accepted = 0, rejected = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::string body;
    if (iteration % 10 == 0) {
      body.resize(below(64));
      for (auto& c : body) c = static_cast<char>(rng());
    } else {
      body = seeds[below(seeds.size())];
      const int edits = 1 + static_cast<int>(below(4));
      for (int e = 0; e < edits && !body.empty(); ++e) {
        const std::size_t at = below(body.size());
        switch (below(5)) {
          case 0: body[at] = static_cast<char>(rng()); break;
          case 1: body.insert(at, tokens[below(tokens.size())]); break;
          case 2: body.erase(at, 1 + below(8)); break;
          case 3: body.resize(at); break;
          default: body.insert(at, body.substr(below(body.size()), below(16))); break;
        }
      }
    }
    for (int parser = 0; parser < 3; ++parser) {
      try {
        if (parser == 0) {
          auto r = parse_score_request(body, l);
          EXPECT_FALSE(r.user.empty());
          EXPECT_GE(r.items.size(), 1u);
          EXPECT_LE(r.items.size(), l.max_items);
        } else if (parser == 1) {
          auto r = parse_batch_request(body, l);
          EXPECT_GE(r.size(), 1u);
          EXPECT_LE(r.size(), l.max_batch_users);
        } else {
          auto r = parse_infer_request(body, l);
          EXPECT_GE(r.history.size(), 1u);
          EXPECT_LE(r.history.size(), l.max_history);
        }
        ++accepted;
      } catch (const RequestError& e) {
        EXPECT_GE(e.status, 400);
        EXPECT_LT(e.status, 500);
        ++rejected;
      }
    }
  }
  // Both outcomes occur, so the mutations neither always break nor never touch the bodies.
  EXPECT_GT(accepted, 100);
  EXPECT_GT(rejected, 100);
}

}  // namespace
}  // namespace userip::serve
