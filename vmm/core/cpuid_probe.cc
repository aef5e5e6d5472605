#include "vmm/core/cpuid_probe.h"

#include <sys/stat.h>

#include <array>

#include "vmm/memory/guest_memory.h"

namespace vmm {

Result<CpuidProbeResult> probe_cpuid_virtualization(const KvmSystem& kvm) {
  VMM_TRY(auto vm, kvm.create_vm());
  VMM_TRY(auto mem, GuestMemory::create_anonymous({{0, 0x10000}}));
  const auto& region = mem.regions().front();
  VMM_CHECK(vm.set_user_memory_region(0, 0, region.size(), region.host()));

  // Real mode at 0x1000: mov eax,1; xor ecx,ecx; cpuid; hlt. Without an
  // in-kernel irqchip, hlt exits to us with KVM_EXIT_HLT.
  static constexpr std::array<uint8_t, 12> kCode = {0x66, 0xb8, 0x01, 0x00, 0x00, 0x00,
                                                    0x66, 0x31, 0xc9, 0x0f, 0xa2, 0xf4};
  VMM_CHECK(mem.write(0x1000, kCode));

  VMM_TRY(auto vcpu, vm.create_vcpu(0));
  VMM_TRY(auto table, kvm.supported_cpuid());
  // A leaf-1 ECX no real CPU reports: only the hypervisor bit. Bit 27 (OSXSAVE)
  // mirrors CR4 and is masked from the comparison.
  constexpr uint32_t kMarker = 0x80000000u;
  kvm_cpuid_entry2* leaf1 = table.find(1);
  if (!leaf1) return make_error("KVM reports no CPUID leaf 1");
  leaf1->ecx = kMarker;
  VMM_CHECK(vcpu.set_cpuid2(table));

  VMM_TRY(auto sregs, vcpu.get_sregs());
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  VMM_CHECK(vcpu.set_sregs(sregs));
  kvm_regs regs{};
  regs.rip = 0x1000;
  regs.rflags = 2;
  VMM_CHECK(vcpu.set_regs(regs));

  for (int i = 0; i < 16; ++i) {
    int err = vcpu.run_once();
    if (err == EINTR || err == EAGAIN) continue;
    if (err) return Error{"CPUID probe: KVM_RUN", err};
    uint32_t reason = vcpu.run()->exit_reason;
    if (reason == KVM_EXIT_HLT) {
      VMM_TRY(auto out, vcpu.get_regs());
      uint32_t seen = static_cast<uint32_t>(out.rcx);
      constexpr uint32_t kMask = ~(1u << 27);
      auto khz = vcpu.get_tsc_khz();
      return CpuidProbeResult{(seen & kMask) == (kMarker & kMask), kMarker, seen,
                              khz.ok() ? *khz : 0};
    }
    return make_error("CPUID probe: unexpected exit reason {}", reason);
  }
  return make_error("CPUID probe guest did not halt");
}

KvmFlavor detect_kvm_flavor(const std::string& sys_module) {
  auto loaded = [&](const char* name) {
    struct stat st {};
    return ::stat((sys_module + "/" + name).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  };
  if (loaded("kvm_pvm")) return KvmFlavor::kPvm;
  if (loaded("kvm_intel")) return KvmFlavor::kVmx;
  if (loaded("kvm_amd")) return KvmFlavor::kSvm;
  return KvmFlavor::kUnknown;
}

const char* kvm_flavor_name(KvmFlavor f) {
  switch (f) {
    case KvmFlavor::kVmx: return "kvm_intel";
    case KvmFlavor::kSvm: return "kvm_amd";
    case KvmFlavor::kPvm: return "kvm_pvm";
    case KvmFlavor::kUnknown: break;
  }
  return "unknown";
}

}  // namespace vmm
