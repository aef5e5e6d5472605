// DeviceHarness: activates a WorkerDevice on anonymous guest memory with
// MockQueue-driven queues, counts its interrupts and waits (bounded) for the
// worker thread to complete requests.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "devices/virtio/testing/mock_queue.h"
#include "devices/virtio/worker_device.h"

namespace vmm::virtio::testing {

inline GuestMemory make_device_test_mem() {
  auto m = GuestMemory::create_anonymous({{0, 4 << 20}});
  EXPECT_TRUE(m.ok());
  return std::move(m).value();
}

class DeviceHarness {
 public:
  // Data buffers live from kDataBase on (the rings use the first 256 KiB of
  // each queue's 1 MiB window below).
  static constexpr Gpa kDataBase = 0x200000;

  explicit DeviceHarness(WorkerDevice& dev) : dev_(dev), mem_(make_device_test_mem()) {
    for (size_t i = 0; i < dev.num_queues(); ++i) {
      Gpa base = 0x40000 * (i + 1);
      mocks_.emplace_back(mem_, uint16_t{64}, base, base + 0x10000, base + 0x20000);
    }
  }
  ~DeviceHarness() { dev_.reset(); }

  Result<void> activate(uint64_t features) {
    std::vector<Queue> qs;
    for (size_t i = 0; i < mocks_.size(); ++i) {
      Queue q(dev_.queue_max_size(i));
      mocks_[i].configure(q);
      q.set_event_idx((features & kFeatureRingEventIdx) != 0);
      qs.push_back(std::move(q));
    }
    return dev_.activate(mem_, features, std::move(qs), [this](Interrupt k) {
      if (k == Interrupt::kUsedBuffer) ++used_irqs_;
      if (k == Interrupt::kNeedsReset) ++needs_reset_;
    });
  }

  MockQueue& q(size_t i) { return mocks_.at(i); }
  const GuestMemory& mem() const { return mem_; }

  // Waits until queue i's used idx reaches `idx` (or ~5 s pass).
  bool wait_used(size_t i, uint16_t idx) {
    return wait([&] { return mocks_.at(i).used_idx() == idx; });
  }
  bool wait_needs_reset() {
    return wait([&] { return needs_reset_.load() > 0; });
  }
  template <typename Pred>
  static bool wait(Pred p) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!p()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }

  std::vector<uint8_t> read(Gpa a, size_t n) const {
    std::vector<uint8_t> v(n);
    EXPECT_TRUE(mem_.read(a, v).ok());
    return v;
  }
  void write(Gpa a, const std::vector<uint8_t>& v) const { EXPECT_TRUE(mem_.write(a, v).ok()); }

  std::atomic<int> used_irqs_{0};
  std::atomic<int> needs_reset_{0};

 private:
  WorkerDevice& dev_;
  GuestMemory mem_;
  std::vector<MockQueue> mocks_;
};

}  // namespace vmm::virtio::testing
