#include "boot/x86_64/zero_page.h"

#include <gtest/gtest.h>

#include "boot/x86_64/e820.h"
#include "boot/x86_64/layout.h"
#include "test_images.h"

namespace vmm::boot {
namespace {

using namespace vmm::boot::testing;

constexpr uint64_t k512M = 512ull << 20;

BootParams read_zero_page(const GuestMemory& mem) {
  auto bp = mem.read_obj<BootParams>(layout::kZeroPageAddr);
  EXPECT_TRUE(bp.ok());
  return bp.ok() ? *bp : BootParams{};
}

TEST(ZeroPage, BzImageFields) {
  auto mem = make_guest(k512M);
  auto kernel = load_kernel(mem, make_bzimage());
  ASSERT_TRUE(kernel.ok()) << kernel.error().to_string();
  std::vector<uint8_t> initrd(0x5000, 0x42);
  auto placed = load_initrd(mem, initrd, kernel->load_end, initrd_addr_max(*kernel));
  ASSERT_TRUE(placed.ok()) << placed.error().to_string();
  auto e820 = build_e820(k512M);
  ASSERT_TRUE(write_cmdline(mem, "console=ttyS0", max_cmdline_len(*kernel)).ok());
  ASSERT_TRUE(write_zero_page(mem, *kernel, 14, *placed, e820).ok());

  // BootParams and its members are packed: gtest takes its arguments by
  // reference, so multi-byte fields are copied to values first.
  BootParams bp = read_zero_page(mem);
  EXPECT_EQ(uint16_t{bp.hdr.boot_flag}, kBootFlagMagic);
  EXPECT_EQ(uint32_t{bp.hdr.header}, kHdrSMagic);
  EXPECT_EQ(uint16_t{bp.hdr.version}, 0x020f);
  EXPECT_EQ(bp.hdr.type_of_loader, 0xff);
  EXPECT_EQ(bp.hdr.loadflags & (kCanUseHeap | kLoadedHigh), kCanUseHeap | kLoadedHigh);
  EXPECT_EQ(uint16_t{bp.hdr.heap_end_ptr}, kHeapEndPtr);
  EXPECT_EQ(uint32_t{bp.hdr.cmd_line_ptr}, layout::kCmdlineAddr);
  EXPECT_EQ(uint32_t{bp.ext_cmd_line_ptr}, 0u);
  EXPECT_EQ(uint32_t{bp.hdr.cmdline_size}, 2047u);  // the kernel's own limit is kept
  EXPECT_EQ(uint64_t{bp.hdr.setup_data}, 0u);      // the file's value is not passed on
  EXPECT_EQ(uint32_t{bp.hdr.ramdisk_image}, placed->addr);
  EXPECT_EQ(uint32_t{bp.hdr.ramdisk_size}, 0x5000u);
  EXPECT_EQ(uint32_t{bp.ext_ramdisk_image}, 0u);
  EXPECT_EQ(uint32_t{bp.ext_ramdisk_size}, 0u);
  EXPECT_EQ(uint64_t{bp.acpi_rsdp_addr}, 0u);
  ASSERT_EQ(bp.e820_entries, 3);
  for (size_t i = 0; i < e820.size(); ++i) {
    EXPECT_EQ(uint64_t{bp.e820_table[i].addr}, uint64_t{e820[i].addr});
    EXPECT_EQ(uint64_t{bp.e820_table[i].size}, uint64_t{e820[i].size});
    EXPECT_EQ(uint32_t{bp.e820_table[i].type}, uint32_t{e820[i].type});
  }
  EXPECT_EQ(uint64_t{bp.e820_table[3].size}, 0u);

  // Raw offsets, independent of the struct definition.
  std::array<uint8_t, 4096> raw{};
  ASSERT_TRUE(mem.read(layout::kZeroPageAddr, raw).ok());
  EXPECT_EQ(raw[0x1e8], 3);       // e820_entries
  EXPECT_EQ(raw[0x210], 0xff);    // type_of_loader
  uint32_t cmd_line_ptr;
  std::memcpy(&cmd_line_ptr, &raw[0x228], 4);
  EXPECT_EQ(cmd_line_ptr, layout::kCmdlineAddr);
  uint64_t e820_1_addr;
  std::memcpy(&e820_1_addr, &raw[0x2d0 + 20], 8);
  EXPECT_EQ(e820_1_addr, layout::kEbdaStart);

  std::string cmd(14, '\0');
  ASSERT_TRUE(mem.read(layout::kCmdlineAddr,
                       std::span(reinterpret_cast<uint8_t*>(cmd.data()), cmd.size()))
                  .ok());
  EXPECT_EQ(cmd, std::string("console=ttyS0") + '\0');
}

TEST(ZeroPage, ElfKernelGetsSyntheticHeader) {
  auto mem = make_guest(k512M);
  auto kernel = load_kernel(mem, make_elf().build());
  ASSERT_TRUE(kernel.ok()) << kernel.error().to_string();
  ASSERT_TRUE(write_zero_page(mem, *kernel, 20, std::nullopt, build_e820(k512M)).ok());
  BootParams bp = read_zero_page(mem);
  EXPECT_EQ(uint16_t{bp.hdr.boot_flag}, 0xaa55);
  EXPECT_EQ(uint32_t{bp.hdr.header}, 0x53726448u);
  EXPECT_EQ(uint32_t{bp.hdr.kernel_alignment}, 0x1000000u);
  EXPECT_EQ(bp.hdr.type_of_loader, 0xff);
  EXPECT_EQ(uint32_t{bp.hdr.cmd_line_ptr}, layout::kCmdlineAddr);
  EXPECT_EQ(uint32_t{bp.hdr.cmdline_size}, 20u);
  EXPECT_EQ(uint32_t{bp.hdr.ramdisk_image}, 0u);
  EXPECT_EQ(uint32_t{bp.hdr.ramdisk_size}, 0u);
  EXPECT_EQ(bp.e820_entries, 3);
}

TEST(ZeroPage, RefusesTooManyOrNoE820Entries) {
  auto mem = make_guest(k512M);
  auto kernel = load_kernel(mem, make_elf().build());
  ASSERT_TRUE(kernel.ok());
  std::vector<E820Entry> big(129, E820Entry{0x100000, 0x1000, kE820Ram});
  EXPECT_FALSE(write_zero_page(mem, *kernel, 1, std::nullopt, big).ok());
  big.resize(128);
  EXPECT_TRUE(write_zero_page(mem, *kernel, 1, std::nullopt, big).ok());
  EXPECT_FALSE(write_zero_page(mem, *kernel, 1, std::nullopt, {}).ok());
}

TEST(ZeroPage, HighInitrdFieldsSplit) {
  auto mem = make_guest(k512M);
  auto kernel = load_kernel(mem, make_elf().build());
  ASSERT_TRUE(kernel.ok());
  InitrdPlacement fake{0x123456789000ull, 0x100000000ull + 0x2000};
  ASSERT_TRUE(write_zero_page(mem, *kernel, 1, fake, build_e820(k512M)).ok());
  BootParams bp = read_zero_page(mem);
  EXPECT_EQ(uint32_t{bp.hdr.ramdisk_image}, 0x56789000u);
  EXPECT_EQ(uint32_t{bp.ext_ramdisk_image}, 0x1234u);
  EXPECT_EQ(uint32_t{bp.hdr.ramdisk_size}, 0x2000u);
  EXPECT_EQ(uint32_t{bp.ext_ramdisk_size}, 1u);
}

// ------------------------------------------------------------------ initrd --

TEST(Initrd, PlacedHighBelowAddrMax) {
  auto mem = make_guest(k512M);
  std::vector<uint8_t> initrd(0x1800, 0x5a);  // not a page multiple
  // Kernel limit far above RAM: top of low RAM.
  auto p = load_initrd(mem, initrd, 0x2000000, 0xffffffff);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_EQ(p->addr, k512M - 0x2000);
  EXPECT_EQ(p->addr % 0x1000, 0u);
  EXPECT_EQ(p->size, 0x1800u);
  std::vector<uint8_t> got(0x1800);
  ASSERT_TRUE(mem.read(p->addr, got).ok());
  EXPECT_EQ(got, initrd);

  // initrd_addr_max below the end of RAM: the last byte is at or below it.
  p = load_initrd(mem, initrd, 0x2000000, 0x0fffffff);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->addr, 0x10000000u - 0x2000);
  EXPECT_LE(p->addr + p->size - 1, 0x0fffffffu);
  p = load_initrd(mem, initrd, 0x2000000, 0x0ffff7ff);  // unaligned limit
  ASSERT_TRUE(p.ok());
  EXPECT_LE(p->addr + p->size - 1, 0x0ffff7ffu);
  EXPECT_EQ(p->addr, 0x0fffe000u);
}

TEST(Initrd, StaysBelowMmioGapIn4GiBGuest) {
  auto mem = make_guest(4ull << 30);
  std::vector<uint8_t> initrd(0x3000, 1);
  auto p = load_initrd(mem, initrd, 0x2000000, 0xffffffff);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_EQ(p->addr, layout::kMmioGapStart - 0x3000);
}

TEST(Initrd, RefusesTooBigOrEmpty) {
  auto mem = make_guest(64ull << 20);
  std::vector<uint8_t> initrd((40ull << 20), 0);  // 40 MiB above a 32 MiB kernel end
  auto p = load_initrd(mem, initrd, 32ull << 20, 0xffffffff);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message.find("does not fit"), std::string::npos);
  // Fits in RAM but not under initrd_addr_max.
  std::vector<uint8_t> small(0x10000, 0);
  EXPECT_FALSE(load_initrd(mem, small, 32ull << 20, (32ull << 20) + 0x8000).ok());
  EXPECT_FALSE(load_initrd(mem, {}, 32ull << 20, 0xffffffff).ok());
  EXPECT_FALSE(load_initrd(mem, small, ~0ull - 10, 0xffffffff).ok());
  // Exactly fills the space between the kernel and the end of RAM.
  std::vector<uint8_t> exact(32ull << 20, 0);
  auto e = load_initrd(mem, exact, 32ull << 20, 0xffffffff);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->addr, 32ull << 20);
}

// ----------------------------------------------------------------- cmdline --

TEST(Cmdline, RefusesTooLong) {
  auto mem = make_guest(64ull << 20);
  std::string s(2047, 'a');
  EXPECT_TRUE(write_cmdline(mem, s, 2047).ok());
  s.push_back('b');
  auto r = write_cmdline(mem, s, 2047);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("longer"), std::string::npos);
  std::string huge(layout::kCmdlineMaxSize, 'x');
  EXPECT_FALSE(write_cmdline(mem, huge, ~0ull).ok());  // kCmdlineMaxSize cap
  huge.pop_back();
  EXPECT_TRUE(write_cmdline(mem, huge, ~0ull).ok());
  EXPECT_FALSE(write_cmdline(mem, std::string_view("a\0b", 3), 100).ok());
}

// --------------------------------------------------------------------- PVH --

TEST(Pvh, StartInfoLayout) {
  auto mem = make_guest(4ull << 30);
  auto e820 = build_e820(4ull << 30);
  InitrdPlacement initrd{0x8000000, 0x1234};
  ASSERT_TRUE(write_pvh_start_info(mem, layout::kCmdlineAddr, initrd, e820).ok());
  auto si = mem.read_obj<HvmStartInfo>(layout::kPvhStartInfoAddr);
  ASSERT_TRUE(si.ok());
  // HvmStartInfo and the entries after it are packed: copy fields to values.
  EXPECT_EQ(uint32_t{si->magic}, 0x336ec578u);
  EXPECT_EQ(uint32_t{si->version}, 1u);
  EXPECT_EQ(uint32_t{si->flags}, 0u);
  EXPECT_EQ(uint64_t{si->cmdline_paddr}, layout::kCmdlineAddr);
  EXPECT_EQ(uint64_t{si->rsdp_paddr}, 0u);
  ASSERT_EQ(uint32_t{si->nr_modules}, 1u);
  ASSERT_EQ(uint32_t{si->memmap_entries}, e820.size());
  EXPECT_GE(uint64_t{si->modlist_paddr}, layout::kPvhStartInfoAddr + sizeof(HvmStartInfo));
  EXPECT_LE(si->memmap_paddr + e820.size() * sizeof(HvmMemmapEntry), layout::kZeroPageAddr);
  auto mod = mem.read_obj<HvmModlistEntry>(si->modlist_paddr);
  ASSERT_TRUE(mod.ok());
  EXPECT_EQ(uint64_t{mod->paddr}, 0x8000000u);
  EXPECT_EQ(uint64_t{mod->size}, 0x1234u);
  for (size_t i = 0; i < e820.size(); ++i) {
    auto m = mem.read_obj<HvmMemmapEntry>(si->memmap_paddr + i * sizeof(HvmMemmapEntry));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(uint64_t{m->addr}, uint64_t{e820[i].addr});
    EXPECT_EQ(uint64_t{m->size}, uint64_t{e820[i].size});
    EXPECT_EQ(uint32_t{m->type}, uint32_t{e820[i].type});
    EXPECT_EQ(uint32_t{m->reserved}, 0u);
  }
}

TEST(Pvh, NoInitrdAndTooManyEntries) {
  auto mem = make_guest(64ull << 20);
  ASSERT_TRUE(write_pvh_start_info(mem, layout::kCmdlineAddr, std::nullopt,
                                   build_e820(64ull << 20)).ok());
  auto si = mem.read_obj<HvmStartInfo>(layout::kPvhStartInfoAddr);
  ASSERT_TRUE(si.ok());
  EXPECT_EQ(uint32_t{si->nr_modules}, 0u);
  EXPECT_EQ(uint64_t{si->modlist_paddr}, 0u);
  std::vector<E820Entry> big(200, E820Entry{0, 0x1000, kE820Ram});
  EXPECT_FALSE(write_pvh_start_info(mem, layout::kCmdlineAddr, std::nullopt, big).ok());
  EXPECT_FALSE(write_pvh_start_info(mem, layout::kCmdlineAddr, std::nullopt, {}).ok());
}

}  // namespace
}  // namespace vmm::boot
