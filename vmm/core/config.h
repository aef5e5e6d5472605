// The VM's configuration as the user gave it (CLI) with defaults applied.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "devices/virtio/block.h"
#include "devices/virtio/net.h"

#include "vmm/base/result.h"

namespace vmm {

enum class SerialMode { kStdio, kFile, kNone };
enum class CpuidMitigation { kAuto, kOn, kOff };

struct VmConfig {
  std::string kernel;
  std::string initrd;                 // empty: none
  std::string cmdline;                // user's part; the VMM may append to it
  bool cmdline_given = false;
  uint64_t mem_bytes = 512ull << 20;
  int cpus = 1;
  SerialMode serial = SerialMode::kStdio;
  std::string serial_path;            // for kFile
  std::string cpu_template = "host";
  CpuidMitigation cpuid_mitigation = CpuidMitigation::kAuto;
  std::string boot_protocol = "auto";  // auto | linux64 | pvh
  bool acpi = true;                    // ACPI tables + power-management device
  bool thp = false;                    // guest RAM advised MADV_HUGEPAGE (host-local, not saved)
  uint32_t time_dilation = 1;          // guest time runs this many times slower (see docs)
  std::string log_level = "info";
  uint32_t sample_rip_ms = 0;         // 0: off
  std::string system_map;             // for symbolizing rip samples
  std::string kvm_device = "/dev/kvm";
  // virtio-mmio devices, in slot order: disks, then nets, then the rng.
  std::vector<virtio::BlockConfig> disks;
  std::vector<virtio::NetConfig> nets;
  bool rng = false;
  std::string api_socket;  // empty: no control socket
};

inline constexpr int kMaxVcpus = 254;  // what the MP table/ACPI and CPUID topology allow

// Everything about a configuration that does not need a file opened: memory
// size and alignment, vCPU range, time dilation, CPU template, boot protocol,
// device count and per-device options. Boot, restore and incoming all call
// it before anything is allocated or opened (an error is exit code 2).
Result<void> validate_config(const VmConfig& cfg);

// "512M", "2G", "1048576", "64K": bytes. Refuses garbage and overflow.
Result<uint64_t> parse_size(const std::string& text);

// "stdio", "file:PATH", "none".
Result<void> parse_serial(const std::string& text, VmConfig& cfg);

// --disk "path=FILE[,readonly=on|off][,id=ID]" (or just "FILE").
Result<virtio::BlockConfig> parse_disk(const std::string& text);
// --net "tap=NAME[,mac=aa:bb:cc:dd:ee:ff]".
Result<virtio::NetConfig> parse_net(const std::string& text);

// The default kernel command line when the user gives none.
inline constexpr const char* kDefaultCmdline =
    "console=ttyS0 reboot=k nowatchdog i8042.noaux i8042.nomux "
    "i8042.dumbkbd";

}  // namespace vmm
