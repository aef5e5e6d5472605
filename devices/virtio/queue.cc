#include "devices/virtio/queue.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "vmm/base/checked_math.h"

namespace vmm::virtio {
namespace {

// Ring indices and flags are shared with a driver that updates them
// concurrently: they must be read and written with single aligned 16-bit
// accesses. GuestMemory::read_obj is a memcpy, which glibc may split into
// two loads (it did: a torn avail->idx across a multiple of 256 was seen in
// the virtio benchmark, docs/benchmarks.md). Ring addresses are validated
// 2-aligned and guest memory is page-aligned on the host, so the host
// address is 2-aligned too (checked anyway).
Result<uint16_t> ring_load16(const GuestMemory& mem, Gpa gpa) {
  VMM_TRY(auto span, mem.span(gpa, 2));
  auto* p = reinterpret_cast<uint16_t*>(span.data());
  if (reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) != 0)
    return make_error("virtqueue: ring field at {:#x} is not 2-byte aligned", gpa);
  return std::atomic_ref<uint16_t>(*p).load(std::memory_order_relaxed);
}

Result<void> ring_store16(const GuestMemory& mem, Gpa gpa, uint16_t v) {
  VMM_TRY(auto span, mem.span(gpa, 2));
  auto* p = reinterpret_cast<uint16_t*>(span.data());
  if (reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) != 0)
    return make_error("virtqueue: ring field at {:#x} is not 2-byte aligned", gpa);
  std::atomic_ref<uint16_t>(*p).store(v, std::memory_order_relaxed);
  mem.mark_dirty(gpa, 2);
  return ok();
}


// A descriptor as laid out in guest memory (little-endian; x86_64 host).
struct RawDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(RawDesc) == kDescSize);

struct RawUsedElem {
  uint32_t id;
  uint32_t len;
};
static_assert(sizeof(RawUsedElem) == 8);

bool valid_max_size(uint16_t max) { return is_power_of_two(max) && max <= kMaxQueueSize; }

Result<void> check_ring(const GuestMemory& mem, const char* what, Gpa gpa, uint64_t align,
                        uint64_t bytes) {
  if (gpa % align != 0)
    return make_error("virtqueue: {} at {:#x} is not {}-byte aligned", what, gpa, align);
  if (!checked_add(gpa, bytes))
    return make_error("virtqueue: {} at {:#x} (+{:#x}) wraps around", what, gpa, bytes);
  if (!mem.contains(gpa, bytes))
    return make_error("virtqueue: {} [{:#x}, +{:#x}) is not inside guest memory", what, gpa, bytes);
  return ok();
}

Result<void> check_config(const GuestMemory& mem, uint16_t max_size, uint16_t size, Gpa desc,
                          Gpa avail, Gpa used) {
  if (!valid_max_size(max_size)) return make_error("virtqueue: queue not available");
  if (!is_power_of_two(size) || size > max_size)
    return make_error("virtqueue: size {} is not a power of two in [1, {}]", size, max_size);
  VMM_CHECK(check_ring(mem, "descriptor table", desc, kDescAlign, desc_table_bytes(size)));
  VMM_CHECK(check_ring(mem, "available ring", avail, kAvailAlign, avail_ring_bytes(size)));
  VMM_CHECK(check_ring(mem, "used ring", used, kUsedAlign, used_ring_bytes(size)));
  return ok();
}

// Appends one data descriptor to `out`, enforcing the buffer rules.
Result<void> add_buffer(const GuestMemory& mem, const RawDesc& d, bool& seen_writable,
                        std::vector<DescriptorBuffer>& out) {
  bool writable = (d.flags & kDescFWrite) != 0;
  if (!writable && seen_writable)
    return make_error("virtqueue: device-readable descriptor after a device-writable one");
  if (!checked_add(d.addr, d.len))
    return make_error("virtqueue: buffer at {:#x} len {:#x} wraps around", d.addr, d.len);
  if (!mem.contains(d.addr, d.len))
    return make_error("virtqueue: buffer [{:#x}, +{:#x}) is not inside guest memory", d.addr,
                      d.len);
  seen_writable = seen_writable || writable;
  out.push_back(DescriptorBuffer{d.addr, d.len, writable});
  return ok();
}

}  // namespace

// --- DescriptorChain ---------------------------------------------------------

DescriptorChain::DescriptorChain(uint16_t head, std::vector<DescriptorBuffer> buffers)
    : head_(head), buffers_(std::move(buffers)) {
  for (const auto& b : buffers_) {
    if (b.writable) {
      writable_len_ += b.len;
    } else {
      ++num_readable_;
      readable_len_ += b.len;
    }
  }
}

Result<size_t> DescriptorChain::read_readable(const GuestMemory& mem, uint64_t offset,
                                              std::span<uint8_t> out) const {
  size_t done = 0;
  for (size_t i = 0; i < num_readable_ && done < out.size(); ++i) {
    const auto& b = buffers_[i];
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    size_t n = std::min<uint64_t>(b.len - offset, out.size() - done);
    VMM_CHECK(mem.read(b.addr + offset, out.subspan(done, n)));
    done += n;
    offset = 0;
  }
  return done;
}

Result<size_t> DescriptorChain::write_writable(const GuestMemory& mem, uint64_t offset,
                                               std::span<const uint8_t> in) const {
  size_t done = 0;
  for (size_t i = num_readable_; i < buffers_.size() && done < in.size(); ++i) {
    const auto& b = buffers_[i];
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    size_t n = std::min<uint64_t>(b.len - offset, in.size() - done);
    VMM_CHECK(mem.write(b.addr + offset, in.subspan(done, n)));
    done += n;
    offset = 0;
  }
  return done;
}

void DescriptorChain::mark_written(const GuestMemory& mem) const {
  if (!mem.dirty_tracking()) return;
  for (const auto& b : buffers_)
    if (b.writable) mem.mark_dirty(b.addr, b.len);
}

// --- Queue -------------------------------------------------------------------

Queue::Queue(uint16_t max_size)
    : max_size_(valid_max_size(max_size) ? max_size : 0), size_(max_size_) {}

bool Queue::set_size(uint16_t size) {
  if (ready_) return false;
  size_ = size;
  return true;
}

bool Queue::set_desc_table(Gpa gpa) {
  if (ready_) return false;
  desc_table_ = gpa;
  return true;
}

bool Queue::set_avail_ring(Gpa gpa) {
  if (ready_) return false;
  avail_ring_ = gpa;
  return true;
}

bool Queue::set_used_ring(Gpa gpa) {
  if (ready_) return false;
  used_ring_ = gpa;
  return true;
}

void Queue::reset() {
  size_ = max_size_;
  ready_ = false;
  desc_table_ = avail_ring_ = used_ring_ = 0;
  next_avail_ = next_used_ = signalled_used_ = 0;
  event_idx_ = false;
}

Result<void> Queue::validate(const GuestMemory& mem) const {
  return check_config(mem, max_size_, size_, desc_table_, avail_ring_, used_ring_);
}

Result<uint16_t> Queue::pending(const GuestMemory& mem) const {
  if (!ready_) return make_error("virtqueue: queue is not ready");
  VMM_TRY(uint16_t avail_idx, ring_load16(mem, avail_ring_ + 2));
  uint16_t n = static_cast<uint16_t>(avail_idx - next_avail_);
  if (n > size_)
    return make_error("virtqueue: avail idx {} is {} entries ahead of {} (queue size {})",
                      avail_idx, n, next_avail_, size_);
  return n;
}

Result<std::optional<DescriptorChain>> Queue::pop(const GuestMemory& mem) {
  VMM_TRY(uint16_t n, pending(mem));
  if (n == 0) return std::optional<DescriptorChain>();
  // Read the ring entry and the descriptors only after seeing avail->idx.
  std::atomic_thread_fence(std::memory_order_acquire);
  Gpa slot = avail_ring_ + 4 + 2 * uint64_t{static_cast<uint16_t>(next_avail_ % size_)};
  VMM_TRY(uint16_t head, ring_load16(mem, slot));
  if (head >= size_)
    return make_error("virtqueue: avail ring entry {} holds head {} >= queue size {}",
                      next_avail_ % size_, head, size_);
  std::vector<DescriptorBuffer> buffers;
  VMM_CHECK(parse_chain(mem, head, buffers));
  ++next_avail_;
  if (event_idx_) {
    // avail_event: ask to be notified as soon as the driver adds another chain.
    VMM_CHECK(ring_store16(mem, used_ring_ + 4 + 8 * uint64_t{size_}, next_avail_));
  }
  return std::optional<DescriptorChain>(DescriptorChain(head, std::move(buffers)));
}

Result<void> Queue::parse_chain(const GuestMemory& mem, uint16_t head,
                                std::vector<DescriptorBuffer>& out) const {
  bool seen_writable = false;
  uint16_t idx = head;
  uint32_t count = 0;
  while (true) {
    // A chain visits at most size_ descriptors; a longer walk is a loop.
    if (++count > size_)
      return make_error("virtqueue: chain from head {} is longer than the queue size {} (loop?)",
                        head, size_);
    VMM_TRY(RawDesc d, mem.read_obj<RawDesc>(desc_table_ + kDescSize * idx));
    if (d.flags & kDescFIndirect) {
      if (d.flags & kDescFNext)
        return make_error("virtqueue: indirect descriptor {} also has NEXT", idx);
      if (d.len == 0 || d.len % kDescSize != 0)
        return make_error("virtqueue: indirect table length {:#x} is not a non-zero multiple of 16",
                          d.len);
      uint32_t entries = d.len / kDescSize;
      if (entries > kMaxIndirectDescriptors)
        return make_error("virtqueue: indirect table of {} descriptors exceeds {}", entries,
                          kMaxIndirectDescriptors);
      // The spec requires no alignment for indirect tables.
      if (!checked_add(d.addr, d.len) || !mem.contains(d.addr, d.len))
        return make_error("virtqueue: indirect table [{:#x}, +{:#x}) is not inside guest memory",
                          d.addr, d.len);
      uint32_t i = 0;
      uint32_t icount = 0;
      while (true) {
        if (++icount > entries)
          return make_error("virtqueue: indirect chain is longer than its table ({}) (loop?)",
                            entries);
        VMM_TRY(RawDesc id, mem.read_obj<RawDesc>(d.addr + kDescSize * i));
        if (id.flags & kDescFIndirect)
          return make_error("virtqueue: nested indirect descriptor at table index {}", i);
        VMM_CHECK(add_buffer(mem, id, seen_writable, out));
        if (!(id.flags & kDescFNext)) break;
        if (id.next >= entries)
          return make_error("virtqueue: indirect next index {} >= table size {}", id.next, entries);
        i = id.next;
      }
      return ok();  // an indirect descriptor ends the chain
    }
    VMM_CHECK(add_buffer(mem, d, seen_writable, out));
    if (!(d.flags & kDescFNext)) return ok();
    if (d.next >= size_)
      return make_error("virtqueue: next index {} >= queue size {}", d.next, size_);
    idx = d.next;
  }
}

Result<void> Queue::add_used(const GuestMemory& mem, uint16_t head, uint32_t len) {
  if (!ready_) return make_error("virtqueue: queue is not ready");
  if (head >= size_) return make_error("virtqueue: used head {} >= queue size {}", head, size_);
  Gpa elem = used_ring_ + 4 + 8 * uint64_t{static_cast<uint16_t>(next_used_ % size_)};
  VMM_CHECK(mem.write_obj(elem, RawUsedElem{head, len}));
  // The element must be visible to the driver before the index that covers it.
  std::atomic_thread_fence(std::memory_order_release);
  uint16_t new_idx = static_cast<uint16_t>(next_used_ + 1);
  VMM_CHECK(ring_store16(mem, used_ring_ + 2, new_idx));
  next_used_ = new_idx;
  return ok();
}

bool Queue::needs_notification(const GuestMemory& mem) {
  uint16_t old_idx = signalled_used_;
  uint16_t new_idx = next_used_;
  signalled_used_ = new_idx;
  if (old_idx == new_idx) return false;
  // Our used->idx store must be ordered before the load of used_event/flags.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (event_idx_) {
    auto ev = ring_load16(mem, avail_ring_ + 4 + 2 * uint64_t{size_});
    if (!ev.ok()) return true;
    // vring_need_event: did new_idx step past used_event since old_idx?
    return static_cast<uint16_t>(new_idx - *ev - 1) < static_cast<uint16_t>(new_idx - old_idx);
  }
  auto flags = ring_load16(mem, avail_ring_);
  if (!flags.ok()) return true;
  return (*flags & kAvailFNoInterrupt) == 0;
}

Result<void> Queue::disable_notification(const GuestMemory& mem) {
  if (!ready_) return make_error("virtqueue: queue is not ready");
  if (event_idx_) return ok();
  return ring_store16(mem, used_ring_, kUsedFNoNotify);
}

Result<bool> Queue::enable_notification(const GuestMemory& mem) {
  if (!ready_) return make_error("virtqueue: queue is not ready");
  if (event_idx_) {
    VMM_CHECK(ring_store16(mem, used_ring_ + 4 + 8 * uint64_t{size_}, next_avail_));
  } else {
    VMM_CHECK(ring_store16(mem, used_ring_, 0));
  }
  // The store above must be visible before we re-read avail->idx, else a chain
  // added meanwhile could go unnoticed by both sides.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  VMM_TRY(uint16_t n, pending(mem));
  return n != 0;
}

QueueState Queue::save() const {
  QueueState s;
  s.max_size = max_size_;
  s.size = size_;
  s.ready = ready_;
  s.desc_table = desc_table_;
  s.avail_ring = avail_ring_;
  s.used_ring = used_ring_;
  s.next_avail = next_avail_;
  s.next_used = next_used_;
  s.event_idx = event_idx_;
  s.signalled_used = signalled_used_;
  return s;
}

Result<void> Queue::restore(const QueueState& s, const GuestMemory& mem) {
  if (s.max_size != max_size_)
    return make_error("virtqueue: saved max size {} differs from the device's {}", s.max_size,
                      max_size_);
  if (s.ready)
    VMM_CHECK(check_config(mem, s.max_size, s.size, s.desc_table, s.avail_ring, s.used_ring));
  size_ = s.size;
  ready_ = s.ready;
  desc_table_ = s.desc_table;
  avail_ring_ = s.avail_ring;
  used_ring_ = s.used_ring;
  next_avail_ = s.next_avail;
  next_used_ = s.next_used;
  event_idx_ = s.event_idx;
  signalled_used_ = s.signalled_used;
  return ok();
}

void to_section(const QueueState& st, snapshot::Section& s) {
  s.put_u16("max_size", st.max_size);
  s.put_u16("size", st.size);
  s.put_bool("ready", st.ready);
  s.put_u64("desc_table", st.desc_table);
  s.put_u64("avail_ring", st.avail_ring);
  s.put_u64("used_ring", st.used_ring);
  s.put_u16("next_avail", st.next_avail);
  s.put_u16("next_used", st.next_used);
  s.put_bool("event_idx", st.event_idx);
  s.put_u16("signalled_used", st.signalled_used);
}

Result<void> from_section(const snapshot::Section& s, QueueState& st) {
  VMM_CHECK(s.expect_only({"max_size", "size", "ready", "desc_table", "avail_ring", "used_ring",
                           "next_avail", "next_used", "event_idx", "signalled_used"}));
  VMM_TRY(st.max_size, s.get_u16("max_size"));
  VMM_TRY(st.size, s.get_u16("size"));
  VMM_TRY(st.ready, s.get_bool("ready"));
  VMM_TRY(st.desc_table, s.get_u64("desc_table"));
  VMM_TRY(st.avail_ring, s.get_u64("avail_ring"));
  VMM_TRY(st.used_ring, s.get_u64("used_ring"));
  VMM_TRY(st.next_avail, s.get_u16("next_avail"));
  VMM_TRY(st.next_used, s.get_u16("next_used"));
  VMM_TRY(st.event_idx, s.get_bool("event_idx"));
  VMM_TRY(st.signalled_used, s.get_u16("signalled_used"));
  return ok();
}

}  // namespace vmm::virtio
