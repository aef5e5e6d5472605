#include "vmm/memory/guest_memory.h"

#include <gtest/gtest.h>

#include <array>

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

}  // namespace
}  // namespace vmm
