#include "boot/x86_64/zero_page.h"

#include <algorithm>

#include "boot/x86_64/layout.h"
#include "vmm/base/checked_math.h"

namespace vmm::boot {

namespace {

constexpr uint64_t kPageSize = 0x1000;

uint32_t lo32(uint64_t v) { return static_cast<uint32_t>(v); }
uint32_t hi32(uint64_t v) { return static_cast<uint32_t>(v >> 32); }

static_assert(layout::kPvhStartInfoAddr + kPvhMemmapOffset <= layout::kZeroPageAddr);
static_assert(layout::kCmdlineAddr + layout::kCmdlineMaxSize <= layout::kEbdaStart);

}  // namespace

Result<InitrdPlacement> load_initrd(const GuestMemory& mem, std::span<const uint8_t> initrd,
                                    uint64_t kernel_end, uint64_t initrd_addr_max) {
  if (initrd.empty()) return make_error("initrd is empty");
  uint64_t size = initrd.size();
  // Exclusive upper bound: the kernel's limit, kept below the 32-bit MMIO gap.
  uint64_t limit = std::min(initrd_addr_max, layout::kMmioGapStart - 1) + 1;
  auto lowest = checked_add(std::max(kernel_end, layout::kHimemStart), kPageSize - 1);
  if (!lowest) return make_error("kernel end {:#x} is not a valid address", kernel_end);
  uint64_t bottom_limit = align_down(*lowest, kPageSize);

  std::optional<uint64_t> best;
  for (const auto& r : mem.regions()) {
    if (r.start >= limit) continue;
    uint64_t top = std::min(r.end(), limit);
    uint64_t bottom = std::max(r.start, bottom_limit);
    if (top <= bottom || top - bottom < size) continue;
    uint64_t addr = align_down(top - size, kPageSize);
    if (addr < bottom) continue;
    if (!best || addr > *best) best = addr;
  }
  if (!best)
    return make_error(
        "initrd of {} bytes does not fit in guest RAM between the kernel end {:#x} and {:#x}",
        size, bottom_limit, limit);
  auto w = mem.write(*best, initrd);
  if (!w.ok()) return make_error("loading initrd: {}", w.error().to_string());
  return InitrdPlacement{*best, size};
}

Result<void> write_cmdline(const GuestMemory& mem, std::string_view cmdline, uint64_t max_len) {
  uint64_t limit = std::min<uint64_t>(max_len, layout::kCmdlineMaxSize - 1);
  if (cmdline.size() > limit)
    return make_error("kernel command line is {} bytes, longer than the limit of {}",
                      cmdline.size(), limit);
  if (cmdline.find('\0') != std::string_view::npos)
    return make_error("kernel command line contains a NUL byte");
  std::vector<uint8_t> buf(cmdline.begin(), cmdline.end());
  buf.push_back(0);
  auto w = mem.write(layout::kCmdlineAddr, buf);
  if (!w.ok()) return make_error("writing kernel command line: {}", w.error().to_string());
  return ok();
}

Result<void> write_zero_page(const GuestMemory& mem, const KernelInfo& kernel,
                             uint64_t cmdline_size, std::optional<InitrdPlacement> initrd,
                             const std::vector<E820Entry>& e820) {
  if (e820.empty()) return make_error("the E820 memory map is empty");
  if (e820.size() > kE820MaxEntries)
    return make_error("the E820 memory map has {} entries, the zero page holds {}", e820.size(),
                      kE820MaxEntries);

  BootParams bp{};
  SetupHeader& hdr = bp.hdr;
  if (kernel.setup_header) {
    hdr = *kernel.setup_header;
    // Fields the boot loader owns: never pass on values that came from the file
    // (setup_data in particular is a pointer the kernel would follow).
    hdr.setup_data = 0;
    hdr.hardware_subarch = 0;  // plain PC
    hdr.hardware_subarch_data = 0;
    hdr.ext_loader_ver = 0;
    hdr.ext_loader_type = 0;
  } else {
    hdr.boot_flag = kBootFlagMagic;
    hdr.header = kHdrSMagic;
    hdr.kernel_alignment = kElfKernelAlignment;
    hdr.cmdline_size = static_cast<uint32_t>(std::min<uint64_t>(cmdline_size, UINT32_MAX));
  }
  hdr.type_of_loader = kTypeOfLoaderUndefined;
  hdr.loadflags |= kCanUseHeap | kLoadedHigh;
  hdr.heap_end_ptr = kHeapEndPtr;
  hdr.cmd_line_ptr = lo32(layout::kCmdlineAddr);
  bp.ext_cmd_line_ptr = hi32(layout::kCmdlineAddr);
  hdr.ramdisk_image = 0;
  hdr.ramdisk_size = 0;
  if (initrd) {
    hdr.ramdisk_image = lo32(initrd->addr);
    bp.ext_ramdisk_image = hi32(initrd->addr);
    hdr.ramdisk_size = lo32(initrd->size);
    bp.ext_ramdisk_size = hi32(initrd->size);
  }
  bp.e820_entries = static_cast<uint8_t>(e820.size());
  std::copy(e820.begin(), e820.end(), bp.e820_table);

  auto w = mem.write_obj(layout::kZeroPageAddr, bp);
  if (!w.ok()) return make_error("writing the zero page: {}", w.error().to_string());
  return ok();
}

Result<void> write_pvh_start_info(const GuestMemory& mem, uint64_t cmdline_gpa,
                                  std::optional<InitrdPlacement> initrd,
                                  const std::vector<E820Entry>& e820) {
  if (e820.empty()) return make_error("the PVH memory map is empty");
  const uint64_t room = (layout::kZeroPageAddr - layout::kPvhStartInfoAddr - kPvhMemmapOffset) /
                        sizeof(HvmMemmapEntry);
  if (e820.size() > room)
    return make_error("the PVH memory map has {} entries, only {} fit before the zero page",
                      e820.size(), room);

  HvmStartInfo si{};
  si.magic = kPvhStartMagic;
  si.version = kPvhStartInfoVersion;
  si.cmdline_paddr = cmdline_gpa;
  si.memmap_paddr = layout::kPvhStartInfoAddr + kPvhMemmapOffset;
  si.memmap_entries = static_cast<uint32_t>(e820.size());

  std::vector<HvmMemmapEntry> memmap;
  memmap.reserve(e820.size());
  for (const auto& e : e820) memmap.push_back(HvmMemmapEntry{e.addr, e.size, e.type, 0});

  Result<void> w;
  if (initrd) {
    si.nr_modules = 1;
    si.modlist_paddr = layout::kPvhStartInfoAddr + kPvhModlistOffset;
    HvmModlistEntry mod{initrd->addr, initrd->size, 0, 0};
    w = mem.write_obj(si.modlist_paddr, mod);
  }
  if (w.ok()) w = mem.write_obj(layout::kPvhStartInfoAddr, si);
  if (w.ok())
    w = mem.write(si.memmap_paddr,
                  std::span(reinterpret_cast<const uint8_t*>(memmap.data()),
                            memmap.size() * sizeof(HvmMemmapEntry)));
  if (!w.ok()) return make_error("writing PVH start info: {}", w.error().to_string());
  return ok();
}

}  // namespace vmm::boot
