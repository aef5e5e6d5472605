#include "vmm/core/vm_state.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "boot/x86_64/e820.h"
#include "vmm/base/mmap_region.h"

namespace vmm {

namespace {
constexpr uint32_t kMsrTsc = 0x10;
constexpr uint32_t kMsrTscDeadline = 0x6e0;
}  // namespace

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

Result<void> restore_vcpu_state(VcpuFd& vcpu, const snapshot::Section& in) {
  VMM_TRY(auto regs, in.get_pod<kvm_regs>("regs"));
  VMM_TRY(auto sregs, in.get_pod<kvm_sregs>("sregs"));
  VMM_TRY(auto fpu, in.get_pod<kvm_fpu>("fpu"));
  VMM_TRY(auto xsave, in.get_bytes("xsave"));
  VMM_TRY(auto xcrs, in.get_pod<kvm_xcrs>("xcrs"));
  VMM_TRY(auto dregs, in.get_pod<kvm_debugregs>("debugregs"));
  VMM_TRY(auto events, in.get_pod<kvm_vcpu_events>("events"));
  VMM_TRY(auto mp, in.get_pod<kvm_mp_state>("mp_state"));
  VMM_TRY(auto lapic, in.get_pod<kvm_lapic_state>("lapic"));
  VMM_TRY(auto msrs, in.get_pod_array<kvm_msr_entry>("msrs", 4096));
  VMM_CHECK(vcpu.set_regs(regs));
  if (xsave.empty()) {
    VMM_CHECK(vcpu.set_fpu(fpu));
  } else {
    VMM_CHECK(vcpu.set_xsave(xsave));
  }
  if (xcrs.nr_xcrs != 0) VMM_CHECK(vcpu.set_xcrs(xcrs));
  VMM_CHECK(vcpu.set_sregs(sregs));
  // The LAPIC before the MSRs: KVM ignores a write to IA32_TSC_DEADLINE
  // unless the LAPIC timer is already in TSC-deadline mode, and a fresh
  // LAPIC is not; restored the other way round, a Linux guest's timer is
  // armed with deadline 0 and never fires again (found by the e2e
  // snapshot test). The deadline also goes after IA32_TSC, which it is
  // relative to. If the guest sat in deadline mode with the deadline
  // already consumed (0), arm it at the saved TSC so it fires at once
  // rather than never.
  VMM_CHECK(vcpu.set_lapic(lapic));
  std::stable_partition(msrs.begin(), msrs.end(),
                        [](const kvm_msr_entry& e) { return e.index != kMsrTscDeadline; });
  uint32_t lvtt;
  std::memcpy(&lvtt, lapic.regs + 0x320, 4);
  bool deadline_mode = ((lvtt >> 17) & 3) == 2 && !(lvtt & (1u << 16));
  uint64_t saved_tsc = 0;
  for (const auto& e : msrs)
    if (e.index == kMsrTsc) saved_tsc = e.data;
  for (auto& e : msrs)
    if (e.index == kMsrTscDeadline && e.data == 0 && deadline_mode && saved_tsc) e.data = saved_tsc;
  VMM_CHECK(vcpu.set_msrs(msrs));
  VMM_CHECK(vcpu.set_vcpu_events(events));
  VMM_CHECK(vcpu.set_mp_state(mp));
  VMM_CHECK(vcpu.set_debugregs(dregs));
  return ok();
}

Result<void> restore_vm_state(VmFd& vm, const snapshot::Section& in) {
  VMM_TRY(auto clock, in.get_pod<kvm_clock_data>("clock"));
  VMM_TRY(auto master, in.get_pod<kvm_irqchip>("pic_master"));
  VMM_TRY(auto slave, in.get_pod<kvm_irqchip>("pic_slave"));
  VMM_TRY(auto ioapic, in.get_pod<kvm_irqchip>("ioapic"));
  VMM_TRY(auto pit, in.get_pod<kvm_pit_state2>("pit2"));
  if (master.chip_id != KVM_IRQCHIP_PIC_MASTER || slave.chip_id != KVM_IRQCHIP_PIC_SLAVE ||
      ioapic.chip_id != KVM_IRQCHIP_IOAPIC)
    return make_error("vm: irqchip ids {} {} {} are not PIC master, slave, IOAPIC", master.chip_id,
                      slave.chip_id, ioapic.chip_id);
  VMM_CHECK(vm.set_irqchip(master));
  VMM_CHECK(vm.set_irqchip(slave));
  VMM_CHECK(vm.set_irqchip(ioapic));
  VMM_CHECK(vm.set_pit2(pit));
  clock.flags = 0;  // only the clock value: no realtime/TSC adjustment on this host
  VMM_CHECK(vm.set_clock(clock));
  return ok();
}

Result<void> check_cpuid(std::span<const kvm_cpuid_entry2> saved,
                         std::span<const kvm_cpuid_entry2> current) {
  auto key = [](const kvm_cpuid_entry2& e) {
    return (static_cast<uint64_t>(e.function) << 32) | e.index;
  };
  auto sorted = [&](std::span<const kvm_cpuid_entry2> t) {
    std::vector<kvm_cpuid_entry2> v(t.begin(), t.end());
    std::sort(v.begin(), v.end(), [&](const auto& a, const auto& b) { return key(a) < key(b); });
    return v;
  };
  auto a = sorted(saved), b = sorted(current);
  std::vector<std::string> diffs;
  size_t total = 0;
  auto note = [&](std::string d) {
    if (diffs.size() < 4) diffs.push_back(std::move(d));
    ++total;
  };
  size_t i = 0, j = 0;
  while (i < a.size() || j < b.size()) {
    if (j == b.size() || (i < a.size() && key(a[i]) < key(b[j]))) {
      note(fmt::format("leaf {:#x}.{} only in the snapshot", a[i].function, a[i].index));
      ++i;
    } else if (i == a.size() || key(b[j]) < key(a[i])) {
      note(fmt::format("leaf {:#x}.{} only on this host", b[j].function, b[j].index));
      ++j;
    } else {
      const uint32_t sa[4] = {a[i].eax, a[i].ebx, a[i].ecx, a[i].edx};
      const uint32_t sb[4] = {b[j].eax, b[j].ebx, b[j].ecx, b[j].edx};
      static constexpr const char* kReg[4] = {"eax", "ebx", "ecx", "edx"};
      for (int r = 0; r < 4; ++r)
        if (sa[r] != sb[r])
          note(fmt::format("leaf {:#x}.{} {}: snapshot {:#010x}, this host {:#010x}",
                           a[i].function, a[i].index, kReg[r], sa[r], sb[r]));
      ++i;
      ++j;
    }
  }
  if (total == 0) return ok();
  std::string list;
  for (const auto& d : diffs) list += (list.empty() ? "" : "; ") + d;
  if (total > diffs.size()) list += fmt::format("; and {} more", total - diffs.size());
  return make_error("CPUID differs from the snapshot's ({} difference{}): {}", total,
                    total == 1 ? "" : "s", list);
}

Result<GuestMemory> map_memory_file(const std::string& path, uint64_t mem_bytes, bool copy,
                                    bool huge_pages) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error("cannot open memory file '{}'", path);
  UniqueFd file(fd);
  struct stat st {};
  if (::fstat(fd, &st) < 0) return errno_error("stat memory file '{}'", path);
  if (static_cast<uint64_t>(st.st_size) != mem_bytes)
    return make_error("memory file '{}' is {} bytes; the snapshot's guest has {}", path,
                      st.st_size, mem_bytes);
  GuestMemory mem;
  uint64_t off = 0;
  for (auto [start, size] : boot::guest_ram_ranges(mem_bytes)) {
    if (copy) {
      // Only the file's data extents are read (SEEK_DATA): the holes are
      // zero pages, and fresh anonymous memory already reads as zero.
      VMM_TRY(auto region, MmapRegion::anonymous(size, huge_pages));
      uint64_t pos = 0;
      while (pos < size) {
        off_t data = ::lseek(fd, static_cast<off_t>(off + pos), SEEK_DATA);
        if (data < 0 && errno == ENXIO) break;  // only holes left
        if (data < 0) data = static_cast<off_t>(off + pos);  // no SEEK_DATA: read it all
        if (static_cast<uint64_t>(data) >= off + size) break;
        off_t hole = ::lseek(fd, data, SEEK_HOLE);
        uint64_t end = hole < 0 ? off + size : std::min<uint64_t>(hole, off + size);
        uint64_t done = static_cast<uint64_t>(data);
        while (done < end) {
          ssize_t n = ::pread(fd, region.data() + (done - off), end - done, static_cast<off_t>(done));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) return errno_error("reading memory file '{}'", path);
          done += static_cast<uint64_t>(n);
        }
        pos = end - off;
      }
      VMM_CHECK(mem.add_region(start, std::move(region), true));
    } else {
      // Private: guest writes never reach the file, and pages are read only
      // when the guest touches them.
      VMM_TRY(auto region, MmapRegion::map(nullptr, size, PROT_READ | PROT_WRITE,
                                           MAP_PRIVATE | MAP_NORESERVE, fd,
                                           static_cast<off_t>(off)));
      VMM_CHECK(mem.add_region(start, std::move(region)));
    }
    off += size;
  }
  return mem;
}

Result<uint64_t> write_memory_file(const GuestMemory& mem, int fd, const std::string& path) {
  constexpr uint64_t kPage = 4096;
  static const uint8_t kZero[kPage] = {};
  uint64_t file_off = 0, written = 0;
  for (size_t ri = 0; ri < mem.regions().size(); ++ri) {
    const auto& r = mem.regions()[ri];
    const uint8_t* base = r.host();
    const uint64_t size = r.size();
    // Pages never touched are holes without being read (reading would
    // fault each one in); the others are checked for zeroes.
    VMM_TRY(auto candidates, mem.maybe_nonzero_pages(ri));
    auto nonzero = [&](uint64_t off) {
      uint64_t page = off / kPage;
      if (!(candidates[page / 64] >> (page % 64) & 1)) return false;
      return std::memcmp(base + off, kZero, std::min(kPage, size - off)) != 0;
    };
    uint64_t off = 0;
    while (off < size) {
      // A run of non-zero pages is written with one pwrite.
      if (!nonzero(off)) {
        off += kPage;
        continue;
      }
      uint64_t start = off;
      while (off < size && nonzero(off)) off += kPage;
      off = std::min(off, size);
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
