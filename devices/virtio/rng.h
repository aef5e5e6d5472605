// virtio-rng (entropy device, VIRTIO 1.2 section 5.4): fills each buffer the
// guest offers with bytes read from /dev/urandom (at most 64 KiB per chain).
#pragma once

#include <memory>
#include <string>

#include "devices/virtio/worker_device.h"

namespace vmm::virtio {

inline constexpr uint16_t kRngQueueSize = 64;
inline constexpr uint32_t kRngMaxPerChain = 64 * 1024;

class RngDevice final : public WorkerDevice {
 public:
  static Result<std::shared_ptr<RngDevice>> create(const std::string& source = "/dev/urandom");
  ~RngDevice() override;

  uint32_t device_type() const override { return kDeviceIdRng; }
  uint64_t features() const override { return kFeatureRingEventIdx | kFeatureRingIndirectDesc; }
  void read_config(uint64_t, std::span<uint8_t>) override {}
  void write_config(uint64_t, std::span<const uint8_t>) override {}
  uint64_t bytes_served() const { return bytes_.load(); }

 private:
  RngDevice(UniqueFd fd) : WorkerDevice("virtio-rng", {kRngQueueSize}), fd_(std::move(fd)) {}
  void process_queue(size_t index) override;
  Result<uint32_t> handle(const DescriptorChain& chain);

  UniqueFd fd_;
  std::atomic<uint64_t> bytes_{0};
};

}  // namespace vmm::virtio
