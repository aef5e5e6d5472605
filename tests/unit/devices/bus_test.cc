#include "devices/bus.h"

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <vector>

namespace vmm {
namespace {

// Records every access; reads return (offset + i) per byte.
class RecordingDevice : public BusDevice {
 public:
  struct Access {
    bool is_write;
    uint64_t base;
    uint64_t offset;
    std::vector<uint8_t> data;
    bool operator==(const Access&) const = default;
  };

  void read(uint64_t base, uint64_t offset, std::span<uint8_t> data) override {
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(offset + i);
    accesses.push_back({false, base, offset, {data.begin(), data.end()}});
  }
  void write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) override {
    accesses.push_back({true, base, offset, {data.begin(), data.end()}});
  }

  std::vector<Access> accesses;
};

TEST(IoBus, RefusesZeroLengthAndNullDevice) {
  IoBus bus;
  auto dev = std::make_shared<RecordingDevice>();
  EXPECT_FALSE(bus.insert(0x100, 0, dev, "zero").ok());
  EXPECT_FALSE(bus.insert(0x100, 8, nullptr, "null").ok());
  EXPECT_EQ(bus.find(0x100, 1), nullptr);
}

TEST(IoBus, RefusesWraparound) {
  IoBus bus;
  auto dev = std::make_shared<RecordingDevice>();
  EXPECT_FALSE(bus.insert(~0ull, 2, dev, "wrap").ok());
  EXPECT_FALSE(bus.insert(~0ull - 7, 9, dev, "wrap").ok());
  EXPECT_FALSE(bus.insert(1, ~0ull, dev, "wrap").ok());
  // A range ending exactly at 2^64 has an unrepresentable end: refused too.
  EXPECT_FALSE(bus.insert(~0ull - 7, 8, dev, "to-top").ok());
  EXPECT_TRUE(bus.insert(~0ull - 7, 7, dev, "top").ok());
  EXPECT_NE(bus.find(~0ull - 1, 1), nullptr);
}

TEST(IoBus, RefusesOverlapAllowsAdjacent) {
  IoBus bus;
  auto dev = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.insert(0x100, 0x10, dev, "a").ok());
  EXPECT_FALSE(bus.insert(0x100, 0x10, dev, "same").ok());
  EXPECT_FALSE(bus.insert(0x0f8, 0x10, dev, "head").ok());
  EXPECT_FALSE(bus.insert(0x10f, 0x10, dev, "tail").ok());
  EXPECT_FALSE(bus.insert(0x104, 0x4, dev, "inside").ok());
  EXPECT_FALSE(bus.insert(0x000, 0x1000, dev, "covering").ok());
  EXPECT_FALSE(bus.insert(0x0ff, 0x2, dev, "first-byte").ok());
  EXPECT_TRUE(bus.insert(0x0f0, 0x10, dev, "below").ok());
  EXPECT_TRUE(bus.insert(0x110, 0x10, dev, "above").ok());
  // Overlapping a later range (not just the nearest lower one).
  EXPECT_TRUE(bus.insert(0x200, 1, dev, "far").ok());
  EXPECT_FALSE(bus.insert(0x120, 0x100, dev, "x").ok());
  EXPECT_FALSE(bus.insert(0x130, 0xd1, dev, "reaches-far").ok());
  EXPECT_TRUE(bus.insert(0x130, 0xd0, dev, "just-below-far").ok());
}

TEST(IoBus, DispatchesByBaseAndOffset) {
  IoBus bus;
  auto a = std::make_shared<RecordingDevice>();
  auto b = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.insert(0x60, 1, a, "a-data").ok());
  ASSERT_TRUE(bus.insert(0x64, 1, a, "a-cmd").ok());
  ASSERT_TRUE(bus.insert(0x3f8, 8, b, "b").ok());

  std::array<uint8_t, 1> one{0x5a};
  EXPECT_TRUE(bus.write(0x64, one));
  EXPECT_TRUE(bus.write(0x60, one));
  std::array<uint8_t, 2> two{};
  EXPECT_TRUE(bus.read(0x3fd, two));
  EXPECT_EQ(two, (std::array<uint8_t, 2>{5, 6}));
  std::array<uint8_t, 4> four{1, 2, 3, 4};
  EXPECT_TRUE(bus.write(0x3fc, four));

  using A = RecordingDevice::Access;
  EXPECT_EQ(a->accesses, (std::vector<A>{{true, 0x64, 0, {0x5a}}, {true, 0x60, 0, {0x5a}}}));
  EXPECT_EQ(b->accesses,
            (std::vector<A>{{false, 0x3f8, 5, {5, 6}}, {true, 0x3f8, 4, {1, 2, 3, 4}}}));

  const IoBus::Range* r = bus.find(0x3ff, 1);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->name, "b");
  EXPECT_EQ(r->base, 0x3f8u);
  EXPECT_EQ(r->len, 8u);
}

TEST(IoBus, RefusesAccessCrossingRangeEnd) {
  IoBus bus;
  auto a = std::make_shared<RecordingDevice>();
  auto b = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.insert(0x1000, 8, a, "a").ok());
  ASSERT_TRUE(bus.insert(0x1008, 8, b, "b").ok());  // adjacent: still refused
  std::array<uint8_t, 4> buf{};
  EXPECT_TRUE(bus.read(0x1004, buf));
  EXPECT_FALSE(bus.read(0x1005, buf));
  EXPECT_FALSE(bus.write(0x1007, buf));
  EXPECT_TRUE(bus.write(0x100c, buf));
  EXPECT_FALSE(bus.write(0x100d, buf));
  std::vector<uint8_t> huge(0x10000);
  EXPECT_FALSE(bus.read(0x1000, huge));
  EXPECT_EQ(a->accesses.size(), 1u);
  EXPECT_EQ(b->accesses.size(), 1u);
}

TEST(IoBus, UnmappedAddressesReturnFalse) {
  IoBus bus;
  auto dev = std::make_shared<RecordingDevice>();
  std::array<uint8_t, 1> one{};
  EXPECT_FALSE(bus.read(0, one));  // empty bus
  EXPECT_FALSE(bus.write(~0ull, one));
  ASSERT_TRUE(bus.insert(0x100, 0x10, dev, "a").ok());
  ASSERT_TRUE(bus.insert(0x200, 0x10, dev, "b").ok());
  for (uint64_t addr : {0x0ull, 0xffull, 0x110ull, 0x1ffull, 0x210ull, 0x150ull, ~0ull}) {
    EXPECT_FALSE(bus.read(addr, one)) << addr;
    EXPECT_FALSE(bus.write(addr, one)) << addr;
    EXPECT_EQ(bus.find(addr, 1), nullptr) << addr;
  }
  // An access starting below a range and running into it is not that range's.
  std::array<uint8_t, 4> four{};
  EXPECT_FALSE(bus.read(0xfe, four));
  // Huge addresses and lengths must not overflow the range check.
  EXPECT_EQ(bus.find(0x108, ~0ull), nullptr);
  EXPECT_EQ(bus.find(~0ull, ~0ull), nullptr);
  EXPECT_TRUE(dev->accesses.empty());
}

}  // namespace
}  // namespace vmm
