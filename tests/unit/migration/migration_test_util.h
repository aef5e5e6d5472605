// Helpers shared by the migration protocol tests.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "vmm/base/unique_fd.h"
#include "vmm/migration/protocol.h"
#include "vmm/snapshot/byte_io.h"
#include "vmm/snapshot/crc32c.h"

namespace vmm::migration::testing {

inline bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

inline std::pair<UniqueFd, UniqueFd> socket_pair(bool nonblocking = false) {
  int sv[2];
  int flags = SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  EXPECT_EQ(::socketpair(AF_UNIX, flags, 0, sv), 0);
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// Writes everything (blocking fd).
inline void write_all(int fd, std::span<const uint8_t> b) {
  size_t done = 0;
  while (done < b.size()) {
    ssize_t n = ::send(fd, b.data() + done, b.size() - done, MSG_NOSIGNAL);
    ASSERT_GT(n, 0) << "send failed";
    done += static_cast<size_t>(n);
  }
}

inline Hello sample_hello() {
  Hello h;
  h.vmm_version = "0.1.0";
  h.cpu_template = "minimal";
  h.mem_bytes = 512ull << 20;
  h.page_size = 4096;
  h.config = {{"mem", "512M"}, {"cpus", "2"}, {"disk0", "path=/x.img,readonly=off"}};
  return h;
}

// A header with every field chosen freely (valid header CRC unless told).
inline std::vector<uint8_t> raw_header(uint16_t type, uint32_t seq, uint32_t len,
                                       uint16_t version = kProtocolVersion, uint32_t reserved = 0,
                                       uint32_t magic = kMagic) {
  std::vector<uint8_t> h(kHeaderBytes);
  snapshot::store_le32(&h[0], magic);
  h[4] = static_cast<uint8_t>(version);
  h[5] = static_cast<uint8_t>(version >> 8);
  h[6] = static_cast<uint8_t>(type);
  h[7] = static_cast<uint8_t>(type >> 8);
  snapshot::store_le32(&h[8], seq);
  snapshot::store_le32(&h[12], len);
  snapshot::store_le32(&h[16], reserved);
  snapshot::store_le32(&h[20], snapshot::crc32c(std::span<const uint8_t>(h).first(20)));
  return h;
}

// raw_header + payload + a correct frame CRC.
inline std::vector<uint8_t> raw_frame(uint16_t type, uint32_t seq, std::span<const uint8_t> payload,
                                      uint16_t version = kProtocolVersion, uint32_t reserved = 0) {
  auto f = raw_header(type, seq, static_cast<uint32_t>(payload.size()), version, reserved);
  f.insert(f.end(), payload.begin(), payload.end());
  uint32_t crc = snapshot::crc32c(f);
  f.resize(f.size() + 4);
  snapshot::store_le32(&f[f.size() - 4], crc);
  return f;
}

inline std::vector<uint8_t> page_of(uint8_t seed, uint32_t size = 4096) {
  std::vector<uint8_t> p(size);
  for (uint32_t i = 0; i < size; ++i) p[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  if (p[0] == 0) p[0] = 1;  // never all zero
  return p;
}

}  // namespace vmm::migration::testing
