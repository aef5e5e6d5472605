// MockQueue: the driver side of a split virtqueue, for tests and fuzzers. It
// lays out the descriptor table, available ring and used ring in a
// GuestMemory, adds chains the way a driver would, and can also write
// arbitrary garbage into any ring field. Header-only; aborts on a guest memory
// error (a bug in the test, not in the code under test).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "devices/virtio/queue.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::virtio::testing {

struct MockBuf {
  Gpa addr = 0;
  uint32_t len = 0;
  bool writable = false;
};

struct UsedElem {
  uint32_t id = 0;
  uint32_t len = 0;
  bool operator==(const UsedElem&) const = default;
};

class MockQueue {
 public:
  // Default layout: fits any size <= 1024 in the first 256 KiB of memory.
  static constexpr Gpa kDefaultDesc = 0x10000;
  static constexpr Gpa kDefaultAvail = 0x20000;
  static constexpr Gpa kDefaultUsed = 0x30000;

  MockQueue(const GuestMemory& mem, uint16_t size, Gpa desc = kDefaultDesc,
            Gpa avail = kDefaultAvail, Gpa used = kDefaultUsed)
      : mem_(mem), size_(size), desc_(desc), avail_(avail), used_(used) {}

  uint16_t size() const { return size_; }
  Gpa desc_addr() const { return desc_; }
  Gpa avail_addr() const { return avail_; }
  Gpa used_addr() const { return used_; }

  // Points `q` at this layout and marks it ready.
  void configure(Queue& q) const {
    q.set_size(size_);
    q.set_desc_table(desc_);
    q.set_avail_ring(avail_);
    q.set_used_ring(used_);
    q.set_ready(true);
  }

  // --- raw writes (any value, including garbage) ---
  template <typename T>
  void poke(Gpa gpa, const T& v) const {
    check(mem_.write_obj(gpa, v));
  }
  template <typename T>
  T peek(Gpa gpa) const {
    auto r = mem_.read_obj<T>(gpa);
    check(r.ok() ? Result<void>() : Result<void>(r.error()));
    return *r;
  }
  void set_desc(uint16_t index, Gpa addr, uint32_t len, uint16_t flags, uint16_t next) const {
    write_desc(desc_ + 16 * uint64_t{index}, addr, len, flags, next);
  }
  // A descriptor in an indirect table at `table`.
  void set_indirect_desc(Gpa table, uint32_t index, Gpa addr, uint32_t len, uint16_t flags,
                         uint16_t next) const {
    write_desc(table + 16 * uint64_t{index}, addr, len, flags, next);
  }
  void set_avail_flags(uint16_t v) const { poke<uint16_t>(avail_, v); }
  void set_avail_idx(uint16_t v) {
    avail_idx_ = v;
    poke<uint16_t>(avail_ + 2, v);
  }
  void set_avail_ring(uint16_t slot, uint16_t head) const {
    poke<uint16_t>(avail_ + 4 + 2 * uint64_t{slot}, head);
  }
  void set_used_event(uint16_t v) const { poke<uint16_t>(avail_ + 4 + 2 * uint64_t{size_}, v); }

  // --- driver operations ---
  // Writes head into the next avail slot and publishes avail->idx.
  void push_avail(uint16_t head) {
    set_avail_ring(static_cast<uint16_t>(avail_idx_ % size_), head);
    set_avail_idx(static_cast<uint16_t>(avail_idx_ + 1));
  }
  // Adds a chain of direct descriptors (taken round-robin from the table),
  // linked with NEXT, and publishes it. Returns the head index.
  uint16_t add_chain(const std::vector<MockBuf>& bufs) {
    uint16_t head = next_desc_;
    for (size_t i = 0; i < bufs.size(); ++i) {
      uint16_t idx = next_desc_;
      next_desc_ = static_cast<uint16_t>((next_desc_ + 1) % size_);
      bool last = i + 1 == bufs.size();
      uint16_t flags =
          static_cast<uint16_t>((bufs[i].writable ? kDescFWrite : 0) | (last ? 0 : kDescFNext));
      set_desc(idx, bufs[i].addr, bufs[i].len, flags, last ? 0 : next_desc_);
    }
    push_avail(head);
    return head;
  }
  // Writes `bufs` as an indirect table at `table`, adds one direct descriptor
  // pointing at it, and publishes it. Returns the head index.
  uint16_t add_indirect_chain(Gpa table, const std::vector<MockBuf>& bufs) {
    for (size_t i = 0; i < bufs.size(); ++i) {
      bool last = i + 1 == bufs.size();
      uint16_t flags =
          static_cast<uint16_t>((bufs[i].writable ? kDescFWrite : 0) | (last ? 0 : kDescFNext));
      set_indirect_desc(table, static_cast<uint32_t>(i), bufs[i].addr, bufs[i].len, flags,
                        last ? 0 : static_cast<uint16_t>(i + 1));
    }
    uint16_t head = next_desc_;
    next_desc_ = static_cast<uint16_t>((next_desc_ + 1) % size_);
    set_desc(head, table, static_cast<uint32_t>(16 * bufs.size()), kDescFIndirect, 0);
    push_avail(head);
    return head;
  }
  uint16_t avail_idx() const { return avail_idx_; }

  // --- device-written fields ---
  uint16_t used_flags() const { return peek<uint16_t>(used_); }
  uint16_t used_idx() const { return peek<uint16_t>(used_ + 2); }
  UsedElem used_elem(uint16_t slot) const {
    return UsedElem{peek<uint32_t>(used_ + 4 + 8 * uint64_t{slot}),
                    peek<uint32_t>(used_ + 8 + 8 * uint64_t{slot})};
  }
  uint16_t avail_event() const { return peek<uint16_t>(used_ + 4 + 8 * uint64_t{size_}); }
  // Garbage in the used ring too (e.g. to check the device ignores it).
  void set_used_idx(uint16_t v) const { poke<uint16_t>(used_ + 2, v); }

 private:
  static void check(const Result<void>& r) {
    if (r.ok()) return;
    std::fprintf(stderr, "MockQueue: %s\n", r.error().to_string().c_str());
    std::abort();
  }
  void write_desc(Gpa at, Gpa addr, uint32_t len, uint16_t flags, uint16_t next) const {
    poke<uint64_t>(at, addr);
    poke<uint32_t>(at + 8, len);
    poke<uint16_t>(at + 12, flags);
    poke<uint16_t>(at + 14, next);
  }

  const GuestMemory& mem_;
  uint16_t size_;
  Gpa desc_, avail_, used_;
  uint16_t avail_idx_ = 0;
  uint16_t next_desc_ = 0;
};

}  // namespace vmm::virtio::testing
