#include "userip/util/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "userip/util/error.h"

namespace userip {

void log_init(const std::string& level) {
  auto parsed = spdlog::level::from_str(level);
  // from_str maps anything unknown to "off"; only accept "off" when it was asked for.
  USERIP_CHECK(parsed != spdlog::level::off || level == "off",
               "unknown log level '{}' (expected trace, debug, info, warn, error or off)", level);
  auto logger = spdlog::get("userip");
  if (!logger) logger = spdlog::stderr_color_mt("userip");
  logger->set_pattern("%^[%H:%M:%S %l]%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(parsed);
}

}  // namespace userip
