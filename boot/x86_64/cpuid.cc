#include "boot/x86_64/cpuid.h"

#include <algorithm>

namespace vmm::boot {

namespace {

constexpr uint32_t kLeafHypervisorBase = 0x40000000;
constexpr uint32_t kLeafHypervisorLast = 0x400000ff;

// Bits needed to hold values 0..n-1 (0 for n <= 1).
uint32_t bits_for(uint32_t n) {
  uint32_t b = 0;
  while (b < 32 && (uint64_t{1} << b) < n) ++b;
  return b;
}

uint32_t set_field(uint32_t reg, unsigned lo, unsigned width, uint32_t value) {
  uint32_t mask = (width >= 32 ? ~0u : ((1u << width) - 1)) << lo;
  return (reg & ~mask) | ((value << lo) & mask);
}

void fix_topology_leaf(CpuidEntry& e, uint32_t apic_id, uint32_t num_vcpus) {
  // Level 0: SMT (one thread per core); level 1: core (num_vcpus per package).
  e.edx = apic_id;
  switch (e.index) {
    case 0:
      e.eax = 0;
      e.ebx = 1;
      e.ecx = (1u << 8) | e.index;
      break;
    case 1:
      e.eax = bits_for(num_vcpus);
      e.ebx = num_vcpus;
      e.ecx = (2u << 8) | e.index;
      break;
    default:  // invalid level terminates the enumeration
      e.eax = 0;
      e.ebx = 0;
      e.ecx = e.index;
      break;
  }
}

}  // namespace

Result<std::vector<CpuidEntry>> apply_cpu_template(std::vector<CpuidEntry> supported,
                                                   std::string_view template_name,
                                                   uint32_t vcpu_index, uint32_t num_vcpus) {
  bool minimal;
  if (template_name == kCpuTemplateHost) {
    minimal = false;
  } else if (template_name == kCpuTemplateMinimal) {
    minimal = true;
  } else {
    return make_error("unknown CPU template '{}' (valid: {}, {})", template_name,
                      kCpuTemplateHost, kCpuTemplateMinimal);
  }
  if (num_vcpus < 1 || num_vcpus > 254)
    return make_error("CPUID: {} vCPUs is outside the supported range 1..254", num_vcpus);
  if (vcpu_index >= num_vcpus)
    return make_error("CPUID: vCPU index {} is not below the vCPU count {}", vcpu_index,
                      num_vcpus);

  if (minimal) {
    std::erase_if(supported, [](const CpuidEntry& e) { return e.function == 0xd; });
  }

  uint32_t max_hv_leaf = 0;
  for (const auto& e : supported)
    if (e.function >= kLeafHypervisorBase && e.function <= kLeafHypervisorLast)
      max_hv_leaf = std::max(max_hv_leaf, e.function);

  const uint32_t apic_id = vcpu_index;
  for (auto& e : supported) {
    switch (e.function) {
      case 0x1:
        if (minimal) e.ecx &= ~kMinimalLeaf1EcxMask;
        e.ebx = set_field(e.ebx, 24, 8, apic_id);
        e.ebx = set_field(e.ebx, 16, 8, num_vcpus);
        e.ecx |= 1u << 31;  // running under a hypervisor
        if (num_vcpus > 1)
          e.edx |= 1u << 28;  // HTT: EBX[23:16] is meaningful
        else
          e.edx &= ~(1u << 28);
        break;
      case 0x4: {
        if ((e.eax & 0x1f) == 0) break;  // cache type "null": end of the list
        e.eax = set_field(e.eax, 26, 6, std::min<uint32_t>(num_vcpus, 64) - 1);
        uint32_t level = (e.eax >> 5) & 0x7;
        uint32_t sharing = level >= 3 ? num_vcpus - 1 : 0;  // L1/L2 per core, L3 shared
        e.eax = set_field(e.eax, 14, 12, sharing);
        break;
      }
      case 0x7:
        if (minimal && e.index == 0) e.ebx &= ~kMinimalLeaf7EbxMask;
        break;
      case 0xb:
      case 0x1f:
        fix_topology_leaf(e, apic_id, num_vcpus);
        break;
      case 0x8000001e:
        e.eax = apic_id;                  // extended APIC id
        e.ebx = set_field(e.ebx, 0, 8, apic_id);  // compute unit id
        e.ebx = set_field(e.ebx, 8, 8, 0);        // one thread per compute unit
        e.ecx = 0;                                // one node, node id 0
        break;
      case kLeafHypervisorBase:
        e.eax = max_hv_leaf;
        e.ebx = 0x4b4d564b;  // "KVMK"
        e.ecx = 0x564b4d56;  // "VMKV"
        e.edx = 0x0000004d;  // "M\0\0\0"
        break;
      default:
        break;
    }
  }
  return supported;
}

std::string cpuid_mitigation_cmdline() {
  // cx16: without it the stock kernel's SLUB uses `lock cmpxchg16b`, which the
  // nested host cannot emulate (measured: get_partial_node, ~4 min into boot).
  return "noxsave clearcpuid=ssse3,sse4_1,sse4_2,avx,avx2,avx512f,aes,pclmulqdq,sha_ni,popcnt,"
         "smap,smep,xsave,rdrand,rdseed,fsgsbase,movbe,cx16";
}

}  // namespace vmm::boot
