#include "devices/virtio/rng.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "devices/virtio/iov.h"

namespace vmm::virtio {

Result<std::shared_ptr<RngDevice>> RngDevice::create(const std::string& source) {
  int fd = ::open(source.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error("cannot open entropy source '{}'", source);
  auto dev = std::shared_ptr<RngDevice>(new RngDevice(UniqueFd(fd)));
  VMM_CHECK(dev->init_events());
  return dev;
}

RngDevice::~RngDevice() { reset(); }

void RngDevice::process_queue(size_t index) {
  drain_queue(index, [this](const DescriptorChain& c) { return handle(c); });
}

Result<uint32_t> RngDevice::handle(const DescriptorChain& chain) {
  uint64_t want = std::min<uint64_t>(chain.writable_len(), kRngMaxPerChain);
  if (want == 0) return 0u;
  auto iov = chain_iovecs(mem(), chain, true, 0, want);
  if (!iov.ok()) return iov.error();
  ssize_t n;
  do {
    n = ::readv(fd_.get(), iov->data(), static_cast<int>(std::min<size_t>(iov->size(), 1024)));
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    warn(fmt::format("reading entropy: {}", std::strerror(errno)));
    return 0u;
  }
  bytes_ += static_cast<uint64_t>(n);
  return static_cast<uint32_t>(n);
}

}  // namespace vmm::virtio
