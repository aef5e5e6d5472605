// AcpiPm: the three 8-bit registers of a hardware-reduced ACPI platform that
// the FADT written by boot/x86_64/acpi.cc points at. Register it on the port
// bus at layout::kAcpiPmPort for layout::kAcpiPmPortLen ports.
//
//   offset 0, SLEEP_CONTROL_REG (layout::kAcpiSleepControlPort), write:
//       bits 4:2 SLP_TYP, bit 5 SLP_EN (bits 0-1, 6-7 reserved, ignored).
//       SLP_EN with SLP_TYP == layout::kAcpiS5SleepType (the \_S5_ value in
//       the DSDT) -> on_poweroff(). SLP_EN with another type is ignored (only
//       \_S5_ is advertised, so Linux never asks for S1..S4 here).
//       read: the last SLP_TYP written (SLP_EN is write-only and reads 0).
//   offset 1, SLEEP_STATUS_REG (layout::kAcpiSleepStatusPort):
//       read: 0. WAK_STS (bit 7) is set by hardware on a wake from a sleep
//       state; this platform never sleeps and wakes, so it is never set.
//       write: WAK_STS is write-1-to-clear; with nothing set, no effect.
//   offset 2, RESET_REG (layout::kAcpiResetPort):
//       write of layout::kAcpiResetValue -> on_reboot(); other values ignored.
//       read: 0.
// Any other access (other offset, or a size other than 1 byte) reads 0 and is
// ignored on write. Callbacks run without the device lock held.
//
// What Linux does (drivers/acpi/acpica/hwesleep.c, acpi_hw_extended_sleep();
// the same register writes in the 2013 original, in v6.1 and today; constants
// from include/acpi/actbl.h):
//   acpi_write(ACPI_X_WAKE_STATUS = 0x80, &FADT.sleep_status)      clear WAK_STS
//   acpi_write(((sleep_type_a << 2) & 0x1c) | 0x20, &FADT.sleep_control)
//        -> for \_S5_ = {5, ...}: one byte 0x34 to offset 0
//   do { acpi_read(&v, &FADT.sleep_status) } while (!(v & 0x80))   wait for wake
// Status reads return 0 on purpose: the poweroff callback is asynchronous (the
// VMM stops its vCPUs after it returns), so until then the guest keeps polling
// here, harmlessly. Returning WAK_STS would end that loop and let the guest run
// on: acpi_power_off() returns, and reboot(2) ends in do_exit() of init, i.e. a
// "Attempted to kill init" panic on the console racing with the shutdown. The
// only other users of the status register are on the resume path
// (acpi_hw_extended_wake() writes WAK_STS to clear it; nothing there reads it).
// Reboot: Linux x86 tries the ACPI reset register first (reboot_type defaults
// to BOOT_ACPI; acpi_reboot() -> acpi_reset() writes FADT.reset_value, 8 bits,
// to the RESET_REG port), then the i8042.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>

#include "boot/x86_64/layout.h"
#include "devices/bus.h"
#include "vmm/base/result.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm {

struct AcpiPmState {
  uint8_t sleep_control = 0;  // last SLP_TYP written, in place (bits 4:2 only)

  bool operator==(const AcpiPmState&) const = default;
};

// AcpiPmState <-> a state-tree section: u8 sleep_control. Strict; the value is
// checked by AcpiPm::restore().
void to_section(const AcpiPmState& st, snapshot::Section& s);
Result<void> from_section(const snapshot::Section& s, AcpiPmState& st);

class AcpiPm : public BusDevice {
 public:
  static constexpr uint64_t kWindowSize = layout::kAcpiPmPortLen;
  static constexpr uint64_t kSleepControlOffset =
      layout::kAcpiSleepControlPort - layout::kAcpiPmPort;
  static constexpr uint64_t kSleepStatusOffset =
      layout::kAcpiSleepStatusPort - layout::kAcpiPmPort;
  static constexpr uint64_t kResetOffset = layout::kAcpiResetPort - layout::kAcpiPmPort;
  static_assert(kSleepControlOffset < kWindowSize && kSleepStatusOffset < kWindowSize &&
                kResetOffset < kWindowSize);

  static constexpr uint8_t kSlpTypMask = 0x1c;  // ACPI_X_SLEEP_TYPE_MASK
  static constexpr int kSlpTypShift = 2;        // ACPI_X_SLEEP_TYPE_POSITION
  static constexpr uint8_t kSlpEn = 0x20;       // ACPI_X_SLEEP_ENABLE
  static constexpr uint8_t kWakSts = 0x80;      // ACPI_X_WAKE_STATUS

  // Either callback may be empty (the request is then only logged).
  AcpiPm(std::function<void()> on_poweroff, std::function<void()> on_reboot);

  void read(uint64_t base, uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) override;

  AcpiPmState save() const;
  // Refuses bits outside SLP_TYP (4:2). On error nothing changes.
  Result<void> restore(const AcpiPmState& state);
  // save() / restore() through the state tree (the one serialization path of
  // snapshots and migration). On error nothing changes.
  void save_section(snapshot::Section& s) const;
  Result<void> restore_section(const snapshot::Section& s);

 private:
  const std::function<void()> on_poweroff_;
  const std::function<void()> on_reboot_;
  mutable std::mutex mu_;
  AcpiPmState s_;
};

}  // namespace vmm
