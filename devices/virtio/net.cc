#include "devices/virtio/net.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "devices/virtio/iov.h"

namespace vmm::virtio {
namespace {

constexpr size_t kRxQueue = 0;
constexpr size_t kTxQueue = 1;

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Result<MacAddress> parse_mac(const std::string& text) {
  MacAddress mac{};
  if (text.size() != 17) return make_error("MAC address '{}' is not of the form aa:bb:cc:dd:ee:ff", text);
  for (size_t i = 0; i < 6; ++i) {
    int hi = hexval(text[3 * i]), lo = hexval(text[3 * i + 1]);
    if (hi < 0 || lo < 0 || (i < 5 && text[3 * i + 2] != ':'))
      return make_error("MAC address '{}' is not of the form aa:bb:cc:dd:ee:ff", text);
    mac[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  if (mac[0] & 1) return make_error("MAC address '{}' is a multicast address", text);
  return mac;
}

std::string format_mac(const MacAddress& m) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4],
                     m[5]);
}

Result<std::shared_ptr<NetDevice>> NetDevice::create(const NetConfig& cfg) {
  if (cfg.tap.empty() || cfg.tap.size() >= IFNAMSIZ)
    return make_error("TAP name '{}' must be 1-{} characters", cfg.tap, IFNAMSIZ - 1);
  int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return errno_error("cannot open /dev/net/tun (for TAP '{}')", cfg.tap);
  UniqueFd tap(fd);
  unsigned int features = 0;
  if (::ioctl(fd, TUNGETFEATURES, &features) < 0) return errno_error("TUNGETFEATURES");
  if (!(features & IFF_VNET_HDR)) return make_error("this kernel's TUN lacks IFF_VNET_HDR");
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, cfg.tap.data(), cfg.tap.size());
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (::ioctl(fd, TUNSETIFF, &ifr) < 0) return errno_error("cannot attach to TAP '{}'", cfg.tap);
  int hdr = static_cast<int>(kNetHdrSize);
  if (::ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) return errno_error("TUNSETVNETHDRSZ on '{}'", cfg.tap);
  // No offloads toward the guest until it acks them.
  if (::ioctl(fd, TUNSETOFFLOAD, 0) < 0) return errno_error("TUNSETOFFLOAD on '{}'", cfg.tap);
  MacAddress mac;
  if (cfg.mac) {
    mac = *cfg.mac;
  } else {
    // Stable per TAP name, in QEMU's locally used 52:54:00 prefix.
    size_t h = std::hash<std::string>{}(cfg.tap);
    mac = {0x52, 0x54, 0x00, static_cast<uint8_t>(h), static_cast<uint8_t>(h >> 8),
           static_cast<uint8_t>(h >> 16)};
  }
  auto dev = std::shared_ptr<NetDevice>(
      new NetDevice(std::move(tap), mac, true, fmt::format("virtio-net({})", cfg.tap)));
  VMM_CHECK(dev->init_events());
  return dev;
}

Result<std::shared_ptr<NetDevice>> NetDevice::create_for_fd(UniqueFd fd, MacAddress mac) {
  int fl = ::fcntl(fd.get(), F_GETFL);
  if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK) < 0) return errno_error("O_NONBLOCK");
  auto dev = std::shared_ptr<NetDevice>(new NetDevice(std::move(fd), mac, false, "virtio-net(fd)"));
  VMM_CHECK(dev->init_events());
  return dev;
}

NetDevice::NetDevice(UniqueFd tap, MacAddress mac, bool is_tap, std::string name)
    : WorkerDevice(std::move(name), {kNetQueueSize, kNetQueueSize}),
      tap_(std::move(tap)),
      mac_(mac),
      is_tap_(is_tap) {}

NetDevice::~NetDevice() { reset(); }

uint64_t NetDevice::features() const {
  return kNetFeatureCsum | kNetFeatureGuestCsum | kNetFeatureMac | kNetFeatureGuestTso4 |
         kNetFeatureGuestTso6 | kNetFeatureHostTso4 | kNetFeatureHostTso6 | kFeatureRingEventIdx |
         kFeatureRingIndirectDesc;
}

void NetDevice::read_config(uint64_t offset, std::span<uint8_t> data) {
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t o = offset + i;
    data[i] = o < mac_.size() ? mac_[o] : 0;
  }
}

Result<void> NetDevice::on_activate(EventLoop& loop) {
  if (is_tap_) {
    uint64_t f = acked_features();
    unsigned offload = 0;
    if (f & kNetFeatureGuestCsum) {
      offload |= TUN_F_CSUM;
      if (f & kNetFeatureGuestTso4) offload |= TUN_F_TSO4;
      if (f & kNetFeatureGuestTso6) offload |= TUN_F_TSO6;
    }
    if (::ioctl(tap_.get(), TUNSETOFFLOAD, offload) < 0) return errno_error("TUNSETOFFLOAD");
  }
  loop_ = &loop;
  rx_interest_ = true;
  return loop.add(tap_.get(), EPOLLIN, [this](uint32_t) {
    if (!broken()) process_rx();
  });
}

void NetDevice::on_reset() {
  // The worker is stopped: the loop (and our registration) die with it.
  loop_ = nullptr;
  rx_chain_.reset();
  if (is_tap_) (void)::ioctl(tap_.get(), TUNSETOFFLOAD, 0);
}

void NetDevice::on_pause() {
  // The chain popped for the next frame goes back to the ring: the paused
  // (or snapshotted) state then holds no half-done request.
  if (rx_chain_) {
    queue(kRxQueue).undo_pop();
    rx_chain_.reset();
  }
}

void NetDevice::set_rx_interest(bool on) {
  if (on == rx_interest_ || !loop_) return;
  auto r = loop_->modify(tap_.get(), on ? uint32_t{EPOLLIN} : 0u);
  if (!r.ok()) warn(r.error().to_string());
  rx_interest_ = on;
}

void NetDevice::process_queue(size_t index) {
  if (index == kRxQueue) {
    // The guest added RX buffers: take frames again.
    set_rx_interest(true);
    process_rx();
  } else if (index == kTxQueue) {
    process_tx();
  }
}

void NetDevice::process_rx() {
  Queue& q = queue(kRxQueue);
  if (!q.ready()) {
    set_rx_interest(false);
    return;
  }
  bool added = false;
  for (;;) {
    if (!rx_chain_) {
      auto c = q.pop(mem());
      if (!c.ok()) return fail(kRxQueue, c.error());
      if (!c->has_value()) {
        auto more = q.enable_notification(mem());
        if (!more.ok()) return fail(kRxQueue, more.error());
        if (*more) continue;
        // No buffers: stop reading the TAP until the guest notifies RX.
        set_rx_interest(false);
        break;
      }
      rx_chain_ = std::move(**c);
      if (rx_chain_->writable_len() < kNetHdrSize + 14) {
        // Too small for any frame: hand it back empty.
        warn(fmt::format("RX buffer of {} bytes is too small", rx_chain_->writable_len()));
        if (auto r = q.add_used(mem(), rx_chain_->head_index(), 0); !r.ok())
          return fail(kRxQueue, r.error());
        rx_chain_.reset();
        added = true;
        continue;
      }
    }
    uint64_t cap = std::min<uint64_t>(rx_chain_->writable_len(), kNetHdrSize + kNetMaxFrame);
    auto iov = chain_iovecs(mem(), *rx_chain_, true, 0, cap);
    if (!iov.ok()) return fail(kRxQueue, iov.error());
    ssize_t n;
    do {
      n = ::readv(tap_.get(), iov->data(), static_cast<int>(std::min<size_t>(iov->size(), 1024)));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        warn(fmt::format("TAP read: {}", std::strerror(errno)));
      break;  // keep the chain for the next frame
    }
    uint32_t used = static_cast<uint32_t>(n);
    if (static_cast<uint64_t>(n) > cap || static_cast<uint64_t>(n) < kNetHdrSize) {
      // A read that reports more than the buffer held (the guest's buffer was
      // below the spec's minimum), or less than a header. TAPs that truncate
      // silently return the buffer size instead: the guest then gets a
      // truncated frame, which only it can suffer from.
      ++stats_.rx_dropped;
      warn(fmt::format("RX frame of {} bytes does not fit a {}-byte buffer; dropped", n, cap));
      used = 0;
    } else {
      // num_buffers: always 1 without VIRTIO_NET_F_MRG_RXBUF (the TAP leaves
      // those two bytes of the 12-byte header untouched).
      const uint8_t one[2] = {1, 0};
      if (auto w = rx_chain_->write_writable(mem(), 10, one); !w.ok())
        return fail(kRxQueue, w.error());
      ++stats_.rx_frames;
      stats_.rx_bytes += used - kNetHdrSize;
    }
    rx_chain_->mark_written(mem());
    if (auto r = q.add_used(mem(), rx_chain_->head_index(), used); !r.ok())
      return fail(kRxQueue, r.error());
    rx_chain_.reset();
    added = true;
  }
  if (added) signal_used(kRxQueue);
}

void NetDevice::process_tx() {
  drain_queue(kTxQueue, [this](const DescriptorChain& c) -> Result<uint32_t> {
    uint64_t len = c.readable_len();
    if (len < kNetHdrSize + 14 || len > kNetHdrSize + kNetMaxFrame) {
      ++stats_.tx_dropped;
      warn(fmt::format("TX chain of {} bytes dropped (not a frame)", len));
      return 0u;
    }
    auto iov = chain_iovecs(mem(), c, false, 0, len);
    if (!iov.ok()) return iov.error();
    ssize_t n;
    do {
      n = ::writev(tap_.get(), iov->data(), static_cast<int>(std::min<size_t>(iov->size(), 1024)));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      ++stats_.tx_dropped;
      warn(fmt::format("TAP write of {} bytes: {}", len, std::strerror(errno)));
    } else {
      ++stats_.tx_frames;
      stats_.tx_bytes += len - kNetHdrSize;
    }
    return 0u;
  });
}

void NetDevice::save_device_section(snapshot::Section& s) const { s.put_bytes("mac", mac_); }

Result<void> NetDevice::restore_device_section(const snapshot::Section& s) {
  VMM_CHECK(s.expect_only({"mac"}));
  VMM_TRY(auto mac, s.get_bytes("mac"));
  if (mac.size() != mac_.size())
    return make_error("{}: field 'mac' is {} bytes, expected {}", s.where(), mac.size(),
                      mac_.size());
  MacAddress saved{};
  std::copy(mac.begin(), mac.end(), saved.begin());
  if (saved != mac_)
    return make_error("{}: {}: the snapshot's MAC is {}, this device's {} (give mac={})",
                      s.where(), name(), format_mac(saved), format_mac(mac_), format_mac(saved));
  return ok();
}

}  // namespace vmm::virtio
