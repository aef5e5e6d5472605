// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of the
// state file format. crc32c("123456789") == 0xE3069283.
#pragma once

#include <cstdint>
#include <span>

namespace vmm::snapshot {

// `crc` is the value returned for the preceding bytes (0 to start), so a
// buffer may be checksummed in pieces.
// Uses the SSE4.2 crc32 instruction when the CPU has it, else a table.
uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc = 0);
// The table path alone (tests compare the two).
uint32_t crc32c_portable(std::span<const uint8_t> data, uint32_t crc = 0);

}  // namespace vmm::snapshot
