// One-line reasons for guest crashes that scripts read (exit code 3), kept
// free of KVM calls so they are unit-tested with hand-made register states.
#pragma once

#include <linux/kvm.h>

#include <string>

namespace vmm {

// True when the registers are the x86 reset state (cs 0xf000 based at
// 0xffff0000, rip 0xfff0): what AMD hosts leave after KVM_EXIT_SHUTDOWN,
// because kvm_amd reinitializes the vCPU before returning that exit.
bool is_reset_state(const kvm_regs& regs, const kvm_sregs& sregs);

// "vCPU N: guest triple fault (shutdown) near rip 0x..." when the registers
// still show where the guest was; when they are unreadable or the reset
// state, says that the address is unknown instead of naming a wrong one.
std::string triple_fault_reason(int vcpu, const kvm_regs* regs, const kvm_sregs* sregs);

}  // namespace vmm
