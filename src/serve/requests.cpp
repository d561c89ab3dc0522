#include "userip/serve/requests.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "userip/util/error.h"

namespace userip::serve {

namespace {

constexpr std::size_t kMaxIdBytes = 256;

[[noreturn]] void reject(const std::string& message) { throw RequestError(400, message); }

nlohmann::json parse_body(std::string_view body, const RequestLimits& limits) {
  if (body.empty()) reject("empty body: expected a JSON object");
  // The callback bounds nesting while parsing, before a deep document is ever built.
  const int max_depth = limits.max_depth;
  nlohmann::json::parser_callback_t bound_depth = [max_depth](int depth, nlohmann::json::parse_event_t,
                                                              nlohmann::json&) {
    if (depth > max_depth) throw RequestError(400, fmt::format("JSON nested deeper than {} levels", max_depth));
    return true;
  };
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(body.begin(), body.end(), bound_depth);
  } catch (const nlohmann::json::parse_error& e) {
    reject(fmt::format("malformed JSON at byte {}: {}", e.byte, e.what()));
  } catch (const nlohmann::json::exception& e) {  // e.g. a number too large for a double
    reject(fmt::format("malformed JSON: {}", e.what()));
  }
  if (!json.is_object()) reject(fmt::format("expected a JSON object, got {}", json.type_name()));
  return json;
}

void check_keys(const nlohmann::json& object, std::initializer_list<const char*> known, const std::string& where) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    bool ok = false;
    for (const char* k : known) ok = ok || it.key() == k;
    if (!ok) {
      std::string list;
      for (const char* k : known) list += std::string(list.empty() ? "" : ", ") + "\"" + k + "\"";
      reject(fmt::format("{}unknown key \"{}\" (expected {})", where, it.key(), list));
    }
  }
}

std::string id_of(const nlohmann::json& value, const std::string& field) {
  std::string id;
  if (value.is_string()) {
    id = value.get<std::string>();
  } else if (value.is_number_integer()) {
    id = value.dump();
  } else {
    reject(fmt::format("{}: expected a string or integer id, got {}", field, value.type_name()));
  }
  if (id.empty()) reject(fmt::format("{}: empty id", field));
  if (id.size() > kMaxIdBytes) reject(fmt::format("{}: id longer than {} bytes", field, kMaxIdBytes));
  return id;
}

ScoreRequest score_request_of(const nlohmann::json& json, const RequestLimits& limits, const std::string& where) {
  check_keys(json, {"user", "items", "context"}, where);
  ScoreRequest r;
  if (!json.contains("user")) reject(where + "missing \"user\"");
  r.user = id_of(json["user"], where + "user");
  if (!json.contains("items")) reject(where + "missing \"items\"");
  const auto& items = json["items"];
  if (!items.is_array()) reject(fmt::format("{}items: expected an array, got {}", where, items.type_name()));
  if (items.empty()) reject(where + "items: empty; give at least one item to score");
  if (items.size() > limits.max_items)
    reject(fmt::format("{}items: {} items, more than the limit of {} per request", where, items.size(), limits.max_items));
  r.items.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) r.items.push_back(id_of(items[i], fmt::format("{}items[{}]", where, i)));
  if (json.contains("context")) {
    if (!json["context"].is_object())
      reject(fmt::format("{}context: expected an object, got {}", where, json["context"].type_name()));
    r.context = json["context"];
  }
  return r;
}

}  // namespace

void RequestLimits::validate() const {
  USERIP_CHECK(max_items >= 1, "the item limit must be at least 1 (got {})", max_items);
  USERIP_CHECK(max_batch_users >= 1, "the batch user limit must be at least 1 (got {})", max_batch_users);
  USERIP_CHECK(max_history >= 1, "the history limit must be at least 1 (got {})", max_history);
  USERIP_CHECK(max_body_bytes >= 64, "the body limit must be at least 64 bytes (got {})", max_body_bytes);
  USERIP_CHECK(max_depth >= 3, "the JSON depth limit must be at least 3 (got {})", max_depth);
}

ScoreRequest parse_score_request(std::string_view body, const RequestLimits& limits) {
  return score_request_of(parse_body(body, limits), limits, "");
}

std::vector<ScoreRequest> parse_batch_request(std::string_view body, const RequestLimits& limits) {
  const auto json = parse_body(body, limits);
  check_keys(json, {"requests"}, "");
  if (!json.contains("requests")) reject("missing \"requests\"");
  const auto& list = json["requests"];
  if (!list.is_array()) reject(fmt::format("requests: expected an array, got {}", list.type_name()));
  if (list.empty()) reject("requests: empty");
  if (list.size() > limits.max_batch_users)
    reject(fmt::format("requests: {} users, more than the limit of {} per batch", list.size(), limits.max_batch_users));
  std::vector<ScoreRequest> out;
  out.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string where = fmt::format("requests[{}].", i);
    if (!list[i].is_object()) reject(fmt::format("requests[{}]: expected an object, got {}", i, list[i].type_name()));
    out.push_back(score_request_of(list[i], limits, where));
  }
  return out;
}

InferRequest parse_infer_request(std::string_view body, const RequestLimits& limits) {
  const auto json = parse_body(body, limits);
  check_keys(json, {"history"}, "");
  if (!json.contains("history")) reject("missing \"history\"");
  const auto& list = json["history"];
  if (!list.is_array()) reject(fmt::format("history: expected an array, got {}", list.type_name()));
  if (list.empty()) reject("history: empty; a profile needs at least one interaction");
  if (list.size() > limits.max_history)
    reject(fmt::format("history: {} interactions, more than the limit of {}", list.size(), limits.max_history));
  InferRequest r;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string where = fmt::format("history[{}]", i);
    const auto& e = list[i];
    if (!e.is_object()) reject(fmt::format("{}: expected an object, got {}", where, e.type_name()));
    check_keys(e, {"item", "rating", "timestamp"}, where + ": ");
    HistoryEvent event;
    if (!e.contains("item")) reject(where + ": missing \"item\"");
    event.item = id_of(e["item"], where + ".item");
    if (e.contains("rating")) {
      if (!e["rating"].is_number()) reject(fmt::format("{}.rating: expected a number, got {}", where, e["rating"].type_name()));
      const double rating = e["rating"].get<double>();
      if (!std::isfinite(rating) || std::abs(rating) > 1e6) reject(fmt::format("{}.rating: {} is out of range", where, rating));
      event.rating = static_cast<float>(rating);
    }
    event.timestamp = static_cast<std::int64_t>(i);
    if (e.contains("timestamp")) {
      if (!e["timestamp"].is_number_integer())
        reject(fmt::format("{}.timestamp: expected an integer, got {}", where, e["timestamp"].type_name()));
      event.timestamp = e["timestamp"].get<std::int64_t>();
    }
    r.history.push_back(std::move(event));
  }
  return r;
}

std::string check_path_id(std::string_view id) {
  if (id.empty()) reject("user id: empty");
  if (id.size() > kMaxIdBytes) reject(fmt::format("user id: longer than {} bytes", kMaxIdBytes));
  for (char c : id)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) reject("user id: control character in the path");
  return std::string(id);
}

}  // namespace userip::serve
