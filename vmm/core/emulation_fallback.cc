#include "vmm/core/emulation_fallback.h"

#include <fmt/format.h>

namespace vmm {

FallbackDecision decide_emulation_fallback(std::span<const uint8_t> insn) {
  if (insn.empty()) return {FallbackAction::kFatal, 0, "(unreadable)"};
  switch (insn[0]) {
    case 0xcc:
      return {FallbackAction::kInjectBreakpoint, 1, "int3"};
    case 0x9b:
      // fwait checks for pending unmasked x87 exceptions. The guest kernel runs it
      // during FPU init with none pending, so it completes as a no-op.
      return {FallbackAction::kSkip, 1, "fwait"};
    default:
      return {FallbackAction::kFatal, 0, "unsupported"};
  }
}

std::string format_insn_bytes(std::span<const uint8_t> insn) {
  std::string out;
  for (size_t i = 0; i < insn.size() && i < 15; ++i) {
    if (i) out += ' ';
    out += fmt::format("{:02x}", insn[i]);
  }
  return out.empty() ? "(none)" : out;
}

}  // namespace vmm
