#include "vmm/memory/guest_memory.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "vmm/base/checked_math.h"
#include "vmm/base/unique_fd.h"

namespace vmm {

Result<GuestMemory> GuestMemory::create_anonymous(
    const std::vector<std::pair<Gpa, uint64_t>>& ranges, bool huge_pages) {
  GuestMemory mem;
  for (auto [start, size] : ranges) {
    if (size == 0) return make_error("guest memory region at {:#x} has zero size", start);
    VMM_TRY(auto mapping, MmapRegion::anonymous(size, huge_pages));
    VMM_CHECK(mem.add_region(start, std::move(mapping), true));
  }
  return mem;
}

Result<void> GuestMemory::add_region(Gpa start, MmapRegion mapping, bool anonymous) {
  if (!mapping.valid() || mapping.size() == 0)
    return make_error("guest memory region at {:#x} has no mapping", start);
  auto end = checked_add(start, mapping.size());
  if (!end) return make_error("guest memory region at {:#x} wraps around", start);
  for (const auto& r : regions_) {
    if (start < r.end() && r.start < *end)
      return make_error("guest memory region [{:#x}, {:#x}) overlaps [{:#x}, {:#x})", start,
                        *end, r.start, r.end());
  }
  GuestRegion region{start, std::move(mapping), nullptr, anonymous};
  const uint64_t words = (region.pages() + 63) / 64;
  region.vmm_dirty = std::make_unique<std::atomic<uint64_t>[]>(words);
  for (uint64_t i = 0; i < words; ++i) region.vmm_dirty[i].store(0, std::memory_order_relaxed);
  regions_.push_back(std::move(region));
  std::sort(regions_.begin(), regions_.end(),
            [](const GuestRegion& a, const GuestRegion& b) { return a.start < b.start; });
  return ok();
}

Result<std::vector<uint64_t>> GuestMemory::maybe_nonzero_pages(size_t index) const {
  if (index >= regions_.size()) return make_error("no guest memory region {}", index);
  const auto& r = regions_[index];
  uint64_t pages = r.pages();
  std::vector<uint64_t> bits((pages + 63) / 64, ~0ull);
  if (pages % 64) bits.back() = (1ull << (pages % 64)) - 1;
  if (!r.anonymous) return bits;
  int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return bits;  // no pagemap: every page is a candidate
  UniqueFd pagemap(fd);
  const uint64_t host_page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  if (host_page != kGuestPageSize) return bits;
  constexpr uint64_t kPresent = 1ull << 63, kSwapped = 1ull << 62;
  std::vector<uint64_t> entries(64 * 1024);
  const uint64_t first = reinterpret_cast<uint64_t>(r.host()) / kGuestPageSize;
  for (uint64_t p = 0; p < pages;) {
    uint64_t n = std::min<uint64_t>(entries.size(), pages - p);
    ssize_t got = ::pread(fd, entries.data(), n * 8, static_cast<off_t>((first + p) * 8));
    if (got != static_cast<ssize_t>(n * 8)) return make_error("reading /proc/self/pagemap failed");
    for (uint64_t i = 0; i < n; ++i)
      if (!(entries[i] & (kPresent | kSwapped))) bits[(p + i) / 64] &= ~(1ull << ((p + i) % 64));
    p += n;
  }
  return bits;
}

void GuestMemory::set_dirty_tracking(bool on) const {
  tracking_->store(on, std::memory_order_seq_cst);
}

void GuestMemory::mark_dirty(Gpa gpa, uint64_t len) const {
  if (len == 0 || !tracking_->load(std::memory_order_seq_cst)) return;
  uint64_t end = gpa + len < gpa ? UINT64_MAX : gpa + len;
  for (const auto& r : regions_) {
    uint64_t lo = std::max(gpa, r.start), hi = std::min(end, r.end());
    if (lo >= hi) continue;
    for (uint64_t p = (lo - r.start) / kGuestPageSize, last = (hi - 1 - r.start) / kGuestPageSize;
         p <= last; ++p)
      r.vmm_dirty[p / 64].fetch_or(1ull << (p % 64), std::memory_order_relaxed);
  }
}

void GuestMemory::take_dirty(size_t index, std::span<uint64_t> out) const {
  if (index >= regions_.size()) return;
  const auto& r = regions_[index];
  uint64_t words =
      std::min<uint64_t>(out.size(), (r.pages() + 63) / 64);
  for (uint64_t i = 0; i < words; ++i)
    if (r.vmm_dirty[i].load(std::memory_order_relaxed))
      out[i] |= r.vmm_dirty[i].exchange(0, std::memory_order_acq_rel);
}

uint64_t GuestMemory::total_size() const {
  uint64_t t = 0;
  for (const auto& r : regions_) t += r.size();
  return t;
}

const GuestRegion* GuestMemory::find(Gpa gpa) const {
  for (const auto& r : regions_)
    if (gpa >= r.start && gpa < r.end()) return &r;
  return nullptr;
}

Result<std::span<uint8_t>> GuestMemory::span(Gpa gpa, uint64_t len) const {
  const GuestRegion* r = find(gpa);
  if (!r) return make_error("guest address {:#x} is not in guest memory", gpa);
  uint64_t off = gpa - r->start;
  if (len > r->size() - off)
    return make_error("guest range [{:#x}, +{:#x}) crosses the end of guest memory", gpa, len);
  return std::span<uint8_t>(r->host() + off, len);
}

bool GuestMemory::contains(Gpa gpa, uint64_t len) const {
  auto end = checked_add(gpa, len);
  if (!end) return false;
  while (len > 0) {
    const GuestRegion* r = find(gpa);
    if (!r) return false;
    uint64_t chunk = std::min(len, r->end() - gpa);
    gpa += chunk;
    len -= chunk;
  }
  return true;
}

Result<void> GuestMemory::read(Gpa gpa, std::span<uint8_t> out) const {
  if (!contains(gpa, out.size()))
    return make_error("guest read of {} bytes at {:#x} is outside guest memory", out.size(), gpa);
  size_t done = 0;
  while (done < out.size()) {
    const GuestRegion* r = find(gpa + done);
    uint64_t off = gpa + done - r->start;
    size_t chunk = std::min<uint64_t>(out.size() - done, r->size() - off);
    std::memcpy(out.data() + done, r->host() + off, chunk);
    done += chunk;
  }
  return ok();
}

Result<void> GuestMemory::write(Gpa gpa, std::span<const uint8_t> in) const {
  if (!contains(gpa, in.size()))
    return make_error("guest write of {} bytes at {:#x} is outside guest memory", in.size(), gpa);
  size_t done = 0;
  while (done < in.size()) {
    const GuestRegion* r = find(gpa + done);
    uint64_t off = gpa + done - r->start;
    size_t chunk = std::min<uint64_t>(in.size() - done, r->size() - off);
    std::memcpy(r->host() + off, in.data() + done, chunk);
    done += chunk;
  }
  mark_dirty(gpa, in.size());
  return ok();
}

}  // namespace vmm
