// Host iovecs over part of a descriptor chain, for vector I/O straight
// between a file/socket and guest memory.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <vector>

#include "devices/virtio/queue.h"
#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::virtio {

// The bytes [skip, skip+len) of the chain's readable (writable=false) or
// writable part as host iovecs. Errors if the part is shorter or a buffer is
// not inside one guest memory region.
Result<std::vector<iovec>> chain_iovecs(const GuestMemory& mem, const DescriptorChain& chain,
                                        bool writable, uint64_t skip, uint64_t len);

// Drops the first n bytes of an iovec list (after a partial transfer).
void advance_iovecs(std::vector<iovec>& iov, size_t& first, uint64_t n);

}  // namespace vmm::virtio
