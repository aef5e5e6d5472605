#include "boot/x86_64/e820.h"

#include <algorithm>

#include "boot/x86_64/layout.h"

namespace vmm::boot {

Result<void> validate_mem_size(uint64_t mem_size) {
  if (mem_size < kMinGuestMemSize)
    return make_error("guest memory size {:#x} is below the minimum of {} MiB", mem_size,
                      kMinGuestMemSize >> 20);
  if (mem_size > kMaxGuestMemSize)
    return make_error("guest memory size {:#x} exceeds the maximum of {} GiB", mem_size,
                      kMaxGuestMemSize >> 30);
  if (mem_size % kGuestMemAlign != 0)
    return make_error("guest memory size {:#x} is not a multiple of 4 KiB", mem_size);
  return ok();
}

std::vector<std::pair<Gpa, uint64_t>> guest_ram_ranges(uint64_t mem_size) {
  std::vector<std::pair<Gpa, uint64_t>> ranges;
  uint64_t low = std::min(mem_size, layout::kMmioGapStart);
  if (low > 0) ranges.emplace_back(0, low);
  uint64_t high = mem_size - low;
  // Clamp so that a hostile size can never make the high range wrap.
  high = std::min(high, ~uint64_t{0} - layout::kMmioGapEnd);
  if (high > 0) ranges.emplace_back(layout::kMmioGapEnd, high);
  return ranges;
}

std::vector<E820Entry> build_e820(uint64_t mem_size) {
  std::vector<E820Entry> map;
  auto ranges = guest_ram_ranges(mem_size);
  if (ranges.empty()) return map;
  uint64_t low_end = ranges[0].second;  // the first range starts at 0

  map.push_back(E820Entry{0, std::min(low_end, layout::kEbdaStart), kE820Ram});
  if (low_end > layout::kEbdaStart) {
    map.push_back(E820Entry{layout::kEbdaStart, layout::kHimemStart - layout::kEbdaStart,
                            kE820Reserved});
  }
  if (low_end > layout::kHimemStart)
    map.push_back(E820Entry{layout::kHimemStart, low_end - layout::kHimemStart, kE820Ram});
  for (size_t i = 1; i < ranges.size(); ++i)
    map.push_back(E820Entry{ranges[i].first, ranges[i].second, kE820Ram});
  return map;
}

}  // namespace vmm::boot
