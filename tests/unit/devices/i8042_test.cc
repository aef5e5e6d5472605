#include "devices/legacy/i8042.h"

#include <gtest/gtest.h>

#include <array>
#include <vector>

#include "boot/x86_64/layout.h"

namespace vmm {
namespace {

constexpr uint64_t kData = layout::kI8042DataPort;
constexpr uint64_t kCmd = layout::kI8042CommandPort;

class I8042Test : public ::testing::Test {
 protected:
  I8042Test() : dev_([this] { ++resets_; }) {}

  uint8_t in(uint64_t port) {
    uint8_t v = 0xee;
    dev_.read(port, 0, std::span<uint8_t>(&v, 1));
    return v;
  }
  void out(uint64_t port, uint8_t v) { dev_.write(port, 0, std::span<const uint8_t>(&v, 1)); }

  int resets_ = 0;
  I8042 dev_;
};

TEST_F(I8042Test, ResetCommandCallsBack) {
  EXPECT_EQ(in(kCmd), 0);
  out(kCmd, 0xfe);
  EXPECT_EQ(resets_, 1);
  out(kCmd, 0xfe);
  EXPECT_EQ(resets_, 2);
  // 0xfe on the data port is a keyboard byte, not a reset.
  out(kData, 0xfe);
  EXPECT_EQ(resets_, 2);
}

TEST_F(I8042Test, LinuxRebootSequence) {
  // arch/x86/kernel/reboot.c: wait for IBF clear, then write 0xfe, 10 times.
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(in(kCmd)&0x02, 0);
    out(kCmd, 0xfe);
  }
  EXPECT_EQ(resets_, 10);
}

TEST_F(I8042Test, ReadAndWriteCommandByte) {
  out(kCmd, 0x20);
  EXPECT_EQ(in(kCmd), 0x01);  // OBF
  EXPECT_EQ(in(kData), 0x00);
  EXPECT_EQ(in(kCmd), 0x00);  // OBF cleared by the read
  out(kCmd, 0x60);
  out(kData, 0x47);
  EXPECT_EQ(in(kCmd), 0x00);
  out(kCmd, 0x20);
  EXPECT_EQ(in(kCmd), 0x01);
  EXPECT_EQ(in(kData), 0x47);
  EXPECT_EQ(in(kCmd), 0x00);
  // A data byte without a pending command does not change the command byte.
  out(kData, 0x11);
  out(kCmd, 0x20);
  EXPECT_EQ(in(kData), 0x47);
  // A new command abandons a pending 0x60.
  out(kCmd, 0x60);
  out(kCmd, 0xad);
  out(kData, 0x22);
  out(kCmd, 0x20);
  EXPECT_EQ(in(kData), 0x47);
  EXPECT_EQ(resets_, 0);
}

TEST_F(I8042Test, WriteOutputPortResetLine) {
  out(kCmd, 0xd1);
  out(kData, 0x03);  // reset line high: nothing
  EXPECT_EQ(resets_, 0);
  out(kCmd, 0xd1);
  out(kData, 0x02);  // bit 0 clear: reset
  EXPECT_EQ(resets_, 1);
  out(kData, 0x02);  // no longer pending
  EXPECT_EQ(resets_, 1);
}

TEST_F(I8042Test, OtherCommandsAndGarbageIgnored) {
  for (int c = 0; c < 256; ++c) {
    if (c == 0xfe || c == 0xd1) continue;
    out(kCmd, static_cast<uint8_t>(c));
    EXPECT_EQ(in(kCmd) & ~0x01, 0) << c;
    in(kData);
  }
  EXPECT_EQ(resets_, 0);
  // Wrong sizes, offsets and bases do nothing and read 0.
  std::array<uint8_t, 4> four{0xfe, 0xfe, 0xfe, 0xfe};
  dev_.write(kCmd, 0, four);
  dev_.write(kCmd, 1, std::span<const uint8_t>(four.data(), 1));
  dev_.write(kCmd, ~0ull, std::span<const uint8_t>(four.data(), 1));
  dev_.write(0x1234, 0, std::span<const uint8_t>(four.data(), 1));
  dev_.write(kCmd, 0, std::span<const uint8_t>());
  EXPECT_EQ(resets_, 0);
  out(kCmd, 0x20);
  std::array<uint8_t, 4> r{1, 2, 3, 4};
  dev_.read(kData, 0, r);
  EXPECT_EQ(r, (std::array<uint8_t, 4>{0, 0, 0, 0}));
  dev_.read(0x1234, 0, std::span<uint8_t>(r.data(), 1));
  dev_.read(kData, 7, std::span<uint8_t>(r.data(), 1));
  dev_.read(kData, 0, std::span<uint8_t>());
  EXPECT_EQ(r[0], 0);
  EXPECT_EQ(in(kCmd), 0x01);  // still full: none of the above consumed it
}

TEST_F(I8042Test, NullCallbackTolerated) {
  I8042 dev(nullptr);
  uint8_t v = 0xfe;
  dev.write(kCmd, 0, std::span<const uint8_t>(&v, 1));
}

TEST_F(I8042Test, SaveRestore) {
  out(kCmd, 0x60);
  out(kData, 0x45);
  out(kCmd, 0x20);
  out(kCmd, 0x60);  // pending
  I8042State saved = dev_.save();
  EXPECT_EQ(saved.command_byte, 0x45);
  EXPECT_EQ(saved.status, 0x01);
  EXPECT_EQ(saved.output, 0x45);
  EXPECT_EQ(saved.pending_command, 0x60);

  out(kData, 0x00);
  in(kData);
  EXPECT_NE(dev_.save(), saved);
  ASSERT_TRUE(dev_.restore(saved).ok());
  EXPECT_EQ(dev_.save(), saved);
  out(kData, 0x99);  // completes the restored pending command
  EXPECT_EQ(in(kData), 0x45);
  out(kCmd, 0x20);
  EXPECT_EQ(in(kData), 0x99);

  const I8042State before = dev_.save();
  I8042State bad = saved;
  bad.status = 0x02;
  EXPECT_FALSE(dev_.restore(bad).ok());
  bad = saved;
  bad.pending_command = 0xfe;
  EXPECT_FALSE(dev_.restore(bad).ok());
  EXPECT_EQ(dev_.save(), before);
}

}  // namespace
}  // namespace vmm
