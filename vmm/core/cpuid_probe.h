// Detects hosts whose KVM does not virtualize CPUID (the guest sees the host's
// values whatever KVM_SET_CPUID2 says). Runs a few-instruction real-mode guest
// in a throwaway VM that executes CPUID leaf 1 and compares with what was set.
#pragma once

#include <cstdint>
#include <string>

#include "vmm/base/result.h"
#include "vmm/kvm/kvm.h"

namespace vmm {

struct CpuidProbeResult {
  bool virtualized;
  uint32_t set_ecx;   // leaf 1 ECX given to KVM_SET_CPUID2
  uint32_t seen_ecx;  // leaf 1 ECX the guest read
  uint32_t tsc_khz;   // KVM_GET_TSC_KHZ of the probe vCPU (0 if unknown)
};

Result<CpuidProbeResult> probe_cpuid_virtualization(const KvmSystem& kvm);

// Which KVM module serves this host, from SYS_MODULE (normally /sys/module):
// kvm_intel or kvm_amd without kvm_pvm is hardware virtualization, which
// always virtualizes CPUID, so the probe (a throwaway VM: ~1 ms on hardware,
// ~190 ms on an emulated SVM host) is not needed there. kvm_pvm, or no
// module we know, leaves the question to the probe.
enum class KvmFlavor { kVmx, kSvm, kPvm, kUnknown };
KvmFlavor detect_kvm_flavor(const std::string& sys_module = "/sys/module");
const char* kvm_flavor_name(KvmFlavor f);

}  // namespace vmm
