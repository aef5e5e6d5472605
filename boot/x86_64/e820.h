// Guest RAM layout and the E820 map that describes it to the kernel.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "boot/x86_64/boot_params.h"
#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::boot {

inline constexpr uint64_t kMinGuestMemSize = 32ull << 20;  // 32 MiB
inline constexpr uint64_t kMaxGuestMemSize = 1ull << 40;   // 1 TiB (sanity bound)
inline constexpr uint64_t kGuestMemAlign = 4096;

// Refuses sizes below 32 MiB, above 1 TiB, or not a multiple of 4 KiB.
Result<void> validate_mem_size(uint64_t mem_size);

// RAM ranges (start, size) for a guest of mem_size bytes: [0, min(mem_size,
// kMmioGapStart)) and, for larger guests, the remainder from 4 GiB upward.
// Expects a size accepted by validate_mem_size().
std::vector<std::pair<Gpa, uint64_t>> guest_ram_ranges(uint64_t mem_size);

// E820 map for guest_ram_ranges(mem_size):
//   RAM [0, kEbdaStart), RESERVED [kEbdaStart, 1 MiB), RAM [1 MiB, end of low RAM),
//   RAM [4 GiB, ...) when the guest has memory above the MMIO gap.
std::vector<E820Entry> build_e820(uint64_t mem_size);

}  // namespace vmm::boot
