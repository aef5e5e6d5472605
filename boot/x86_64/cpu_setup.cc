#include "boot/x86_64/cpu_setup.h"

#include <array>
#include <vector>

#include "boot/x86_64/layout.h"

namespace vmm::boot {

namespace {

constexpr uint64_t kPageSize = 0x1000;
constexpr uint64_t k2MiB = 2ull << 20;
constexpr uint64_t k1GiB = 1ull << 30;
constexpr uint64_t kNumPds = layout::kIdentityMapSize / k1GiB;
static_assert(layout::kIdentityMapSize % k1GiB == 0);
static_assert(kNumPds >= 1 && kNumPds <= 512);
static_assert(layout::kPdAddr + kNumPds * kPageSize <= 0xf000,
              "page directories must not run into the next fixed structure");
static_assert(layout::kGdtAddr + kBootGdtEntries * 8 <= layout::kIdtAddr,
              "boot GDT overlaps the IDT");

Segment flat_segment(uint16_t selector, uint8_t type, bool long_code) {
  Segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = long_code ? 0 : 1;  // D must be 0 when L is 1
  s.s = 1;
  s.l = long_code ? 1 : 0;
  s.g = 1;
  s.avl = 0;
  return s;
}

Segment system_segment(uint8_t type, uint32_t limit) {
  Segment s{};
  s.base = 0;
  s.limit = limit;
  s.selector = 0;
  s.type = type;
  s.present = 1;
  s.s = 0;
  return s;
}

BootCpuState common_state(uint64_t entry_rip) {
  BootCpuState st{};
  st.rip = entry_rip;
  st.rflags = kRflagsReserved1;
  st.tr = system_segment(kSegTypeTssBusy, 0x67);
  st.ldt = system_segment(kSegTypeLdt, 0xffff);
  st.gdt_base = layout::kGdtAddr;
  st.gdt_limit = kBootGdtLimit;
  st.idt_base = layout::kIdtAddr;
  st.idt_limit = kBootIdtLimit;
  return st;
}

}  // namespace

Result<void> write_identity_page_tables(const GuestMemory& mem) {
  std::vector<uint64_t> pml4(512, 0);
  pml4[0] = layout::kPdptAddr | kPtePresent | kPteWritable;

  std::vector<uint64_t> pdpt(512, 0);
  for (uint64_t i = 0; i < kNumPds; ++i)
    pdpt[i] = (layout::kPdAddr + i * kPageSize) | kPtePresent | kPteWritable;

  std::vector<uint64_t> pd(kNumPds * 512);
  for (uint64_t i = 0; i < pd.size(); ++i)
    pd[i] = (i * k2MiB) | kPtePresent | kPteWritable | kPtePageSize;

  auto bytes = [](const std::vector<uint64_t>& v) {
    return std::span(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(uint64_t));
  };
  auto wrap = [](Result<void> r, const char* what) -> Result<void> {
    if (!r.ok()) return make_error("writing boot {}: {}", what, r.error().to_string());
    return ok();
  };
  VMM_CHECK(wrap(mem.write(layout::kPml4Addr, bytes(pml4)), "PML4"));
  VMM_CHECK(wrap(mem.write(layout::kPdptAddr, bytes(pdpt)), "PDPT"));
  VMM_CHECK(wrap(mem.write(layout::kPdAddr, bytes(pd)), "page directories"));
  return ok();
}

Result<void> write_boot_gdt(const GuestMemory& mem) {
  const std::array<uint64_t, kBootGdtEntries> gdt = {0, 0, kGdtCode64, kGdtData};
  auto r = mem.write_obj(layout::kGdtAddr, gdt);
  if (!r.ok()) return make_error("writing boot GDT: {}", r.error().to_string());
  const uint64_t idt = 0;
  r = mem.write_obj(layout::kIdtAddr, idt);
  if (!r.ok()) return make_error("writing boot IDT: {}", r.error().to_string());
  return ok();
}

BootCpuState long_mode_entry_state(uint64_t entry_rip, uint64_t boot_params_gpa) {
  BootCpuState st = common_state(entry_rip);
  st.rsp = layout::kBootStackTop;
  st.rsi = boot_params_gpa;
  st.cr0 = kCr0Pe | kCr0Et | kCr0Pg;
  st.cr3 = layout::kPml4Addr;
  st.cr4 = kCr4Pae;
  st.efer = kEferLme | kEferLma;
  st.cs = flat_segment(kBootCodeSelector, kSegTypeCodeExecReadAccessed, /*long_code=*/true);
  st.ds = st.es = st.fs = st.gs = st.ss =
      flat_segment(kBootDataSelector, kSegTypeDataRwAccessed, false);
  return st;
}

BootCpuState pvh_entry_state(uint64_t entry_rip, uint64_t start_info_gpa) {
  BootCpuState st = common_state(entry_rip);
  st.rbx = start_info_gpa;
  st.cr0 = kCr0Pe | kCr0Et;
  st.cr3 = 0;
  st.cr4 = 0;
  st.efer = 0;
  // The hidden parts are what the PVH ABI requires; the selectors index our
  // boot GDT, which the kernel replaces before reloading any segment.
  st.cs = flat_segment(kBootCodeSelector, kSegTypeCodeExecReadAccessed, /*long_code=*/false);
  st.ds = st.es = st.fs = st.gs = st.ss =
      flat_segment(kBootDataSelector, kSegTypeDataRwAccessed, false);
  return st;
}

}  // namespace vmm::boot
