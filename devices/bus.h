// BusDevice and IoBus: a device is reached through ranges registered on a bus.
// The VMM has two buses, one for port I/O and one for MMIO. Ranges never
// overlap and are never empty.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "vmm/base/result.h"

namespace vmm {

class BusDevice {
 public:
  virtual ~BusDevice() = default;
  // offset is relative to the base of the range the device was inserted at;
  // base is that range's base, for devices registered at several ranges.
  virtual void read(uint64_t base, uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) = 0;
};

class IoBus {
 public:
  struct Range {
    uint64_t base;
    uint64_t len;
    std::shared_ptr<BusDevice> device;
    std::string name;
  };

  // Refuses zero length, wraparound and overlap with an existing range.
  Result<void> insert(uint64_t base, uint64_t len, std::shared_ptr<BusDevice> device,
                      std::string name);

  // Dispatch an access; returns false if no device covers [addr, addr+len).
  // An access that starts inside a range but runs past its end is refused too.
  bool read(uint64_t addr, std::span<uint8_t> data) const;
  bool write(uint64_t addr, std::span<const uint8_t> data) const;

  const Range* find(uint64_t addr, uint64_t len) const;

 private:
  std::map<uint64_t, Range> ranges_;  // keyed by base; immutable once vCPUs run
};

// An interrupt line the device raises; implemented over KVM by the VMM and by
// counters in tests.
class IrqLine {
 public:
  virtual ~IrqLine() = default;
  virtual void set_level(bool high) = 0;
  // Edge-style pulse (assert then deassert).
  virtual void pulse() {
    set_level(true);
    set_level(false);
  }
};

}  // namespace vmm
