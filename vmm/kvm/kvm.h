// Thin RAII wrappers over the KVM ioctl API (Documentation/virt/kvm/api.rst).
// KvmSystem owns /dev/kvm, VmFd a VM, VcpuFd a vCPU and its kvm_run mapping.
#pragma once

#include <linux/kvm.h>

#include <cstddef>
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

  // ---- VM-wide state for snapshot/restore (needs create_irqchip/create_pit2).
  // KVM_GET/SET_IRQCHIP; chip_id is KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE or
  // _IOAPIC (set_irqchip restores the chip named by chip.chip_id).
  Result<kvm_irqchip> get_irqchip(uint32_t chip_id) const;
  Result<void> set_irqchip(const kvm_irqchip& chip);
  Result<kvm_pit_state2> get_pit2() const;
  Result<void> set_pit2(const kvm_pit_state2& pit);
  // kvmclock. KVM_GET_CLOCK fills flags (KVM_CLOCK_TSC_STABLE, and on newer
  // kernels KVM_CLOCK_REALTIME/HOST_TSC with realtime/host_tsc). KVM_SET_CLOCK
  // with KVM_CLOCK_REALTIME set advances the clock by the wall time elapsed
  // since `realtime`; clear that flag to restore `clock` as it was.
  Result<kvm_clock_data> get_clock() const;
  Result<void> set_clock(const kvm_clock_data& clock);
  // Bytes of a vCPU's XSAVE buffer: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on
  // this VM (at least 4096), or 4096 when KVM has no XSAVE2.
  size_t xsave_size() const;

  // ---- Dirty page logging (live migration). Slots are re-registered with
  // KVM_MEM_LOG_DIRTY_PAGES through set_user_memory_region's flags.
  // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET_DIRTY_LOG then only reports, and
  // clear_dirty_log re-protects exactly the pages about to be sent (instead
  // of every dirty page being write-protected again at GET time). Returns
  // false if the host lacks it (then GET_DIRTY_LOG also clears).
  Result<bool> enable_manual_dirty_log_protect();
  // KVM_GET_DIRTY_LOG: one bit per page of `slot`, bitmap sized for the slot
  // (rounded up to 64 pages).
  Result<void> get_dirty_log(uint32_t slot, std::span<uint64_t> bitmap);
  // KVM_CLEAR_DIRTY_LOG for pages [first_page, first_page + num_pages) of
  // `slot` whose bit is set in `bitmap` (bit 0 = first_page). first_page
  // must be a multiple of 64.
  Result<void> clear_dirty_log(uint32_t slot, uint64_t first_page, uint32_t num_pages,
                               std::span<uint64_t> bitmap);

 private:
  UniqueFd fd_;
  int vcpu_mmap_size_;
};

class VcpuFd {
 public:
  VcpuFd(UniqueFd fd, MmapRegion run, size_t xsave_size = 4096)
      : fd_(std::move(fd)), run_(std::move(run)), xsave_size_(xsave_size) {}
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
  // KVM_SET_TSC_KHZ: scales the guest TSC (needs KVM_CAP_TSC_CONTROL unless
  // khz is the host's rate).
  Result<void> set_tsc_khz(uint32_t khz);

  // ---- per-vCPU state for snapshot/restore.
  // KVM_GET_MSRS for `indices` (in batches); fails naming the first MSR KVM
  // refuses to read. Entries come back in the order asked.
  Result<std::vector<kvm_msr_entry>> get_msrs(std::span<const uint32_t> indices) const;
  // Like get_msrs, but skips the MSRs KVM refuses (those in
  // KvmSystem::msr_index_list() the vCPU's CPUID does not enable), appending
  // their indices to *refused when it is not null.
  Result<std::vector<kvm_msr_entry>> get_msrs_available(std::span<const uint32_t> indices,
                                                        std::vector<uint32_t>* refused) const;
  // The XSAVE area, xsave_size() bytes (layout per host CPUID leaf 0xD):
  // KVM_GET_XSAVE2 when that is over 4096 (dynamic features such as AMX
  // enabled), else KVM_GET_XSAVE.
  Result<std::vector<uint8_t>> get_xsave() const;
  // KVM_SET_XSAVE. `area` may be shorter than xsave_size() (zero-padded: its
  // XSAVE header says which components are present) but not longer.
  Result<void> set_xsave(std::span<const uint8_t> area);
  size_t xsave_size() const { return xsave_size_; }
  Result<kvm_xcrs> get_xcrs() const;
  Result<void> set_xcrs(const kvm_xcrs& x);
  Result<kvm_debugregs> get_debugregs() const;
  Result<void> set_debugregs(const kvm_debugregs& d);
  // Guest virtual -> guest physical through the vCPU's current page tables.
  Result<uint64_t> translate(uint64_t gva) const;

 private:
  UniqueFd fd_;
  MmapRegion run_;
  size_t xsave_size_;
};

}  // namespace vmm
