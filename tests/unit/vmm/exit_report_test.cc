#include "vmm/core/exit_report.h"

#include <gtest/gtest.h>

namespace vmm {
namespace {

kvm_sregs long_mode_sregs() {
  kvm_sregs s{};
  s.cs.selector = 0x10;
  s.cs.base = 0;
  s.cs.l = 1;
  return s;
}

TEST(TripleFaultReason, NamesRipWhileTheRegistersShowIt) {
  kvm_regs r{};
  r.rip = 0xffffffff81000123;
  auto s = long_mode_sregs();
  EXPECT_EQ(triple_fault_reason(0, &r, &s),
            "vCPU 0: guest triple fault (shutdown) near rip 0xffffffff81000123");
}

// kvm_amd resets the vCPU before returning KVM_EXIT_SHUTDOWN: what is read
// back afterwards is the reset vector, and naming it would be a lie.
TEST(TripleFaultReason, ResetStateOnAmdIsNotAnAddress) {
  kvm_regs r{};
  r.rip = 0xfff0;
  r.rflags = 2;
  kvm_sregs s{};
  s.cs.selector = 0xf000;
  s.cs.base = 0xffff0000;
  ASSERT_TRUE(is_reset_state(r, s));
  std::string m = triple_fault_reason(1, &r, &s);
  EXPECT_EQ(m.find("0xfff0"), std::string::npos) << m;
  EXPECT_NE(m.find("vCPU 1: guest triple fault (shutdown)"), std::string::npos) << m;
  EXPECT_NE(m.find("address is unknown"), std::string::npos) << m;
  // The same rip in another code segment is a real address.
  auto l = long_mode_sregs();
  EXPECT_FALSE(is_reset_state(r, l));
  EXPECT_NE(triple_fault_reason(1, &r, &l).find("near rip 0xfff0"), std::string::npos);
}

TEST(TripleFaultReason, UnreadableRegisters) {
  EXPECT_NE(triple_fault_reason(0, nullptr, nullptr).find("unreadable"), std::string::npos);
}

}  // namespace
}  // namespace vmm
