// Split virtqueue (VIRTIO 1.2 section 2.7), device side, driver-hostile.
//
// Every value read from the rings or descriptors is treated as untrusted: ring
// positions are bounded by the queue size, descriptor indices are checked,
// chains are length-bounded (so loops are detected), every buffer is checked
// against guest memory with overflow checks, and all guest accesses go through
// GuestMemory's checked accessors. A malformed ring yields an Error, after
// which the device should set DEVICE_NEEDS_RESET; nothing crashes and nothing
// outside guest memory is ever read or written.
//
// Chains are parsed eagerly by pop(): the descriptors are copied out of guest
// memory once, so the driver cannot change a chain under the device after it
// was validated (no TOCTOU on addresses or lengths; the buffer *contents* are
// of course still guest memory).
//
// Thread-safety: a Queue is not internally synchronized; one thread (the
// device's) drives it at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm::virtio {

// Descriptor flags.
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
// avail->flags / used->flags.
inline constexpr uint16_t kAvailFNoInterrupt = 1;
inline constexpr uint16_t kUsedFNoNotify = 1;

// Largest queue size this implementation accepts (the spec allows 32768).
inline constexpr uint16_t kMaxQueueSize = 1024;
// Largest indirect table accepted, in descriptors. Linux may put more
// descriptors in an indirect table than the queue size, so the bound for
// indirect tables is this constant, not the queue size.
inline constexpr uint32_t kMaxIndirectDescriptors = 1024;

// Ring geometry (spec 2.7): sizes include used_event / avail_event.
inline constexpr uint64_t kDescSize = 16;
inline constexpr uint64_t kDescAlign = 16;
inline constexpr uint64_t kAvailAlign = 2;
inline constexpr uint64_t kUsedAlign = 4;
inline constexpr uint64_t desc_table_bytes(uint64_t size) { return kDescSize * size; }
inline constexpr uint64_t avail_ring_bytes(uint64_t size) { return 6 + 2 * size; }
inline constexpr uint64_t used_ring_bytes(uint64_t size) { return 6 + 8 * size; }

inline constexpr bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// One buffer of a chain, as validated by pop(): [addr, addr+len) lies in guest
// memory (addr+len does not overflow).
struct DescriptorBuffer {
  Gpa addr = 0;
  uint32_t len = 0;
  bool writable = false;  // device-writable (VIRTQ_DESC_F_WRITE)

  bool operator==(const DescriptorBuffer&) const = default;
};

// A validated descriptor chain: the device-readable buffers, then the
// device-writable ones. Indirect tables are flattened into the list.
class DescriptorChain {
 public:
  DescriptorChain() = default;
  DescriptorChain(uint16_t head, std::vector<DescriptorBuffer> buffers);

  // The head index to hand back through Queue::add_used.
  uint16_t head_index() const { return head_; }
  const std::vector<DescriptorBuffer>& buffers() const { return buffers_; }
  // Number of leading device-readable buffers.
  size_t num_readable() const { return num_readable_; }
  // Total bytes in the readable / writable parts (64-bit: no overflow).
  uint64_t readable_len() const { return readable_len_; }
  uint64_t writable_len() const { return writable_len_; }

  // Copies up to out.size() bytes of the readable part, starting `offset`
  // bytes into it, into `out`. Returns the number of bytes copied (short when
  // the readable part ends first).
  Result<size_t> read_readable(const GuestMemory& mem, uint64_t offset,
                               std::span<uint8_t> out) const;
  // Copies `in` into the writable part starting `offset` bytes into it, at most
  // up to the end of the writable part. Returns the number of bytes written.
  Result<size_t> write_writable(const GuestMemory& mem, uint64_t offset,
                                std::span<const uint8_t> in) const;
  // Marks every writable buffer dirty for live migration
  // (GuestMemory::mark_dirty): call after the device wrote through iovecs and
  // before add_used.
  void mark_written(const GuestMemory& mem) const;

 private:
  uint16_t head_ = 0;
  std::vector<DescriptorBuffer> buffers_;
  size_t num_readable_ = 0;
  uint64_t readable_len_ = 0;
  uint64_t writable_len_ = 0;
};

// Snapshot of a Queue.
struct QueueState {
  uint16_t max_size = 0;
  uint16_t size = 0;
  bool ready = false;
  Gpa desc_table = 0;
  Gpa avail_ring = 0;
  Gpa used_ring = 0;
  uint16_t next_avail = 0;
  uint16_t next_used = 0;
  bool event_idx = false;
  uint16_t signalled_used = 0;  // used idx at the last needs_notification()

  bool operator==(const QueueState&) const = default;
};

// QueueState <-> a state-tree section ("queue0"...): u16 max_size size
// next_avail next_used signalled_used, bool ready event_idx, u64 desc_table
// avail_ring used_ring. Strict (missing, mistyped or unknown entries are
// refused); the values are checked by Queue::restore() and the transport.
void to_section(const QueueState& st, snapshot::Section& s);
Result<void> from_section(const snapshot::Section& s, QueueState& st);

class Queue {
 public:
  // max_size must be a power of two in [1, kMaxQueueSize]; any other value
  // yields a queue with max_size() == 0 that never validates (the driver sees
  // QueueNumMax 0: queue not available).
  explicit Queue(uint16_t max_size);

  uint16_t max_size() const { return max_size_; }
  uint16_t size() const { return size_; }
  bool ready() const { return ready_; }
  Gpa desc_table() const { return desc_table_; }
  Gpa avail_ring() const { return avail_ring_; }
  Gpa used_ring() const { return used_ring_; }
  uint16_t next_avail() const { return next_avail_; }
  uint16_t next_used() const { return next_used_; }
  bool event_idx() const { return event_idx_; }

  // Driver-side configuration. These return false and change nothing while
  // the queue is ready; values are checked by validate(), not here.
  bool set_size(uint16_t size);
  bool set_desc_table(Gpa gpa);
  bool set_avail_ring(Gpa gpa);
  bool set_used_ring(Gpa gpa);
  void set_ready(bool ready) { ready_ = ready; }
  // VIRTIO_F_RING_EVENT_IDX negotiated.
  void set_event_idx(bool enabled) { event_idx_ = enabled; }

  // Back to the power-on state (size = max_size, addresses 0, not ready).
  void reset();

  // Checks the configuration for use: size a power of two <= max_size, rings
  // aligned (desc 16, avail 2, used 4) and each entirely inside guest memory.
  Result<void> validate(const GuestMemory& mem) const;

  // Number of chains the driver has made available and pop() has not taken
  // (errors if avail->idx moved more than size() past next_avail).
  Result<uint16_t> pending(const GuestMemory& mem) const;

  // Takes the next available chain, or nullopt if none. An error means the
  // driver corrupted the ring (avail idx too far ahead, head index >= size,
  // malformed chain); next_avail is then left unchanged and the device should
  // go to DEVICE_NEEDS_RESET.
  Result<std::optional<DescriptorChain>> pop(const GuestMemory& mem);

  // Gives back the chain the last pop() returned, so the next pop() returns
  // it again (a device that popped a chain it cannot use yet, before a
  // pause or snapshot). Only valid directly after a successful pop().
  void undo_pop() { --next_avail_; }

  // Puts `head` back into the used ring with `len` bytes written and publishes
  // used->idx (release ordering: the element is visible before the index).
  Result<void> add_used(const GuestMemory& mem, uint16_t head, uint32_t len);

  // Whether the driver wants an interrupt for the used entries added since the
  // previous call: VIRTIO_F_EVENT_IDX (used_event) when enabled, else the
  // VIRTQ_AVAIL_F_NO_INTERRUPT flag. False if nothing was added since. If the
  // ring cannot be read, returns true (an extra interrupt is harmless).
  bool needs_notification(const GuestMemory& mem);

  // Driver-notification suppression. disable: sets VIRTQ_USED_F_NO_NOTIFY (no
  // effect with event idx). enable: clears it, or with event idx publishes
  // avail_event = next_avail; then returns whether chains are pending (the
  // device must process them, since the driver may not notify for them).
  Result<void> disable_notification(const GuestMemory& mem);
  Result<bool> enable_notification(const GuestMemory& mem);

  QueueState save() const;
  // Validates `state` (sizes, alignment of a ready queue's rings) and, if
  // consistent, installs it. On error nothing changes. Ring contents are not
  // checked here: a ready queue's rings are checked against `mem`.
  Result<void> restore(const QueueState& state, const GuestMemory& mem);

 private:
  Result<void> parse_chain(const GuestMemory& mem, uint16_t head,
                           std::vector<DescriptorBuffer>& out) const;

  uint16_t max_size_;
  uint16_t size_;
  bool ready_ = false;
  Gpa desc_table_ = 0;
  Gpa avail_ring_ = 0;
  Gpa used_ring_ = 0;
  uint16_t next_avail_ = 0;
  uint16_t next_used_ = 0;
  bool event_idx_ = false;
  uint16_t signalled_used_ = 0;
};

}  // namespace vmm::virtio
