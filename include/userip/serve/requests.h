#pragma once
// The JSON bodies the scoring service accepts, parsed strictly: anything a client could get wrong
// (malformed JSON, a wrong type, an unknown key, too many items, nesting too deep) is a
// RequestError carrying the HTTP status and a message that names the offending field, never an
// exception of another type. This is the code the request fuzzer drives.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace userip::serve {

struct RequestError : std::runtime_error {
  RequestError(int status, const std::string& message) : std::runtime_error(message), status(status) {}
  int status;
};

struct RequestLimits {
  std::size_t max_items = 1000;         // candidate items per scored user
  std::size_t max_batch_users = 100;    // users per /v1/score:batch request
  std::size_t max_history = 1000;       // interactions per fold-in request
  std::size_t max_body_bytes = 1 << 20; // the HTTP layer refuses larger bodies with 413
  int max_depth = 8;                    // JSON nesting (the context object included)
  void validate() const;
};

// POST /v1/score: {"user": ID, "items": [ID, ...], "context": {...}}. IDs are strings or integers
// (MovieLens ids are numbers); integers are taken as their decimal text. "context" is optional and
// must be an object; the current feature pipeline has no context fields, so it is only echoed
// into the request log.
struct ScoreRequest {
  std::string user;
  std::vector<std::string> items;
  nlohmann::json context = nlohmann::json::object();
};
ScoreRequest parse_score_request(std::string_view body, const RequestLimits& limits);

// POST /v1/score:batch: {"requests": [<score request>, ...]}.
std::vector<ScoreRequest> parse_batch_request(std::string_view body, const RequestLimits& limits);

// POST /v1/users/{id}/profile:infer: {"history": [{"item": ID, "rating": 4.5, "timestamp": 1}, ...]}.
// rating is optional (default 0, as for click data); timestamp is optional (default: position in
// the list, so the list order is the chronological order).
struct HistoryEvent {
  std::string item;
  float rating = 0;
  std::int64_t timestamp = 0;
};
struct InferRequest {
  std::vector<HistoryEvent> history;
};
InferRequest parse_infer_request(std::string_view body, const RequestLimits& limits);

// A user id taken from the (already percent-decoded) path: non-empty, at most 256 bytes, no
// control characters. Throws RequestError 400 otherwise.
std::string check_path_id(std::string_view id);

}  // namespace userip::serve
