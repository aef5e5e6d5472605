// What the VMM does when the host's instruction emulator gives up
// (KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION). On nested hosts that
// interpret guest supervisor code (see docs/host-notes), a few instructions the
// guest kernel uses are not emulated. We handle exactly those, and stop the VM
// with a precise error for anything else.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace vmm {

enum class FallbackAction {
  kInjectBreakpoint,  // int3: advance rip past it and inject #BP (a trap: saved rip is after it)
  kSkip,              // fwait with no pending x87 exception: a no-op
  kFatal,             // anything else: stop the VM with rip and bytes
};

struct FallbackDecision {
  FallbackAction action;
  uint32_t length;      // bytes to advance rip by (0 for kFatal)
  const char* mnemonic;  // for logs
};

// Decides from the instruction bytes at rip (up to 15; fewer if unreadable).
FallbackDecision decide_emulation_fallback(std::span<const uint8_t> insn);

// "0f 01 ca 90" style hex dump of up to 15 bytes.
std::string format_insn_bytes(std::span<const uint8_t> insn);

}  // namespace vmm
