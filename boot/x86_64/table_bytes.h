// Byte-level helpers shared by the firmware-table writers (MP table, ACPI).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vmm::boot {

// The byte that makes the sum of p[0..n) plus itself zero (MP spec and ACPI
// checksum rule).
inline uint8_t table_checksum(const uint8_t* p, size_t n) {
  uint8_t sum = 0;
  for (size_t i = 0; i < n; ++i) sum = static_cast<uint8_t>(sum + p[i]);
  return static_cast<uint8_t>(-sum);
}

// Appends the bytes of a packed guest-ABI struct.
template <typename T>
void append_bytes(std::vector<uint8_t>& buf, const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  buf.insert(buf.end(), p, p + sizeof(T));
}

}  // namespace vmm::boot
