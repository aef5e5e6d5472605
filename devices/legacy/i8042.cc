#include "devices/legacy/i8042.h"

#include <algorithm>
#include <utility>

#include "boot/x86_64/layout.h"

namespace vmm {

I8042::I8042(std::function<void()> on_reset) : on_reset_(std::move(on_reset)) {}

void I8042::read(uint64_t base, uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t{0});
  // Only a 1-byte access at the first byte of either port means anything.
  if (data.size() != 1 || offset != 0) return;
  std::lock_guard lock(mu_);
  if (base == layout::kI8042CommandPort) {
    data[0] = s_.status;
  } else if (base == layout::kI8042DataPort) {
    data[0] = s_.output;
    s_.status &= static_cast<uint8_t>(~kStatusObf);
  }
}

void I8042::write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() != 1 || offset != 0) return;
  uint8_t v = data[0];
  bool reset = false;
  {
    std::lock_guard lock(mu_);
    if (base == layout::kI8042CommandPort) {
      s_.pending_command = 0;  // a new command abandons one awaiting data
      switch (v) {
        case kCmdReadCommandByte:
          s_.output = s_.command_byte;
          s_.status |= kStatusObf;
          break;
        case kCmdWriteCommandByte:
        case kCmdWriteOutputPort:
          s_.pending_command = v;
          break;
        case kCmdResetCpu:
          reset = true;
          break;
        default:
          break;
      }
    } else if (base == layout::kI8042DataPort) {
      uint8_t cmd = s_.pending_command;
      s_.pending_command = 0;
      if (cmd == kCmdWriteCommandByte) {
        s_.command_byte = v;
      } else if (cmd == kCmdWriteOutputPort) {
        reset = (v & 0x01) == 0;
      }
      // Without a pending command the byte is for the (absent) keyboard.
    }
  }
  if (reset && on_reset_) on_reset_();
}

I8042State I8042::save() const {
  std::lock_guard lock(mu_);
  return s_;
}

Result<void> I8042::restore(const I8042State& state) {
  if (state.status & ~kStatusObf) return make_error("i8042: invalid status {:#04x}", state.status);
  if (state.pending_command != 0 && state.pending_command != kCmdWriteCommandByte &&
      state.pending_command != kCmdWriteOutputPort)
    return make_error("i8042: invalid pending command {:#04x}", state.pending_command);
  std::lock_guard lock(mu_);
  s_ = state;
  return ok();
}


void to_section(const I8042State& st, snapshot::Section& s) {
  s.put_u8("status", st.status);
  s.put_u8("output", st.output);
  s.put_u8("command_byte", st.command_byte);
  s.put_u8("pending_command", st.pending_command);
}

Result<void> from_section(const snapshot::Section& s, I8042State& st) {
  VMM_CHECK(s.expect_only({"status", "output", "command_byte", "pending_command"}));
  VMM_TRY(st.status, s.get_u8("status"));
  VMM_TRY(st.output, s.get_u8("output"));
  VMM_TRY(st.command_byte, s.get_u8("command_byte"));
  VMM_TRY(st.pending_command, s.get_u8("pending_command"));
  return ok();
}

void I8042::save_section(snapshot::Section& s) const { to_section(save(), s); }

Result<void> I8042::restore_section(const snapshot::Section& s) {
  I8042State st;
  VMM_CHECK(from_section(s, st));
  if (auto r = restore(st); !r.ok())
    return make_error("{}: {}", s.where(), r.error().to_string());
  return ok();
}

}  // namespace vmm
