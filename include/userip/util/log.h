#pragma once
// Leveled logging to stderr through spdlog. Call userip::log_init once at program start;
// afterwards use spdlog::info / spdlog::warn / spdlog::debug directly.
#include <spdlog/spdlog.h>

#include <string>

namespace userip {

// level: trace, debug, info, warn, error, off. Throws userip::Error on an unknown level.
void log_init(const std::string& level);

}  // namespace userip
