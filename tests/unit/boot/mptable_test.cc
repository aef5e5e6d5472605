#include "boot/x86_64/mptable.h"

#include <gtest/gtest.h>

#include "boot/x86_64/layout.h"
#include "test_images.h"

namespace vmm::boot {
namespace {

using namespace vmm::boot::testing;

uint8_t byte_sum(const std::vector<uint8_t>& v) {
  uint8_t s = 0;
  for (auto b : v) s = static_cast<uint8_t>(s + b);
  return s;
}

std::vector<uint8_t> read_bytes(const GuestMemory& mem, uint64_t gpa, uint64_t len) {
  std::vector<uint8_t> v(len);
  EXPECT_TRUE(mem.read(gpa, v).ok());
  return v;
}

void check_table(int num_cpus) {
  SCOPED_TRACE(num_cpus);
  auto mem = make_guest(64ull << 20);
  ASSERT_TRUE(write_mptable(mem, num_cpus).ok());

  auto mpf = mem.read_obj<MpFloatingPointer>(layout::kMpTableAddr);
  ASSERT_TRUE(mpf.ok());
  EXPECT_EQ(std::string(mpf->signature, 4), "_MP_");
  EXPECT_EQ(mpf->length, 1);
  EXPECT_EQ(mpf->spec_rev, 4);
  EXPECT_EQ(mpf->feature1, 0);
  EXPECT_EQ(byte_sum(read_bytes(mem, layout::kMpTableAddr, 16)), 0);

  auto hdr = mem.read_obj<MpConfigHeader>(mpf->physptr);
  ASSERT_TRUE(hdr.ok());
  EXPECT_EQ(std::string(hdr->signature, 4), "PCMP");
  EXPECT_EQ(hdr->spec_rev, 4);
  // The MP structures are packed: copy multi-byte fields to values before
  // gtest binds them to references.
  EXPECT_EQ(uint32_t{hdr->lapic_addr}, layout::kLapicAddr);
  const int expected_entries = num_cpus + 1 + 1 + 16 + 2;
  EXPECT_EQ(uint16_t{hdr->entry_count}, expected_entries);
  EXPECT_EQ(uint16_t{hdr->length}, 44 + 20 * num_cpus + 8 * (1 + 1 + 16 + 2));
  EXPECT_EQ(mptable_size(num_cpus), 16u + hdr->length);
  auto table = read_bytes(mem, mpf->physptr, hdr->length);
  EXPECT_EQ(byte_sum(table), 0);
  EXPECT_LE(mpf->physptr + hdr->length, layout::kHimemStart);

  // Walk the entries.
  size_t off = sizeof(MpConfigHeader);
  int cpus = 0, buses = 0, ioapics = 0, intsrcs = 0, lints = 0;
  for (int i = 0; i < expected_entries; ++i) {
    ASSERT_LT(off, table.size());
    switch (table[off]) {
      case kMpProcessor: {
        MpProcessorEntry e;
        std::memcpy(&e, &table[off], sizeof(e));
        EXPECT_EQ(e.apic_id, cpus);
        EXPECT_EQ(e.cpu_flags, cpus == 0 ? 3 : 1);
        ++cpus;
        off += sizeof(e);
        break;
      }
      case kMpBus: {
        MpBusEntry e;
        std::memcpy(&e, &table[off], sizeof(e));
        EXPECT_EQ(std::string(e.bus_type, 6), "ISA   ");
        ++buses;
        off += sizeof(e);
        break;
      }
      case kMpIoapic: {
        MpIoapicEntry e;
        std::memcpy(&e, &table[off], sizeof(e));
        EXPECT_EQ(e.apic_id, num_cpus);
        EXPECT_EQ(e.apic_version, 0x11);
        EXPECT_EQ(e.flags, 1);
        EXPECT_EQ(uint32_t{e.addr}, layout::kIoapicAddr);
        ++ioapics;
        off += sizeof(e);
        break;
      }
      case kMpIntsrc: {
        MpIntsrcEntry e;
        std::memcpy(&e, &table[off], sizeof(e));
        EXPECT_EQ(e.irq_type, kMpIrqInt);
        EXPECT_EQ(e.src_bus, 0);
        EXPECT_EQ(e.src_bus_irq, intsrcs);
        EXPECT_EQ(e.dst_ioapic, num_cpus);
        EXPECT_EQ(e.dst_pin, intsrcs);
        ++intsrcs;
        off += sizeof(e);
        break;
      }
      case kMpLintsrc: {
        MpLintsrcEntry e;
        std::memcpy(&e, &table[off], sizeof(e));
        EXPECT_EQ(e.irq_type, lints == 0 ? kMpIrqExtInt : kMpIrqNmi);
        EXPECT_EQ(e.dst_lint, lints);
        ++lints;
        off += sizeof(e);
        break;
      }
      default:
        FAIL() << "unknown entry type " << int(table[off]) << " at " << off;
    }
  }
  EXPECT_EQ(off, table.size());
  EXPECT_EQ(cpus, num_cpus);
  EXPECT_EQ(buses, 1);
  EXPECT_EQ(ioapics, 1);
  EXPECT_EQ(intsrcs, 16);
  EXPECT_EQ(lints, 2);
}

TEST(MpTable, OneCpu) { check_table(1); }
TEST(MpTable, TwoCpus) { check_table(2); }
TEST(MpTable, MaxCpus) { check_table(254); }

TEST(MpTable, RefusesBadCpuCounts) {
  auto mem = make_guest(64ull << 20);
  EXPECT_FALSE(write_mptable(mem, 0).ok());
  EXPECT_FALSE(write_mptable(mem, -1).ok());
  auto r = write_mptable(mem, 255);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("255"), std::string::npos);
}

}  // namespace
}  // namespace vmm::boot
