#include "devices/virtio/block.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "devices/virtio/iov.h"

namespace vmm::virtio {
namespace {

constexpr uint64_t kHeaderSize = 16;  // u32 type, u32 reserved, u64 sector
constexpr uint32_t kSegMax = kBlkQueueSize - 2;

template <typename T>
void put_le(std::array<uint8_t, 24>& cfg, size_t off, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) cfg[off + i] = static_cast<uint8_t>(v >> (8 * i));
}

// Positioned vector I/O over all of `iov`, resuming after short transfers.
// Returns an errno value, or 0; a read that hits end of file is EIO.
int full_io(int fd, std::vector<iovec> iov, uint64_t offset, bool write) {
  size_t first = 0;
  while (first < iov.size()) {
    int cnt = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t n = write ? ::pwritev(fd, &iov[first], cnt, static_cast<off_t>(offset))
                      : ::preadv(fd, &iov[first], cnt, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;  // the file shrank under us
    offset += static_cast<uint64_t>(n);
    advance_iovecs(iov, first, static_cast<uint64_t>(n));
  }
  return 0;
}

}  // namespace

Result<std::shared_ptr<BlockDevice>> BlockDevice::create(const BlockConfig& cfg) {
  int fd = ::open(cfg.path.c_str(), (cfg.readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return errno_error("cannot open disk '{}'", cfg.path);
  UniqueFd file(fd);
  struct stat st {};
  if (::fstat(fd, &st) < 0) return errno_error("stat disk '{}'", cfg.path);
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) return errno_error("size of block device '{}'", cfg.path);
    size = static_cast<uint64_t>(end);
  } else {
    return make_error("disk '{}' is not a regular file or block device", cfg.path);
  }
  if (cfg.id.size() > kBlkIdBytes)
    return make_error("disk id '{}' is longer than {} bytes", cfg.id, kBlkIdBytes);
  std::array<uint8_t, kBlkIdBytes> id{};
  std::string text = cfg.id;
  if (text.empty()) {
    // Stable across runs for the same path, like a serial number.
    text = fmt::format("vmm{:016x}", std::hash<std::string>{}(cfg.path));
    text.resize(std::min(text.size(), kBlkIdBytes));
  }
  std::memcpy(id.data(), text.data(), text.size());
  std::string name = fmt::format("virtio-blk({})", cfg.path);
  auto dev = std::shared_ptr<BlockDevice>(
      new BlockDevice(std::move(file), size / kSectorSize, cfg.readonly, id, name));
  VMM_CHECK(dev->init_events());
  return dev;
}

BlockDevice::BlockDevice(UniqueFd fd, uint64_t capacity, bool readonly,
                         std::array<uint8_t, kBlkIdBytes> id, std::string name)
    : WorkerDevice(std::move(name), {kBlkQueueSize}),
      fd_(std::move(fd)),
      capacity_(capacity),
      readonly_(readonly),
      id_(id) {
  put_le<uint64_t>(config_, 0, capacity_);
  put_le<uint32_t>(config_, 12, kSegMax);
  put_le<uint32_t>(config_, 20, static_cast<uint32_t>(kSectorSize));
}

BlockDevice::~BlockDevice() { reset(); }

uint64_t BlockDevice::features() const {
  return kBlkFeatureSegMax | kBlkFeatureBlkSize | kBlkFeatureFlush |
         (readonly_ ? kBlkFeatureRo : 0) | kFeatureRingEventIdx | kFeatureRingIndirectDesc;
}

void BlockDevice::read_config(uint64_t offset, std::span<uint8_t> data) {
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t o = offset + i;
    data[i] = o < config_.size() ? config_[o] : 0;
  }
}

void BlockDevice::process_queue(size_t index) {
  drain_queue(index, [this](const DescriptorChain& c) { return handle(c); });
}

Result<uint32_t> BlockDevice::handle(const DescriptorChain& chain) {
  if (chain.writable_len() == 0) {
    // Nowhere to put a status: the request cannot be answered. Complete it
    // with nothing written so the driver gets its descriptors back.
    ++stats_.errors;
    warn("request without a status byte dropped");
    return 0u;
  }
  uint64_t status_off = chain.writable_len() - 1;
  uint64_t data_in_len = status_off;  // writable bytes before the status byte
  uint8_t status = kBlkStatusIoErr;
  uint32_t used = 1;

  std::array<uint8_t, kHeaderSize> hdr{};
  auto got = chain.read_readable(mem(), 0, hdr);
  if (!got.ok()) return got.error();
  if (*got < kHeaderSize) {
    warn(fmt::format("request header is {} bytes (need {})", *got, kHeaderSize));
  } else {
    uint32_t type;
    uint64_t sector;
    std::memcpy(&type, hdr.data(), 4);
    std::memcpy(&sector, hdr.data() + 8, 8);
    switch (type) {
      case kBlkTypeIn:
        status = do_io(chain, type, sector, data_in_len);
        if (status == kBlkStatusOk) used = static_cast<uint32_t>(data_in_len + 1);
        break;
      case kBlkTypeOut:
        status = do_io(chain, type, sector, chain.readable_len() - kHeaderSize);
        break;
      case kBlkTypeFlush:
        ++stats_.flushes;
        status = kBlkStatusOk;
        if (!readonly_ && ::fdatasync(fd_.get()) < 0) {
          warn(fmt::format("flush failed: {}", std::strerror(errno)));
          status = kBlkStatusIoErr;
        }
        break;
      case kBlkTypeGetId: {
        size_t n = static_cast<size_t>(std::min<uint64_t>(data_in_len, kBlkIdBytes));
        auto w = chain.write_writable(mem(), 0, std::span<const uint8_t>(id_.data(), n));
        if (!w.ok()) return w.error();
        status = kBlkStatusOk;
        used = static_cast<uint32_t>(n + 1);
        break;
      }
      default:
        status = kBlkStatusUnsupp;
        break;
    }
  }
  if (status == kBlkStatusIoErr) ++stats_.errors;
  auto w = chain.write_writable(mem(), status_off, std::span<const uint8_t>(&status, 1));
  if (!w.ok()) return w.error();
  return used;
}

uint8_t BlockDevice::do_io(const DescriptorChain& chain, uint32_t type, uint64_t sector,
                           uint64_t data_len) {
  bool write = type == kBlkTypeOut;
  if (write && readonly_) {
    warn("write to a read-only disk refused");
    return kBlkStatusIoErr;
  }
  if (data_len % kSectorSize != 0) {
    warn(fmt::format("{} of {} bytes is not a whole number of sectors", write ? "write" : "read",
                     data_len));
    return kBlkStatusIoErr;
  }
  uint64_t sectors = data_len / kSectorSize;
  if (sector > capacity_ || sectors > capacity_ - sector) {
    warn(fmt::format("{} of {} sectors at {} is beyond the disk's {} sectors",
                     write ? "write" : "read", sectors, sector, capacity_));
    return kBlkStatusIoErr;
  }
  if (data_len == 0) return kBlkStatusOk;
  auto iov = write ? chain_iovecs(mem(), chain, false, kHeaderSize, data_len)
                   : chain_iovecs(mem(), chain, true, 0, data_len);
  if (!iov.ok()) {
    warn(iov.error().to_string());
    return kBlkStatusIoErr;
  }
  int err = full_io(fd_.get(), std::move(*iov), sector * kSectorSize, write);
  if (err != 0) {
    warn(fmt::format("{} at sector {}: {}", write ? "write" : "read", sector, std::strerror(err)));
    return kBlkStatusIoErr;
  }
  if (write) {
    ++stats_.writes;
    stats_.bytes_written += data_len;
  } else {
    ++stats_.reads;
    stats_.bytes_read += data_len;
  }
  return kBlkStatusOk;
}

void BlockDevice::save_device_section(snapshot::Section& s) const {
  s.put_u64("capacity_sectors", capacity_);
  s.put_bool("readonly", readonly_);
  s.put_bytes("id", id_);
}

Result<void> BlockDevice::restore_device_section(const snapshot::Section& s) {
  VMM_CHECK(s.expect_only({"capacity_sectors", "readonly", "id"}));
  VMM_TRY(uint64_t capacity, s.get_u64("capacity_sectors"));
  VMM_TRY(bool readonly, s.get_bool("readonly"));
  VMM_TRY(auto id, s.get_bytes("id"));
  if (capacity != capacity_)
    return make_error(
        "{}: {}: the disk has {} sectors, the snapshot {} (the backing file's size changed)",
        s.where(), name(), capacity_, capacity);
  if (readonly != readonly_)
    return make_error("{}: {}: the disk is {}, the snapshot's was {}", s.where(), name(),
                      readonly_ ? "read-only" : "read-write", readonly ? "read-only" : "read-write");
  if (id.size() != kBlkIdBytes)
    return make_error("{}: field 'id' is {} bytes, expected {}", s.where(), id.size(), kBlkIdBytes);
  if (!std::equal(id.begin(), id.end(), id_.begin()))
    return make_error("{}: {}: the disk's serial (GET_ID) differs from the snapshot's '{}'",
                      s.where(), name(),
                      snapshot::printable(std::string_view(
                          reinterpret_cast<const char*>(id.data()),
                          static_cast<size_t>(std::find(id.begin(), id.end(), 0) - id.begin()))));
  return ok();
}

}  // namespace vmm::virtio
