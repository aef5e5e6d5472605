// MmapRegion: sole owner of an mmap()ed range; unmaps it on destruction.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "vmm/base/result.h"

namespace vmm {

class MmapRegion {
 public:
  MmapRegion() = default;
  ~MmapRegion() { reset(); }
  MmapRegion(MmapRegion&& o) noexcept
      : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  MmapRegion& operator=(MmapRegion&& o) noexcept {
    if (this != &o) {
      reset();
      addr_ = std::exchange(o.addr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  MmapRegion(const MmapRegion&) = delete;
  MmapRegion& operator=(const MmapRegion&) = delete;

  // Anonymous private zero-filled memory (MAP_NORESERVE: pages are committed on touch).
  // huge_pages: madvise(MADV_HUGEPAGE), so that the kernel backs it with
  // transparent huge pages where it can (one page fault and, for KVM, one
  // mapping per 2 MiB). Where THP is off or unsupported the advice fails and
  // the memory stays 4 KiB-backed: not an error.
  // Regions of 2 MiB or more start on a 2 MiB boundary, as QEMU aligns guest
  // RAM: KVM maps a guest page with one 2 MiB entry only when the host
  // address is congruent with the guest-physical one modulo 2 MiB (guest RAM
  // ranges start 2 MiB-aligned), so an unaligned huge page is still mapped
  // 4 KiB at a time.
  static constexpr size_t kHugeAlign = size_t{2} << 20;
  static Result<MmapRegion> anonymous(size_t size, bool huge_pages = false) {
    constexpr int kProt = PROT_READ | PROT_WRITE;
    constexpr int kFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (size < kHugeAlign || size > SIZE_MAX - kHugeAlign) {
      auto r = map(nullptr, size, kProt, kFlags, -1, 0);
      if (r.ok() && huge_pages) (void)::madvise(r->data(), r->size(), MADV_HUGEPAGE);
      return r;
    }
    // Reserve 2 MiB more than asked, then give back the unaligned head and tail.
    void* p = ::mmap(nullptr, size + kHugeAlign, kProt, kFlags, -1, 0);
    if (p == MAP_FAILED) return errno_error("mmap of {} bytes", size + kHugeAlign);
    auto base = reinterpret_cast<uintptr_t>(p);
    uintptr_t start = (base + kHugeAlign - 1) & ~(uintptr_t{kHugeAlign} - 1);
    if (start > base) ::munmap(p, start - base);
    uintptr_t end = base + size + kHugeAlign;
    if (end > start + size) ::munmap(reinterpret_cast<void*>(start + size), end - (start + size));
    MmapRegion r;
    r.addr_ = reinterpret_cast<uint8_t*>(start);
    r.size_ = size;
    if (huge_pages) (void)::madvise(r.addr_, r.size_, MADV_HUGEPAGE);
    return r;
  }

  static Result<MmapRegion> map(void* hint, size_t size, int prot, int flags, int fd,
                                off_t offset) {
    if (size == 0) return make_error("mmap of zero bytes");
    void* p = ::mmap(hint, size, prot, flags, fd, offset);
    if (p == MAP_FAILED) return errno_error("mmap of {} bytes", size);
    MmapRegion r;
    r.addr_ = static_cast<uint8_t*>(p);
    r.size_ = size;
    return r;
  }

  uint8_t* data() const { return addr_; }
  size_t size() const { return size_; }
  bool valid() const { return addr_ != nullptr; }

  void reset() {
    if (addr_) ::munmap(addr_, size_);
    addr_ = nullptr;
    size_ = 0;
  }

 private:
  uint8_t* addr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace vmm
