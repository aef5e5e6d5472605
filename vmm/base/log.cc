#include "vmm/base/log.h"

#include <spdlog/sinks/stdout_sinks.h>

namespace vmm::log {

void init(const std::string& level) {
  auto logger = spdlog::stderr_logger_mt("vmm");
  logger->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
}

}  // namespace vmm::log
