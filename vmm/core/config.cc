#include "vmm/core/config.h"

#include <cctype>

#include "vmm/base/checked_math.h"

namespace vmm {

Result<uint64_t> parse_size(const std::string& text) {
  if (text.empty()) return make_error("empty size");
  uint64_t value = 0;
  size_t i = 0;
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    auto v = checked_mul(value, 10);
    if (!v) return make_error("size '{}' is too large", text);
    auto w = checked_add(*v, static_cast<uint64_t>(text[i] - '0'));
    if (!w) return make_error("size '{}' is too large", text);
    value = *w;
  }
  if (i == 0) return make_error("size '{}' does not start with a number", text);
  uint64_t mult = 1;
  std::string suffix = text.substr(i);
  if (suffix.empty() || suffix == "B") mult = 1;
  else if (suffix == "K" || suffix == "KiB" || suffix == "k") mult = 1ull << 10;
  else if (suffix == "M" || suffix == "MiB" || suffix == "m") mult = 1ull << 20;
  else if (suffix == "G" || suffix == "GiB" || suffix == "g") mult = 1ull << 30;
  else return make_error("size '{}' has an unknown suffix '{}' (use K, M or G)", text, suffix);
  auto r = checked_mul(value, mult);
  if (!r) return make_error("size '{}' is too large", text);
  return *r;
}

Result<void> parse_serial(const std::string& text, VmConfig& cfg) {
  if (text == "stdio") {
    cfg.serial = SerialMode::kStdio;
  } else if (text == "none") {
    cfg.serial = SerialMode::kNone;
  } else if (text.rfind("file:", 0) == 0 && text.size() > 5) {
    cfg.serial = SerialMode::kFile;
    cfg.serial_path = text.substr(5);
  } else {
    return make_error("--serial '{}': expected stdio, file:PATH or none", text);
  }
  return ok();
}

}  // namespace vmm
