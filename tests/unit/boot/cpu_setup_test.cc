#include "boot/x86_64/cpu_setup.h"

#include <gtest/gtest.h>

#include "boot/x86_64/layout.h"
#include "test_images.h"

namespace vmm::boot {
namespace {

using namespace vmm::boot::testing;

uint64_t read64(const GuestMemory& mem, uint64_t gpa) {
  auto v = mem.read_obj<uint64_t>(gpa);
  EXPECT_TRUE(v.ok());
  return v.ok() ? *v : 0;
}

TEST(PageTables, IdentityMapsFirst4GiB) {
  auto mem = make_guest(64ull << 20);
  ASSERT_TRUE(write_identity_page_tables(mem).ok());
  EXPECT_EQ(read64(mem, layout::kPml4Addr), layout::kPdptAddr | 0x3);
  EXPECT_EQ(read64(mem, layout::kPml4Addr + 8), 0u);
  for (uint64_t i = 0; i < 4; ++i)
    EXPECT_EQ(read64(mem, layout::kPdptAddr + i * 8), (layout::kPdAddr + i * 0x1000) | 0x3);
  EXPECT_EQ(read64(mem, layout::kPdptAddr + 4 * 8), 0u);
  EXPECT_EQ(read64(mem, layout::kPdAddr), 0x83u);
  EXPECT_EQ(read64(mem, layout::kPdAddr + 8), 0x200083u);
  // Last 2 MiB page below 4 GiB.
  EXPECT_EQ(read64(mem, layout::kPdAddr + 2047 * 8), 0xffe00000u | 0x83u);

  // Walk a few addresses through the tables.
  for (uint64_t va : {0x0ull, 0x1234567ull, 0xbfffffffull, 0xfee00000ull, 0xffffffffull}) {
    uint64_t pml4e = read64(mem, layout::kPml4Addr + ((va >> 39) & 511) * 8);
    ASSERT_TRUE(pml4e & 1);
    uint64_t pdpte = read64(mem, (pml4e & ~0xfffull) + ((va >> 30) & 511) * 8);
    ASSERT_TRUE(pdpte & 1);
    uint64_t pde = read64(mem, (pdpte & ~0xfffull) + ((va >> 21) & 511) * 8);
    ASSERT_TRUE(pde & 0x80);
    EXPECT_EQ((pde & ~0x1fffffull & ((1ull << 52) - 1)) | (va & 0x1fffff), va);
  }
}

TEST(PageTables, FailsWithoutLowMemory) {
  auto mem = GuestMemory::create_anonymous({{0x100000, 0x100000}});
  ASSERT_TRUE(mem.ok());
  EXPECT_FALSE(write_identity_page_tables(*mem).ok());
  EXPECT_FALSE(write_boot_gdt(*mem).ok());
}

TEST(Gdt, DescriptorEncodings) {
  auto mem = make_guest(64ull << 20);
  ASSERT_TRUE(write_boot_gdt(mem).ok());
  EXPECT_EQ(read64(mem, layout::kGdtAddr), 0u);
  EXPECT_EQ(read64(mem, layout::kGdtAddr + 8), 0u);
  EXPECT_EQ(read64(mem, layout::kGdtAddr + 0x10), 0x00af9b000000ffffull);
  EXPECT_EQ(read64(mem, layout::kGdtAddr + 0x18), 0x00cf93000000ffffull);
  EXPECT_EQ(read64(mem, layout::kIdtAddr), 0u);
  EXPECT_EQ(encode_gdt_entry(0x0089, 0x12345678, 0x67), 0x1200893456780067ull);
}

// The hidden segment state must agree with the descriptor in the GDT.
void expect_matches_descriptor(const Segment& s, uint64_t desc) {
  EXPECT_EQ(s.base, ((desc >> 16) & 0xffffff) | ((desc >> 32) & 0xff000000));
  uint32_t raw_limit = static_cast<uint32_t>((desc & 0xffff) | ((desc >> 32) & 0xf0000));
  uint8_t g = (desc >> 55) & 1;
  EXPECT_EQ(s.limit, g ? (raw_limit << 12) | 0xfff : raw_limit);
  EXPECT_EQ(s.type, (desc >> 40) & 0xf);
  EXPECT_EQ(s.s, (desc >> 44) & 1);
  EXPECT_EQ(s.dpl, (desc >> 45) & 3);
  EXPECT_EQ(s.present, (desc >> 47) & 1);
  EXPECT_EQ(s.avl, (desc >> 52) & 1);
  EXPECT_EQ(s.l, (desc >> 53) & 1);
  EXPECT_EQ(s.db, (desc >> 54) & 1);
  EXPECT_EQ(s.g, g);
}

TEST(CpuState, LongModeEntry) {
  auto st = long_mode_entry_state(0x1000200, layout::kZeroPageAddr);
  EXPECT_EQ(st.rip, 0x1000200u);
  EXPECT_EQ(st.rsi, layout::kZeroPageAddr);
  EXPECT_EQ(st.rsp, layout::kBootStackTop);
  EXPECT_EQ(st.rflags, 2u);
  EXPECT_EQ(st.cr0, 0x80000011u);  // PG | ET | PE
  EXPECT_EQ(st.cr3, layout::kPml4Addr);
  EXPECT_EQ(st.cr4, 0x20u);        // PAE
  EXPECT_EQ(st.efer, 0x500u);      // LME | LMA
  EXPECT_EQ(st.cs.selector, 0x10);
  EXPECT_EQ(st.cs.l, 1);
  EXPECT_EQ(st.cs.db, 0);
  expect_matches_descriptor(st.cs, kGdtCode64);
  for (const Segment* s : {&st.ds, &st.es, &st.fs, &st.gs, &st.ss}) {
    EXPECT_EQ(s->selector, 0x18);
    expect_matches_descriptor(*s, kGdtData);
  }
  EXPECT_EQ(st.tr.type, 11);
  EXPECT_EQ(st.tr.present, 1);
  EXPECT_EQ(st.tr.s, 0);
  EXPECT_EQ(st.tr.base, 0u);
  EXPECT_EQ(st.tr.limit, 0x67u);
  EXPECT_EQ(st.ldt.type, 2);
  EXPECT_EQ(st.ldt.present, 1);
  EXPECT_EQ(st.ldt.s, 0);
  EXPECT_EQ(st.gdt_base, layout::kGdtAddr);
  EXPECT_EQ(st.gdt_limit, 31);
  EXPECT_EQ(st.idt_base, layout::kIdtAddr);
  EXPECT_EQ(st.idt_limit, 7);
}

TEST(CpuState, PvhEntry) {
  auto st = pvh_entry_state(0x1000100, layout::kPvhStartInfoAddr);
  EXPECT_EQ(st.rip, 0x1000100u);
  EXPECT_EQ(st.rbx, layout::kPvhStartInfoAddr);
  EXPECT_EQ(st.rflags, 2u);
  EXPECT_EQ(st.cr0, 0x11u);  // PE | ET, paging off
  EXPECT_EQ(st.cr4, 0u);
  EXPECT_EQ(st.efer, 0u);
  EXPECT_EQ(st.cs.type, 0xb);
  EXPECT_EQ(st.cs.db, 1);
  EXPECT_EQ(st.cs.l, 0);
  EXPECT_EQ(st.cs.limit, 0xffffffffu);
  EXPECT_EQ(st.cs.base, 0u);
  EXPECT_EQ(st.cs.g, 1);
  for (const Segment* s : {&st.ds, &st.es, &st.fs, &st.gs, &st.ss}) {
    EXPECT_EQ(s->type, 3);
    EXPECT_EQ(s->db, 1);
    EXPECT_EQ(s->limit, 0xffffffffu);
    EXPECT_EQ(s->present, 1);
  }
  EXPECT_EQ(st.tr.type, 11);
  EXPECT_EQ(st.tr.limit, 0x67u);
}

}  // namespace
}  // namespace vmm::boot
