// libFuzzer target: a hostile virtio driver. The input drives a virtio-mmio
// transport (every register, any value) in front of a real device model
// (virtio-blk over a memfd, virtio-net over a socketpair, or virtio-rng over
// /dev/zero), writes arbitrary bytes into guest memory (rings, descriptors,
// indirect tables, request headers) and notifies queues. Devices run inline
// (no worker thread), so every run is deterministic.
//
// Input: byte 0 picks the device (% 3: blk, net, rng), byte 1 bit 0 makes the
// disk read-only. Then 8-byte records (a trailing partial record is ignored):
//   byte 0     op % 8: 0 MMIO write, 1 MMIO read, 2 guest memory write (u32),
//              3 standard driver bring-up (queues at fixed places, features
//              from the value), 4 QueueNotify, 5 inject a frame from the host
//              side (net), 6 poll backends, 7 write a descriptor
//   bytes 1-2  offset / address / queue (little-endian u16)
//   bytes 3-6  value (little-endian u32)
//   byte 7     extra (descriptor flags/next, frame length...)
//
// Invariants (abort on violation): no sanitizer report (so no host memory
// outside guest RAM is touched); the transport status never holds a bit the
// driver did not write since its last reset, other than NEEDS_RESET; the
// MagicValue register always reads "virt".
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "devices/virtio/block.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using namespace vmm;
using namespace vmm::virtio;
using T = MmioTransport;

constexpr uint64_t kMemSize = 64 * 1024;
constexpr uint16_t kQueueSize = 16;

class NullIrq : public IrqLine {
 public:
  void set_level(bool) override {}
};

uint32_t le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void w32(T& t, uint64_t off, uint32_t v) {
  uint8_t b[4];
  std::memcpy(b, &v, 4);
  t.write(0, off, b);
}
uint32_t r32(T& t, uint64_t off) {
  uint8_t b[4];
  t.read(0, off, b);
  return le32(b);
}

// The whole bring-up a driver does, with the rings of queue q at
// 0x1000*(1+3q) (desc), +0x1000 (avail), +0x2000 (used).
void bring_up(T& t, size_t nq, uint32_t features_low) {
  w32(t, T::kRegStatus, 0);
  w32(t, T::kRegStatus, kStatusAcknowledge);
  w32(t, T::kRegStatus, kStatusAcknowledge | kStatusDriver);
  w32(t, T::kRegDriverFeaturesSel, 0);
  w32(t, T::kRegDriverFeatures, features_low);
  w32(t, T::kRegDriverFeaturesSel, 1);
  w32(t, T::kRegDriverFeatures, 1);  // VERSION_1
  w32(t, T::kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  for (uint32_t q = 0; q < nq; ++q) {
    Gpa base = 0x1000 * (1 + 3 * uint64_t{q});
    w32(t, T::kRegQueueSel, q);
    w32(t, T::kRegQueueNum, kQueueSize);
    w32(t, T::kRegQueueDescLow, static_cast<uint32_t>(base));
    w32(t, T::kRegQueueDriverLow, static_cast<uint32_t>(base + 0x1000));
    w32(t, T::kRegQueueDeviceLow, static_cast<uint32_t>(base + 0x2000));
    w32(t, T::kRegQueueReady, 1);
  }
  w32(t, T::kRegStatus,
      kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  auto mem = GuestMemory::create_anonymous({{0, kMemSize}});
  if (!mem.ok()) std::abort();

  std::shared_ptr<WorkerDevice> dev;
  int peer = -1;
  int kind = data[0] % 3;
  if (kind == 0) {
    int fd = ::memfd_create("fuzz-disk", MFD_CLOEXEC);
    FUZZ_CHECK(fd >= 0);
    FUZZ_CHECK(::ftruncate(fd, 64 * 1024) == 0);
    std::string path = "/proc/self/fd/" + std::to_string(fd);
    auto d = BlockDevice::create({path, (data[1] & 1) != 0, "fuzz"});
    ::close(fd);
    FUZZ_CHECK(d.ok());
    dev = *d;
  } else if (kind == 1) {
    int sv[2];
    FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
    peer = sv[1];
    auto d = NetDevice::create_for_fd(UniqueFd(sv[0]), {0x52, 0x54, 0, 1, 2, 3});
    FUZZ_CHECK(d.ok());
    dev = *d;
  } else {
    auto d = RngDevice::create("/dev/zero");
    FUZZ_CHECK(d.ok());
    dev = *d;
  }
  dev->set_inline_for_testing(true);
  std::weak_ptr<WorkerDevice> weak = dev;
  auto t = T::create(*mem, dev, std::make_shared<NullIrq>(), [weak](uint32_t q) {
    if (auto d = weak.lock()) d->notify_queue(q);
  });
  FUZZ_CHECK(t.ok());
  T& tr = **t;

  uint32_t written_status = 0;
  for (size_t i = 2; i + 8 <= size; i += 8) {
    const uint8_t* r = data + i;
    uint16_t off = static_cast<uint16_t>(r[1] | (r[2] << 8));
    uint32_t val = le32(r + 3);
    uint8_t extra = r[7];
    switch (r[0] % 8) {
      case 0: {
        uint64_t reg = off % 0x180;
        w32(tr, reg, val);
        if (reg == T::kRegStatus) written_status = val == 0 ? 0 : (written_status | val);
        break;
      }
      case 1: {
        uint8_t b[8];
        size_t n = 1 + extra % 8;
        tr.read(0, off % 0x180, std::span<uint8_t>(b, n));
        break;
      }
      case 2:
        (void)mem->write_obj<uint32_t>(off % (kMemSize - 4), val);
        break;
      case 3:
        bring_up(tr, dev->num_queues(), val);
        written_status = 0xf;
        break;
      case 4:
        w32(tr, T::kRegQueueNotify, extra % 3);
        break;
      case 5:
        if (peer >= 0) {
          std::vector<uint8_t> frame(12 + (val % 2000));
          for (size_t k = 0; k < frame.size(); ++k) frame[k] = static_cast<uint8_t>(k + extra);
          (void)::send(peer, frame.data(), frame.size(), MSG_DONTWAIT);
        }
        break;
      case 6:
        dev->poll_backends();
        if (peer >= 0) {
          uint8_t sink[4096];
          while (::recv(peer, sink, sizeof(sink), MSG_DONTWAIT) > 0) {
          }
        }
        break;
      case 7: {
        // A descriptor in queue (extra % 2)'s table: addr = val, len = off,
        // flags/next from extra.
        Gpa table = 0x1000 * (1 + 3 * uint64_t{extra % 2u});
        Gpa at = table + 16 * static_cast<uint64_t>((extra >> 1) % kQueueSize);
        (void)mem->write_obj<uint64_t>(at, val);
        (void)mem->write_obj<uint32_t>(at + 8, off);
        (void)mem->write_obj<uint16_t>(at + 12, static_cast<uint16_t>(extra >> 5));
        (void)mem->write_obj<uint16_t>(at + 14, static_cast<uint16_t>((extra >> 1) % kQueueSize + 1));
        break;
      }
    }
    FUZZ_CHECK(r32(tr, T::kRegMagic) == T::kMagic);
    uint32_t st = tr.status() & ~kStatusNeedsReset;
    FUZZ_CHECK((st & ~written_status) == 0);
  }
  dev->reset();
  if (peer >= 0) ::close(peer);
  return 0;
}
