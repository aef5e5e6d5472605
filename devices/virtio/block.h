// virtio-blk (VIRTIO 1.2 section 5.2) over a raw file.
//
// Requests are served on the device's worker thread with positioned vector
// I/O straight between the file and guest memory (preadv/pwritev on the
// guest's buffers, no bounce copy), in ring order: a FLUSH completes only
// after every earlier request of the queue has, and is an fdatasync(), so what
// the guest flushed is on the host's disk. Vector I/O on a worker thread is
// the whole asynchrony story: vCPUs never wait for the disk (docs/virtio.md
// says why not io_uring yet).
//
// Offered features: FLUSH, SEG_MAX, BLK_SIZE, RO (read-only disks),
// RING_EVENT_IDX, RING_INDIRECT_DESC. Request types: IN, OUT, FLUSH, GET_ID;
// others complete with UNSUPP. Bad requests (short header, no status byte,
// data not a multiple of 512, beyond capacity, write to a read-only disk)
// complete with IOERR and a rate-limited warning; only a corrupt ring makes
// the device NEEDS_RESET.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "devices/virtio/worker_device.h"

namespace vmm::virtio {

inline constexpr uint32_t kBlkTypeIn = 0;
inline constexpr uint32_t kBlkTypeOut = 1;
inline constexpr uint32_t kBlkTypeFlush = 4;
inline constexpr uint32_t kBlkTypeGetId = 8;
inline constexpr uint8_t kBlkStatusOk = 0;
inline constexpr uint8_t kBlkStatusIoErr = 1;
inline constexpr uint8_t kBlkStatusUnsupp = 2;
inline constexpr uint64_t kBlkFeatureSegMax = 1ULL << 2;
inline constexpr uint64_t kBlkFeatureRo = 1ULL << 5;
inline constexpr uint64_t kBlkFeatureBlkSize = 1ULL << 6;
inline constexpr uint64_t kBlkFeatureFlush = 1ULL << 9;
inline constexpr uint64_t kSectorSize = 512;
inline constexpr size_t kBlkIdBytes = 20;
inline constexpr uint16_t kBlkQueueSize = 256;

struct BlockConfig {
  std::string path;
  bool readonly = false;
  std::string id;  // GET_ID answer (at most 20 bytes); empty: derived from the path
};

struct BlockStats {
  uint64_t reads = 0, writes = 0, flushes = 0, errors = 0;
  uint64_t bytes_read = 0, bytes_written = 0;
};

class BlockDevice final : public WorkerDevice {
 public:
  // Opens the file (read-only if cfg.readonly). Capacity is the file size in
  // whole sectors; a trailing partial sector is not visible to the guest.
  static Result<std::shared_ptr<BlockDevice>> create(const BlockConfig& cfg);
  ~BlockDevice() override;

  uint32_t device_type() const override { return kDeviceIdBlock; }
  uint64_t features() const override;
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void write_config(uint64_t, std::span<const uint8_t>) override {}

  // Snapshot "device" section: u64 capacity_sectors, bool readonly, bytes id
  // (20). Everything else of the device is its queues. Restore refuses a
  // disk whose size (in sectors) or read-only mode differs from the saved
  // one (the guest knows both), or another GET_ID serial.
  void save_device_section(snapshot::Section& s) const override;
  Result<void> restore_device_section(const snapshot::Section& s) override;

  uint64_t capacity_sectors() const { return capacity_; }
  bool readonly() const { return readonly_; }
  const std::array<uint8_t, kBlkIdBytes>& id() const { return id_; }
  // Worker-thread counters; read them only while the device is not active.
  const BlockStats& stats() const { return stats_; }

 private:
  BlockDevice(UniqueFd fd, uint64_t capacity, bool readonly, std::array<uint8_t, kBlkIdBytes> id,
              std::string name);
  void process_queue(size_t index) override;
  // Serves one request; returns the number of bytes written to the chain.
  Result<uint32_t> handle(const DescriptorChain& chain);
  uint8_t do_io(const DescriptorChain& chain, uint32_t type, uint64_t sector, uint64_t data_len);

  UniqueFd fd_;
  uint64_t capacity_;
  bool readonly_;
  std::array<uint8_t, kBlkIdBytes> id_;
  std::array<uint8_t, 24> config_{};
  BlockStats stats_;
};

}  // namespace vmm::virtio
