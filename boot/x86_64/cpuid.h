// Guest CPUID: CPU templates and per-vCPU topology fixes applied to the set
// KVM reports as supported. Pure data transformation; no KVM types.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/base/result.h"

namespace vmm::boot {

inline constexpr uint32_t kCpuidFlagSignificantIndex = 1u << 0;

struct CpuidEntry {
  uint32_t function, index, flags, eax, ebx, ecx, edx;
};

// Template names accepted by apply_cpu_template.
inline constexpr std::string_view kCpuTemplateHost = "host";
inline constexpr std::string_view kCpuTemplateMinimal = "minimal";

// Leaf 1 ECX bits cleared by the "minimal" template.
inline constexpr uint32_t kMinimalLeaf1EcxMask =
    (1u << 9) | (1u << 19) | (1u << 20) | (1u << 22) | (1u << 23) | (1u << 25) | (1u << 26) |
    (1u << 27) | (1u << 28) | (1u << 30);
// Leaf 7 subleaf 0 EBX bits cleared by the "minimal" template.
inline constexpr uint32_t kMinimalLeaf7EbxMask =
    (1u << 0) | (1u << 5) | (1u << 7) | (1u << 16) | (1u << 18) | (1u << 20) | (1u << 29);

// Applies a template ("host": the supported set as-is; "minimal": also clears
// the SIMD/crypto/XSAVE features above and drops leaf 0xD) and per-vCPU fixes:
//   leaf 1: EBX[31:24] = APIC id, EBX[23:16] = num_vcpus, ECX.hypervisor, EDX.HTT if >1;
//   leaf 4: EAX[31:26] = cores - 1, EAX[25:14] = threads sharing the cache - 1;
//   leaves 0xB/0x1F: one thread per core, num_vcpus cores, EDX = x2APIC id;
//   leaf 0x8000001E (if present): extended APIC id;
//   leaf 0x40000000 (if present): max hypervisor leaf and "KVMKVMKVM\0\0\0".
// Errors: unknown template (the message lists valid ones), num_vcpus outside
// 1..254, vcpu_index >= num_vcpus.
Result<std::vector<CpuidEntry>> apply_cpu_template(std::vector<CpuidEntry> supported,
                                                   std::string_view template_name,
                                                   uint32_t vcpu_index, uint32_t num_vcpus);

// Kernel parameters that hide the same features where CPUID cannot be set.
std::string cpuid_mitigation_cmdline();

}  // namespace vmm::boot
