// virtio-net (VIRTIO 1.2 section 5.1) over a Linux TAP device.
//
// The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte
// vnet header, which is exactly struct virtio_net_hdr_v1: frames move between
// the TAP and guest buffers with readv/writev and no copy or translation.
// Checksum and TSO offloads are offered in both directions; what the guest
// acks for receiving is handed to the TAP with TUNSETOFFLOAD, and the kernel
// validates every header the guest sends (a bad one is dropped, counted and
// warned about).
//
// Queue 0 is RX, queue 1 TX. Back-pressure: when the guest has no RX buffers
// the device stops polling the TAP (frames wait in the TAP's bounded socket
// queue, and the host kernel drops beyond it) until the guest notifies RX.
// Nothing is buffered in the VMM beyond one popped chain.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "devices/virtio/worker_device.h"

namespace vmm::virtio {

inline constexpr uint64_t kNetFeatureCsum = 1ULL << 0;
inline constexpr uint64_t kNetFeatureGuestCsum = 1ULL << 1;
inline constexpr uint64_t kNetFeatureMac = 1ULL << 5;
inline constexpr uint64_t kNetFeatureGuestTso4 = 1ULL << 7;
inline constexpr uint64_t kNetFeatureGuestTso6 = 1ULL << 8;
inline constexpr uint64_t kNetFeatureHostTso4 = 1ULL << 11;
inline constexpr uint64_t kNetFeatureHostTso6 = 1ULL << 12;
inline constexpr size_t kNetHdrSize = 12;  // virtio_net_hdr_v1
inline constexpr uint16_t kNetQueueSize = 256;
// Largest frame (after the header) we move: a 64 KiB GSO frame plus its
// Ethernet/VLAN header.
inline constexpr uint64_t kNetMaxFrame = 65536 + 14 + 4;

using MacAddress = std::array<uint8_t, 6>;

struct NetConfig {
  std::string tap;                 // interface name
  std::optional<MacAddress> mac;   // default: derived from the TAP name
};

struct NetStats {
  std::atomic<uint64_t> rx_frames{0}, rx_bytes{0}, rx_dropped{0};
  std::atomic<uint64_t> tx_frames{0}, tx_bytes{0}, tx_dropped{0};
};

// "52:54:00:12:34:56" -> bytes; refuses anything else, and multicast.
Result<MacAddress> parse_mac(const std::string& text);
std::string format_mac(const MacAddress& mac);

class NetDevice final : public WorkerDevice {
 public:
  // Opens /dev/net/tun and attaches to (or creates) the TAP named cfg.tap.
  static Result<std::shared_ptr<NetDevice>> create(const NetConfig& cfg);
  // For tests: any datagram-like fd pair standing in for a TAP (no ioctls).
  static Result<std::shared_ptr<NetDevice>> create_for_fd(UniqueFd fd, MacAddress mac);
  ~NetDevice() override;

  uint32_t device_type() const override { return kDeviceIdNet; }
  uint64_t features() const override;
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void write_config(uint64_t, std::span<const uint8_t>) override {}

  // Snapshot "device" section: bytes mac (6). Restore refuses another MAC
  // (the guest has read it from config space). The TAP's offloads follow
  // from the acked features and are set again at activation.
  void save_device_section(snapshot::Section& s) const override;
  Result<void> restore_device_section(const snapshot::Section& s) override;

  const MacAddress& mac() const { return mac_; }
  const NetStats& stats() const { return stats_; }

 private:
  NetDevice(UniqueFd tap, MacAddress mac, bool is_tap, std::string name);
  Result<void> on_activate(EventLoop& loop) override;
  void on_reset() override;
  void on_pause() override;
  void process_queue(size_t index) override;
  void process_rx();
  void process_tx();
  void set_rx_interest(bool on);

  UniqueFd tap_;
  MacAddress mac_;
  bool is_tap_;
  EventLoop* loop_ = nullptr;
  bool rx_interest_ = false;
  std::optional<DescriptorChain> rx_chain_;  // popped, waiting for a frame
  NetStats stats_;
};

}  // namespace vmm::virtio
