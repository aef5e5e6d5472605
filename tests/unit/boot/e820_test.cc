#include "boot/x86_64/e820.h"

#include <gtest/gtest.h>

#include "boot/x86_64/layout.h"

namespace vmm::boot {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;

void expect_entry(const E820Entry& e, uint64_t addr, uint64_t size, uint32_t type) {
  // E820Entry is packed: copy its fields before gtest binds them to references.
  EXPECT_EQ(uint64_t{e.addr}, addr);
  EXPECT_EQ(uint64_t{e.size}, size);
  EXPECT_EQ(uint32_t{e.type}, type);
}

TEST(E820, ValidateMemSize) {
  EXPECT_TRUE(validate_mem_size(32 * kMiB).ok());
  EXPECT_TRUE(validate_mem_size(512 * kMiB).ok());
  EXPECT_TRUE(validate_mem_size(4 * kGiB + 0x1000).ok());
  EXPECT_FALSE(validate_mem_size(0).ok());
  EXPECT_FALSE(validate_mem_size(32 * kMiB - 0x1000).ok());
  EXPECT_FALSE(validate_mem_size(64 * kMiB + 1).ok());
  EXPECT_FALSE(validate_mem_size(~0ull & ~0xfffull).ok());
  auto r = validate_mem_size(16 * kMiB);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("32 MiB"), std::string::npos);
}

TEST(E820, RamRanges) {
  auto small = guest_ram_ranges(512 * kMiB);
  ASSERT_EQ(small.size(), 1u);
  EXPECT_EQ(small[0], (std::pair<Gpa, uint64_t>{0, 512 * kMiB}));

  auto exact = guest_ram_ranges(layout::kMmioGapStart);
  ASSERT_EQ(exact.size(), 1u);

  auto big = guest_ram_ranges(4 * kGiB);
  ASSERT_EQ(big.size(), 2u);
  EXPECT_EQ(big[0], (std::pair<Gpa, uint64_t>{0, layout::kMmioGapStart}));
  EXPECT_EQ(big[1], (std::pair<Gpa, uint64_t>{4 * kGiB, 4 * kGiB - layout::kMmioGapStart}));
}

TEST(E820, Map512MiB) {
  auto m = build_e820(512 * kMiB);
  ASSERT_EQ(m.size(), 3u);
  expect_entry(m[0], 0, layout::kEbdaStart, kE820Ram);
  expect_entry(m[1], layout::kEbdaStart, 0x100000 - layout::kEbdaStart, kE820Reserved);
  expect_entry(m[2], 0x100000, 512 * kMiB - 0x100000, kE820Ram);
}

TEST(E820, Map4GiB) {
  auto m = build_e820(4 * kGiB);
  ASSERT_EQ(m.size(), 4u);
  expect_entry(m[0], 0, 0x9fc00, kE820Ram);
  expect_entry(m[1], 0x9fc00, 0x60400, kE820Reserved);
  expect_entry(m[2], 0x100000, 0xc0000000 - 0x100000, kE820Ram);
  expect_entry(m[3], 0x100000000, 1 * kGiB, kE820Ram);
  uint64_t ram = 0;
  for (const auto& e : m)
    if (e.type == kE820Ram) ram += e.size;
  EXPECT_EQ(ram, 4 * kGiB - (0x100000 - 0x9fc00));
}

}  // namespace
}  // namespace vmm::boot
