#pragma once
// The server's counters, rendered in the Prometheus text exposition format (version 0.0.4) for
// GET /metrics: requests by route and status, latency histograms by route, the scoring traffic's
// out-of-vocabulary counts, reloads. Gauges that describe the loaded state (feature-bank version,
// model) are passed in at render time, so they always match the state actually serving.
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace userip::serve {

struct ScoringCounts {
  std::int64_t users = 0;          // scored (user, candidate list) requests
  std::int64_t unknown_users = 0;  // of those, users absent from the feature bank (codes go to OOV)
  std::int64_t oov_users = 0;      // users outside the model's user_id vocabulary
  std::int64_t items = 0;          // scored candidates
  std::int64_t unknown_items = 0;  // candidates absent from the model's item catalogue
};

struct StateGauges {
  std::int64_t bank_version = -1;  // -1 = no bank
  std::int64_t bank_users = 0;
  std::string bank_fingerprint;
  std::string model_fingerprint;
  std::string model_kind;
  std::int64_t generation = 0;     // 1 for the state loaded at start, +1 per successful reload
  double loaded_at_unix = 0;
};

class Metrics {
 public:
  // Upper bounds of the latency histogram, in seconds (a +Inf bucket follows).
  static constexpr std::array<double, 16> kLatencyBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005,
                                                             0.01,   0.025,   0.05,   0.1,   0.25,  0.5,
                                                             1,      2.5,     5,      10};

  void record_request(const std::string& route, int status, double seconds);
  void record_scoring(const ScoringCounts& counts);
  void record_reload(bool ok);
  void record_fold_in(double seconds);

  std::string render(const StateGauges& state, std::int64_t in_flight) const;

  // For tests and logs.
  std::int64_t requests(const std::string& route, int status) const;
  ScoringCounts scoring() const;

 private:
  struct Histogram {
    std::array<std::int64_t, kLatencyBuckets.size() + 1> counts{};
    double sum = 0;
    std::int64_t count = 0;
    void add(double seconds);
  };
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, std::int64_t> requests_;
  std::map<std::string, Histogram> latency_;
  ScoringCounts scoring_;
  std::int64_t reloads_ok_ = 0, reloads_failed_ = 0;
  Histogram fold_in_;
};

}  // namespace userip::serve
