// BootProbe: a tiny paravirtual device through which the guest reports boot
// progress and asks the VMM to exit. An 8-byte window, mapped both at PIO
// layout::kBootProbePort and at MMIO layout::kBootProbeMmioAddr with the same
// semantics (`base` is used for logging only).
//
//   offset 0, 1-byte write: boot-progress mark -> on_mark(value)
//   offset 0, 1-byte read:  the last mark (0 initially)
//   offset 4, 1/2/4-byte write: exit request -> on_exit(value, zero-extended,
//                           little-endian)
//   offset 4, 1/2/4-byte read: kSignature ("VMMP" little-endian), truncated to
//                           the access size
// Any other access (other offset or size, or not inside the window) reads 0
// and is ignored on write. Callbacks run without the device lock held.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>

#include "devices/bus.h"
#include "vmm/base/result.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm {

struct BootProbeState {
  uint8_t last_mark = 0;

  bool operator==(const BootProbeState&) const = default;
};

// BootProbeState <-> a state-tree section: u8 last_mark (any value). Strict.
void to_section(const BootProbeState& st, snapshot::Section& s);
Result<void> from_section(const snapshot::Section& s, BootProbeState& st);

class BootProbe : public BusDevice {
 public:
  static constexpr uint64_t kWindowSize = 8;
  static constexpr uint64_t kMarkOffset = 0;
  static constexpr uint64_t kExitOffset = 4;
  static constexpr uint32_t kSignature = 0x504d4d56;  // "VMMP"

  // Either callback may be empty.
  BootProbe(std::function<void(uint8_t mark)> on_mark, std::function<void(uint32_t code)> on_exit);

  void read(uint64_t base, uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) override;

  BootProbeState save() const;
  // Every mark value is valid (the guest may write any byte).
  Result<void> restore(const BootProbeState& state);
  // save() / restore() through the state tree (the one serialization path of
  // snapshots and migration). On error nothing changes.
  void save_section(snapshot::Section& s) const;
  Result<void> restore_section(const snapshot::Section& s);

 private:
  const std::function<void(uint8_t)> on_mark_;
  const std::function<void(uint32_t)> on_exit_;
  mutable std::mutex mu_;
  uint8_t last_mark_ = 0;
};

}  // namespace vmm
