#include "devices/virtio/mmio_transport.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "boot/x86_64/layout.h"
#include "devices/virtio/testing/mock_queue.h"
#include "tests/unit/devices/fake_irq.h"

namespace vmm::virtio {
namespace {

using T = MmioTransport;
constexpr uint64_t kBase = layout::kVirtioMmioBase;
constexpr uint64_t kFeatureA = 1ULL << 0;
constexpr uint64_t kFeatureHigh = 1ULL << 35;

class FakeDevice : public VirtioDevice {
 public:
  uint32_t device_type() const override { return 4; }
  uint64_t features() const override { return kFeatureA | kFeatureRingEventIdx | kFeatureHigh; }
  size_t num_queues() const override { return max_sizes.size(); }
  uint16_t queue_max_size(size_t i) const override { return max_sizes.at(i); }
  void read_config(uint64_t offset, std::span<uint8_t> data) override {
    for (size_t i = 0; i < data.size(); ++i)
      data[i] = offset < config.size() && i < config.size() - offset ? config[offset + i] : 0;
  }
  void write_config(uint64_t offset, std::span<const uint8_t> data) override {
    for (size_t i = 0; i < data.size(); ++i)
      if (offset < config.size() && i < config.size() - offset) config[offset + i] = data[i];
  }
  Result<void> activate(const GuestMemory&, uint64_t acked, std::vector<Queue> queues,
                        InterruptFn interrupt) override {
    ++activations;
    acked_features = acked;
    active_queues = std::move(queues);
    irq = std::move(interrupt);
    if (fail_activate) return make_error("fake activation failure");
    return ok();
  }
  void reset() override { ++resets; }
  Result<std::vector<QueueState>> save_queues() const override {
    std::vector<QueueState> out;
    for (const auto& q : active_queues) out.push_back(q.save());
    return out;
  }
  Result<void> activate_restored(const GuestMemory& mem, uint64_t acked, std::vector<Queue> queues,
                                 InterruptFn interrupt, bool broken) override {
    ++restored_activations;
    restored_broken = broken;
    return activate(mem, acked, std::move(queues), std::move(interrupt));
  }

  std::vector<uint16_t> max_sizes = {256, 16};
  std::array<uint8_t, 8> config = {1, 2, 3, 4, 5, 6, 7, 8};
  bool fail_activate = false;
  int activations = 0;
  int resets = 0;
  int restored_activations = 0;
  bool restored_broken = false;
  uint64_t acked_features = 0;
  std::vector<Queue> active_queues;
  InterruptFn irq;
};

GuestMemory make_mem() {
  auto m = GuestMemory::create_anonymous({{0, 1 << 20}});
  EXPECT_TRUE(m.ok());
  return std::move(m).value();
}

class VirtioMmioTest : public ::testing::Test {
 protected:
  VirtioMmioTest()
      : mem_(make_mem()),
        dev_(std::make_shared<FakeDevice>()),
        irq_(std::make_shared<vmm::testing::FakeIrqLine>()) {
    auto t = T::create(mem_, dev_, irq_, [this](uint32_t q) { notified_.push_back(q); });
    EXPECT_TRUE(t.ok());
    t_ = std::move(t).value();
  }

  uint32_t r32(uint64_t off) {
    uint8_t b[4] = {0xee, 0xee, 0xee, 0xee};
    t_->read(kBase, off, std::span<uint8_t>(b, 4));
    uint32_t v;
    std::memcpy(&v, b, 4);
    return v;
  }
  void w32(uint64_t off, uint32_t v) {
    uint8_t b[4];
    std::memcpy(b, &v, 4);
    t_->write(kBase, off, std::span<const uint8_t>(b, 4));
  }
  void negotiate(uint64_t features) {
    w32(T::kRegStatus, kStatusAcknowledge);
    w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver);
    w32(T::kRegDriverFeaturesSel, 0);
    w32(T::kRegDriverFeatures, static_cast<uint32_t>(features));
    w32(T::kRegDriverFeaturesSel, 1);
    w32(T::kRegDriverFeatures, static_cast<uint32_t>(features >> 32));
    w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  }
  void setup_queue(uint32_t index, uint16_t size, Gpa desc, Gpa avail, Gpa used) {
    w32(T::kRegQueueSel, index);
    w32(T::kRegQueueNum, size);
    w32(T::kRegQueueDescLow, static_cast<uint32_t>(desc));
    w32(T::kRegQueueDescHigh, static_cast<uint32_t>(desc >> 32));
    w32(T::kRegQueueDriverLow, static_cast<uint32_t>(avail));
    w32(T::kRegQueueDriverHigh, static_cast<uint32_t>(avail >> 32));
    w32(T::kRegQueueDeviceLow, static_cast<uint32_t>(used));
    w32(T::kRegQueueDeviceHigh, static_cast<uint32_t>(used >> 32));
    w32(T::kRegQueueReady, 1);
  }
  static constexpr uint32_t kAllOk =
      kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk;
  void bring_up(uint64_t features = kFeatureVersion1) {
    negotiate(features);
    setup_queue(0, 128, 0x10000, 0x20000, 0x30000);
    setup_queue(1, 16, 0x40000, 0x41000, 0x42000);
    w32(T::kRegStatus, kAllOk);
  }

  GuestMemory mem_;
  std::shared_ptr<FakeDevice> dev_;
  std::shared_ptr<vmm::testing::FakeIrqLine> irq_;
  std::vector<uint32_t> notified_;
  std::shared_ptr<T> t_;
};

TEST_F(VirtioMmioTest, MagicVersionIds) {
  EXPECT_EQ(r32(T::kRegMagic), 0x74726976u);
  EXPECT_EQ(r32(T::kRegVersion), 2u);
  EXPECT_EQ(r32(T::kRegDeviceId), 4u);
  EXPECT_EQ(r32(T::kRegVendorId), T::kVendorId);
  EXPECT_EQ(r32(T::kRegStatus), 0u);
  EXPECT_EQ(r32(T::kRegInterruptStatus), 0u);
  EXPECT_EQ(r32(T::kRegConfigGeneration), 0u);
  EXPECT_EQ(r32(T::kRegShmLenLow), 0xffffffffu);
  EXPECT_EQ(r32(T::kRegShmLenHigh), 0xffffffffu);
}

TEST_F(VirtioMmioTest, CreateRefusesBadQueueSizes) {
  for (uint16_t bad : {0, 100, 2048}) {
    auto d = std::make_shared<FakeDevice>();
    d->max_sizes = {256, bad};
    EXPECT_FALSE(T::create(mem_, d, nullptr, {}).ok()) << bad;
  }
  EXPECT_FALSE(T::create(mem_, nullptr, nullptr, {}).ok());
}

TEST_F(VirtioMmioTest, DeviceFeaturesPages) {
  w32(T::kRegDeviceFeaturesSel, 0);
  EXPECT_EQ(r32(T::kRegDeviceFeatures), static_cast<uint32_t>(kFeatureA | kFeatureRingEventIdx));
  w32(T::kRegDeviceFeaturesSel, 1);
  EXPECT_EQ(r32(T::kRegDeviceFeatures),
            static_cast<uint32_t>((kFeatureHigh | kFeatureVersion1) >> 32));
  w32(T::kRegDeviceFeaturesSel, 2);
  EXPECT_EQ(r32(T::kRegDeviceFeatures), 0u);
  w32(T::kRegDeviceFeaturesSel, 0xffffffff);
  EXPECT_EQ(r32(T::kRegDeviceFeatures), 0u);
}

TEST_F(VirtioMmioTest, FeatureNegotiationAccepted) {
  negotiate(kFeatureVersion1 | kFeatureA | kFeatureHigh);
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  EXPECT_EQ(t_->acked_features(), kFeatureVersion1 | kFeatureA | kFeatureHigh);
  // Driver features are frozen once FEATURES_OK is set.
  w32(T::kRegDriverFeaturesSel, 0);
  w32(T::kRegDriverFeatures, 0);
  EXPECT_EQ(t_->acked_features(), kFeatureVersion1 | kFeatureA | kFeatureHigh);
}

TEST_F(VirtioMmioTest, FeaturesOkRefusedWithoutVersion1) {
  negotiate(kFeatureA);
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver);
  // DRIVER_OK cannot follow.
  w32(T::kRegStatus, kAllOk);
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver);
  EXPECT_EQ(dev_->activations, 0);
}

TEST_F(VirtioMmioTest, FeaturesOkRefusedWithUnofferedBits) {
  negotiate(kFeatureVersion1 | (1ULL << 5));
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver);
  negotiate(kFeatureVersion1 | (1ULL << 63));
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver);
  // The driver may retry with a good set.
  negotiate(kFeatureVersion1);
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
}

TEST_F(VirtioMmioTest, DriverFeaturesIgnoredBeforeDriverStatus) {
  w32(T::kRegDriverFeaturesSel, 0);
  w32(T::kRegDriverFeatures, 0xffffffff);
  EXPECT_EQ(t_->acked_features(), 0u);
}

TEST_F(VirtioMmioTest, StatusOrderingEnforced) {
  w32(T::kRegStatus, kStatusDriver);  // DRIVER without ACKNOWLEDGE
  EXPECT_EQ(r32(T::kRegStatus), 0u);
  w32(T::kRegStatus, kStatusAcknowledge);
  w32(T::kRegStatus, kStatusAcknowledge | kStatusFeaturesOk);  // FEATURES_OK without DRIVER
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge);
  w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusDriverOk);  // no FEATURES_OK
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge);
  w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver);
  w32(T::kRegStatus, kStatusAcknowledge);  // clearing a bit: ignored
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver);
  w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusNeedsReset | 0x30);
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver);  // device-only bits dropped
  w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFailed);
  EXPECT_EQ(r32(T::kRegStatus), kStatusAcknowledge | kStatusDriver | kStatusFailed);
}

TEST_F(VirtioMmioTest, QueueRegisters) {
  w32(T::kRegQueueSel, 0);
  EXPECT_EQ(r32(T::kRegQueueNumMax), 256u);
  w32(T::kRegQueueSel, 1);
  EXPECT_EQ(r32(T::kRegQueueNumMax), 16u);
  w32(T::kRegQueueSel, 2);
  EXPECT_EQ(r32(T::kRegQueueNumMax), 0u);
  EXPECT_EQ(r32(T::kRegQueueReady), 0u);
  w32(T::kRegQueueReady, 1);  // nonexistent queue: ignored
  w32(T::kRegQueueNum, 8);

  negotiate(kFeatureVersion1);
  setup_queue(0, 64, 0x1234500010000ULL, 0x20000, 0x30000);
  const Queue* q = t_->queue(0);
  ASSERT_NE(q, nullptr);
  EXPECT_TRUE(q->ready());
  EXPECT_EQ(q->size(), 64);
  EXPECT_EQ(q->desc_table(), 0x1234500010000ULL);
  EXPECT_EQ(q->avail_ring(), 0x20000u);
  EXPECT_EQ(q->used_ring(), 0x30000u);
  w32(T::kRegQueueSel, 0);
  EXPECT_EQ(r32(T::kRegQueueReady), 1u);

  // While ready, configuration writes are ignored.
  w32(T::kRegQueueNum, 32);
  w32(T::kRegQueueDescLow, 0x50000);
  w32(T::kRegQueueDriverHigh, 1);
  w32(T::kRegQueueDeviceLow, 0x60000);
  EXPECT_EQ(q->size(), 64);
  EXPECT_EQ(q->desc_table(), 0x1234500010000ULL);
  EXPECT_EQ(q->avail_ring(), 0x20000u);
  EXPECT_EQ(q->used_ring(), 0x30000u);

  // Not ready again: writable.
  w32(T::kRegQueueReady, 0);
  EXPECT_EQ(r32(T::kRegQueueReady), 0u);
  w32(T::kRegQueueNum, 32);
  EXPECT_EQ(q->size(), 32);
  w32(T::kRegQueueNum, 0x10010);  // too large for 16 bits: stored as invalid
  EXPECT_EQ(q->size(), 0);
}

TEST_F(VirtioMmioTest, DriverOkActivatesDevice) {
  bring_up(kFeatureVersion1 | kFeatureRingEventIdx | kFeatureA);
  EXPECT_EQ(r32(T::kRegStatus), kAllOk);
  EXPECT_TRUE(t_->activated());
  EXPECT_EQ(dev_->activations, 1);
  EXPECT_EQ(dev_->acked_features, kFeatureVersion1 | kFeatureRingEventIdx | kFeatureA);
  ASSERT_EQ(dev_->active_queues.size(), 2u);
  EXPECT_EQ(dev_->active_queues[0].size(), 128);
  EXPECT_EQ(dev_->active_queues[0].desc_table(), 0x10000u);
  EXPECT_TRUE(dev_->active_queues[0].event_idx());
  EXPECT_EQ(dev_->active_queues[1].size(), 16);
  EXPECT_EQ(r32(T::kRegInterruptStatus), 0u);
  EXPECT_FALSE(irq_->level());

  // After DRIVER_OK queue registers are frozen, even QueueReady.
  w32(T::kRegQueueSel, 0);
  w32(T::kRegQueueReady, 0);
  EXPECT_EQ(r32(T::kRegQueueReady), 1u);
}

TEST_F(VirtioMmioTest, ActivatedQueueWorksWithMockDriver) {
  bring_up();
  testing::MockQueue mq(mem_, 128, 0x10000, 0x20000, 0x30000);
  uint16_t head = mq.add_chain({{0x80000, 4}, {0x81000, 16, true}});
  Queue& q = dev_->active_queues[0];
  auto c = q.pop(mem_);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->has_value());
  ASSERT_TRUE(q.add_used(mem_, head, 16).ok());
  EXPECT_EQ(mq.used_idx(), 1);
  dev_->irq(Interrupt::kUsedBuffer);
  EXPECT_TRUE(irq_->level());
}

TEST_F(VirtioMmioTest, DriverOkWithBadRingSetsNeedsReset) {
  negotiate(kFeatureVersion1);
  setup_queue(0, 128, 0x10008, 0x20000, 0x30000);  // misaligned descriptor table
  w32(T::kRegStatus, kAllOk);
  EXPECT_EQ(r32(T::kRegStatus), kAllOk | kStatusNeedsReset);
  EXPECT_FALSE(t_->activated());
  EXPECT_EQ(dev_->activations, 0);
  EXPECT_EQ(r32(T::kRegInterruptStatus), kInterruptConfigChange);
  EXPECT_TRUE(irq_->level());
  EXPECT_NE(t_->last_error().find("aligned"), std::string::npos) << t_->last_error();
  // Notifications go nowhere while not activated.
  w32(T::kRegQueueNotify, 0);
  EXPECT_TRUE(notified_.empty());
  // Reset recovers.
  w32(T::kRegStatus, 0);
  EXPECT_EQ(r32(T::kRegStatus), 0u);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(dev_->resets, 0);  // never activated
  bring_up();
  EXPECT_TRUE(t_->activated());
}

TEST_F(VirtioMmioTest, DriverOkWithRingOutsideMemorySetsNeedsReset) {
  negotiate(kFeatureVersion1);
  setup_queue(1, 16, 0x40000, 0x41000, 0xfffff000);
  w32(T::kRegStatus, kAllOk);
  EXPECT_TRUE(r32(T::kRegStatus) & kStatusNeedsReset);
  EXPECT_FALSE(t_->activated());
}

TEST_F(VirtioMmioTest, DriverOkWithBadQueueSizeSetsNeedsReset) {
  negotiate(kFeatureVersion1);
  setup_queue(0, 100, 0x10000, 0x20000, 0x30000);
  w32(T::kRegStatus, kAllOk);
  EXPECT_TRUE(r32(T::kRegStatus) & kStatusNeedsReset);
}

TEST_F(VirtioMmioTest, ActivationFailureSetsNeedsReset) {
  dev_->fail_activate = true;
  bring_up();
  EXPECT_EQ(r32(T::kRegStatus), kAllOk | kStatusNeedsReset);
  EXPECT_FALSE(t_->activated());
  EXPECT_EQ(r32(T::kRegInterruptStatus), kInterruptConfigChange);
  EXPECT_EQ(t_->last_error(), "fake activation failure");
}

TEST_F(VirtioMmioTest, DeviceCanRequestNeedsReset) {
  bring_up();
  dev_->irq(Interrupt::kNeedsReset);
  EXPECT_EQ(r32(T::kRegStatus), kAllOk | kStatusNeedsReset);
  EXPECT_EQ(r32(T::kRegInterruptStatus), kInterruptConfigChange);
  EXPECT_TRUE(irq_->level());
}

TEST_F(VirtioMmioTest, ResetViaStatusZero) {
  bring_up(kFeatureVersion1 | kFeatureRingEventIdx);
  dev_->irq(Interrupt::kUsedBuffer);
  EXPECT_TRUE(irq_->level());
  w32(T::kRegQueueSel, 1);
  w32(T::kRegStatus, 0);
  EXPECT_EQ(dev_->resets, 1);
  EXPECT_FALSE(t_->activated());
  EXPECT_EQ(r32(T::kRegStatus), 0u);
  EXPECT_EQ(r32(T::kRegInterruptStatus), 0u);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(t_->acked_features(), 0u);
  EXPECT_EQ(r32(T::kRegQueueReady), 0u);  // QueueSel back to 0, queue not ready
  const Queue* q = t_->queue(0);
  EXPECT_FALSE(q->ready());
  EXPECT_EQ(q->size(), 256);
  EXPECT_EQ(q->desc_table(), 0u);
  // A callback from the previous activation is now inert.
  auto stale = dev_->irq;
  stale(Interrupt::kUsedBuffer);
  stale(Interrupt::kNeedsReset);
  EXPECT_EQ(r32(T::kRegInterruptStatus), 0u);
  EXPECT_EQ(r32(T::kRegStatus), 0u);
  EXPECT_FALSE(irq_->level());
  // And the device can be brought up again.
  bring_up();
  EXPECT_EQ(dev_->activations, 2);
}

TEST_F(VirtioMmioTest, NotifyCallback) {
  w32(T::kRegQueueNotify, 0);  // before activation: ignored
  EXPECT_TRUE(notified_.empty());
  bring_up();
  w32(T::kRegQueueNotify, 1);
  w32(T::kRegQueueNotify, 0);
  w32(T::kRegQueueNotify, 2);  // no such queue
  w32(T::kRegQueueNotify, 0xffffffff);
  EXPECT_EQ(notified_, (std::vector<uint32_t>{1, 0}));
  EXPECT_EQ(r32(T::kRegQueueNotify), 0u);  // write-only
}

TEST_F(VirtioMmioTest, InterruptStatusAndAck) {
  bring_up();
  dev_->irq(Interrupt::kUsedBuffer);
  EXPECT_EQ(r32(T::kRegInterruptStatus), kInterruptUsedBuffer);
  EXPECT_TRUE(irq_->level());
  dev_->irq(Interrupt::kConfigChange);
  EXPECT_EQ(r32(T::kRegInterruptStatus), kInterruptUsedBuffer | kInterruptConfigChange);
  EXPECT_EQ(r32(T::kRegConfigGeneration), 1u);
  w32(T::kRegInterruptAck, kInterruptUsedBuffer);
  EXPECT_EQ(r32(T::kRegInterruptStatus), kInterruptConfigChange);
  EXPECT_TRUE(irq_->level());
  w32(T::kRegInterruptAck, 0xffffffff);
  EXPECT_EQ(r32(T::kRegInterruptStatus), 0u);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(irq_->raises(), 1);
  EXPECT_EQ(irq_->changes(), 2);
  // InterruptStatus is read-only.
  w32(T::kRegInterruptStatus, 3);
  EXPECT_EQ(r32(T::kRegInterruptStatus), 0u);
}

TEST_F(VirtioMmioTest, ConfigSpaceAnyWidth) {
  uint8_t b = 0;
  t_->read(kBase, 0x101, std::span<uint8_t>(&b, 1));
  EXPECT_EQ(b, 2);
  uint8_t two[2] = {0xaa, 0xbb};
  t_->write(kBase, 0x106, std::span<const uint8_t>(two, 2));
  EXPECT_EQ(dev_->config[6], 0xaa);
  EXPECT_EQ(dev_->config[7], 0xbb);
  uint8_t eight[8];
  t_->read(kBase, 0x100, std::span<uint8_t>(eight, 8));
  EXPECT_EQ(eight[0], 1);
  EXPECT_EQ(eight[7], 0xbb);
  // Past the device's config: zeros, writes dropped.
  t_->read(kBase, 0x106, std::span<uint8_t>(eight, 8));
  EXPECT_EQ(eight[0], 0xaa);
  EXPECT_EQ(eight[2], 0);
  EXPECT_EQ(r32(0xffc), 0u);
  EXPECT_EQ(r32(0xffffffffffffff00ULL), 0u);
  w32(0xfffffffffffffffcULL, 0x12345678);
}

TEST_F(VirtioMmioTest, GarbageOffsetsAndAccessSizes) {
  bring_up();
  dev_->irq(Interrupt::kUsedBuffer);
  uint32_t status = r32(T::kRegStatus);
  // Every register offset with every non-4-byte width, and every unaligned
  // 4-byte access: reads return 0, writes change nothing.
  for (uint64_t off = 0; off < T::kConfigOffset; ++off) {
    for (size_t width : {1, 2, 3, 8, 16}) {
      std::vector<uint8_t> buf(width, 0xee);
      t_->read(kBase, off, buf);
      for (uint8_t v : buf) ASSERT_EQ(v, 0) << off << "/" << width;
      std::vector<uint8_t> zero(width, 0);
      t_->write(kBase, off, zero);
    }
    if (off % 4 != 0) {
      EXPECT_EQ(r32(off), 0u) << off;
      w32(off, 0);
    }
  }
  EXPECT_EQ(r32(T::kRegStatus), status);
  EXPECT_EQ(r32(T::kRegInterruptStatus), kInterruptUsedBuffer);
  EXPECT_TRUE(t_->activated());
  // Zero-width accesses.
  t_->read(kBase, T::kRegStatus, std::span<uint8_t>());
  t_->write(kBase, T::kRegStatus, std::span<const uint8_t>());
  // Unknown aligned registers read 0 and ignore writes.
  for (uint64_t off :
       {0x018, 0x01c, 0x028, 0x03c, 0x040, 0x048, 0x054, 0x068, 0x074, 0x0a8, 0x0c0, 0x0f8}) {
    w32(off, 0xffffffff);
    EXPECT_EQ(r32(off), 0u) << off;
  }
  // Write-only registers read 0.
  for (uint64_t off : {T::kRegDeviceFeaturesSel, T::kRegDriverFeatures, T::kRegDriverFeaturesSel,
                       T::kRegQueueSel, T::kRegQueueNum, T::kRegInterruptAck, T::kRegQueueDescLow,
                       T::kRegQueueDescHigh, T::kRegQueueDriverLow, T::kRegQueueDeviceHigh})
    EXPECT_EQ(r32(off), 0u) << off;
  // Read-only registers ignore writes.
  w32(T::kRegMagic, 0);
  w32(T::kRegVersion, 1);
  w32(T::kRegDeviceId, 9);
  w32(T::kRegConfigGeneration, 7);
  EXPECT_EQ(r32(T::kRegMagic), T::kMagic);
  EXPECT_EQ(r32(T::kRegVersion), 2u);
  EXPECT_EQ(r32(T::kRegDeviceId), 4u);
  EXPECT_EQ(r32(T::kRegConfigGeneration), 0u);
  EXPECT_EQ(r32(T::kRegStatus), status);
}

TEST_F(VirtioMmioTest, HugeQueueSelIsSafe) {
  w32(T::kRegQueueSel, 0xffffffff);
  EXPECT_EQ(r32(T::kRegQueueNumMax), 0u);
  EXPECT_EQ(r32(T::kRegQueueReady), 0u);
  w32(T::kRegQueueNum, 8);
  w32(T::kRegQueueDescLow, 0x1000);
  w32(T::kRegQueueReady, 1);
  EXPECT_EQ(t_->queue(2), nullptr);
  EXPECT_FALSE(t_->queue(0)->ready());
  EXPECT_FALSE(t_->queue(1)->ready());
}

// Snapshots at the transport level (every device model: state_roundtrip_test).
TEST_F(VirtioMmioTest, RestoreReactivatesWithTheSavedQueuesUnreset) {
  bring_up(kFeatureVersion1 | kFeatureRingEventIdx);
  ASSERT_EQ(dev_->activations, 1);
  // The device moved queue 0 on, as a worker would.
  QueueState moved = dev_->active_queues[0].save();
  moved.next_avail = 5;
  moved.next_used = 4;
  moved.signalled_used = 4;
  ASSERT_TRUE(dev_->active_queues[0].restore(moved, mem_).ok());
  dev_->irq(Interrupt::kUsedBuffer);
  dev_->irq(Interrupt::kConfigChange);
  w32(T::kRegQueueSel, 0xffffffff);  // stored as "past the last queue"
  auto st = t_->save();
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_TRUE(st->activated);
  EXPECT_EQ(st->queue_sel, 2u);
  EXPECT_EQ(st->queues[0], moved);
  EXPECT_EQ(st->config_generation, 1u);
  EXPECT_EQ(st->interrupt_status, kInterruptUsedBuffer | kInterruptConfigChange);

  auto dev2 = std::make_shared<FakeDevice>();
  auto irq2 = std::make_shared<vmm::testing::FakeIrqLine>();
  auto t2 = T::create(mem_, dev2, irq2, {});
  ASSERT_TRUE(t2.ok());
  ASSERT_TRUE((*t2)->restore(*st).ok());
  EXPECT_EQ(dev2->restored_activations, 1);
  EXPECT_FALSE(dev2->restored_broken);
  EXPECT_EQ(dev2->acked_features, kFeatureVersion1 | kFeatureRingEventIdx);
  ASSERT_EQ(dev2->active_queues.size(), 2u);
  EXPECT_EQ(dev2->active_queues[0].save(), moved);  // continues, not reset
  EXPECT_TRUE(dev2->active_queues[1].event_idx());
  EXPECT_TRUE(irq2->level());
  EXPECT_EQ(irq2->raises(), 1);
  auto st2 = (*t2)->save();
  ASSERT_TRUE(st2.ok());
  EXPECT_EQ(*st2, *st);

  // Restoring onto the activated transport resets the device first, and the
  // old activation's interrupt callback becomes a no-op.
  InterruptFn old_irq = dev2->irq;
  ASSERT_TRUE((*t2)->restore(*st).ok());
  EXPECT_EQ(dev2->resets, 1);
  EXPECT_EQ(dev2->restored_activations, 2);
  old_irq(Interrupt::kConfigChange);
  EXPECT_EQ((*t2)->save()->config_generation, 1u);
  dev2->irq(Interrupt::kConfigChange);
  EXPECT_EQ((*t2)->save()->config_generation, 2u);

  // DEVICE_NEEDS_RESET travels, and the device is told to stay stopped.
  st->status |= kStatusNeedsReset;
  ASSERT_TRUE((*t2)->restore(*st).ok());
  EXPECT_TRUE(dev2->restored_broken);
  EXPECT_EQ((*t2)->status(), kAllOk | kStatusNeedsReset);
}

TEST_F(VirtioMmioTest, RestoreFailureOfTheDeviceLeavesNeedsReset) {
  bring_up();
  auto st = t_->save();
  ASSERT_TRUE(st.ok());
  auto dev2 = std::make_shared<FakeDevice>();
  dev2->fail_activate = true;
  auto t2 = T::create(mem_, dev2, nullptr, {});
  ASSERT_TRUE(t2.ok());
  auto r = (*t2)->restore(*st);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("fake activation failure"), std::string::npos);
  EXPECT_FALSE((*t2)->activated());
  EXPECT_EQ((*t2)->status(), kAllOk | kStatusNeedsReset);
  // A validation failure, by contrast, changes nothing.
  auto t3 = T::create(mem_, std::make_shared<FakeDevice>(), nullptr, {});
  ASSERT_TRUE(t3.ok());
  st->queues.pop_back();
  EXPECT_FALSE((*t3)->restore(*st).ok());
  EXPECT_EQ((*t3)->status(), 0u);
}

}  // namespace
}  // namespace vmm::virtio
