#include "vmm/core/config.h"

#include <cctype>

#include "boot/x86_64/cpuid.h"
#include "boot/x86_64/e820.h"
#include "boot/x86_64/layout.h"
#include "vmm/base/checked_math.h"

namespace vmm {

Result<void> validate_config(const VmConfig& cfg) {
  if (auto r = boot::validate_mem_size(cfg.mem_bytes); !r.ok())
    return make_error("--mem: {}", r.error().to_string());
  if (cfg.cpus < 1 || cfg.cpus > kMaxVcpus)
    return make_error("--cpus {} is out of range 1..{}", cfg.cpus, kMaxVcpus);
  if (cfg.time_dilation < 1 || cfg.time_dilation > 1000)
    return make_error("--time-dilation {} is out of range 1..1000", cfg.time_dilation);
  if (cfg.boot_protocol != "auto" && cfg.boot_protocol != "linux64" && cfg.boot_protocol != "pvh")
    return make_error("--boot-protocol '{}': expected auto, linux64 or pvh", cfg.boot_protocol);
  if (cfg.cpu_template != boot::kCpuTemplateHost && cfg.cpu_template != boot::kCpuTemplateMinimal)
    return make_error("CPU template '{}': expected {} or {}", cfg.cpu_template,
                      boot::kCpuTemplateHost, boot::kCpuTemplateMinimal);
  size_t ndev = cfg.disks.size() + cfg.nets.size() + (cfg.rng ? 1 : 0);
  if (ndev > layout::kMaxVirtioDevices)
    return make_error("{} virtio devices requested; at most {} are supported", ndev,
                      layout::kMaxVirtioDevices);
  for (const auto& d : cfg.disks) {
    if (d.path.empty()) return make_error("--disk without a path");
    if (d.id.size() > virtio::kBlkIdBytes)
      return make_error("--disk {}: id is longer than {} bytes", d.path, virtio::kBlkIdBytes);
  }
  for (const auto& n : cfg.nets)
    if (n.tap.empty() || n.tap.size() > 15)
      return make_error("--net tap='{}': a TAP name is 1-15 characters", n.tap);
  return ok();
}

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

namespace {

// "k=v,k=v" -> pairs; a first item without '=' is returned under `bare_key`.
Result<std::vector<std::pair<std::string, std::string>>> split_options(const std::string& text,
                                                                       const char* bare_key) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = 0;
  bool first = true;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(pos, comma - pos);
    size_t eq = item.find('=');
    if (eq == std::string::npos) {
      if (!first || item.empty()) return make_error("'{}': expected key=value", item);
      out.emplace_back(bare_key, item);
    } else {
      out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    }
    first = false;
    pos = comma + 1;
  }
  return out;
}

Result<bool> parse_on_off(const std::string& key, const std::string& v) {
  if (v == "on" || v == "true" || v == "1") return true;
  if (v == "off" || v == "false" || v == "0") return false;
  return make_error("{}={}: expected on or off", key, v);
}

}  // namespace

Result<virtio::BlockConfig> parse_disk(const std::string& text) {
  virtio::BlockConfig cfg;
  auto items = split_options(text, "path");
  if (!items.ok()) return make_error("--disk '{}': {}", text, items.error().to_string());
  for (const auto& [k, v] : *items) {
    if (k == "path") {
      cfg.path = v;
    } else if (k == "readonly" || k == "ro") {
      auto b = parse_on_off(k, v);
      if (!b.ok()) return make_error("--disk '{}': {}", text, b.error().to_string());
      cfg.readonly = *b;
    } else if (k == "id") {
      if (v.size() > virtio::kBlkIdBytes)
        return make_error("--disk '{}': id is longer than {} bytes", text, virtio::kBlkIdBytes);
      cfg.id = v;
    } else {
      return make_error("--disk '{}': unknown option '{}' (path, readonly, id)", text, k);
    }
  }
  if (cfg.path.empty()) return make_error("--disk '{}': no path=", text);
  return cfg;
}

Result<virtio::NetConfig> parse_net(const std::string& text) {
  virtio::NetConfig cfg;
  auto items = split_options(text, "tap");
  if (!items.ok()) return make_error("--net '{}': {}", text, items.error().to_string());
  for (const auto& [k, v] : *items) {
    if (k == "tap") {
      cfg.tap = v;
    } else if (k == "mac") {
      auto m = virtio::parse_mac(v);
      if (!m.ok()) return make_error("--net '{}': {}", text, m.error().to_string());
      cfg.mac = *m;
    } else {
      return make_error("--net '{}': unknown option '{}' (tap, mac)", text, k);
    }
  }
  if (cfg.tap.empty()) return make_error("--net '{}': no tap=", text);
  return cfg;
}

}  // namespace vmm
