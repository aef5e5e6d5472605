#include "vmm/core/machine_spec.h"

#include <algorithm>
#include <map>
#include <set>

#include "boot/x86_64/e820.h"
#include "boot/x86_64/layout.h"
#include "devices/virtio/block.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm {

namespace {

const char* on_off(bool b) { return b ? "on" : "off"; }

// Decimal digits only (no sign, no suffix, no spaces), no overflow.
Result<uint64_t> parse_decimal(const std::string& key, const std::string& text) {
  if (text.empty() || text.size() > 20 ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return make_error("{}='{}' is not a decimal number", key, snapshot::printable(text));
  uint64_t v = 0;
  for (char c : text) {
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (~uint64_t{0} - d) / 10)
      return make_error("{}='{}' is too large", key, snapshot::printable(text));
    v = v * 10 + d;
  }
  return v;
}

Result<bool> parse_on_off_strict(const std::string& key, const std::string& text) {
  if (text == "on") return true;
  if (text == "off") return false;
  return make_error("{}='{}': expected on or off", key, snapshot::printable(text));
}

// Strips "name=" from the front of `rest`, or fails naming the key.
Result<void> take_prefix(const std::string& key, std::string& rest, const char* name) {
  std::string want = std::string(name) + "=";
  if (rest.rfind(want, 0) != 0)
    return make_error("{}: expected '{}...' at '{}'", key, want, snapshot::printable(rest));
  rest.erase(0, want.size());
  return ok();
}

}  // namespace

ConfigEntries encode_machine_spec(const MachineSpec& s) {
  ConfigEntries out = {{"mem_bytes", std::to_string(s.mem_bytes)},
                       {"vcpus", std::to_string(s.vcpus)},
                       {"acpi", on_off(s.acpi)},
                       {"rng", on_off(s.rng)}};
  for (size_t i = 0; i < s.disks.size(); ++i) {
    const auto& d = s.disks[i];
    out.emplace_back(fmt::format("disk{}", i), fmt::format("sectors={},readonly={},id={}",
                                                           d.sectors, on_off(d.readonly), d.id));
  }
  for (size_t i = 0; i < s.nets.size(); ++i)
    out.emplace_back(fmt::format("net{}", i), "mac=" + virtio::format_mac(s.nets[i].mac));
  return out;
}

namespace {

Result<DiskSpec> parse_disk_spec(const std::string& key, const std::string& value) {
  DiskSpec d;
  std::string rest = value;
  VMM_CHECK(take_prefix(key, rest, "sectors"));
  size_t comma = rest.find(',');
  if (comma == std::string::npos) return make_error("{}: no readonly= after sectors=", key);
  VMM_TRY(d.sectors, parse_decimal(key + " sectors", rest.substr(0, comma)));
  if (d.sectors > (~uint64_t{0} / virtio::kSectorSize))
    return make_error("{}: {} sectors is more than a disk can have", key, d.sectors);
  rest.erase(0, comma + 1);
  VMM_CHECK(take_prefix(key, rest, "readonly"));
  comma = rest.find(',');
  if (comma == std::string::npos) return make_error("{}: no id= after readonly=", key);
  VMM_TRY(d.readonly, parse_on_off_strict(key + " readonly", rest.substr(0, comma)));
  rest.erase(0, comma + 1);
  VMM_CHECK(take_prefix(key, rest, "id"));
  d.id = rest;
  if (d.id.size() > virtio::kBlkIdBytes)
    return make_error("{}: id is {} bytes, at most {}", key, d.id.size(), virtio::kBlkIdBytes);
  if (d.id.find('\0') != std::string::npos) return make_error("{}: id contains a NUL byte", key);
  return d;
}

Result<NetSpec> parse_net_spec(const std::string& key, const std::string& value) {
  std::string rest = value;
  VMM_CHECK(take_prefix(key, rest, "mac"));
  auto mac = virtio::parse_mac(rest);
  if (!mac.ok()) return make_error("{}: {}", key, mac.error().to_string());
  return NetSpec{*mac};
}

}  // namespace

Result<MachineSpec> parse_machine_spec(const ConfigEntries& config) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : config)
    if (!m.emplace(k, v).second) return make_error("config key '{}' appears twice", snapshot::printable(k));
  auto take = [&](const std::string& key) -> Result<std::string> {
    auto it = m.find(key);
    if (it == m.end()) return make_error("config has no '{}'", key);
    std::string v = std::move(it->second);
    m.erase(it);
    return v;
  };
  MachineSpec s;
  VMM_TRY(auto mem, take("mem_bytes"));
  VMM_TRY(s.mem_bytes, parse_decimal("mem_bytes", mem));
  if (auto r = boot::validate_mem_size(s.mem_bytes); !r.ok())
    return make_error("mem_bytes: {}", r.error().to_string());
  VMM_TRY(auto cpus, take("vcpus"));
  VMM_TRY(uint64_t vcpus, parse_decimal("vcpus", cpus));
  if (vcpus < 1 || vcpus > kMaxVcpus)
    return make_error("vcpus={} is out of range 1..{}", vcpus, kMaxVcpus);
  s.vcpus = static_cast<uint32_t>(vcpus);
  VMM_TRY(auto acpi, take("acpi"));
  VMM_TRY(s.acpi, parse_on_off_strict("acpi", acpi));
  VMM_TRY(auto rng, take("rng"));
  VMM_TRY(s.rng, parse_on_off_strict("rng", rng));
  size_t devices = s.rng ? 1 : 0;
  auto over_limit = [&] { return ++devices > layout::kMaxVirtioDevices; };
  for (size_t i = 0; m.contains(fmt::format("disk{}", i)); ++i) {
    if (over_limit()) return make_error("more than {} virtio devices", layout::kMaxVirtioDevices);
    std::string key = fmt::format("disk{}", i);
    VMM_TRY(auto v, take(key));
    VMM_TRY(auto d, parse_disk_spec(key, v));
    s.disks.push_back(std::move(d));
  }
  for (size_t i = 0; m.contains(fmt::format("net{}", i)); ++i) {
    if (over_limit()) return make_error("more than {} virtio devices", layout::kMaxVirtioDevices);
    std::string key = fmt::format("net{}", i);
    VMM_TRY(auto v, take(key));
    VMM_TRY(auto n, parse_net_spec(key, v));
    s.nets.push_back(n);
  }
  if (!m.empty())
    return make_error("unknown config key '{}' (or a device numbered out of order)",
                      snapshot::printable(m.begin()->first));
  return s;
}

MachineSpec machine_spec_of(const VmConfig& cfg,
                            const std::vector<std::shared_ptr<virtio::WorkerDevice>>& devices) {
  MachineSpec s;
  s.mem_bytes = cfg.mem_bytes;
  s.vcpus = static_cast<uint32_t>(cfg.cpus);
  s.acpi = cfg.acpi;
  s.rng = cfg.rng;
  for (const auto& dev : devices) {
    if (const auto* b = dynamic_cast<const virtio::BlockDevice*>(dev.get())) {
      const auto& id = b->id();
      auto end = std::find(id.begin(), id.end(), uint8_t{0});
      s.disks.push_back({b->capacity_sectors(), b->readonly(), std::string(id.begin(), end)});
    } else if (const auto* n = dynamic_cast<const virtio::NetDevice*>(dev.get())) {
      s.nets.push_back({n->mac()});
    }
  }
  return s;
}

Result<void> adopt_machine_spec(const MachineSpec& saved, VmConfig& cfg, const char* saved_by) {
  if (cfg.disks.size() != saved.disks.size())
    return make_error("the {} has {} disk(s), the command line gives {} --disk (host resources "
                      "come from the command line)",
                      saved_by, saved.disks.size(), cfg.disks.size());
  if (cfg.nets.size() != saved.nets.size())
    return make_error("the {} has {} network device(s), the command line gives {} --net (host "
                      "resources come from the command line)",
                      saved_by, saved.nets.size(), cfg.nets.size());
  for (size_t i = 0; i < cfg.disks.size(); ++i)
    if (cfg.disks[i].id.empty()) cfg.disks[i].id = saved.disks[i].id;
  for (size_t i = 0; i < cfg.nets.size(); ++i)
    if (!cfg.nets[i].mac) cfg.nets[i].mac = saved.nets[i].mac;
  return ok();
}

void take_machine_shape(const MachineSpec& saved, VmConfig& cfg) {
  cfg.mem_bytes = saved.mem_bytes;
  cfg.cpus = static_cast<int>(saved.vcpus);
  cfg.acpi = saved.acpi;
  cfg.rng = saved.rng;
}

Result<void> compare_machine_specs(const MachineSpec& saved, const MachineSpec& here,
                                   const char* saved_by) {
  std::vector<std::string> diffs;
  auto differ = [&](const std::string& what, const auto& a, const auto& b) {
    if (a != b) diffs.push_back(fmt::format("{}: {} in the {}, {} here", what, a, saved_by, b));
  };
  differ("memory bytes", saved.mem_bytes, here.mem_bytes);
  differ("vCPUs", saved.vcpus, here.vcpus);
  differ("acpi", on_off(saved.acpi), on_off(here.acpi));
  differ("rng", on_off(saved.rng), on_off(here.rng));
  differ("disks", saved.disks.size(), here.disks.size());
  differ("network devices", saved.nets.size(), here.nets.size());
  for (size_t i = 0; i < std::min(saved.disks.size(), here.disks.size()); ++i) {
    const auto &a = saved.disks[i], &b = here.disks[i];
    std::string d = fmt::format("disk{}", i);
    differ(d + " sectors", a.sectors, b.sectors);
    differ(d + " readonly", on_off(a.readonly), on_off(b.readonly));
    differ(d + " id", "'" + snapshot::printable(a.id) + "'", "'" + snapshot::printable(b.id) + "'");
  }
  for (size_t i = 0; i < std::min(saved.nets.size(), here.nets.size()); ++i)
    differ(fmt::format("net{} MAC", i), virtio::format_mac(saved.nets[i].mac),
           virtio::format_mac(here.nets[i].mac));
  if (diffs.empty()) return ok();
  std::string msg;
  for (const auto& d : diffs) msg += (msg.empty() ? "" : "; ") + d;
  return make_error("the {} does not match this VM: {}", saved_by, msg);
}

}  // namespace vmm
