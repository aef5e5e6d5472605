// GuestMemory: the guest's physical address space as a set of non-overlapping
// host mappings. Every access is checked (address, length, overflow, region
// boundaries): a guest- or file-controlled address can never reach host memory
// outside the guest.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "vmm/base/mmap_region.h"
#include "vmm/base/result.h"

namespace vmm {

using Gpa = uint64_t;  // guest physical address

inline constexpr uint64_t kGuestPageSize = 4096;

struct GuestRegion {
  Gpa start;
  MmapRegion mapping;
  // One bit per 4 KiB page the VMM itself wrote while dirty tracking is on
  // (GuestMemory::mark_dirty); KVM tracks the guest's own writes.
  std::unique_ptr<std::atomic<uint64_t>[]> vmm_dirty;
  // Private anonymous memory: a page never touched reads as zero.
  bool anonymous = false;
  uint64_t pages() const { return (size() + kGuestPageSize - 1) / kGuestPageSize; }
  uint64_t size() const { return mapping.size(); }
  uint8_t* host() const { return mapping.data(); }
  Gpa end() const { return start + size(); }  // exclusive
};

class GuestMemory {
 public:
  GuestMemory() = default;
  GuestMemory(GuestMemory&&) = default;
  GuestMemory& operator=(GuestMemory&&) = default;

  // One anonymous region per (start, size); refuses overlaps, zero sizes, wraparound.
  // huge_pages: advise transparent huge pages (MmapRegion::anonymous).
  static Result<GuestMemory> create_anonymous(
      const std::vector<std::pair<Gpa, uint64_t>>& ranges, bool huge_pages = false);

  // Adds a region that maps existing memory (e.g. a file). Same checks.
  Result<void> add_region(Gpa start, MmapRegion mapping, bool anonymous = false);

  const std::vector<GuestRegion>& regions() const { return regions_; }
  uint64_t total_size() const;

  // Host span for [gpa, gpa+len) if it lies entirely inside one region.
  Result<std::span<uint8_t>> span(Gpa gpa, uint64_t len) const;

  // Copies that may cross region boundaries only where regions are contiguous.
  Result<void> read(Gpa gpa, std::span<uint8_t> out) const;
  Result<void> write(Gpa gpa, std::span<const uint8_t> in) const;

  template <typename T>
  Result<T> read_obj(Gpa gpa) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    VMM_CHECK(read(gpa, std::span(reinterpret_cast<uint8_t*>(&v), sizeof(T))));
    return v;
  }
  template <typename T>
  Result<void> write_obj(Gpa gpa, const T& v) const {
    static_assert(std::is_trivially_copyable_v<T>);
    return write(gpa, std::span(reinterpret_cast<const uint8_t*>(&v), sizeof(T)));
  }

  // True if [gpa, gpa+len) is entirely backed by guest RAM.
  bool contains(Gpa gpa, uint64_t len) const;

  // One bit per page of region `index` that may hold non-zero data. For an
  // anonymous region, pages never touched (neither present nor swapped in
  // /proc/self/pagemap) are left out: they are zero, and reading them to
  // find out would fault each one in (2-3 us per page on a nested host).
  // Other regions (a mapped snapshot file) get every page.
  Result<std::vector<uint64_t>> maybe_nonzero_pages(size_t index) const;

  // ---- Dirty tracking of the VMM's own writes (live migration). Devices
  // write guest memory through pointers (preadv into a request's buffers);
  // they call mark_dirty AFTER writing, so a harvest that misses the mark
  // happened before the write finished and the next harvest catches it.
  // write()/write_obj() mark by themselves. Cheap no-op while tracking is off.
  void set_dirty_tracking(bool on) const;
  bool dirty_tracking() const { return tracking_->load(std::memory_order_acquire); }
  void mark_dirty(Gpa gpa, uint64_t len) const;
  // ORs the pages marked in region `index` since the last call into `out`
  // (one bit per page, bit i of out[i / 64]) and clears them.
  void take_dirty(size_t index, std::span<uint64_t> out) const;

 private:
  const GuestRegion* find(Gpa gpa) const;
  std::vector<GuestRegion> regions_;  // sorted by start
  std::unique_ptr<std::atomic<bool>> tracking_ = std::make_unique<std::atomic<bool>>(false);
};

}  // namespace vmm
