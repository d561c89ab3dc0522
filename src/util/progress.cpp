#include "userip/util/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace userip {

namespace {
// Redraw often enough to feel live on a terminal; in logs, one line every few seconds.
constexpr double kTerminalRedrawSeconds = 0.1;
constexpr double kLogLineSeconds = 5.0;
constexpr int kBarWidth = 24;

double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

ProgressBar::ProgressBar(std::string label, std::uint64_t total, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      interactive_(isatty(fileno(stderr)) != 0),
      sink_(stderr),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::advance(std::uint64_t n) {
  done_ += n;
  maybe_draw(false);
}

void ProgressBar::set(std::uint64_t done) {
  done_ = done;
  maybe_draw(false);
}

// Drawn like a count change: some phases (a profile fit's final pass) report only through the metric.
void ProgressBar::set_metric(std::string metric) {
  metric_ = std::move(metric);
  maybe_draw(false);
}

std::string ProgressBar::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<long long>(std::llround(seconds));
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

std::string ProgressBar::render(double elapsed) const {
  double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  std::string line = label_;
  if (total_ > 0) {
    double fraction = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    int filled = static_cast<int>(fraction * kBarWidth);
    line += fmt::format(" [{}{}] {:3.0f}% {}/{}", std::string(filled, '#'), std::string(kBarWidth - filled, '.'),
                        100.0 * fraction, done_, total_);
  } else {
    line += fmt::format(" {}", done_);
  }
  line += fmt::format(" {:.1f} {}/s", rate, unit_);
  if (total_ > 0) {
    double remaining = rate > 0 ? static_cast<double>(total_ - std::min(done_, total_)) / rate : NAN;
    line += fmt::format(" elapsed {} eta {}", format_duration(elapsed), finished_ ? "0s" : format_duration(remaining));
  } else {
    line += fmt::format(" elapsed {}", format_duration(elapsed));
  }
  if (!metric_.empty()) line += " | " + metric_;
  return line;
}

void ProgressBar::maybe_draw(bool force) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  double since_draw = seconds_between(last_draw_, now);
  if (!force && since_draw < (interactive_ ? kTerminalRedrawSeconds : kLogLineSeconds)) return;
  last_draw_ = now;
  std::string line = render(seconds_between(start_, now));
  if (interactive_) {
    std::fprintf(sink_, "\r\033[K%s", line.c_str());
  } else {
    std::fprintf(sink_, "%s\n", line.c_str());
  }
  std::fflush(sink_);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  maybe_draw(true);
  if (enabled_ && interactive_) std::fputc('\n', sink_);
  std::fflush(sink_);
}

}  // namespace userip
