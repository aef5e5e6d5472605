#include "devices/legacy/boot_probe.h"

#include <algorithm>
#include <utility>

#include "vmm/base/log.h"

namespace vmm {
namespace {

bool is_exit_size(size_t n) { return n == 1 || n == 2 || n == 4; }

}  // namespace

BootProbe::BootProbe(std::function<void(uint8_t mark)> on_mark,
                     std::function<void(uint32_t code)> on_exit)
    : on_mark_(std::move(on_mark)), on_exit_(std::move(on_exit)) {}

void BootProbe::read(uint64_t /*base*/, uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t{0});
  if (offset == kMarkOffset && data.size() == 1) {
    std::lock_guard lock(mu_);
    data[0] = last_mark_;
  } else if (offset == kExitOffset && is_exit_size(data.size())) {
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(kSignature >> (8 * i));
  }
}

void BootProbe::write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) {
  if (offset == kMarkOffset && data.size() == 1) {
    uint8_t mark = data[0];
    {
      std::lock_guard lock(mu_);
      last_mark_ = mark;
    }
    spdlog::debug("boot probe @{:#x}: mark {:#04x}", base, mark);
    if (on_mark_) on_mark_(mark);
  } else if (offset == kExitOffset && is_exit_size(data.size())) {
    uint32_t code = 0;
    for (size_t i = 0; i < data.size(); ++i) code |= static_cast<uint32_t>(data[i]) << (8 * i);
    spdlog::debug("boot probe @{:#x}: exit request, code {}", base, code);
    if (on_exit_) on_exit_(code);
  }
}

BootProbeState BootProbe::save() const {
  std::lock_guard lock(mu_);
  return BootProbeState{last_mark_};
}

Result<void> BootProbe::restore(const BootProbeState& state) {
  std::lock_guard lock(mu_);
  last_mark_ = state.last_mark;
  return ok();
}


void to_section(const BootProbeState& st, snapshot::Section& s) {
  s.put_u8("last_mark", st.last_mark);
}

Result<void> from_section(const snapshot::Section& s, BootProbeState& st) {
  VMM_CHECK(s.expect_only({"last_mark"}));
  VMM_TRY(st.last_mark, s.get_u8("last_mark"));
  return ok();
}

void BootProbe::save_section(snapshot::Section& s) const { to_section(save(), s); }

Result<void> BootProbe::restore_section(const snapshot::Section& s) {
  BootProbeState st;
  VMM_CHECK(from_section(s, st));
  if (auto r = restore(st); !r.ok())
    return make_error("{}: {}", s.where(), r.error().to_string());
  return ok();
}

}  // namespace vmm
