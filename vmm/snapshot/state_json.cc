#include "vmm/snapshot/state_json.h"

#include <fmt/format.h>

#include <algorithm>

namespace vmm::snapshot {

namespace {

nlohmann::ordered_json bytes_json(const std::vector<uint8_t>& b, size_t max_bytes) {
  size_t n = std::min(b.size(), max_bytes);
  std::string hex;
  hex.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) hex += fmt::format("{:02x}", b[i]);
  nlohmann::ordered_json j = {{"size", b.size()}, {"hex", std::move(hex)}};
  if (n < b.size()) j["truncated"] = true;
  return j;
}

}  // namespace

nlohmann::ordered_json to_json(const Section& s, const JsonOptions& opts) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& f : s.fields()) {
    switch (f.kind) {
      case Kind::kU8:
      case Kind::kU16:
      case Kind::kU32:
      case Kind::kU64:
        j[f.name] = f.scalar;
        break;
      case Kind::kI64:
        j[f.name] = static_cast<int64_t>(f.scalar);
        break;
      case Kind::kBool:
        j[f.name] = f.scalar != 0;
        break;
      case Kind::kString:
        j[f.name] = std::string(f.bytes.begin(), f.bytes.end());
        break;
      case Kind::kBytes:
      case Kind::kSection:
        j[f.name] = bytes_json(f.bytes, opts.max_bytes);
        break;
    }
  }
  for (const auto& c : s.sections()) j[c.name()] = to_json(c, opts);
  return j;
}

nlohmann::ordered_json to_json(const StateFile& f, const JsonOptions& opts) {
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  for (const auto& [k, v] : f.header.config) config[k] = v;
  nlohmann::ordered_json header = {
      {"format_version", f.header.format_version},
      {"vmm_version", f.header.vmm_version},
      {"cpu_template", f.header.cpu_template},
      {"created_unix", f.header.created_unix},
      {"config", std::move(config)},
      {"payload_bytes", f.payload_bytes},
      {"crc32c", fmt::format("{:#010x}", f.crc)},
  };
  return {{"header", std::move(header)}, {"state", to_json(f.tree, opts)}};
}

}  // namespace vmm::snapshot
