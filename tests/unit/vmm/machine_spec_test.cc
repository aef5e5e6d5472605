#include "vmm/core/machine_spec.h"

#include <gtest/gtest.h>

namespace vmm {
namespace {

MachineSpec sample() {
  MachineSpec s;
  s.mem_bytes = 512ull << 20;
  s.vcpus = 2;
  s.acpi = true;
  s.rng = true;
  s.disks = {{2048, false, "root"}, {8, true, "a,b=c"}};
  s.nets = {{{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}}};
  return s;
}

ConfigEntries with(ConfigEntries c, const std::string& key, const std::string& value) {
  for (auto& [k, v] : c)
    if (k == key) {
      v = value;
      return c;
    }
  c.emplace_back(key, value);
  return c;
}

ConfigEntries without(ConfigEntries c, const std::string& key) {
  std::erase_if(c, [&](const auto& kv) { return kv.first == key; });
  return c;
}

TEST(MachineSpec, RoundTrips) {
  auto enc = encode_machine_spec(sample());
  EXPECT_EQ(enc[0], (std::pair<std::string, std::string>{"mem_bytes", "536870912"}));
  EXPECT_EQ(enc[4].second, "sectors=2048,readonly=off,id=root");
  EXPECT_EQ(enc[6].second, "mac=52:54:00:12:34:56");
  auto back = parse_machine_spec(enc);
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_EQ(*back, sample());  // an id may hold ',' and '=': it is the rest of the value
}

TEST(MachineSpec, RefusesOutOfRangeNumbersBeforeAnythingElse) {
  auto base = encode_machine_spec(sample());
  for (const char* bad : {"0", "255", "-1", "+2", "2 ", " 2", "2x", "0x2", "", "99999999999999999999",
                          "184467440737095516160"}) {
    auto r = parse_machine_spec(with(base, "vcpus", bad));
    EXPECT_FALSE(r.ok()) << "vcpus=" << bad;
  }
  for (const char* bad : {"0", "4096", "536870913", "512M", "-536870912", "1099511627777",
                          "1100585369600", "18446744073709547520", "99999999999999999999"}) {
    auto r = parse_machine_spec(with(base, "mem_bytes", bad));
    EXPECT_FALSE(r.ok()) << "mem_bytes=" << bad;
  }
  EXPECT_TRUE(parse_machine_spec(with(base, "vcpus", "254")).ok());
  EXPECT_TRUE(parse_machine_spec(with(base, "mem_bytes", "1099511627776")).ok());  // 1 TiB
}

TEST(MachineSpec, RefusesHostResourcesAndUnknownShapes) {
  auto base = encode_machine_spec(sample());
  // The old fingerprint named host files and TAPs: never accepted now.
  EXPECT_FALSE(parse_machine_spec(with(base, "disk0", "path=/etc/shadow,readonly=off")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "net0", "tap=evil0")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "net0", "mac=52:54:00:12:34:56,tap=evil0")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "disk0", "sectors=1,readonly=off,id=123456789012345678901")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "disk0", "sectors=1,readonly=yes,id=")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "disk0", "sectors=-1,readonly=off,id=")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "disk0", "sectors=36028797018963968,readonly=off,id=")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "disk0", std::string("sectors=1,readonly=off,id=a\0b", 29))).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "net0", "mac=01:00:5e:00:00:01")).ok());  // multicast
  EXPECT_FALSE(parse_machine_spec(with(base, "acpi", "yes")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "rng", "1")).ok());
  EXPECT_FALSE(parse_machine_spec(with(base, "path", "/x")).ok());          // unknown key
  EXPECT_FALSE(parse_machine_spec(with(base, "disk3", "sectors=1,readonly=off,id=")).ok());  // gap
  EXPECT_FALSE(parse_machine_spec(without(base, "mem_bytes")).ok());
  EXPECT_FALSE(parse_machine_spec(without(base, "rng")).ok());
  auto dup = base;
  dup.push_back(dup[1]);
  EXPECT_FALSE(parse_machine_spec(dup).ok());
  // At most 8 virtio devices in all.
  MachineSpec many = sample();
  many.disks.assign(7, DiskSpec{1, false, ""});
  EXPECT_FALSE(parse_machine_spec(encode_machine_spec(many)).ok());  // 7 + 1 net + rng
  many.rng = false;
  EXPECT_TRUE(parse_machine_spec(encode_machine_spec(many)).ok());
}

TEST(MachineSpec, AdoptTakesIdentityNotHostResources) {
  MachineSpec saved = sample();
  VmConfig cfg;
  cfg.disks = {{"/img/copy.raw", false, ""}, {"/img/b.raw", true, "mine"}};
  cfg.nets = {{"tap7", std::nullopt}};
  ASSERT_TRUE(adopt_machine_spec(saved, cfg, "snapshot").ok());
  EXPECT_EQ(cfg.disks[0].path, "/img/copy.raw");
  EXPECT_EQ(cfg.disks[0].id, "root");   // omitted: the saved serial
  EXPECT_EQ(cfg.disks[1].id, "mine");   // given: kept, compared later
  EXPECT_EQ(cfg.nets[0].tap, "tap7");
  EXPECT_EQ(cfg.nets[0].mac, saved.nets[0].mac);
  EXPECT_EQ(cfg.mem_bytes, 512ull << 20);  // adopt leaves the shape alone
  take_machine_shape(saved, cfg);
  EXPECT_EQ(cfg.mem_bytes, saved.mem_bytes);
  EXPECT_EQ(cfg.cpus, 2);
  EXPECT_TRUE(cfg.rng);

  VmConfig one_disk;
  one_disk.disks = {{"/img/a.raw", false, ""}};
  one_disk.nets = {{"tap7", std::nullopt}};
  auto r = adopt_machine_spec(saved, one_disk, "snapshot");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("the snapshot has 2 disk(s), the command line gives 1 --disk"),
            std::string::npos)
      << r.error().message;
  VmConfig no_net;
  no_net.disks = cfg.disks;
  EXPECT_FALSE(adopt_machine_spec(saved, no_net, "source").ok());
}

TEST(MachineSpec, CompareNamesEveryDifference) {
  MachineSpec a = sample(), b = sample();
  EXPECT_TRUE(compare_machine_specs(a, b, "snapshot").ok());
  b.disks[0].sectors = 4096;
  b.disks[1].readonly = false;
  b.nets[0].mac[5] = 0x57;
  b.vcpus = 1;
  auto r = compare_machine_specs(a, b, "snapshot");
  ASSERT_FALSE(r.ok());
  const auto& m = r.error().message;
  EXPECT_NE(m.find("disk0 sectors: 2048 in the snapshot, 4096 here"), std::string::npos) << m;
  EXPECT_NE(m.find("disk1 readonly: on in the snapshot, off here"), std::string::npos) << m;
  EXPECT_NE(m.find("net0 MAC: 52:54:00:12:34:56 in the snapshot, 52:54:00:12:34:57 here"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("vCPUs: 2 in the snapshot, 1 here"), std::string::npos) << m;
}

}  // namespace
}  // namespace vmm
