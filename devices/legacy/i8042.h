// I8042: the minimum of a PS/2 controller that a Linux guest needs to reboot.
// No keyboard or mouse is attached. Register at two 1-byte ranges,
// layout::kI8042DataPort (0x60) and layout::kI8042CommandPort (0x64); the
// `base` argument tells them apart.
//
// Commands written to 0x64:
//   0x20 read command byte: the byte is placed in the output buffer (OBF set)
//   0x60 write command byte: the next byte written to 0x60 becomes it
//   0xd1 write output port: the next byte written to 0x60 is consumed; if its
//        bit 0 (the CPU reset line, active low) is clear, on_reset() is called
//   0xfe pulse the reset line: on_reset()
//   anything else is ignored.
// Reading 0x64 returns the status register (bit 0 OBF, 0 otherwise). Reading
// 0x60 returns the output buffer and clears OBF.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>

#include "devices/bus.h"
#include "vmm/base/result.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm {

struct I8042State {
  uint8_t status = 0;           // only bit 0 (OBF) may be set
  uint8_t output = 0;           // output buffer (valid when OBF)
  uint8_t command_byte = 0;     // controller configuration byte
  uint8_t pending_command = 0;  // 0, 0x60 or 0xd1: a command awaiting its data byte

  bool operator==(const I8042State&) const = default;
};

// I8042State <-> a state-tree section: u8 status output command_byte
// pending_command. Strict (missing, mistyped or unknown entries are refused);
// values are checked by I8042::restore().
void to_section(const I8042State& st, snapshot::Section& s);
Result<void> from_section(const snapshot::Section& s, I8042State& st);

class I8042 : public BusDevice {
 public:
  static constexpr uint8_t kStatusObf = 0x01;
  static constexpr uint8_t kCmdReadCommandByte = 0x20;
  static constexpr uint8_t kCmdWriteCommandByte = 0x60;
  static constexpr uint8_t kCmdWriteOutputPort = 0xd1;
  static constexpr uint8_t kCmdResetCpu = 0xfe;

  // on_reset may be empty (reset requests are then ignored). It is called
  // without the device lock held.
  explicit I8042(std::function<void()> on_reset);

  void read(uint64_t base, uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) override;

  I8042State save() const;
  // Refuses a status other than 0/OBF and a pending command other than
  // 0, 0x60, 0xd1. On error nothing changes.
  Result<void> restore(const I8042State& state);
  // save() / restore() through the state tree (the one serialization path of
  // snapshots and migration). On error nothing changes.
  void save_section(snapshot::Section& s) const;
  Result<void> restore_section(const snapshot::Section& s);

 private:
  const std::function<void()> on_reset_;
  mutable std::mutex mu_;
  I8042State s_;
};

}  // namespace vmm
