#include "devices/legacy/boot_probe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <vector>

#include "boot/x86_64/layout.h"

namespace vmm {
namespace {

constexpr uint64_t kPio = layout::kBootProbePort;
constexpr uint64_t kMmio = layout::kBootProbeMmioAddr;

class BootProbeTest : public ::testing::Test {
 protected:
  BootProbeTest()
      : probe_([this](uint8_t m) { marks_.push_back(m); },
               [this](uint32_t c) { exits_.push_back(c); }) {}

  template <size_t N>
  void write(uint64_t base, uint64_t off, std::array<uint8_t, N> bytes) {
    probe_.write(base, off, bytes);
  }
  template <size_t N>
  std::array<uint8_t, N> read(uint64_t base, uint64_t off) {
    std::array<uint8_t, N> r;
    r.fill(0xcc);
    probe_.read(base, off, r);
    return r;
  }

  std::vector<uint8_t> marks_;
  std::vector<uint32_t> exits_;
  BootProbe probe_;
};

TEST_F(BootProbeTest, MarksOnBothWindows) {
  EXPECT_EQ(read<1>(kPio, 0)[0], 0);
  write<1>(kPio, 0, {0x10});
  EXPECT_EQ(read<1>(kPio, 0)[0], 0x10);
  EXPECT_EQ(read<1>(kMmio, 0)[0], 0x10);
  write<1>(kMmio, 0, {0x20});
  EXPECT_EQ(read<1>(kPio, 0)[0], 0x20);
  EXPECT_EQ(marks_, (std::vector<uint8_t>{0x10, 0x20}));
  EXPECT_TRUE(exits_.empty());
}

TEST_F(BootProbeTest, ExitCodesAtEachSize) {
  write<1>(kPio, 4, {0x00});
  write<1>(kPio, 4, {0xff});
  write<2>(kPio, 4, {0x34, 0x12});
  write<4>(kMmio, 4, {0x78, 0x56, 0x34, 0x12});
  write<4>(kMmio, 4, {0xff, 0xff, 0xff, 0xff});
  EXPECT_EQ(exits_, (std::vector<uint32_t>{0, 0xff, 0x1234, 0x12345678, 0xffffffff}));
  EXPECT_TRUE(marks_.empty());
}

TEST_F(BootProbeTest, Signature) {
  EXPECT_EQ(read<4>(kPio, 4), (std::array<uint8_t, 4>{'V', 'M', 'M', 'P'}));
  auto m = read<4>(kMmio, 4);
  uint32_t sig = m[0] | m[1] << 8 | m[2] << 16 | static_cast<uint32_t>(m[3]) << 24;
  EXPECT_EQ(sig, 0x504d4d56u);
  EXPECT_EQ(sig, BootProbe::kSignature);
  EXPECT_EQ(read<2>(kPio, 4), (std::array<uint8_t, 2>{'V', 'M'}));
  EXPECT_EQ(read<1>(kPio, 4), (std::array<uint8_t, 1>{'V'}));
}

TEST_F(BootProbeTest, GarbageAccessesIgnored) {
  write<1>(kPio, 0, {0x42});
  marks_.clear();
  // Odd sizes, other offsets, accesses running past the window, huge offsets.
  write<2>(kPio, 0, {1, 2});
  write<4>(kPio, 0, {1, 2, 3, 4});
  write<8>(kMmio, 0, {1, 2, 3, 4, 5, 6, 7, 8});
  write<3>(kPio, 4, {1, 2, 3});
  write<8>(kMmio, 4, {1, 2, 3, 4, 5, 6, 7, 8});
  write<1>(kPio, 1, {1});
  write<1>(kPio, 7, {1});
  write<4>(kPio, 5, {1, 2, 3, 4});
  write<4>(kPio, 6, {1, 2, 3, 4});
  write<1>(kPio, 8, {1});
  write<4>(kPio, ~0ull - 1, {1, 2, 3, 4});
  write<4>(kPio, ~0ull, {1, 2, 3, 4});
  probe_.write(kPio, 0, std::span<const uint8_t>());
  probe_.write(kPio, 4, std::span<const uint8_t>());
  std::vector<uint8_t> huge(1 << 16, 0xab);
  probe_.write(kMmio, 0, huge);
  probe_.write(kMmio, 4, huge);
  EXPECT_TRUE(marks_.empty());
  EXPECT_TRUE(exits_.empty());

  EXPECT_EQ(read<2>(kPio, 0), (std::array<uint8_t, 2>{0, 0}));
  EXPECT_EQ(read<8>(kMmio, 0), (std::array<uint8_t, 8>{}));
  EXPECT_EQ(read<3>(kPio, 4), (std::array<uint8_t, 3>{}));
  EXPECT_EQ(read<8>(kPio, 4), (std::array<uint8_t, 8>{}));
  for (uint64_t off : {1ull, 2ull, 3ull, 5ull, 6ull, 7ull, 8ull, 0x1000ull, ~0ull}) {
    EXPECT_EQ(read<1>(kPio, off)[0], 0) << off;
    EXPECT_EQ(read<4>(kMmio, off), (std::array<uint8_t, 4>{})) << off;
  }
  probe_.read(kPio, 0, std::span<uint8_t>());
  std::vector<uint8_t> big(1 << 16, 0xcd);
  probe_.read(kMmio, 0, big);
  EXPECT_EQ(std::count(big.begin(), big.end(), 0), static_cast<long>(big.size()));
  EXPECT_EQ(read<1>(kPio, 0)[0], 0x42);
}

TEST_F(BootProbeTest, NullCallbacksTolerated) {
  BootProbe p(nullptr, nullptr);
  uint8_t v = 1;
  p.write(kPio, 0, std::span<const uint8_t>(&v, 1));
  p.write(kPio, 4, std::span<const uint8_t>(&v, 1));
}

TEST_F(BootProbeTest, SaveRestore) {
  write<1>(kPio, 0, {0x33});
  BootProbeState s = probe_.save();
  EXPECT_EQ(s.last_mark, 0x33);
  write<1>(kPio, 0, {0x44});
  ASSERT_TRUE(probe_.restore(s).ok());
  EXPECT_EQ(read<1>(kPio, 0)[0], 0x33);
  EXPECT_EQ(probe_.save(), s);
}

}  // namespace
}  // namespace vmm
