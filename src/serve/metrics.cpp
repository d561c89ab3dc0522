#include "userip/serve/metrics.h"

#include <fmt/format.h>

namespace userip::serve {

namespace {

// Label values escape backslash, double quote and newline (the exposition format's rules).
std::string label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string bound(double seconds) { return fmt::format("{}", seconds); }

}  // namespace

void Metrics::Histogram::add(double seconds) {
  std::size_t b = 0;
  while (b < kLatencyBuckets.size() && seconds > kLatencyBuckets[b]) ++b;
  ++counts[b];
  sum += seconds;
  ++count;
}

void Metrics::record_request(const std::string& route, int status, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{route, status}];
  latency_[route].add(seconds);
}

void Metrics::record_scoring(const ScoringCounts& c) {
  std::lock_guard<std::mutex> lock(mutex_);
  scoring_.users += c.users;
  scoring_.unknown_users += c.unknown_users;
  scoring_.oov_users += c.oov_users;
  scoring_.items += c.items;
  scoring_.unknown_items += c.unknown_items;
}

void Metrics::record_reload(bool ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++(ok ? reloads_ok_ : reloads_failed_);
}

void Metrics::record_fold_in(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  fold_in_.add(seconds);
}

std::int64_t Metrics::requests(const std::string& route, int status) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = requests_.find({route, status});
  return it == requests_.end() ? 0 : it->second;
}

ScoringCounts Metrics::scoring() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return scoring_;
}

std::string Metrics::render(const StateGauges& state, std::int64_t in_flight) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  auto histogram = [&](const std::string& name, const std::string& labels, const Histogram& h) {
    const std::string sep = labels.empty() ? "" : ",";
    std::int64_t cumulative = 0;
    for (std::size_t b = 0; b < kLatencyBuckets.size(); ++b) {
      cumulative += h.counts[b];
      out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, bound(kLatencyBuckets[b]), cumulative);
    }
    cumulative += h.counts.back();
    out += fmt::format("{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, cumulative);
    const std::string braces = labels.empty() ? "" : "{" + labels + "}";
    out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", name, braces, h.sum, name, braces, h.count);
  };

  // One metric without labels: its HELP and TYPE lines and its value.
  auto single = [&](const char* name, const char* type, const char* help, const std::string& value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
  };
  auto counter = [&](const char* name, const char* help, std::int64_t value) {
    single(name, "counter", help, std::to_string(value));
  };
  out += "# HELP userip_http_requests_total HTTP requests by route and status code.\n";
  out += "# TYPE userip_http_requests_total counter\n";
  for (const auto& [key, n] : requests_)
    out += fmt::format("userip_http_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", label(key.first), key.second, n);

  out += "# HELP userip_http_request_duration_seconds Time from routing to the response, by route.\n";
  out += "# TYPE userip_http_request_duration_seconds histogram\n";
  for (const auto& [route, h] : latency_)
    histogram("userip_http_request_duration_seconds", fmt::format("route=\"{}\"", label(route)), h);

  single("userip_http_requests_in_flight", "gauge", "Requests being handled now.", std::to_string(in_flight));

  counter("userip_scored_users_total", "Users scored (one per candidate list).", scoring_.users);
  counter("userip_unknown_users_total", "Scored users absent from the feature bank (profile codes to OOV).",
          scoring_.unknown_users);
  counter("userip_oov_users_total", "Scored users outside the model's user_id vocabulary.", scoring_.oov_users);
  counter("userip_scored_items_total", "Candidate items scored.", scoring_.items);
  counter("userip_unknown_items_total", "Candidate items absent from the model's item catalogue.",
          scoring_.unknown_items);
  single("userip_unknown_user_ratio", "gauge", "Share of scored users absent from the feature bank, since start.",
         fmt::format("{}", scoring_.users > 0 ? static_cast<double>(scoring_.unknown_users) /
                                                    static_cast<double>(scoring_.users)
                                              : 0.0));

  out += "# HELP userip_reloads_total Hot reloads of the feature bank and model, by result.\n";
  out += "# TYPE userip_reloads_total counter\n";
  out += fmt::format("userip_reloads_total{{result=\"ok\"}} {}\n", reloads_ok_);
  out += fmt::format("userip_reloads_total{{result=\"failed\"}} {}\n", reloads_failed_);

  out += "# HELP userip_fold_in_duration_seconds Time of one fold-in through the LM.\n";
  out += "# TYPE userip_fold_in_duration_seconds histogram\n";
  histogram("userip_fold_in_duration_seconds", "", fold_in_);

  single("userip_feature_bank_version", "gauge", "Version of the feature bank serving now (-1 = none).",
         std::to_string(state.bank_version));
  single("userip_feature_bank_users", "gauge", "Users in the feature bank serving now.", std::to_string(state.bank_users));
  single("userip_state_generation", "gauge", "Loaded state: 1 at start, +1 per successful reload.",
         std::to_string(state.generation));
  single("userip_state_loaded_timestamp_seconds", "gauge", "When the serving state was loaded (Unix time).",
         fmt::format("{:.3f}", state.loaded_at_unix));
  out += "# HELP userip_model_info The model and bank serving now (value is always 1).\n";
  out += "# TYPE userip_model_info gauge\n";
  out += fmt::format("userip_model_info{{model=\"{}\",model_fingerprint=\"{}\",bank_fingerprint=\"{}\"}} 1\n",
                     label(state.model_kind), label(state.model_fingerprint), label(state.bank_fingerprint));
  return out;
}

}  // namespace userip::serve
