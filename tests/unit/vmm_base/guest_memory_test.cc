#include "vmm/memory/guest_memory.h"

#include <gtest/gtest.h>

#include <array>
#include <vector>

namespace vmm {
namespace {

TEST(GuestMemory, RefusesOverlapAndZeroSize) {
  EXPECT_FALSE(GuestMemory::create_anonymous({{0, 0}}).ok());
  EXPECT_FALSE(GuestMemory::create_anonymous({{0, 0x2000}, {0x1000, 0x1000}}).ok());
  EXPECT_TRUE(GuestMemory::create_anonymous({{0, 0x1000}, {0x1000, 0x1000}}).ok());
}

TEST(GuestMemory, RefusesWraparound) {
  auto mem = GuestMemory::create_anonymous({{~0ull - 0xfff, 0x2000}});
  EXPECT_FALSE(mem.ok());
}

TEST(GuestMemory, ChecksEveryAccess) {
  auto mem = GuestMemory::create_anonymous({{0, 0x1000}, {0x10000, 0x1000}});
  ASSERT_TRUE(mem.ok());
  std::array<uint8_t, 16> buf{};
  EXPECT_TRUE(mem->read(0xff0, buf).ok());
  EXPECT_FALSE(mem->read(0xff8, buf).ok());      // runs off the end of region 1
  EXPECT_FALSE(mem->read(0x5000, buf).ok());     // in the hole
  EXPECT_FALSE(mem->read(~0ull - 4, buf).ok());  // overflow
  EXPECT_FALSE(mem->span(0x10ff0, 0x20).ok());
  EXPECT_TRUE(mem->span(0x10ff0, 0x10).ok());
}

TEST(GuestMemory, CrossesContiguousRegions) {
  auto mem = GuestMemory::create_anonymous({{0, 0x1000}, {0x1000, 0x1000}});
  ASSERT_TRUE(mem.ok());
  std::array<uint8_t, 8> in{1, 2, 3, 4, 5, 6, 7, 8}, out{};
  ASSERT_TRUE(mem->write(0xffc, in).ok());
  ASSERT_TRUE(mem->read(0xffc, out).ok());
  EXPECT_EQ(in, out);
  EXPECT_FALSE(mem->span(0xffc, 8).ok());  // a span must be contiguous in the host
}

TEST(GuestMemory, Objects) {
  auto mem = GuestMemory::create_anonymous({{0, 0x1000}});
  ASSERT_TRUE(mem.ok());
  ASSERT_TRUE(mem->write_obj<uint64_t>(0x100, 0x1122334455667788ull).ok());
  auto v = mem->read_obj<uint64_t>(0x100);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 0x1122334455667788ull);
  EXPECT_FALSE(mem->read_obj<uint64_t>(0xffc).ok());
}

// Dirty tracking of the VMM's own writes (live migration).
std::vector<uint64_t> take(const GuestMemory& m, size_t region) {
  std::vector<uint64_t> bits((m.regions()[region].pages() + 63) / 64, 0);
  m.take_dirty(region, bits);
  return bits;
}

TEST(GuestMemoryDirty, OffByDefaultAndWhenStopped) {
  auto mem = GuestMemory::create_anonymous({{0, 1 << 20}});
  ASSERT_TRUE(mem.ok());
  ASSERT_TRUE(mem->write_obj<uint32_t>(0x1000, 7).ok());
  mem->mark_dirty(0x5000, 1);
  EXPECT_EQ(take(*mem, 0)[0], 0u);
  mem->set_dirty_tracking(true);
  mem->set_dirty_tracking(false);
  ASSERT_TRUE(mem->write_obj<uint32_t>(0x1000, 7).ok());
  EXPECT_EQ(take(*mem, 0)[0], 0u);
}

TEST(GuestMemoryDirty, MarksEveryTouchedPageOnceAndClearsOnTake) {
  // Two regions, the second above a hole, as guest_ram_ranges makes them.
  auto mem = GuestMemory::create_anonymous({{0, 256 << 12}, {1 << 30, 70 << 12}});
  ASSERT_TRUE(mem.ok());
  mem->set_dirty_tracking(true);
  ASSERT_TRUE(mem->write_obj<uint16_t>(0x3ffe, 1).ok());            // page 3
  ASSERT_TRUE(mem->write_obj<uint32_t>(0x4ffe, 1).ok());            // pages 4 and 5
  mem->mark_dirty(64 << 12, 1);                                     // page 64 (second word)
  mem->mark_dirty((1ull << 30) + (69 << 12), 4096);                 // last page of region 1
  mem->mark_dirty((1ull << 30) + (70 << 12), 4096);                 // outside RAM: ignored
  mem->mark_dirty(0x7000, 0);                                       // empty: nothing
  auto r0 = take(*mem, 0);
  EXPECT_EQ(r0[0], (1ull << 3) | (1ull << 4) | (1ull << 5));
  EXPECT_EQ(r0[1], 1ull);
  auto r1 = take(*mem, 1);
  ASSERT_EQ(r1.size(), 2u);
  EXPECT_EQ(r1[0], 0u);
  EXPECT_EQ(r1[1], 1ull << 5);
  // Taken: a second harvest is empty until the next write.
  EXPECT_EQ(take(*mem, 0)[0], 0u);
  ASSERT_TRUE(mem->write(0xff000, std::vector<uint8_t>(0x2000, 1)).ok() == false);  // past end
  ASSERT_TRUE(mem->write(0xfe000, std::vector<uint8_t>(0x2000, 1)).ok());
  EXPECT_EQ(take(*mem, 0)[3], (1ull << 62) | (1ull << 63));
}

TEST(GuestMemoryDirty, TakeOrsIntoWhatTheCallerHas) {
  auto mem = GuestMemory::create_anonymous({{0, 64 << 12}});
  ASSERT_TRUE(mem.ok());
  mem->set_dirty_tracking(true);
  mem->mark_dirty(0, 1);
  std::vector<uint64_t> bits{1ull << 9};  // e.g. KVM's bitmap
  mem->take_dirty(0, bits);
  EXPECT_EQ(bits[0], 1ull | (1ull << 9));
  mem->take_dirty(7, bits);  // no such region: nothing
  EXPECT_EQ(bits[0], 1ull | (1ull << 9));
}

}  // namespace
}  // namespace vmm

namespace vmm {
namespace {

// KVM maps guest RAM with 2 MiB entries only where host and guest addresses
// agree modulo 2 MiB: every RAM region of 2 MiB or more starts aligned.
TEST(MmapRegion, LargeAnonymousRegionsStart2MiBAligned) {
  for (size_t size : {size_t{2} << 20, size_t{6} << 20, (size_t{64} << 20) + 4096}) {
    for (int i = 0; i < 4; ++i) {
      auto r = MmapRegion::anonymous(size, i % 2 == 0);
      ASSERT_TRUE(r.ok());
      EXPECT_EQ(reinterpret_cast<uintptr_t>(r->data()) % MmapRegion::kHugeAlign, 0u) << size;
      EXPECT_EQ(r->size(), size);
      r->data()[0] = 1;
      r->data()[size - 1] = 2;  // the whole range is mapped
    }
  }
  auto small = MmapRegion::anonymous(8192);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->size(), 8192u);
}

}  // namespace
}  // namespace vmm
