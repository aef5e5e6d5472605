#include "devices/virtio/iov.h"

namespace vmm::virtio {

Result<std::vector<iovec>> chain_iovecs(const GuestMemory& mem, const DescriptorChain& chain,
                                        bool writable, uint64_t skip, uint64_t len) {
  std::vector<iovec> out;
  uint64_t remaining = len;
  for (const auto& b : chain.buffers()) {
    if (b.writable != writable) continue;
    if (remaining == 0) break;
    if (skip >= b.len) {
      skip -= b.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(b.len - skip, remaining);
    VMM_TRY(auto span, mem.span(b.addr + skip, n));
    out.push_back(iovec{span.data(), span.size()});
    remaining -= n;
    skip = 0;
  }
  if (remaining != 0)
    return make_error("chain's {} part is {} bytes short", writable ? "writable" : "readable",
                      remaining);
  return out;
}

void advance_iovecs(std::vector<iovec>& iov, size_t& first, uint64_t n) {
  while (n > 0 && first < iov.size()) {
    if (n >= iov[first].iov_len) {
      n -= iov[first].iov_len;
      ++first;
    } else {
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + n;
      iov[first].iov_len -= n;
      n = 0;
    }
  }
}

}  // namespace vmm::virtio
