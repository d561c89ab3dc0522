#pragma once
// A progress bar for long loops, drawn on stderr: done/total, rate, ETA and a live metric.
// When stderr is not a terminal (logs, CI) it prints a plain line every few seconds instead,
// so nothing is lost in a log file and nothing floods it.
#include <chrono>
#include <cstdint>
#include <string>

namespace userip {

class ProgressBar {
 public:
  // total == 0 means "unknown": the bar shows the count and rate without percent or ETA.
  ProgressBar(std::string label, std::uint64_t total, std::string unit = "it");
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void advance(std::uint64_t n = 1);
  void set(std::uint64_t done);
  // A short live figure shown after the rate, e.g. "loss 2.31"; redrawn as set() would.
  void set_metric(std::string metric);
  // Draws the final state and a newline. Called by the destructor if not called before.
  void finish();

  // Forces plain-line mode or terminal mode (tests); by default detected from stderr.
  void set_interactive(bool interactive) { interactive_ = interactive; }
  // Draws nothing at all (quiet runs, tests).
  void disable() { enabled_ = false; }
  // Where non-interactive lines go; tests redirect it. Default: stderr.
  void set_sink(std::FILE* sink) { sink_ = sink; }

  static std::string format_duration(double seconds);
  // One rendered status line (no carriage return or newline); exposed for tests.
  std::string render(double elapsed_seconds) const;

 private:
  void maybe_draw(bool force);

  std::string label_;
  std::uint64_t total_;
  std::string unit_;
  std::uint64_t done_ = 0;
  std::string metric_;
  bool interactive_;
  bool finished_ = false;
  bool enabled_ = true;
  std::FILE* sink_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace userip
