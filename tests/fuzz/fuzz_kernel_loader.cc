// libFuzzer target: boot::load_kernel on untrusted bytes (bzImage or ELF
// vmlinux), then, when the kernel loads, the rest of the x86 boot path with
// plausible arguments: load_initrd, write_cmdline, write_zero_page and
// write_pvh_start_info. Every input is loaded into two guest memories created
// once: a plain 64 MiB guest and a split one (two contiguous regions plus one
// above the MMIO gap) so multi-region paths are exercised too.
//
// Invariants checked (abort() on violation, which libFuzzer reports as a crash):
// the KernelInfo is self-consistent and inside guest memory, the loaded bytes
// are in guest memory where the format says, the initrd placement honours its
// documented constraints, and the zero page / PVH start info read back as
// written with no file-controlled pointer (setup_data) passed on.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_check.h"
#include "boot/x86_64/boot_params.h"
#include "boot/x86_64/e820.h"
#include "boot/x86_64/kernel_loader.h"
#include "boot/x86_64/layout.h"
#include "boot/x86_64/zero_page.h"
#include "vmm/memory/guest_memory.h"

namespace {

using namespace vmm;
using namespace vmm::boot;

constexpr uint64_t kMiB = 1ull << 20;

struct Guest {
  GuestMemory mem;
  std::vector<E820Entry> e820;
};

Guest make_guest(const std::vector<std::pair<Gpa, uint64_t>>& ranges,
                 std::vector<E820Entry> e820) {
  auto mem = GuestMemory::create_anonymous(ranges);
  if (!mem.ok()) {
    std::fprintf(stderr, "cannot create guest memory: %s\n", mem.error().to_string().c_str());
    std::abort();
  }
  return Guest{std::move(mem).value(), std::move(e820)};
}

std::vector<Guest>& guests() {
  static std::vector<Guest>* g = [] {
    auto* v = new std::vector<Guest>;
    // The brief's guest: 64 MiB at 0, E820 as the VMM builds it.
    v->push_back(make_guest(guest_ram_ranges(64 * kMiB), build_e820(64 * kMiB)));
    // Split guest: [0, 32M) + [32M, 48M) (contiguous, separate mappings) and
    // 16 MiB at 4 GiB; the E820 just lists the RAM.
    v->push_back(make_guest({{0, 32 * kMiB}, {32 * kMiB, 16 * kMiB}, {layout::kMmioGapEnd, 16 * kMiB}},
                            {{0, layout::kEbdaStart, kE820Ram},
                             {layout::kEbdaStart, layout::kHimemStart - layout::kEbdaStart,
                              kE820Reserved},
                             {layout::kHimemStart, 48 * kMiB - layout::kHimemStart, kE820Ram},
                             {layout::kMmioGapEnd, 16 * kMiB, kE820Ram}}));
    return v;
  }();
  return *g;
}

// A zero-filled buffer larger than any guest: an initrd that can never fit.
std::span<const uint8_t> huge_initrd() {
  static const std::vector<uint8_t>* buf = new std::vector<uint8_t>(65 * kMiB, 0);
  return *buf;
}

bool mem_equals(const GuestMemory& mem, Gpa gpa, std::span<const uint8_t> want) {
  std::vector<uint8_t> got(want.size());
  if (!mem.read(gpa, got).ok()) return false;
  return std::memcmp(got.data(), want.data(), want.size()) == 0;
}

void check_kernel_info(const Guest& g, const KernelInfo& k, std::span<const uint8_t> image) {
  FUZZ_CHECK(k.load_start < k.load_end);
  FUZZ_CHECK(k.load_start >= layout::kHimemStart);
  FUZZ_CHECK(k.entry >= k.load_start && k.entry < k.load_end);
  if (k.kind == KernelInfo::Kind::BzImage) {
    FUZZ_CHECK(k.setup_header.has_value());
    FUZZ_CHECK(!k.has_pvh);
    FUZZ_CHECK(g.mem.contains(k.load_start, k.load_end - k.load_start));
    // The protected-mode payload is the file after the setup sectors.
    uint64_t sects = k.setup_header->setup_sects == 0 ? 4 : k.setup_header->setup_sects;
    uint64_t off = (sects + 1) * 512;
    FUZZ_CHECK(off < image.size());
    FUZZ_CHECK(k.load_end - k.load_start >= image.size() - off);
    FUZZ_CHECK(mem_equals(g.mem, k.load_start, image.subspan(off)));
    // Alignment honoured for relocatable kernels.
    if (k.setup_header->relocatable_kernel)
      FUZZ_CHECK(k.load_start % k.setup_header->kernel_alignment == 0);
  } else {
    FUZZ_CHECK(!k.setup_header.has_value());
    if (k.has_pvh) FUZZ_CHECK(k.pvh_entry >= k.load_start && k.pvh_entry < k.load_end);
  }
  uint64_t cl = max_cmdline_len(k);
  FUZZ_CHECK(cl <= layout::kCmdlineMaxSize - 1);
  FUZZ_CHECK(initrd_addr_max(k) <= 0xffffffffull);
}

void check_initrd(const Guest& g, const KernelInfo& k, std::span<const uint8_t> initrd,
                  const InitrdPlacement& p) {
  FUZZ_CHECK(p.size == initrd.size());
  FUZZ_CHECK(p.addr % 4096 == 0);
  FUZZ_CHECK(p.addr >= layout::kHimemStart);
  FUZZ_CHECK(p.addr >= k.load_end);  // above (hence not overlapping) the kernel
  uint64_t limit = std::min<uint64_t>(initrd_addr_max(k), layout::kMmioGapStart - 1) + 1;
  FUZZ_CHECK(p.addr + p.size <= limit);
  FUZZ_CHECK(g.mem.span(p.addr, p.size).ok());  // inside one region
  FUZZ_CHECK(mem_equals(g.mem, p.addr, initrd));
}

void check_zero_page(const Guest& g, const KernelInfo& k, uint64_t cmdline_size,
                     const std::optional<InitrdPlacement>& initrd) {
  auto bp = g.mem.read_obj<BootParams>(layout::kZeroPageAddr);
  FUZZ_CHECK(bp.ok());
  const SetupHeader& h = bp->hdr;
  FUZZ_CHECK(h.setup_data == 0);
  FUZZ_CHECK(h.hardware_subarch == 0);
  FUZZ_CHECK(h.type_of_loader == kTypeOfLoaderUndefined);
  FUZZ_CHECK(h.loadflags & kLoadedHigh);
  FUZZ_CHECK(h.cmd_line_ptr == static_cast<uint32_t>(layout::kCmdlineAddr));
  FUZZ_CHECK(bp->ext_cmd_line_ptr == 0);
  FUZZ_CHECK(h.boot_flag == kBootFlagMagic && h.header == kHdrSMagic);
  if (!k.setup_header) FUZZ_CHECK(h.cmdline_size == cmdline_size);
  if (initrd) {
    FUZZ_CHECK((uint64_t{bp->ext_ramdisk_image} << 32 | h.ramdisk_image) == initrd->addr);
    FUZZ_CHECK((uint64_t{bp->ext_ramdisk_size} << 32 | h.ramdisk_size) == initrd->size);
  } else {
    FUZZ_CHECK(h.ramdisk_image == 0 && h.ramdisk_size == 0);
  }
  FUZZ_CHECK(bp->e820_entries == g.e820.size());
  for (size_t i = 0; i < g.e820.size(); ++i) {
    FUZZ_CHECK(bp->e820_table[i].addr == g.e820[i].addr);
    FUZZ_CHECK(bp->e820_table[i].size == g.e820[i].size);
    FUZZ_CHECK(bp->e820_table[i].type == g.e820[i].type);
  }
}

void check_pvh(const Guest& g, const std::optional<InitrdPlacement>& initrd) {
  auto si = g.mem.read_obj<HvmStartInfo>(layout::kPvhStartInfoAddr);
  FUZZ_CHECK(si.ok());
  FUZZ_CHECK(si->magic == kPvhStartMagic);
  FUZZ_CHECK(si->cmdline_paddr == layout::kCmdlineAddr);
  FUZZ_CHECK(si->memmap_entries == g.e820.size());
  FUZZ_CHECK(si->memmap_paddr + si->memmap_entries * sizeof(HvmMemmapEntry) <=
             layout::kZeroPageAddr);
  FUZZ_CHECK(si->nr_modules == (initrd ? 1u : 0u));
  if (initrd) {
    auto mod = g.mem.read_obj<HvmModlistEntry>(si->modlist_paddr);
    FUZZ_CHECK(mod.ok());
    FUZZ_CHECK(mod->paddr == initrd->addr && mod->size == initrd->size);
  }
}

void run_one(const Guest& g, std::span<const uint8_t> image) {
  auto k = load_kernel(g.mem, image);
  if (!k.ok()) {
    FUZZ_CHECK(!k.error().message.empty());
    return;
  }
  check_kernel_info(g, *k, image);

  // The image itself doubles as an initrd (any non-empty bytes will do).
  std::optional<InitrdPlacement> initrd;
  auto p = load_initrd(g.mem, image, k->load_end, initrd_addr_max(*k));
  if (p.ok()) {
    check_initrd(g, *k, image, *p);
    initrd = *p;
  }
  // An initrd larger than the guest never fits.
  FUZZ_CHECK(!load_initrd(g.mem, huge_initrd(), k->load_end, initrd_addr_max(*k)).ok());

  // Command line: at the limit is accepted, one byte over is refused.
  uint64_t max_len = max_cmdline_len(*k);
  std::string cmdline(max_len, 'c');
  FUZZ_CHECK(write_cmdline(g.mem, cmdline, max_len).ok());
  FUZZ_CHECK(!write_cmdline(g.mem, cmdline + "c", max_len).ok());
  std::string short_cmdline = "console=ttyS0 reboot=k";
  if (short_cmdline.size() > max_len) short_cmdline.resize(max_len);
  FUZZ_CHECK(write_cmdline(g.mem, short_cmdline, max_len).ok());

  uint64_t cmdline_size = short_cmdline.size() + 1;
  FUZZ_CHECK(write_zero_page(g.mem, *k, cmdline_size, initrd, g.e820).ok());
  check_zero_page(g, *k, cmdline_size, initrd);
  FUZZ_CHECK(!write_zero_page(g.mem, *k, cmdline_size, initrd, {}).ok());

  if (k->has_pvh) {
    FUZZ_CHECK(write_pvh_start_info(g.mem, layout::kCmdlineAddr, initrd, g.e820).ok());
    check_pvh(g, initrd);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Kernels are large, but nothing interesting needs more than a few pages.
  if (size > (1u << 20)) return -1;
  std::span<const uint8_t> image(data, size);
  for (const Guest& g : guests()) run_one(g, image);
  return 0;
}
