#include "vmm/kvm/kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace vmm {

namespace {

// <linux/kvm.h> declares its variable-length structs with __DECLARE_FLEX_ARRAY,
// which under C++ (linux-libc-dev 6.1) adds a byte: sizeof(kvm_cpuid2) is 12
// instead of 8 and kvm_msrs' entries move to offset 16. The ioctl numbers that
// encode those sizes, and the array offsets, are then wrong (KVM answers
// EINVAL). We use the C layout: an 8- or 4-byte header, then the array.
struct Cpuid2Header {
  uint32_t nent;
  uint32_t padding;
};
struct MsrsHeader {
  uint32_t nmsrs;
  uint32_t pad;
};
struct MsrListHeader {
  uint32_t nmsrs;
};
// kvm_xsave is 4096 bytes of region[] then the flexible extra[] (4100 in C++).
struct XsaveHeader {
  uint32_t region[1024];
};
static_assert(sizeof(Cpuid2Header) == 8 && sizeof(MsrsHeader) == 8 && sizeof(MsrListHeader) == 4);
static_assert(sizeof(XsaveHeader) == 4096);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16);
constexpr unsigned long kIoctlGetSupportedCpuid = _IOWR(KVMIO, 0x05, Cpuid2Header);
constexpr unsigned long kIoctlSetCpuid2 = _IOW(KVMIO, 0x90, Cpuid2Header);
constexpr unsigned long kIoctlGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
constexpr unsigned long kIoctlSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
constexpr unsigned long kIoctlGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
constexpr unsigned long kIoctlGetXsave = _IOR(KVMIO, 0xa4, XsaveHeader);
constexpr unsigned long kIoctlSetXsave = _IOW(KVMIO, 0xa5, XsaveHeader);
constexpr unsigned long kIoctlGetXsave2 = _IOR(KVMIO, 0xcf, XsaveHeader);
// The fixed-size state structs have the same layout in C and C++; their
// sizes (as a C compiler sees them) are part of the ioctl numbers.
static_assert(sizeof(kvm_irqchip) == 520 && sizeof(kvm_pit_state2) == 112 &&
              sizeof(kvm_clock_data) == 48 && sizeof(kvm_xcrs) == 392 &&
              sizeof(kvm_debugregs) == 128 && sizeof(kvm_lapic_state) == 1024 &&
              sizeof(kvm_vcpu_events) == 64 && sizeof(kvm_mp_state) == 4);
// KVM refuses KVM_GET/SET_MSRS with 256 or more entries (MAX_IO_MSRS).
constexpr size_t kMsrBatch = 128;

// One KVM_GET_MSRS or KVM_SET_MSRS call (at most kMsrBatch entries): returns
// how many leading entries KVM processed, or -1 with errno.
int msrs_ioctl(int fd, unsigned long req, std::span<kvm_msr_entry> entries) {
  std::vector<uint8_t> buf(sizeof(MsrsHeader) + entries.size_bytes());
  reinterpret_cast<MsrsHeader*>(buf.data())->nmsrs = static_cast<uint32_t>(entries.size());
  if (!entries.empty()) std::memcpy(buf.data() + sizeof(MsrsHeader), entries.data(), entries.size_bytes());
  int r = ::ioctl(fd, req, buf.data());
  if (r > 0) {
    size_t n = std::min(static_cast<size_t>(r), entries.size());
    std::memcpy(entries.data(), buf.data() + sizeof(MsrsHeader), n * sizeof(kvm_msr_entry));
  }
  return r;
}

// KVM ioctls whose argument is a struct: one helper for the errno message.
template <typename T>
Result<void> ioctl_set(int fd, unsigned long req, const T& v, const char* what) {
  if (::ioctl(fd, req, &v) < 0) return errno_error("{}", what);
  return ok();
}
template <typename T>
Result<T> ioctl_get(int fd, unsigned long req, const char* what) {
  T v{};
  if (::ioctl(fd, req, &v) < 0) return errno_error("{}", what);
  return v;
}

}  // namespace

kvm_cpuid_entry2* CpuidTable::find(uint32_t function, uint32_t index) {
  for (auto& e : entries_) {
    if (e.function != function) continue;
    if ((e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) && e.index != index) continue;
    return &e;
  }
  return nullptr;
}

Result<KvmSystem> KvmSystem::open(const char* path) {
  int fd = ::open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno_error("cannot open {}", path);
  KvmSystem k;
  k.fd_.reset(fd);
  int v = k.api_version();
  if (v != KVM_API_VERSION)
    return make_error("{}: KVM API version {} (this VMM needs {})", path, v, KVM_API_VERSION);
  return k;
}

int KvmSystem::api_version() const { return ::ioctl(fd_.get(), KVM_GET_API_VERSION, 0); }

int KvmSystem::check_extension(long cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Result<int> KvmSystem::vcpu_mmap_size() const {
  int r = ::ioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (r <= 0) return errno_error("KVM_GET_VCPU_MMAP_SIZE");
  return r;
}

Result<CpuidTable> KvmSystem::supported_cpuid() const {
  // 256 is KVM_MAX_CPUID_ENTRIES on current kernels; some hosts answer EINVAL
  // (not E2BIG) to smaller buffers, so start there.
  for (size_t n = 256; n <= 4096; n *= 4) {
    std::vector<uint8_t> buf(sizeof(Cpuid2Header) + n * sizeof(kvm_cpuid_entry2));
    auto* c = reinterpret_cast<Cpuid2Header*>(buf.data());
    c->nent = static_cast<uint32_t>(n);
    if (::ioctl(fd_.get(), kIoctlGetSupportedCpuid, c) == 0) {
      std::vector<kvm_cpuid_entry2> entries(std::min<size_t>(c->nent, n));
      std::memcpy(entries.data(), buf.data() + sizeof(Cpuid2Header),
                  entries.size() * sizeof(kvm_cpuid_entry2));
      return CpuidTable(std::move(entries));
    }
    if (errno != E2BIG) return errno_error("KVM_GET_SUPPORTED_CPUID");
  }
  return make_error("KVM_GET_SUPPORTED_CPUID: table too large");
}

Result<std::vector<uint32_t>> KvmSystem::msr_index_list() const {
  MsrListHeader probe{0};
  if (::ioctl(fd_.get(), kIoctlGetMsrIndexList, &probe) < 0 && errno != E2BIG)
    return errno_error("KVM_GET_MSR_INDEX_LIST");
  uint32_t n = probe.nmsrs;
  std::vector<uint8_t> buf(sizeof(MsrListHeader) + n * sizeof(uint32_t));
  auto* l = reinterpret_cast<MsrListHeader*>(buf.data());
  l->nmsrs = n;
  if (::ioctl(fd_.get(), kIoctlGetMsrIndexList, l) < 0) return errno_error("KVM_GET_MSR_INDEX_LIST");
  std::vector<uint32_t> out(std::min(l->nmsrs, n));
  std::memcpy(out.data(), buf.data() + sizeof(MsrListHeader), out.size() * sizeof(uint32_t));
  return out;
}

Result<VmFd> KvmSystem::create_vm() const {
  VMM_TRY(int mmap_size, vcpu_mmap_size());
  int fd = ::ioctl(fd_.get(), KVM_CREATE_VM, 0);
  if (fd < 0) return errno_error("KVM_CREATE_VM");
  return VmFd(UniqueFd(fd), mmap_size);
}

int VmFd::check_extension(long cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Result<void> VmFd::set_user_memory_region(uint32_t slot, uint64_t gpa, uint64_t size, void* host,
                                          uint32_t flags) {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.flags = flags;
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (::ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &r) < 0)
    return errno_error("KVM_SET_USER_MEMORY_REGION slot {} at {:#x} size {:#x}", slot, gpa, size);
  return ok();
}

Result<void> VmFd::set_tss_addr(uint64_t addr) {
  if (::ioctl(fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(addr)) < 0)
    return errno_error("KVM_SET_TSS_ADDR");
  return ok();
}

Result<void> VmFd::set_identity_map_addr(uint64_t addr) {
  return ioctl_set(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, addr, "KVM_SET_IDENTITY_MAP_ADDR");
}

Result<void> VmFd::create_irqchip() {
  if (::ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) < 0) return errno_error("KVM_CREATE_IRQCHIP");
  return ok();
}

Result<void> VmFd::create_pit2() {
  kvm_pit_config cfg{};
  cfg.flags = KVM_PIT_SPEAKER_DUMMY;
  return ioctl_set(fd_.get(), KVM_CREATE_PIT2, cfg, "KVM_CREATE_PIT2");
}

Result<void> VmFd::irq_line(uint32_t irq, bool level) {
  kvm_irq_level l{};
  l.irq = irq;
  l.level = level ? 1 : 0;
  return ioctl_set(fd_.get(), KVM_IRQ_LINE, l, "KVM_IRQ_LINE");
}

Result<void> VmFd::irqfd(int fd, uint32_t gsi) {
  kvm_irqfd r{};
  r.fd = static_cast<uint32_t>(fd);
  r.gsi = gsi;
  return ioctl_set(fd_.get(), KVM_IRQFD, r, "KVM_IRQFD");
}

Result<void> VmFd::ioeventfd_mmio(uint64_t addr, uint32_t len, int fd, uint64_t datamatch) {
  kvm_ioeventfd r{};
  r.addr = addr;
  r.len = len;
  r.fd = fd;
  r.datamatch = datamatch;
  r.flags = KVM_IOEVENTFD_FLAG_DATAMATCH;
  return ioctl_set(fd_.get(), KVM_IOEVENTFD, r, "KVM_IOEVENTFD");
}

Result<VcpuFd> VmFd::create_vcpu(int id) {
  int fd = ::ioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) return errno_error("KVM_CREATE_VCPU {}", id);
  UniqueFd owned(fd);
  VMM_TRY(auto run, MmapRegion::map(nullptr, static_cast<size_t>(vcpu_mmap_size_),
                                    PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  return VcpuFd(std::move(owned), std::move(run), xsave_size());
}

Result<kvm_irqchip> VmFd::get_irqchip(uint32_t chip_id) const {
  kvm_irqchip c{};
  c.chip_id = chip_id;
  if (::ioctl(fd_.get(), KVM_GET_IRQCHIP, &c) < 0) return errno_error("KVM_GET_IRQCHIP chip {}", chip_id);
  return c;
}
Result<void> VmFd::set_irqchip(const kvm_irqchip& chip) {
  if (::ioctl(fd_.get(), KVM_SET_IRQCHIP, &chip) < 0)
    return errno_error("KVM_SET_IRQCHIP chip {}", chip.chip_id);
  return ok();
}
Result<kvm_pit_state2> VmFd::get_pit2() const { return ioctl_get<kvm_pit_state2>(fd_.get(), KVM_GET_PIT2, "KVM_GET_PIT2"); }
Result<void> VmFd::set_pit2(const kvm_pit_state2& pit) { return ioctl_set(fd_.get(), KVM_SET_PIT2, pit, "KVM_SET_PIT2"); }
Result<kvm_clock_data> VmFd::get_clock() const { return ioctl_get<kvm_clock_data>(fd_.get(), KVM_GET_CLOCK, "KVM_GET_CLOCK"); }
Result<void> VmFd::set_clock(const kvm_clock_data& clock) { return ioctl_set(fd_.get(), KVM_SET_CLOCK, clock, "KVM_SET_CLOCK"); }

size_t VmFd::xsave_size() const {
  int r = check_extension(KVM_CAP_XSAVE2);
  return r > static_cast<int>(sizeof(XsaveHeader)) ? static_cast<size_t>(r) : sizeof(XsaveHeader);
}

Result<bool> VmFd::enable_manual_dirty_log_protect() {
  int caps = check_extension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
  if (!(caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) return false;
  kvm_enable_cap cap{};
  cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
  cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
  if (::ioctl(fd_.get(), KVM_ENABLE_CAP, &cap) < 0)
    return errno_error("KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)");
  return true;
}

Result<void> VmFd::get_dirty_log(uint32_t slot, std::span<uint64_t> bitmap) {
  kvm_dirty_log log{};
  log.slot = slot;
  log.dirty_bitmap = bitmap.data();
  if (::ioctl(fd_.get(), KVM_GET_DIRTY_LOG, &log) < 0)
    return errno_error("KVM_GET_DIRTY_LOG slot {}", slot);
  return ok();
}

Result<void> VmFd::clear_dirty_log(uint32_t slot, uint64_t first_page, uint32_t num_pages,
                                   std::span<uint64_t> bitmap) {
  if (first_page % 64 != 0 || bitmap.size() * 64 < num_pages)
    return make_error("KVM_CLEAR_DIRTY_LOG: bad range {}+{}", first_page, num_pages);
  kvm_clear_dirty_log c{};
  c.slot = slot;
  c.first_page = first_page;
  c.num_pages = num_pages;
  c.dirty_bitmap = bitmap.data();
  if (::ioctl(fd_.get(), KVM_CLEAR_DIRTY_LOG, &c) < 0)
    return errno_error("KVM_CLEAR_DIRTY_LOG slot {} pages {}+{}", slot, first_page, num_pages);
  return ok();
}

int VcpuFd::run_once() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) return errno;
  return 0;
}

Result<kvm_regs> VcpuFd::get_regs() const { return ioctl_get<kvm_regs>(fd_.get(), KVM_GET_REGS, "KVM_GET_REGS"); }
Result<void> VcpuFd::set_regs(const kvm_regs& r) { return ioctl_set(fd_.get(), KVM_SET_REGS, r, "KVM_SET_REGS"); }
Result<kvm_sregs> VcpuFd::get_sregs() const { return ioctl_get<kvm_sregs>(fd_.get(), KVM_GET_SREGS, "KVM_GET_SREGS"); }
Result<void> VcpuFd::set_sregs(const kvm_sregs& s) { return ioctl_set(fd_.get(), KVM_SET_SREGS, s, "KVM_SET_SREGS"); }
Result<kvm_fpu> VcpuFd::get_fpu() const { return ioctl_get<kvm_fpu>(fd_.get(), KVM_GET_FPU, "KVM_GET_FPU"); }
Result<void> VcpuFd::set_fpu(const kvm_fpu& f) { return ioctl_set(fd_.get(), KVM_SET_FPU, f, "KVM_SET_FPU"); }
Result<kvm_lapic_state> VcpuFd::get_lapic() const { return ioctl_get<kvm_lapic_state>(fd_.get(), KVM_GET_LAPIC, "KVM_GET_LAPIC"); }
Result<void> VcpuFd::set_lapic(const kvm_lapic_state& l) { return ioctl_set(fd_.get(), KVM_SET_LAPIC, l, "KVM_SET_LAPIC"); }
Result<kvm_vcpu_events> VcpuFd::get_vcpu_events() const { return ioctl_get<kvm_vcpu_events>(fd_.get(), KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS"); }
Result<void> VcpuFd::set_vcpu_events(const kvm_vcpu_events& e) { return ioctl_set(fd_.get(), KVM_SET_VCPU_EVENTS, e, "KVM_SET_VCPU_EVENTS"); }
Result<kvm_mp_state> VcpuFd::get_mp_state() const { return ioctl_get<kvm_mp_state>(fd_.get(), KVM_GET_MP_STATE, "KVM_GET_MP_STATE"); }
Result<void> VcpuFd::set_mp_state(const kvm_mp_state& s) { return ioctl_set(fd_.get(), KVM_SET_MP_STATE, s, "KVM_SET_MP_STATE"); }

Result<void> VcpuFd::set_cpuid2(const CpuidTable& table) {
  const auto& e = table.entries();
  std::vector<uint8_t> buf(sizeof(Cpuid2Header) + e.size() * sizeof(kvm_cpuid_entry2));
  reinterpret_cast<Cpuid2Header*>(buf.data())->nent = static_cast<uint32_t>(e.size());
  std::memcpy(buf.data() + sizeof(Cpuid2Header), e.data(), e.size() * sizeof(kvm_cpuid_entry2));
  if (::ioctl(fd_.get(), kIoctlSetCpuid2, buf.data()) < 0) return errno_error("KVM_SET_CPUID2");
  return ok();
}

Result<void> VcpuFd::set_msrs(std::span<const kvm_msr_entry> entries) {
  std::vector<kvm_msr_entry> copy(entries.begin(), entries.end());
  for (size_t pos = 0; pos < copy.size(); pos += kMsrBatch) {
    std::span<kvm_msr_entry> batch(copy.data() + pos, std::min(kMsrBatch, copy.size() - pos));
    int r = msrs_ioctl(fd_.get(), kIoctlSetMsrs, batch);
    if (r < 0) return errno_error("KVM_SET_MSRS");
    if (static_cast<size_t>(r) != batch.size())
      return make_error("KVM_SET_MSRS: MSR {:#x} refused", batch[static_cast<size_t>(r)].index);
  }
  return ok();
}

Result<std::vector<kvm_msr_entry>> VcpuFd::get_msrs(std::span<const uint32_t> indices) const {
  std::vector<uint32_t> refused;
  VMM_TRY(auto entries, get_msrs_available(indices, &refused));
  if (!refused.empty())
    return make_error("KVM_GET_MSRS: MSR {:#x} refused ({} of {} unreadable)", refused.front(),
                      refused.size(), indices.size());
  return entries;
}

Result<std::vector<kvm_msr_entry>> VcpuFd::get_msrs_available(
    std::span<const uint32_t> indices, std::vector<uint32_t>* refused) const {
  std::vector<kvm_msr_entry> out;
  out.reserve(indices.size());
  size_t pos = 0;
  while (pos < indices.size()) {
    size_t n = std::min(kMsrBatch, indices.size() - pos);
    std::vector<kvm_msr_entry> batch(n);
    for (size_t i = 0; i < n; ++i) batch[i].index = indices[pos + i];
    int r = msrs_ioctl(fd_.get(), kIoctlGetMsrs, batch);
    if (r < 0) return errno_error("KVM_GET_MSRS");
    auto got = std::min(static_cast<size_t>(r), n);
    out.insert(out.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(got));
    pos += got;
    if (got < n) {  // KVM stops at the first MSR it cannot read: skip it
      if (refused != nullptr) refused->push_back(indices[pos]);
      ++pos;
    }
  }
  return out;
}

Result<std::vector<uint8_t>> VcpuFd::get_xsave() const {
  // KVM_GET_XSAVE2 writes xsave_size_ bytes; KVM_GET_XSAVE 4096.
  bool v2 = xsave_size_ > sizeof(XsaveHeader);
  std::vector<uint8_t> buf(v2 ? xsave_size_ : sizeof(XsaveHeader));
  if (::ioctl(fd_.get(), v2 ? kIoctlGetXsave2 : kIoctlGetXsave, buf.data()) < 0)
    return errno_error("{}", v2 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE");
  return buf;
}

Result<void> VcpuFd::set_xsave(std::span<const uint8_t> area) {
  if (area.size() > xsave_size_)
    return make_error("KVM_SET_XSAVE: a {}-byte XSAVE area does not fit this host's {} bytes",
                      area.size(), xsave_size_);
  // KVM reads the vCPU's whole uabi size (<= xsave_size_) from the buffer.
  std::vector<uint8_t> buf(xsave_size_);
  if (!area.empty()) std::memcpy(buf.data(), area.data(), area.size());
  if (::ioctl(fd_.get(), kIoctlSetXsave, buf.data()) < 0) return errno_error("KVM_SET_XSAVE");
  return ok();
}

Result<kvm_xcrs> VcpuFd::get_xcrs() const { return ioctl_get<kvm_xcrs>(fd_.get(), KVM_GET_XCRS, "KVM_GET_XCRS"); }
Result<void> VcpuFd::set_xcrs(const kvm_xcrs& x) { return ioctl_set(fd_.get(), KVM_SET_XCRS, x, "KVM_SET_XCRS"); }
Result<kvm_debugregs> VcpuFd::get_debugregs() const { return ioctl_get<kvm_debugregs>(fd_.get(), KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS"); }
Result<void> VcpuFd::set_debugregs(const kvm_debugregs& d) { return ioctl_set(fd_.get(), KVM_SET_DEBUGREGS, d, "KVM_SET_DEBUGREGS"); }

Result<void> VcpuFd::set_tsc_khz(uint32_t khz) {
  if (::ioctl(fd_.get(), KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz)) < 0)
    return errno_error("KVM_SET_TSC_KHZ {}", khz);
  return ok();
}

Result<uint32_t> VcpuFd::get_tsc_khz() const {
  int r = ::ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
  if (r <= 0) return errno_error("KVM_GET_TSC_KHZ");
  return static_cast<uint32_t>(r);
}

Result<uint64_t> VcpuFd::translate(uint64_t gva) const {
  kvm_translation t{};
  t.linear_address = gva;
  if (::ioctl(fd_.get(), KVM_TRANSLATE, &t) < 0) return errno_error("KVM_TRANSLATE {:#x}", gva);
  if (!t.valid) return make_error("guest virtual address {:#x} is not mapped", gva);
  return static_cast<uint64_t>(t.physical_address);
}

}  // namespace vmm
