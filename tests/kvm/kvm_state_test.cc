// The snapshot state ioctls through real KVM, on a VM with an in-kernel
// irqchip and PIT and one vCPU that never runs: get everything, set it back,
// read it again; set changed values and read them back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "vmm/core/vm_state.h"
#include "vmm/kvm/kvm.h"

namespace vmm {
namespace {

template <typename T>
bool same_bytes(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

#define ASSERT_OK(expr)                                      \
  do {                                                       \
    auto r_ = (expr);                                        \
    ASSERT_TRUE(r_.ok()) << #expr << ": " << r_.error().to_string(); \
  } while (0)

class KvmState : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/dev/kvm", R_OK | W_OK) != 0) GTEST_SKIP() << "SKIP: no usable /dev/kvm";
    auto k = KvmSystem::open();
    if (!k) GTEST_SKIP() << "SKIP: " << k.error().to_string();
    kvm_.emplace(std::move(k).value());
    auto vm = kvm_->create_vm();
    ASSERT_TRUE(vm.ok()) << vm.error().to_string();
    vm_.emplace(std::move(vm).value());
    ASSERT_OK(vm_->set_tss_addr(0xfffbd000));
    ASSERT_OK(vm_->create_irqchip());
    ASSERT_OK(vm_->create_pit2());
    auto v = vm_->create_vcpu(0);
    ASSERT_TRUE(v.ok()) << v.error().to_string();
    vcpu_.emplace(std::move(v).value());
    auto cpuid = kvm_->supported_cpuid();
    ASSERT_TRUE(cpuid.ok()) << cpuid.error().to_string();
    ASSERT_OK(vcpu_->set_cpuid2(*cpuid));
  }

  std::optional<KvmSystem> kvm_;
  std::optional<VmFd> vm_;
  std::optional<VcpuFd> vcpu_;
};

TEST_F(KvmState, RegsSregsFpuRoundTrip) {
  auto regs = vcpu_->get_regs();
  ASSERT_TRUE(regs.ok()) << regs.error().to_string();
  kvm_regs r = *regs;
  r.rax = 0x1122334455667788ull;
  r.rip = 0xfff0;
  ASSERT_OK(vcpu_->set_regs(r));
  auto back = vcpu_->get_regs();
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(same_bytes(*back, r));

  auto sregs = vcpu_->get_sregs();
  ASSERT_TRUE(sregs.ok()) << sregs.error().to_string();
  ASSERT_OK(vcpu_->set_sregs(*sregs));
  auto sback = vcpu_->get_sregs();
  ASSERT_TRUE(sback.ok());
  EXPECT_TRUE(same_bytes(*sback, *sregs));

  auto fpu = vcpu_->get_fpu();
  ASSERT_TRUE(fpu.ok()) << fpu.error().to_string();
  kvm_fpu f = *fpu;
  f.fcw = 0x27f;
  ASSERT_OK(vcpu_->set_fpu(f));
  auto fback = vcpu_->get_fpu();
  ASSERT_TRUE(fback.ok());
  EXPECT_EQ(fback->fcw, 0x27f);
}

TEST_F(KvmState, XsaveAndXcrs) {
  EXPECT_GE(vcpu_->xsave_size(), 4096u);
  EXPECT_EQ(vcpu_->xsave_size(), vm_->xsave_size());
  auto xs = vcpu_->get_xsave();
  ASSERT_TRUE(xs.ok()) << xs.error().to_string();
  EXPECT_EQ(xs->size(), vcpu_->xsave_size());
  ASSERT_OK(vcpu_->set_xsave(*xs));
  auto xs2 = vcpu_->get_xsave();
  ASSERT_TRUE(xs2.ok());
  EXPECT_EQ(*xs2, *xs);
  // Just the legacy region + XSAVE header: zero-padded.
  ASSERT_OK(vcpu_->set_xsave(std::span<const uint8_t>(*xs).first(576)));
  std::vector<uint8_t> too_big(vcpu_->xsave_size() + 1);
  auto big = vcpu_->set_xsave(too_big);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.error().message.find("does not fit"), std::string::npos);

  auto xcrs = vcpu_->get_xcrs();
  ASSERT_TRUE(xcrs.ok()) << xcrs.error().to_string();
  ASSERT_GE(xcrs->nr_xcrs, 1u);
  EXPECT_EQ(xcrs->xcrs[0].xcr, 0u);
  EXPECT_TRUE(xcrs->xcrs[0].value & 1);  // x87 always enabled
  ASSERT_OK(vcpu_->set_xcrs(*xcrs));
  auto xback = vcpu_->get_xcrs();
  ASSERT_TRUE(xback.ok());
  EXPECT_EQ(xback->xcrs[0].value, xcrs->xcrs[0].value);
}

TEST_F(KvmState, DebugregsEventsMpStateLapic) {
  auto d = vcpu_->get_debugregs();
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  kvm_debugregs dr = *d;
  dr.db[0] = 0x1000;
  dr.db[3] = 0xdead0000;
  ASSERT_OK(vcpu_->set_debugregs(dr));
  auto dback = vcpu_->get_debugregs();
  ASSERT_TRUE(dback.ok());
  EXPECT_EQ(dback->db[0], 0x1000u);
  EXPECT_EQ(dback->db[3], 0xdead0000u);

  auto ev = vcpu_->get_vcpu_events();
  ASSERT_TRUE(ev.ok()) << ev.error().to_string();
  ASSERT_OK(vcpu_->set_vcpu_events(*ev));

  auto mp = vcpu_->get_mp_state();
  ASSERT_TRUE(mp.ok()) << mp.error().to_string();
  EXPECT_EQ(mp->mp_state, static_cast<uint32_t>(KVM_MP_STATE_RUNNABLE));  // the BSP
  ASSERT_OK(vcpu_->set_mp_state(*mp));

  auto lapic = vcpu_->get_lapic();
  ASSERT_TRUE(lapic.ok()) << lapic.error().to_string();
  kvm_lapic_state l = *lapic;
  l.regs[0x80] = 0x20;  // TPR
  ASSERT_OK(vcpu_->set_lapic(l));
  auto lback = vcpu_->get_lapic();
  ASSERT_TRUE(lback.ok());
  EXPECT_EQ(lback->regs[0x80], 0x20);
}

TEST_F(KvmState, SaveableMsrs) {
  auto list = kvm_->msr_index_list();
  ASSERT_TRUE(list.ok()) << list.error().to_string();
  ASSERT_FALSE(list->empty());
  EXPECT_NE(std::find(list->begin(), list->end(), 0x10u), list->end());  // IA32_TSC
  std::vector<uint32_t> refused;
  auto msrs = vcpu_->get_msrs_available(*list, &refused);
  ASSERT_TRUE(msrs.ok()) << msrs.error().to_string();
  EXPECT_EQ(msrs->size() + refused.size(), list->size());
  EXPECT_GT(msrs->size(), 10u);
  std::string refused_text;
  for (auto i : refused) refused_text += fmt::format(" {:#x}", i);
  RecordProperty("msrs_read", static_cast<int>(msrs->size()));
  RecordProperty("msrs_refused", refused_text);
  std::printf("KVM_GET_MSR_INDEX_LIST: %zu MSRs, %zu readable, refused:%s\n", list->size(),
              msrs->size(), refused_text.c_str());
  // Write them all back (in batches), as a restore does.
  ASSERT_OK(vcpu_->set_msrs(*msrs));

  // More than one KVM_GET/SET_MSRS batch (KVM refuses 256 or more at once).
  std::vector<uint32_t> many;
  for (const auto& e : *msrs)
    if (e.index != 0x10) many.push_back(e.index);  // not the (moving) TSC
  ASSERT_FALSE(many.empty());
  for (size_t i = 0; many.size() < 300; ++i) many.push_back(many[i]);
  auto big = vcpu_->get_msrs(many);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  ASSERT_EQ(big->size(), many.size());
  for (size_t i = 0; i < many.size(); ++i) EXPECT_EQ((*big)[i].index, many[i]);
  ASSERT_OK(vcpu_->set_msrs(*big));

  // Strict read: fails naming the MSR; the lenient one skips it.
  std::vector<uint32_t> with_bogus = {0x10, 0xdeadbeef, 0x174};
  auto strict = vcpu_->get_msrs(with_bogus);
  ASSERT_FALSE(strict.ok());
  EXPECT_NE(strict.error().message.find("MSR 0xdeadbeef refused"), std::string::npos)
      << strict.error().message;
  std::vector<uint32_t> r2;
  auto lenient = vcpu_->get_msrs_available(with_bogus, &r2);
  ASSERT_TRUE(lenient.ok());
  ASSERT_EQ(lenient->size(), 2u);
  EXPECT_EQ((*lenient)[0].index, 0x10u);
  EXPECT_EQ((*lenient)[1].index, 0x174u);
  EXPECT_EQ(r2, std::vector<uint32_t>{0xdeadbeef});

  // SYSENTER_CS (0x174) round trip.
  kvm_msr_entry e{};
  e.index = 0x174;
  e.data = 0x10;
  ASSERT_OK(vcpu_->set_msrs(std::span<const kvm_msr_entry>(&e, 1)));
  auto one = vcpu_->get_msrs(std::vector<uint32_t>{0x174});
  ASSERT_TRUE(one.ok()) << one.error().to_string();
  EXPECT_EQ((*one)[0].data, 0x10u);
}

TEST_F(KvmState, TscKhz) {
  auto khz = vcpu_->get_tsc_khz();
  ASSERT_TRUE(khz.ok()) << khz.error().to_string();
  EXPECT_GT(*khz, 0u);
  ASSERT_OK(vcpu_->set_tsc_khz(*khz));
}

TEST_F(KvmState, IrqchipsRoundTrip) {
  for (uint32_t id : {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC}) {
    auto c = vm_->get_irqchip(id);
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    EXPECT_EQ(c->chip_id, id);
    ASSERT_OK(vm_->set_irqchip(*c));
    auto back = vm_->get_irqchip(id);
    ASSERT_TRUE(back.ok());
    EXPECT_TRUE(same_bytes(*back, *c)) << "chip " << id;
  }
  // A changed IOAPIC redirection entry and PIC mask read back.
  auto io = vm_->get_irqchip(KVM_IRQCHIP_IOAPIC);
  ASSERT_TRUE(io.ok());
  kvm_irqchip c = *io;
  c.chip.ioapic.redirtbl[4].bits = 0x0000000000000034ull;  // vector 0x34, unmasked, edge
  ASSERT_OK(vm_->set_irqchip(c));
  auto ioback = vm_->get_irqchip(KVM_IRQCHIP_IOAPIC);
  ASSERT_TRUE(ioback.ok());
  EXPECT_EQ(ioback->chip.ioapic.redirtbl[4].bits, 0x34u);
  auto pic = vm_->get_irqchip(KVM_IRQCHIP_PIC_MASTER);
  ASSERT_TRUE(pic.ok());
  kvm_irqchip p = *pic;
  p.chip.pic.imr = 0xfb;
  ASSERT_OK(vm_->set_irqchip(p));
  EXPECT_EQ(vm_->get_irqchip(KVM_IRQCHIP_PIC_MASTER)->chip.pic.imr, 0xfb);

  kvm_irqchip bad{};
  bad.chip_id = 7;
  EXPECT_FALSE(vm_->get_irqchip(7).ok());
  EXPECT_FALSE(vm_->set_irqchip(bad).ok());
}

TEST_F(KvmState, Pit2RoundTrip) {
  auto pit = vm_->get_pit2();
  ASSERT_TRUE(pit.ok()) << pit.error().to_string();
  kvm_pit_state2 p = *pit;
  p.channels[2].count = 1193;
  p.channels[2].mode = 3;
  ASSERT_OK(vm_->set_pit2(p));
  auto back = vm_->get_pit2();
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->channels[2].count, 1193u);
  EXPECT_EQ(back->channels[2].mode, 3);
}

TEST_F(KvmState, ClockRoundTrip) {
  auto c = vm_->get_clock();
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  std::printf("KVM_GET_CLOCK: clock=%llu flags=%#x\n", static_cast<unsigned long long>(c->clock),
              c->flags);
  kvm_clock_data set{};
  set.clock = c->clock + 1'000'000'000ull;  // one second ahead, no REALTIME adjustment
  ASSERT_OK(vm_->set_clock(set));
  auto back = vm_->get_clock();
  ASSERT_TRUE(back.ok());
  EXPECT_GE(back->clock, set.clock);
  EXPECT_LT(back->clock, set.clock + 10'000'000'000ull);
  // What a restore does: the saved value with the flags KVM_GET_CLOCK gave.
  ASSERT_OK(vm_->set_clock(*c));
}

// Regression (found by the Linux snapshot e2e test): a LAPIC timer in
// TSC-deadline mode with the deadline armed must come back armed. KVM drops
// a write to IA32_TSC_DEADLINE unless the LAPIC is already in deadline mode,
// so restore_vcpu_state must set the LAPIC before the MSRs.
TEST_F(KvmState, TscDeadlineSurvivesSaveRestore) {
  constexpr uint32_t kDeadline = 0x6e0;
  auto lapic = vcpu_->get_lapic();
  ASSERT_TRUE(lapic.ok()) << lapic.error().to_string();
  kvm_lapic_state l = *lapic;
  uint32_t svr = 0x1ff, lvtt = 0x400ec;  // APIC enabled; timer vector 0xec, TSC-deadline mode
  std::memcpy(l.regs + 0xf0, &svr, 4);
  std::memcpy(l.regs + 0x320, &lvtt, 4);
  ASSERT_OK(vcpu_->set_lapic(l));
  const uint32_t tsc_idx[] = {0x10};
  auto tsc = vcpu_->get_msrs(tsc_idx);
  ASSERT_TRUE(tsc.ok() && tsc->size() == 1);
  const uint64_t deadline = (*tsc)[0].data + (1ull << 40);
  const kvm_msr_entry arm[] = {{kDeadline, 0, deadline}};
  ASSERT_OK(vcpu_->set_msrs(arm));
  const uint32_t dl_idx[] = {kDeadline};
  auto armed = vcpu_->get_msrs(dl_idx);
  ASSERT_TRUE(armed.ok() && armed->size() == 1);
  if ((*armed)[0].data == 0) GTEST_SKIP() << "SKIP: this host's KVM has no TSC-deadline timer";

  auto list = kvm_->msr_index_list();
  ASSERT_TRUE(list.ok());
  snapshot::Section sec;
  ASSERT_OK(save_vcpu_state(*vcpu_, *list, sec));

  auto vm2 = kvm_->create_vm();
  ASSERT_TRUE(vm2.ok());
  ASSERT_OK(vm2->set_tss_addr(0xfffbd000));
  ASSERT_OK(vm2->create_irqchip());
  auto v2 = vm2->create_vcpu(0);
  ASSERT_TRUE(v2.ok());
  auto cpuid = kvm_->supported_cpuid();
  ASSERT_TRUE(cpuid.ok());
  ASSERT_OK(v2->set_cpuid2(*cpuid));
  ASSERT_OK(restore_vcpu_state(*v2, sec));
  auto back = v2->get_msrs(dl_idx);
  ASSERT_TRUE(back.ok() && back->size() == 1);
  EXPECT_NE((*back)[0].data, 0u) << "the restored vCPU's deadline timer is disarmed";
  auto lapic2 = v2->get_lapic();
  ASSERT_TRUE(lapic2.ok());
  uint32_t lvtt2;
  std::memcpy(&lvtt2, lapic2->regs + 0x320, 4);
  EXPECT_EQ(lvtt2, lvtt);
}

}  // namespace
}  // namespace vmm
