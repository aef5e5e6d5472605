#include "vmm/core/config.h"

#include <gtest/gtest.h>

namespace vmm {
namespace {

TEST(ParseSize, Suffixes) {
  EXPECT_EQ(*parse_size("512M"), 512ull << 20);
  EXPECT_EQ(*parse_size("2G"), 2ull << 30);
  EXPECT_EQ(*parse_size("64K"), 64ull << 10);
  EXPECT_EQ(*parse_size("4096"), 4096ull);
  EXPECT_EQ(*parse_size("1GiB"), 1ull << 30);
}

TEST(ParseSize, RefusesGarbageAndOverflow) {
  for (const char* bad : {"", "M", "12X", "-5M", "1.5G", "99999999999999999999", "17179869184G"})
    EXPECT_FALSE(parse_size(bad).ok()) << bad;
}

TEST(ParseSerial, Modes) {
  VmConfig c;
  ASSERT_TRUE(parse_serial("file:/tmp/x.log", c).ok());
  EXPECT_EQ(c.serial, SerialMode::kFile);
  EXPECT_EQ(c.serial_path, "/tmp/x.log");
  ASSERT_TRUE(parse_serial("none", c).ok());
  EXPECT_EQ(c.serial, SerialMode::kNone);
  ASSERT_TRUE(parse_serial("stdio", c).ok());
  EXPECT_EQ(c.serial, SerialMode::kStdio);
  EXPECT_FALSE(parse_serial("file:", c).ok());
  EXPECT_FALSE(parse_serial("tcp:1234", c).ok());
}

}  // namespace
}  // namespace vmm
