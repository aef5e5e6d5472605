// Thin RAII wrappers over the KVM ioctl API (Documentation/virt/kvm/api.rst).
// KvmSystem owns /dev/kvm, VmFd a VM, VcpuFd a vCPU and its kvm_run mapping.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vmm/base/mmap_region.h"
#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace vmm {

class VmFd;
class VcpuFd;

// kvm_cpuid2 with its flexible array, owned.
class CpuidTable {
 public:
  CpuidTable() = default;
  explicit CpuidTable(std::vector<kvm_cpuid_entry2> entries) : entries_(std::move(entries)) {}
  std::vector<kvm_cpuid_entry2>& entries() { return entries_; }
  const std::vector<kvm_cpuid_entry2>& entries() const { return entries_; }
  kvm_cpuid_entry2* find(uint32_t function, uint32_t index = 0);

 private:
  std::vector<kvm_cpuid_entry2> entries_;
};

class KvmSystem {
 public:
  static Result<KvmSystem> open(const char* path = "/dev/kvm");
  int api_version() const;
  // Returns the KVM_CHECK_EXTENSION value (0 = absent).
  int check_extension(long cap) const;
  Result<int> vcpu_mmap_size() const;
  Result<CpuidTable> supported_cpuid() const;
  Result<std::vector<uint32_t>> msr_index_list() const;
  Result<VmFd> create_vm() const;
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
};

class VmFd {
 public:
  VmFd(UniqueFd fd, int vcpu_mmap_size) : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size) {}
  int fd() const { return fd_.get(); }
  int check_extension(long cap) const;

  Result<void> set_user_memory_region(uint32_t slot, uint64_t gpa, uint64_t size, void* host,
                                      uint32_t flags = 0);
  Result<void> set_tss_addr(uint64_t addr);
  Result<void> set_identity_map_addr(uint64_t addr);
  Result<void> create_irqchip();
  Result<void> create_pit2();
  Result<void> irq_line(uint32_t irq, bool level);
  // Writes to eventfd `fd` assert then deassert GSI `gsi` (an edge).
  Result<void> irqfd(int fd, uint32_t gsi);
  // A guest MMIO write of `len` bytes equal to `datamatch` at `addr` signals
  // eventfd `fd` inside KVM instead of exiting to user space.
  Result<void> ioeventfd_mmio(uint64_t addr, uint32_t len, int fd, uint64_t datamatch);
  Result<VcpuFd> create_vcpu(int id);

 private:
  UniqueFd fd_;
  int vcpu_mmap_size_;
};

class VcpuFd {
 public:
  VcpuFd(UniqueFd fd, MmapRegion run) : fd_(std::move(fd)), run_(std::move(run)) {}
  int fd() const { return fd_.get(); }
  kvm_run* run() const { return reinterpret_cast<kvm_run*>(run_.data()); }

  // KVM_RUN; returns errno on failure (EINTR when kicked by a signal).
  int run_once();

  Result<kvm_regs> get_regs() const;
  Result<void> set_regs(const kvm_regs& r);
  Result<kvm_sregs> get_sregs() const;
  Result<void> set_sregs(const kvm_sregs& s);
  Result<kvm_fpu> get_fpu() const;
  Result<void> set_fpu(const kvm_fpu& f);
  Result<void> set_cpuid2(const CpuidTable& table);
  Result<void> set_msrs(std::span<const kvm_msr_entry> entries);
  Result<kvm_lapic_state> get_lapic() const;
  Result<void> set_lapic(const kvm_lapic_state& l);
  Result<kvm_vcpu_events> get_vcpu_events() const;
  Result<void> set_vcpu_events(const kvm_vcpu_events& e);
  Result<kvm_mp_state> get_mp_state() const;
  Result<void> set_mp_state(const kvm_mp_state& s);
  // KVM_GET_TSC_KHZ: the guest TSC frequency.
  Result<uint32_t> get_tsc_khz() const;
  // Guest virtual -> guest physical through the vCPU's current page tables.
  Result<uint64_t> translate(uint64_t gva) const;

 private:
  UniqueFd fd_;
  MmapRegion run_;
};

}  // namespace vmm
