#include "devices/legacy/acpi_pm.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "boot/x86_64/layout.h"
#include "devices/bus.h"

namespace vmm {
namespace {

constexpr uint64_t kBase = layout::kAcpiPmPort;
constexpr uint64_t kCtl = AcpiPm::kSleepControlOffset;
constexpr uint64_t kSts = AcpiPm::kSleepStatusOffset;
constexpr uint64_t kRst = AcpiPm::kResetOffset;

// What Linux's acpi_hw_extended_sleep() writes for \_S5_ = {5, ...}:
// ((5 << 2) & 0x1c) | 0x20.
constexpr uint8_t kLinuxS5Write = ((5 << 2) & 0x1c) | 0x20;
static_assert(kLinuxS5Write == 0x34);

class AcpiPmTest : public ::testing::Test {
 protected:
  AcpiPmTest() : dev_([this] { ++poweroffs_; }, [this] { ++reboots_; }) {}

  void out(uint64_t off, uint8_t v) { dev_.write(kBase, off, std::span<const uint8_t>(&v, 1)); }
  uint8_t in(uint64_t off) {
    uint8_t v = 0xee;
    dev_.read(kBase, off, std::span<uint8_t>(&v, 1));
    return v;
  }

  int poweroffs_ = 0;
  int reboots_ = 0;
  AcpiPm dev_;
};

TEST(AcpiPmLayout, OffsetsMatchThePorts) {
  EXPECT_EQ(kBase + kCtl, 0x3c0u);
  EXPECT_EQ(kBase + kSts, 0x3c1u);
  EXPECT_EQ(kBase + kRst, 0x3c2u);
  EXPECT_EQ(AcpiPm::kWindowSize, layout::kAcpiPmPortLen);
}

TEST_F(AcpiPmTest, LinuxPoweroffSequence) {
  // acpi_hw_extended_sleep(): clear WAK_STS, write SLP_TYP|SLP_EN, poll WAK_STS.
  out(kSts, 0x80);
  EXPECT_EQ(poweroffs_, 0);
  out(kCtl, kLinuxS5Write);
  EXPECT_EQ(poweroffs_, 1);
  EXPECT_EQ(reboots_, 0);
  // WAK_STS stays clear: the guest keeps polling until the VMM stops it.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(in(kSts), 0);
  EXPECT_EQ(poweroffs_, 1);
}

TEST_F(AcpiPmTest, OtherSleepTypesDoNothing) {
  for (uint8_t type = 0; type < 8; ++type) {
    if (type == layout::kAcpiS5SleepType) continue;
    out(kCtl, static_cast<uint8_t>((type << 2) | 0x20));
  }
  EXPECT_EQ(poweroffs_, 0);
  EXPECT_EQ(reboots_, 0);
}

TEST_F(AcpiPmTest, NoPoweroffWithoutSlpEn) {
  out(kCtl, 0x14);  // SLP_TYP 5 alone
  out(kCtl, 0x14 | 0x40 | 0x80 | 0x03);  // plus every reserved bit, still no SLP_EN
  EXPECT_EQ(poweroffs_, 0);
}

TEST_F(AcpiPmTest, ReservedBitsAreIgnored) {
  out(kCtl, kLinuxS5Write | 0xc3);
  EXPECT_EQ(poweroffs_, 1);
}

TEST_F(AcpiPmTest, SleepControlReadsBackSlpTypOnly) {
  EXPECT_EQ(in(kCtl), 0);
  out(kCtl, 0x14 | 0x03);
  EXPECT_EQ(in(kCtl), 0x14);
  out(kCtl, 0x08 | 0x20);  // SLP_TYP 2 with SLP_EN: ignored, SLP_EN reads 0
  EXPECT_EQ(in(kCtl), 0x08);
}

TEST_F(AcpiPmTest, ResetRegister) {
  EXPECT_EQ(in(kRst), 0);
  for (uint8_t v : {0x00, 0x02, 0x06, 0x0e, 0xff}) out(kRst, v);
  EXPECT_EQ(reboots_, 0);
  out(kRst, layout::kAcpiResetValue);
  EXPECT_EQ(reboots_, 1);
  EXPECT_EQ(poweroffs_, 0);
  // The reset value elsewhere means nothing.
  out(kCtl, layout::kAcpiResetValue);
  out(kSts, layout::kAcpiResetValue);
  EXPECT_EQ(reboots_, 1);
  EXPECT_EQ(poweroffs_, 0);
}

TEST_F(AcpiPmTest, GarbageOffsetsAndSizesAreSafe) {
  // Wrong sizes at the real registers.
  std::array<uint8_t, 2> w2 = {kLinuxS5Write, 0};
  std::array<uint8_t, 4> w4 = {kLinuxS5Write, kLinuxS5Write, layout::kAcpiResetValue, 0};
  std::array<uint8_t, 8> w8{};
  w8.fill(kLinuxS5Write);
  for (uint64_t off : {kCtl, kSts, kRst}) {
    dev_.write(kBase, off, w2);
    dev_.write(kBase, off, w4);
    dev_.write(kBase, off, w8);
    dev_.write(kBase, off, std::span<const uint8_t>());
  }
  // 1-byte writes outside the registers.
  for (uint64_t off : {uint64_t{3}, uint64_t{4}, uint64_t{0xff}, uint64_t{1} << 40, ~uint64_t{0}}) {
    out(off, kLinuxS5Write);
    out(off, layout::kAcpiResetValue);
  }
  EXPECT_EQ(poweroffs_, 0);
  EXPECT_EQ(reboots_, 0);

  // Reads of any size/offset fill zeros (and never touch more than the span).
  out(kCtl, 0x14);
  for (uint64_t off : {kCtl, kSts, kRst, uint64_t{3}, ~uint64_t{0}}) {
    std::array<uint8_t, 9> r;
    r.fill(0xcc);
    dev_.read(kBase, off, std::span<uint8_t>(r.data(), 8));
    for (size_t i = 0; i < 8; ++i) EXPECT_EQ(r[i], 0) << off << " " << i;
    EXPECT_EQ(r[8], 0xcc);
    dev_.read(kBase, off, std::span<uint8_t>());
  }
  EXPECT_EQ(in(3), 0);
  EXPECT_EQ(in(~uint64_t{0}), 0);
}

TEST(AcpiPm, EmptyCallbacksAreAllowed) {
  AcpiPm dev({}, {});
  uint8_t v = kLinuxS5Write;
  dev.write(kBase, kCtl, std::span<const uint8_t>(&v, 1));
  v = layout::kAcpiResetValue;
  dev.write(kBase, kRst, std::span<const uint8_t>(&v, 1));
  SUCCEED();
}

TEST(AcpiPm, SaveRestore) {
  AcpiPm a({}, {});
  uint8_t v = 0x14;
  a.write(kBase, kCtl, std::span<const uint8_t>(&v, 1));
  AcpiPmState s = a.save();
  EXPECT_EQ(s.sleep_control, 0x14);

  int poweroffs = 0;
  AcpiPm b([&] { ++poweroffs; }, {});
  ASSERT_TRUE(b.restore(s).ok());
  EXPECT_EQ(b.save(), s);
  uint8_t r = 0xee;
  b.read(kBase, kCtl, std::span<uint8_t>(&r, 1));
  EXPECT_EQ(r, 0x14);
  EXPECT_EQ(poweroffs, 0);  // restoring never triggers a transition

  for (uint8_t bad : {0x20, 0x01, 0x80, 0xff}) {
    EXPECT_FALSE(b.restore(AcpiPmState{bad}).ok()) << int(bad);
    EXPECT_EQ(b.save(), s);
  }
}

TEST(AcpiPm, ThroughThePortBus) {
  int poweroffs = 0, reboots = 0;
  auto dev = std::make_shared<AcpiPm>([&] { ++poweroffs; }, [&] { ++reboots; });
  IoBus bus;
  ASSERT_TRUE(bus.insert(layout::kAcpiPmPort, layout::kAcpiPmPortLen, dev, "acpi-pm").ok());
  std::array<uint8_t, 1> s5 = {kLinuxS5Write};
  std::array<uint8_t, 1> rst = {layout::kAcpiResetValue};
  std::array<uint8_t, 1> st = {0xee};
  EXPECT_TRUE(bus.read(layout::kAcpiSleepStatusPort, st));
  EXPECT_EQ(st[0], 0);
  EXPECT_TRUE(bus.write(layout::kAcpiSleepControlPort, s5));
  EXPECT_EQ(poweroffs, 1);
  EXPECT_TRUE(bus.write(layout::kAcpiResetPort, rst));
  EXPECT_EQ(reboots, 1);
  // Just past the window: not ours.
  EXPECT_FALSE(bus.write(layout::kAcpiPmPort + layout::kAcpiPmPortLen, rst));
  EXPECT_EQ(reboots, 1);
}

}  // namespace
}  // namespace vmm
