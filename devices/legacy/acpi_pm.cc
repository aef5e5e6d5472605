#include "devices/legacy/acpi_pm.h"

#include <algorithm>
#include <utility>

#include "vmm/base/log.h"

namespace vmm {

AcpiPm::AcpiPm(std::function<void()> on_poweroff, std::function<void()> on_reboot)
    : on_poweroff_(std::move(on_poweroff)), on_reboot_(std::move(on_reboot)) {}

void AcpiPm::read(uint64_t /*base*/, uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t{0});
  if (data.size() != 1) return;
  if (offset == kSleepControlOffset) {
    std::lock_guard lock(mu_);
    data[0] = s_.sleep_control;
  }
  // Sleep status (WAK_STS never set), reset register and anything else: 0.
}

void AcpiPm::write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() != 1) return;
  const uint8_t v = data[0];
  if (offset == kSleepControlOffset) {
    const uint8_t type = static_cast<uint8_t>((v & kSlpTypMask) >> kSlpTypShift);
    {
      std::lock_guard lock(mu_);
      s_.sleep_control = static_cast<uint8_t>(v & kSlpTypMask);
    }
    if (!(v & kSlpEn)) return;
    if (type == layout::kAcpiS5SleepType) {
      spdlog::debug("acpi pm @{:#x}: sleep control {:#04x}: S5, power off", base, v);
      if (on_poweroff_) on_poweroff_();
    } else {
      spdlog::debug("acpi pm @{:#x}: sleep control {:#04x}: SLP_TYP {} not supported, ignored",
                    base, v, type);
    }
  } else if (offset == kResetOffset) {
    if (v == layout::kAcpiResetValue) {
      spdlog::debug("acpi pm @{:#x}: reset register written, reboot", base);
      if (on_reboot_) on_reboot_();
    }
  }
  // Sleep status: WAK_STS is write-1-to-clear and never set; nothing to do.
}

AcpiPmState AcpiPm::save() const {
  std::lock_guard lock(mu_);
  return s_;
}

Result<void> AcpiPm::restore(const AcpiPmState& state) {
  if (state.sleep_control & ~kSlpTypMask)
    return make_error("acpi pm: invalid sleep control {:#04x}", state.sleep_control);
  std::lock_guard lock(mu_);
  s_ = state;
  return ok();
}


void to_section(const AcpiPmState& st, snapshot::Section& s) {
  s.put_u8("sleep_control", st.sleep_control);
}

Result<void> from_section(const snapshot::Section& s, AcpiPmState& st) {
  VMM_CHECK(s.expect_only({"sleep_control"}));
  VMM_TRY(st.sleep_control, s.get_u8("sleep_control"));
  return ok();
}

void AcpiPm::save_section(snapshot::Section& s) const { to_section(save(), s); }

Result<void> AcpiPm::restore_section(const snapshot::Section& s) {
  AcpiPmState st;
  VMM_CHECK(from_section(s, st));
  if (auto r = restore(st); !r.ok())
    return make_error("{}: {}", s.where(), r.error().to_string());
  return ok();
}

}  // namespace vmm
