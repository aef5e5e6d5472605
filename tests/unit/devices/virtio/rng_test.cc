#include "devices/virtio/rng.h"

#include <gtest/gtest.h>

#include "tests/unit/devices/virtio/device_harness.h"

namespace vmm::virtio {
namespace {

using testing::DeviceHarness;

TEST(RngTest, FillsBuffersWithFreshBytes) {
  auto d = RngDevice::create();
  ASSERT_TRUE(d.ok());
  DeviceHarness h(**d);
  ASSERT_TRUE(h.activate(kFeatureVersion1).ok());
  constexpr Gpa a = DeviceHarness::kDataBase, b = a + 0x1000;
  h.q(0).add_chain({{a, 32, true}, {a + 32, 32, true}});
  h.q(0).add_chain({{b, 64, true}});
  (*d)->notify_queue(0);
  ASSERT_TRUE(h.wait_used(0, 2));
  EXPECT_EQ(h.q(0).used_elem(0).len, 64u);
  EXPECT_EQ(h.q(0).used_elem(1).len, 64u);
  auto x = h.read(a, 64), y = h.read(b, 64);
  EXPECT_NE(x, y);
  EXPECT_NE(x, std::vector<uint8_t>(64, 0));
  EXPECT_EQ((*d)->bytes_served(), 128u);
}

TEST(RngTest, ReadOnlyChainGetsNothingAndHugeChainIsCapped) {
  auto d = RngDevice::create();
  ASSERT_TRUE(d.ok());
  DeviceHarness h(**d);
  ASSERT_TRUE(h.activate(kFeatureVersion1).ok());
  h.q(0).add_chain({{DeviceHarness::kDataBase, 64, false}});
  h.q(0).add_chain({{DeviceHarness::kDataBase, 1 << 20, true}});
  (*d)->notify_queue(0);
  ASSERT_TRUE(h.wait_used(0, 2));
  EXPECT_EQ(h.q(0).used_elem(0).len, 0u);
  EXPECT_EQ(h.q(0).used_elem(1).len, kRngMaxPerChain);
  EXPECT_FALSE((*d)->broken());
}

TEST(RngTest, MissingSourceIsAnError) { EXPECT_FALSE(RngDevice::create("/nonexistent").ok()); }

}  // namespace
}  // namespace vmm::virtio
