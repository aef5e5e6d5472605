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

TEST(ParseDisk, Forms) {
  auto d = parse_disk("path=/img/a.raw,readonly=on,id=root");
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->path, "/img/a.raw");
  EXPECT_TRUE(d->readonly);
  EXPECT_EQ(d->id, "root");
  auto bare = parse_disk("/img/b.raw");
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->path, "/img/b.raw");
  EXPECT_FALSE(bare->readonly);
  auto off = parse_disk("path=x,readonly=off");
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->readonly);
  for (const char* bad : {"", "readonly=on", "path=x,readonly=maybe", "path=x,cache=none",
                          "path=x,id=123456789012345678901", "path=x,,id=a", "path=x,id"})
    EXPECT_FALSE(parse_disk(bad).ok()) << bad;
}

TEST(ParseNet, Forms) {
  auto n = parse_net("tap=tap0,mac=52:54:00:12:34:56");
  ASSERT_TRUE(n.ok()) << n.error().to_string();
  EXPECT_EQ(n->tap, "tap0");
  ASSERT_TRUE(n->mac.has_value());
  EXPECT_EQ((*n->mac)[5], 0x56);
  auto bare = parse_net("tap1");
  ASSERT_TRUE(bare.ok());
  EXPECT_FALSE(bare->mac.has_value());
  for (const char* bad : {"", "mac=52:54:00:12:34:56", "tap=t,mac=01:00:00:00:00:01",
                          "tap=t,mac=zz", "tap=t,queues=2"})
    EXPECT_FALSE(parse_net(bad).ok()) << bad;
}

}  // namespace
}  // namespace vmm

namespace vmm {
namespace {

TEST(ValidateConfig, OneCheckForEveryEntryPath) {
  VmConfig ok_cfg;
  EXPECT_TRUE(validate_config(ok_cfg).ok());
  auto refused = [](auto mutate) {
    VmConfig c;
    mutate(c);
    return !validate_config(c).ok();
  };
  EXPECT_TRUE(refused([](VmConfig& c) { c.mem_bytes = 0; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.mem_bytes = (512ull << 20) + 1; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.mem_bytes = (1ull << 40) + 4096; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.cpus = 0; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.cpus = 255; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.time_dilation = 0; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.cpu_template = "evil"; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.boot_protocol = "bios"; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.disks.assign(9, {"/dev/null", false, ""}); }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.disks = {{"/x", false, std::string(21, 'a')}}; }));
  EXPECT_TRUE(refused([](VmConfig& c) { c.nets = {{"a-very-long-tap-name", std::nullopt}}; }));
  EXPECT_FALSE(refused([](VmConfig& c) {
    c.cpus = 254;
    c.cpu_template = "minimal";
    c.disks.assign(7, {"/dev/null", true, ""});
    c.rng = true;
  }));
}

}  // namespace
}  // namespace vmm
