// Logging goes through spdlog; this header fixes the project's conventions.
#pragma once

#include <spdlog/spdlog.h>

namespace vmm::log {

// Configures the default logger: stderr, "[time] [level] message".
void init(const std::string& level);

}  // namespace vmm::log
