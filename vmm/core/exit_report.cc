#include "vmm/core/exit_report.h"

#include <fmt/core.h>

namespace vmm {

bool is_reset_state(const kvm_regs& regs, const kvm_sregs& sregs) {
  return regs.rip == 0xfff0 && sregs.cs.selector == 0xf000 && sregs.cs.base == 0xffff0000;
}

std::string triple_fault_reason(int vcpu, const kvm_regs* regs, const kvm_sregs* sregs) {
  std::string head = fmt::format("vCPU {}: guest triple fault (shutdown)", vcpu);
  if (!regs || !sregs) return head + "; its registers are unreadable, the address is unknown";
  if (is_reset_state(*regs, *sregs))
    return head + "; the host reset the vCPU on the shutdown (AMD), so the faulting address "
                  "is unknown";
  return head + fmt::format(" near rip {:#x}", regs->rip);
}

}  // namespace vmm
