// MachineSpec: what the guest sees of its machine (memory, vCPUs, ACPI,
// disks, NICs, rng), and nothing of the host resources behind it (disk
// paths, TAP names). It is the configuration fingerprint a snapshot header
// and a migration Hello carry (docs/snapshot-format.md): restore and
// --incoming take their host resources from their own command line, fill in
// what the command line left open (a disk's serial, a NIC's MAC) from the
// saved spec, and refuse a machine that differs. A snapshot or a source can
// therefore never choose a file or an interface for the VMM to open.
//
// Encoding (string key -> string value, in this order):
//   mem_bytes  decimal bytes                 (validate_mem_size)
//   vcpus      decimal, 1..kMaxVcpus
//   acpi, rng  on | off
//   diskN      sectors=<decimal>,readonly=<on|off>,id=<serial, the rest of the value>
//   netN       mac=aa:bb:cc:dd:ee:ff
// N counts from 0 without gaps; at most layout::kMaxVirtioDevices devices in
// all. parse_machine_spec refuses anything else (unknown or missing keys,
// signs, leading '+', suffixes, out-of-range values) before the VMM allocates
// or opens anything.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "devices/virtio/net.h"
#include "devices/virtio/worker_device.h"
#include "vmm/base/result.h"
#include "vmm/core/config.h"

namespace vmm {

struct DiskSpec {
  uint64_t sectors = 0;
  bool readonly = false;
  std::string id;  // the GET_ID serial without trailing NULs, at most 20 bytes
  bool operator==(const DiskSpec&) const = default;
};

struct NetSpec {
  virtio::MacAddress mac{};
  bool operator==(const NetSpec&) const = default;
};

struct MachineSpec {
  uint64_t mem_bytes = 0;
  uint32_t vcpus = 0;
  bool acpi = true;
  bool rng = false;
  std::vector<DiskSpec> disks;
  std::vector<NetSpec> nets;
  bool operator==(const MachineSpec&) const = default;
};

using ConfigEntries = std::vector<std::pair<std::string, std::string>>;

ConfigEntries encode_machine_spec(const MachineSpec& spec);
// Strict and range-checked (see the top of this file); hostile input is the
// normal case (a snapshot header, a migration Hello).
Result<MachineSpec> parse_machine_spec(const ConfigEntries& config);

// The spec of a VM made from `cfg` with these virtio devices (slot order:
// disks, nets, rng; what make_virtio_devices returns).
MachineSpec machine_spec_of(const VmConfig& cfg,
                            const std::vector<std::shared_ptr<virtio::WorkerDevice>>& devices);

// Restore and incoming: the host resources come from cfg's --disk/--net,
// whose count must match the saved machine's; a disk without id= gets the
// saved serial and a NIC without mac= the saved MAC (guest identity, not a
// host resource). Errors name the difference ("the snapshot has 2 disk(s),
// the command line gives 1 --disk").
Result<void> adopt_machine_spec(const MachineSpec& saved, VmConfig& cfg, const char* saved_by);
// Restore: memory size, vCPUs, ACPI and rng as saved (--incoming instead
// compares the ones its command line gives).
void take_machine_shape(const MachineSpec& saved, VmConfig& cfg);

// Every difference between the saved spec and this VM's, named, or ok.
Result<void> compare_machine_specs(const MachineSpec& saved, const MachineSpec& here,
                                   const char* saved_by);

}  // namespace vmm
