#include "devices/virtio/queue.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "devices/virtio/testing/mock_queue.h"

namespace vmm::virtio {
namespace {

using testing::MockBuf;
using testing::MockQueue;
using testing::UsedElem;

constexpr uint64_t kMemSize = 1 << 20;
constexpr Gpa kData = 0x40000;
constexpr Gpa kTable = 0x80000;

GuestMemory make_mem() {
  auto m = GuestMemory::create_anonymous({{0, kMemSize}});
  EXPECT_TRUE(m.ok());
  return std::move(m).value();
}

class VirtioQueueTest : public ::testing::Test {
 protected:
  VirtioQueueTest() : mem_(make_mem()), q_(256), mq_(mem_, 16) { mq_.configure(q_); }

  void write_bytes(Gpa gpa, const std::string& s) {
    ASSERT_TRUE(
        mem_.write(gpa, std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size())).ok());
  }
  std::string read_bytes(Gpa gpa, size_t n) {
    std::string s(n, '\0');
    EXPECT_TRUE(mem_.read(gpa, std::span(reinterpret_cast<uint8_t*>(s.data()), n)).ok());
    return s;
  }
  // Pops expecting a chain.
  DescriptorChain pop_ok() {
    auto r = q_.pop(mem_);
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    if (!r.ok() || !r->has_value()) {
      ADD_FAILURE() << "no chain";
      return {};
    }
    return std::move(**r);
  }
  // Pops expecting an error mentioning `what`; next_avail must not move.
  void pop_err(const std::string& what) {
    uint16_t before = q_.next_avail();
    auto r = q_.pop(mem_);
    ASSERT_FALSE(r.ok()) << "expected error: " << what;
    EXPECT_NE(r.error().message.find(what), std::string::npos) << r.error().message;
    EXPECT_EQ(q_.next_avail(), before);
  }

  GuestMemory mem_;
  Queue q_;
  MockQueue mq_;
};

TEST_F(VirtioQueueTest, InitialState) {
  Queue q(256);
  EXPECT_EQ(q.max_size(), 256);
  EXPECT_EQ(q.size(), 256);
  EXPECT_FALSE(q.ready());
  EXPECT_EQ(q.next_avail(), 0);
  EXPECT_EQ(q.next_used(), 0);
  EXPECT_FALSE(q.event_idx());
  EXPECT_TRUE(q_.validate(mem_).ok());
}

TEST_F(VirtioQueueTest, InvalidMaxSizeMakesUnusableQueue) {
  for (uint16_t m : {0, 3, 100, 2048, 32768}) {
    Queue q(m);
    EXPECT_EQ(q.max_size(), 0) << m;
    mq_.configure(q);
    EXPECT_FALSE(q.validate(mem_).ok()) << m;
  }
}

TEST_F(VirtioQueueTest, SettersRefusedWhileReady) {
  EXPECT_FALSE(q_.set_size(8));
  EXPECT_FALSE(q_.set_desc_table(0));
  EXPECT_FALSE(q_.set_avail_ring(0));
  EXPECT_FALSE(q_.set_used_ring(0));
  EXPECT_EQ(q_.size(), 16);
  EXPECT_EQ(q_.desc_table(), MockQueue::kDefaultDesc);
  q_.set_ready(false);
  EXPECT_TRUE(q_.set_size(8));
  EXPECT_EQ(q_.size(), 8);
}

TEST_F(VirtioQueueTest, EmptyQueuePopsNothing) {
  auto r = q_.pop(mem_);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());
}

TEST_F(VirtioQueueTest, PopNotReadyFails) {
  q_.set_ready(false);
  mq_.add_chain({{kData, 4}});
  pop_err("not ready");
}

TEST_F(VirtioQueueTest, SingleReadableBuffer) {
  write_bytes(kData, "hello");
  uint16_t head = mq_.add_chain({{kData, 5}});
  auto c = pop_ok();
  EXPECT_EQ(c.head_index(), head);
  ASSERT_EQ(c.buffers().size(), 1u);
  EXPECT_EQ(c.buffers()[0], (DescriptorBuffer{kData, 5, false}));
  EXPECT_EQ(c.num_readable(), 1u);
  EXPECT_EQ(c.readable_len(), 5u);
  EXPECT_EQ(c.writable_len(), 0u);
  std::string out(8, '\0');
  auto n = c.read_readable(mem_, 0, std::span(reinterpret_cast<uint8_t*>(out.data()), 8));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 5u);
  EXPECT_EQ(out.substr(0, 5), "hello");
  // Nothing writable: writes copy nothing.
  uint8_t b = 1;
  auto w = c.write_writable(mem_, 0, std::span<const uint8_t>(&b, 1));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, 0u);
  EXPECT_EQ(q_.next_avail(), 1);
  auto r = q_.pop(mem_);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());
}

TEST_F(VirtioQueueTest, ChainedReadableThenWritable) {
  write_bytes(kData, "abc");
  write_bytes(kData + 0x100, "defgh");
  mq_.add_chain(
      {{kData, 3}, {kData + 0x100, 5}, {kData + 0x200, 4, true}, {kData + 0x300, 6, true}});
  auto c = pop_ok();
  ASSERT_EQ(c.buffers().size(), 4u);
  EXPECT_EQ(c.num_readable(), 2u);
  EXPECT_EQ(c.readable_len(), 8u);
  EXPECT_EQ(c.writable_len(), 10u);

  std::string out(16, '\0');
  auto n = c.read_readable(mem_, 0, std::span(reinterpret_cast<uint8_t*>(out.data()), 16));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 8u);
  EXPECT_EQ(out.substr(0, 8), "abcdefgh");
  // With an offset crossing into the second buffer, and a short destination.
  std::string out2(3, '\0');
  n = c.read_readable(mem_, 2, std::span(reinterpret_cast<uint8_t*>(out2.data()), 3));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 3u);
  EXPECT_EQ(out2, "cde");
  // Offset past the end.
  n = c.read_readable(mem_, 8, std::span(reinterpret_cast<uint8_t*>(out2.data()), 3));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);

  // Writes are bounded by the writable part and never touch readable buffers.
  std::string in = "0123456789ABCDEF";
  auto w =
      c.write_writable(mem_, 0, std::span(reinterpret_cast<const uint8_t*>(in.data()), in.size()));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, 10u);
  EXPECT_EQ(read_bytes(kData + 0x200, 4), "0123");
  EXPECT_EQ(read_bytes(kData + 0x300, 6), "456789");
  EXPECT_EQ(read_bytes(kData + 0x306, 1), std::string(1, '\0'));  // not past the buffer
  EXPECT_EQ(read_bytes(kData, 3), "abc");
  w = c.write_writable(mem_, 5, std::span(reinterpret_cast<const uint8_t*>("xy"), 2));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, 2u);
  EXPECT_EQ(read_bytes(kData + 0x301, 2), "xy");
}

TEST_F(VirtioQueueTest, ZeroLengthBufferIsAccepted) {
  mq_.add_chain({{kData, 0}, {kData, 4, true}});
  auto c = pop_ok();
  EXPECT_EQ(c.buffers().size(), 2u);
  EXPECT_EQ(c.readable_len(), 0u);
}

TEST_F(VirtioQueueTest, ChainUsingEveryDescriptorIsAccepted) {
  std::vector<MockBuf> bufs;
  for (int i = 0; i < 16; ++i) bufs.push_back({kData + 0x10 * i, 0x10});
  mq_.add_chain(bufs);
  auto c = pop_ok();
  EXPECT_EQ(c.buffers().size(), 16u);
  EXPECT_EQ(c.readable_len(), 0x100u);
}

TEST_F(VirtioQueueTest, IndirectTable) {
  write_bytes(kData, "ind");
  mq_.add_indirect_chain(kTable, {{kData, 3}, {kData + 0x100, 8, true}, {kData + 0x200, 8, true}});
  auto c = pop_ok();
  ASSERT_EQ(c.buffers().size(), 3u);
  EXPECT_EQ(c.num_readable(), 1u);
  EXPECT_EQ(c.writable_len(), 16u);
  std::string out(3, '\0');
  auto n = c.read_readable(mem_, 0, std::span(reinterpret_cast<uint8_t*>(out.data()), 3));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(out, "ind");
}

TEST_F(VirtioQueueTest, DirectDescriptorsThenIndirectTable) {
  mq_.set_desc(0, kData, 4, kDescFNext, 5);
  mq_.set_desc(5, kTable, 32, kDescFIndirect | kDescFWrite, 0);  // WRITE on it is ignored
  mq_.set_indirect_desc(kTable, 0, kData + 0x100, 4, kDescFNext, 1);
  mq_.set_indirect_desc(kTable, 1, kData + 0x200, 4, kDescFWrite, 0);
  mq_.push_avail(0);
  auto c = pop_ok();
  ASSERT_EQ(c.buffers().size(), 3u);
  EXPECT_EQ(c.buffers()[0], (DescriptorBuffer{kData, 4, false}));
  EXPECT_EQ(c.buffers()[1], (DescriptorBuffer{kData + 0x100, 4, false}));
  EXPECT_EQ(c.buffers()[2], (DescriptorBuffer{kData + 0x200, 4, true}));
}

TEST_F(VirtioQueueTest, IndirectChainMayExceedQueueSize) {
  std::vector<MockBuf> bufs;
  for (int i = 0; i < 64; ++i) bufs.push_back({kData + 0x10 * i, 0x10});
  mq_.add_indirect_chain(kTable, bufs);
  EXPECT_EQ(pop_ok().buffers().size(), 64u);
}

// --- malformed rings ---

TEST_F(VirtioQueueTest, HeadIndexOutOfRange) {
  mq_.set_desc(0, kData, 4, 0, 0);
  mq_.set_avail_ring(0, 16);
  mq_.set_avail_idx(1);
  pop_err("head 16");
  mq_.set_avail_ring(0, 0xffff);
  pop_err("head 65535");
}

TEST_F(VirtioQueueTest, NextIndexOutOfRange) {
  mq_.set_desc(0, kData, 4, kDescFNext, 16);
  mq_.push_avail(0);
  pop_err("next index 16");
}

TEST_F(VirtioQueueTest, TwoDescriptorLoop) {
  mq_.set_desc(0, kData, 4, kDescFNext, 1);
  mq_.set_desc(1, kData, 4, kDescFNext, 0);
  mq_.push_avail(0);
  pop_err("loop");
}

TEST_F(VirtioQueueTest, SelfLoop) {
  mq_.set_desc(3, kData, 4, kDescFNext, 3);
  mq_.push_avail(3);
  pop_err("loop");
}

TEST_F(VirtioQueueTest, ChainLongerThanQueueSize) {
  // Descriptors 0..15 chained, and 15 links back to 0: 17 steps.
  for (uint16_t i = 0; i < 16; ++i)
    mq_.set_desc(i, kData, 4, kDescFNext, static_cast<uint16_t>((i + 1) % 16));
  mq_.push_avail(0);
  pop_err("longer than the queue size");
}

TEST_F(VirtioQueueTest, BufferOutsideMemory) {
  mq_.add_chain({{kMemSize, 1}});
  pop_err("not inside guest memory");
}

TEST_F(VirtioQueueTest, BufferCrossingEndOfMemory) {
  mq_.add_chain({{kData, 4}, {kMemSize - 4, 8, true}});
  pop_err("not inside guest memory");
}

TEST_F(VirtioQueueTest, BufferAddrLenOverflow) {
  mq_.add_chain({{0xfffffffffffffff0ULL, 0x100}});
  pop_err("wraps around");
}

TEST_F(VirtioQueueTest, IndirectLenNotMultipleOf16) {
  mq_.set_desc(0, kTable, 24, kDescFIndirect, 0);
  mq_.push_avail(0);
  pop_err("multiple of 16");
}

TEST_F(VirtioQueueTest, IndirectLenZero) {
  mq_.set_desc(0, kTable, 0, kDescFIndirect, 0);
  mq_.push_avail(0);
  pop_err("multiple of 16");
}

TEST_F(VirtioQueueTest, IndirectTableTooLarge) {
  mq_.set_desc(0, 0, 16 * (kMaxIndirectDescriptors + 1), kDescFIndirect, 0);
  mq_.push_avail(0);
  pop_err("exceeds");
}

TEST_F(VirtioQueueTest, NestedIndirect) {
  mq_.set_desc(0, kTable, 32, kDescFIndirect, 0);
  mq_.set_indirect_desc(kTable, 0, kData, 4, kDescFNext, 1);
  mq_.set_indirect_desc(kTable, 1, kTable, 32, kDescFIndirect, 0);
  mq_.push_avail(0);
  pop_err("nested indirect");
}

TEST_F(VirtioQueueTest, IndirectWithNext) {
  mq_.set_desc(0, kTable, 16, kDescFIndirect | kDescFNext, 1);
  mq_.set_indirect_desc(kTable, 0, kData, 4, 0, 0);
  mq_.set_desc(1, kData, 4, 0, 0);
  mq_.push_avail(0);
  pop_err("also has NEXT");
}

TEST_F(VirtioQueueTest, IndirectTableOutsideMemory) {
  mq_.set_desc(0, kMemSize - 16, 32, kDescFIndirect, 0);
  mq_.push_avail(0);
  pop_err("indirect table");
  mq_.set_desc(0, 0xfffffffffffffff0ULL, 32, kDescFIndirect, 0);
  pop_err("indirect table");
}

TEST_F(VirtioQueueTest, IndirectNextOutOfTable) {
  mq_.set_desc(0, kTable, 32, kDescFIndirect, 0);
  mq_.set_indirect_desc(kTable, 0, kData, 4, kDescFNext, 2);
  mq_.push_avail(0);
  pop_err("indirect next index 2");
}

TEST_F(VirtioQueueTest, IndirectLoop) {
  mq_.set_desc(0, kTable, 32, kDescFIndirect, 0);
  mq_.set_indirect_desc(kTable, 0, kData, 4, kDescFNext, 1);
  mq_.set_indirect_desc(kTable, 1, kData, 4, kDescFNext, 0);
  mq_.push_avail(0);
  pop_err("loop");
}

TEST_F(VirtioQueueTest, IndirectBufferOutsideMemory) {
  mq_.add_indirect_chain(kTable, {{kData, 4}, {kMemSize + 0x1000, 4, true}});
  pop_err("not inside guest memory");
}

TEST_F(VirtioQueueTest, WritableBeforeReadable) {
  mq_.add_chain({{kData, 4, true}, {kData + 0x100, 4, false}});
  pop_err("readable descriptor after a device-writable");
}

TEST_F(VirtioQueueTest, WritableBeforeReadableInIndirect) {
  mq_.add_indirect_chain(kTable, {{kData, 4, true}, {kData + 0x100, 4, false}});
  pop_err("readable descriptor after a device-writable");
}

TEST_F(VirtioQueueTest, WritableDirectThenReadableIndirect) {
  mq_.set_desc(0, kData, 4, kDescFNext | kDescFWrite, 1);
  mq_.set_desc(1, kTable, 16, kDescFIndirect, 0);
  mq_.set_indirect_desc(kTable, 0, kData + 0x100, 4, 0, 0);
  mq_.push_avail(0);
  pop_err("readable descriptor after a device-writable");
}

TEST_F(VirtioQueueTest, AvailIdxJumpsBeyondQueueSize) {
  mq_.set_avail_idx(17);
  pop_err("ahead");
  mq_.set_avail_idx(0xffff);  // "behind" next_avail: also a jump of 65535
  pop_err("ahead");
}

TEST_F(VirtioQueueTest, AvailIdxJumpOfExactlyQueueSizeIsAccepted) {
  for (uint16_t i = 0; i < 16; ++i) {
    mq_.set_desc(i, kData, 4, 0, 0);
    mq_.set_avail_ring(i, i);
  }
  mq_.set_avail_idx(16);
  auto p = q_.pending(mem_);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, 16);
  for (uint16_t i = 0; i < 16; ++i) EXPECT_EQ(pop_ok().head_index(), i);
  auto r = q_.pop(mem_);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());
}

TEST_F(VirtioQueueTest, IndicesWrapAt16Bits) {
  QueueState s = q_.save();
  s.next_avail = 0xfffe;
  s.next_used = 0xfffe;
  s.signalled_used = 0xfffe;
  ASSERT_TRUE(q_.restore(s, mem_).ok());
  mq_.set_avail_idx(0xfffe);
  for (int i = 0; i < 4; ++i) {
    uint16_t head = mq_.add_chain({{kData, 4, true}});
    auto c = pop_ok();
    EXPECT_EQ(c.head_index(), head);
    ASSERT_TRUE(q_.add_used(mem_, head, 4).ok());
  }
  EXPECT_EQ(q_.next_avail(), 2);
  EXPECT_EQ(q_.next_used(), 2);
  EXPECT_EQ(mq_.used_idx(), 2);
  EXPECT_EQ(mq_.used_elem(0xffff % 16).len, 4u);
}

// --- validate() ---

TEST_F(VirtioQueueTest, ValidateRejectsBadSizes) {
  q_.set_ready(false);
  for (uint16_t s : {0, 3, 12, 257, 512}) {
    q_.set_size(s);
    EXPECT_FALSE(q_.validate(mem_).ok()) << s;
  }
  for (uint16_t s : {1, 2, 128, 256}) {
    q_.set_size(s);
    EXPECT_TRUE(q_.validate(mem_).ok()) << s;
  }
}

TEST_F(VirtioQueueTest, ValidateRejectsMisalignedRings) {
  q_.set_ready(false);
  q_.set_desc_table(MockQueue::kDefaultDesc + 8);
  EXPECT_FALSE(q_.validate(mem_).ok());
  q_.set_desc_table(MockQueue::kDefaultDesc);
  q_.set_avail_ring(MockQueue::kDefaultAvail + 1);
  EXPECT_FALSE(q_.validate(mem_).ok());
  q_.set_avail_ring(MockQueue::kDefaultAvail + 2);
  EXPECT_TRUE(q_.validate(mem_).ok());
  q_.set_used_ring(MockQueue::kDefaultUsed + 2);
  EXPECT_FALSE(q_.validate(mem_).ok());
  q_.set_used_ring(MockQueue::kDefaultUsed + 4);
  EXPECT_TRUE(q_.validate(mem_).ok());
}

TEST_F(VirtioQueueTest, ValidateRejectsRingsOutsideMemory) {
  q_.set_ready(false);
  // Each ring just fits at the end of memory, then crosses it by one element.
  q_.set_desc_table(kMemSize - 16 * 16);
  EXPECT_TRUE(q_.validate(mem_).ok());
  q_.set_desc_table(kMemSize - 16 * 15);
  EXPECT_FALSE(q_.validate(mem_).ok());
  q_.set_desc_table(0xfffffffffffffff0ULL);
  EXPECT_FALSE(q_.validate(mem_).ok());
  q_.set_desc_table(MockQueue::kDefaultDesc);

  q_.set_avail_ring(kMemSize - (6 + 2 * 16));
  EXPECT_TRUE(q_.validate(mem_).ok());
  q_.set_avail_ring(kMemSize - (4 + 2 * 16));
  EXPECT_FALSE(q_.validate(mem_).ok());
  q_.set_avail_ring(0xfffffffffffffffeULL);
  EXPECT_FALSE(q_.validate(mem_).ok());
  q_.set_avail_ring(MockQueue::kDefaultAvail);

  q_.set_used_ring(kMemSize - (8 + 8 * 16));  // 4-aligned: 6+8*16 rounded up
  EXPECT_TRUE(q_.validate(mem_).ok());
  q_.set_used_ring(kMemSize - (4 + 8 * 16));
  EXPECT_FALSE(q_.validate(mem_).ok());
  q_.set_used_ring(kMemSize + 0x1000);
  EXPECT_FALSE(q_.validate(mem_).ok());
}

// --- used ring and notifications ---

TEST_F(VirtioQueueTest, AddUsedPublishesElementAndIndex) {
  for (int round = 0; round < 40; ++round) {
    uint16_t head = mq_.add_chain({{kData, 4}, {kData + 0x100, 64, true}});
    auto c = pop_ok();
    EXPECT_EQ(c.head_index(), head);
    ASSERT_TRUE(q_.add_used(mem_, head, 10 + round).ok());
    EXPECT_EQ(mq_.used_idx(), static_cast<uint16_t>(round + 1));
    EXPECT_EQ(mq_.used_elem(static_cast<uint16_t>(round % 16)),
              (UsedElem{head, static_cast<uint32_t>(10 + round)}));
  }
}

TEST_F(VirtioQueueTest, AddUsedRejectsBadHeadAndNotReady) {
  EXPECT_FALSE(q_.add_used(mem_, 16, 0).ok());
  EXPECT_EQ(mq_.used_idx(), 0);
  q_.set_ready(false);
  EXPECT_FALSE(q_.add_used(mem_, 0, 0).ok());
}

TEST_F(VirtioQueueTest, DeviceIgnoresGarbageUsedIdx) {
  mq_.set_used_idx(0x1234);  // the driver scribbles on the used ring
  uint16_t head = mq_.add_chain({{kData, 4}});
  pop_ok();
  ASSERT_TRUE(q_.add_used(mem_, head, 0).ok());
  EXPECT_EQ(mq_.used_idx(), 1);
}

TEST_F(VirtioQueueTest, NotificationWithoutEventIdx) {
  EXPECT_FALSE(q_.needs_notification(mem_));  // nothing used yet
  uint16_t head = mq_.add_chain({{kData, 4}});
  pop_ok();
  ASSERT_TRUE(q_.add_used(mem_, head, 0).ok());
  EXPECT_TRUE(q_.needs_notification(mem_));
  EXPECT_FALSE(q_.needs_notification(mem_));  // already signalled

  mq_.set_avail_flags(kAvailFNoInterrupt);
  head = mq_.add_chain({{kData, 4}});
  pop_ok();
  ASSERT_TRUE(q_.add_used(mem_, head, 0).ok());
  EXPECT_FALSE(q_.needs_notification(mem_));
  mq_.set_avail_flags(0);
  head = mq_.add_chain({{kData, 4}});
  pop_ok();
  ASSERT_TRUE(q_.add_used(mem_, head, 0).ok());
  EXPECT_TRUE(q_.needs_notification(mem_));
}

TEST_F(VirtioQueueTest, NotificationWithEventIdx) {
  q_.set_event_idx(true);
  mq_.set_avail_flags(kAvailFNoInterrupt);  // ignored with event idx
  auto use_one = [&] {
    uint16_t head = mq_.add_chain({{kData, 4}});
    pop_ok();
    ASSERT_TRUE(q_.add_used(mem_, head, 0).ok());
  };
  mq_.set_used_event(0);
  use_one();  // used idx 0 -> 1 crosses used_event 0
  EXPECT_TRUE(q_.needs_notification(mem_));
  mq_.set_used_event(5);
  use_one();
  use_one();  // 1 -> 3: does not reach 5+1
  EXPECT_FALSE(q_.needs_notification(mem_));
  use_one();
  use_one();
  EXPECT_FALSE(q_.needs_notification(mem_));  // 3 -> 5
  use_one();                                  // 5 -> 6 crosses used_event 5
  EXPECT_TRUE(q_.needs_notification(mem_));
  use_one();  // 6 -> 7, used_event still 5: already passed
  EXPECT_FALSE(q_.needs_notification(mem_));
}

TEST_F(VirtioQueueTest, EventIdxPopPublishesAvailEvent) {
  q_.set_event_idx(true);
  mq_.add_chain({{kData, 4}});
  mq_.add_chain({{kData, 4}});
  pop_ok();
  EXPECT_EQ(mq_.avail_event(), 1);
  pop_ok();
  EXPECT_EQ(mq_.avail_event(), 2);
}

TEST_F(VirtioQueueTest, EnableDisableNotification) {
  ASSERT_TRUE(q_.disable_notification(mem_).ok());
  EXPECT_EQ(mq_.used_flags(), kUsedFNoNotify);
  auto r = q_.enable_notification(mem_);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  EXPECT_EQ(mq_.used_flags(), 0);
  mq_.add_chain({{kData, 4}});
  r = q_.enable_notification(mem_);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);  // a chain is pending: the device must process it

  q_.set_event_idx(true);
  pop_ok();
  mq_.poke<uint16_t>(mq_.used_addr() + 4 + 8 * 16, 0);
  r = q_.enable_notification(mem_);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  EXPECT_EQ(mq_.avail_event(), 1);
  mq_.set_avail_idx(40);  // hostile: reported as an error
  EXPECT_FALSE(q_.enable_notification(mem_).ok());
}

TEST_F(VirtioQueueTest, UnvalidatedBadSizeIsStillMemorySafe) {
  // validate() is the gate, but a queue used without it must not crash
  // (e.g. no division by a zero size).
  for (uint16_t size : {0, 12}) {
    Queue q(256);
    q.set_size(size);
    q.set_desc_table(MockQueue::kDefaultDesc);
    q.set_avail_ring(MockQueue::kDefaultAvail);
    q.set_used_ring(MockQueue::kDefaultUsed);
    q.set_ready(true);
    mq_.set_desc(0, kData, 4, 0, 0);
    mq_.set_avail_ring(0, 0);
    mq_.set_avail_idx(1);
    auto r = q.pop(mem_);
    if (size == 0) {
      EXPECT_FALSE(r.ok());
    }
    EXPECT_FALSE(q.add_used(mem_, 12, 0).ok());
    (void)q.needs_notification(mem_);
    (void)q.enable_notification(mem_);
    mq_.set_avail_idx(0);
  }
}

// --- save / restore ---

TEST_F(VirtioQueueTest, SaveRestoreRoundTrip) {
  q_.set_event_idx(true);
  for (int i = 0; i < 5; ++i) {
    uint16_t head = mq_.add_chain({{kData, 4}});
    pop_ok();
    ASSERT_TRUE(q_.add_used(mem_, head, 1).ok());
  }
  (void)q_.needs_notification(mem_);
  mq_.add_chain({{kData, 4}});
  QueueState s = q_.save();
  EXPECT_EQ(s.max_size, 256);
  EXPECT_EQ(s.size, 16);
  EXPECT_TRUE(s.ready);
  EXPECT_EQ(s.next_avail, 5);
  EXPECT_EQ(s.next_used, 5);
  EXPECT_EQ(s.signalled_used, 5);

  Queue q2(256);
  ASSERT_TRUE(q2.restore(s, mem_).ok());
  EXPECT_EQ(q2.save(), s);
  // The restored queue continues where the original left off.
  auto r = q2.pop(mem_);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ(q2.next_avail(), 6);
}

TEST_F(VirtioQueueTest, RestoreValidates) {
  QueueState good = q_.save();
  Queue q2(256);
  QueueState before = q2.save();

  QueueState s = good;
  s.max_size = 128;
  EXPECT_FALSE(q2.restore(s, mem_).ok());
  s = good;
  s.size = 12;
  EXPECT_FALSE(q2.restore(s, mem_).ok());
  s = good;
  s.size = 512;
  EXPECT_FALSE(q2.restore(s, mem_).ok());
  s = good;
  s.desc_table += 8;
  EXPECT_FALSE(q2.restore(s, mem_).ok());
  s = good;
  s.used_ring = kMemSize;
  EXPECT_FALSE(q2.restore(s, mem_).ok());
  EXPECT_EQ(q2.save(), before);  // nothing changed

  // A queue that is not ready may hold any half-written configuration.
  s = good;
  s.ready = false;
  s.size = 12;
  s.desc_table = 3;
  ASSERT_TRUE(q2.restore(s, mem_).ok());
  EXPECT_EQ(q2.save(), s);
}

// --- hostile driver: random ring contents never crash or escape memory ---

TEST_F(VirtioQueueTest, RandomGarbageNeverCrashes) {
  std::mt19937_64 rng(12345);
  // Small memory so random addresses often land inside and outside it.
  auto small = GuestMemory::create_anonymous({{0, 0x10000}});
  ASSERT_TRUE(small.ok());
  GuestMemory& m = *small;
  MockQueue mq(m, 8, 0x1000, 0x2000, 0x3000);
  int chains = 0, errors = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Queue q(8);
    mq.configure(q);
    ASSERT_TRUE(q.validate(m).ok());
    q.set_event_idx(iter & 1);
    // Random descriptors: addresses near memory, small lengths, random flags.
    for (uint16_t i = 0; i < 8; ++i) {
      Gpa addr = rng() % 4 == 0 ? rng() : rng() % 0x11000;
      uint32_t len = rng() % 3 == 0 ? static_cast<uint32_t>(rng()) : (rng() % 8) * 16;
      mq.set_desc(i, addr, len, static_cast<uint16_t>(rng() % 8),
                  static_cast<uint16_t>(rng() % 10));
      mq.set_indirect_desc(0x4000, i, addr + 1, len, static_cast<uint16_t>(rng() % 8),
                           static_cast<uint16_t>(rng() % 10));
      mq.set_avail_ring(i, static_cast<uint16_t>(rng() % 10));
    }
    mq.set_avail_idx(static_cast<uint16_t>(rng() % 12));
    for (int k = 0; k < 12; ++k) {
      auto r = q.pop(m);
      if (!r.ok()) {
        ++errors;
        break;
      }
      if (!r->has_value()) break;
      ++chains;
      const DescriptorChain& c = **r;
      std::vector<uint8_t> buf(256);
      ASSERT_TRUE(c.read_readable(m, 0, buf).ok());
      ASSERT_TRUE(c.write_writable(m, 0, buf).ok());
      for (const auto& b : c.buffers()) EXPECT_TRUE(m.contains(b.addr, b.len));
      ASSERT_TRUE(q.add_used(m, c.head_index(), 0).ok());
      (void)q.needs_notification(m);
    }
  }
  EXPECT_GT(chains, 0);
  EXPECT_GT(errors, 0);
}

}  // namespace
}  // namespace vmm::virtio
