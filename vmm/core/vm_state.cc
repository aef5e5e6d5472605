#include "vmm/core/vm_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace vmm {

Result<void> save_vcpu_state(const VcpuFd& vcpu, std::span<const uint32_t> msr_indices,
                             snapshot::Section& out) {
  VMM_TRY(auto regs, vcpu.get_regs());
  out.put_pod("regs", regs);
  VMM_TRY(auto sregs, vcpu.get_sregs());
  out.put_pod("sregs", sregs);
  VMM_TRY(auto fpu, vcpu.get_fpu());
  out.put_pod("fpu", fpu);
  VMM_TRY(auto xsave, vcpu.get_xsave());
  out.put_bytes("xsave", xsave);
  VMM_TRY(auto xcrs, vcpu.get_xcrs());
  out.put_pod("xcrs", xcrs);
  VMM_TRY(auto dregs, vcpu.get_debugregs());
  out.put_pod("debugregs", dregs);
  VMM_TRY(auto events, vcpu.get_vcpu_events());
  out.put_pod("events", events);
  VMM_TRY(auto mp, vcpu.get_mp_state());
  out.put_pod("mp_state", mp);
  VMM_TRY(auto lapic, vcpu.get_lapic());
  out.put_pod("lapic", lapic);
  std::vector<uint32_t> refused;
  VMM_TRY(auto msrs, vcpu.get_msrs_available(msr_indices, &refused));
  out.put_pod_array("msrs", std::span<const kvm_msr_entry>(msrs));
  out.put_pod_array("msrs_refused", std::span<const uint32_t>(refused));
  return ok();
}

Result<void> save_vm_state(const VmFd& vm, snapshot::Section& out) {
  VMM_TRY(auto clock, vm.get_clock());
  out.put_pod("clock", clock);
  VMM_TRY(auto master, vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER));
  out.put_pod("pic_master", master);
  VMM_TRY(auto slave, vm.get_irqchip(KVM_IRQCHIP_PIC_SLAVE));
  out.put_pod("pic_slave", slave);
  VMM_TRY(auto ioapic, vm.get_irqchip(KVM_IRQCHIP_IOAPIC));
  out.put_pod("ioapic", ioapic);
  VMM_TRY(auto pit, vm.get_pit2());
  out.put_pod("pit2", pit);
  return ok();
}

Result<uint64_t> write_memory_file(const GuestMemory& mem, const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return errno_error("cannot create memory file '{}'", path);
  UniqueFd file(fd);
  constexpr uint64_t kPage = 4096;
  static const uint8_t kZero[kPage] = {};
  uint64_t file_off = 0, written = 0;
  for (const auto& r : mem.regions()) {
    const uint8_t* base = r.host();
    uint64_t size = r.size();
    uint64_t off = 0;
    while (off < size) {
      // A run of non-zero pages is written with one pwrite.
      uint64_t n = std::min(kPage, size - off);
      if (std::memcmp(base + off, kZero, n) == 0) {
        off += n;
        continue;
      }
      uint64_t start = off;
      while (off < size) {
        uint64_t m = std::min(kPage, size - off);
        if (std::memcmp(base + off, kZero, m) == 0) break;
        off += m;
      }
      uint64_t pos = start;
      while (pos < off) {
        ssize_t w = ::pwrite(fd, base + pos, off - pos, static_cast<off_t>(file_off + pos));
        if (w < 0) {
          if (errno == EINTR) continue;
          return errno_error("writing memory file '{}'", path);
        }
        pos += static_cast<uint64_t>(w);
      }
      written += off - start;
    }
    file_off += size;
  }
  if (::ftruncate(fd, static_cast<off_t>(file_off)) < 0)
    return errno_error("sizing memory file '{}'", path);
  if (::fsync(fd) < 0) return errno_error("fsync memory file '{}'", path);
  return written;
}

}  // namespace vmm
