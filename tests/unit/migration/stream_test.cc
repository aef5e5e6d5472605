// FrameWriter / FrameReader over socketpairs and pipes: round trips of every
// frame type (blocking and non-blocking fds), EOF at every offset, bit flips,
// seq errors, limits checked before allocating, timeouts and resumption,
// sticky failures, a peer that went away.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/migration/migration_test_util.h"
#include "vmm/migration/protocol.h"
#include "vmm/snapshot/state_file.h"

namespace vmm::migration {
namespace {

using testing::contains;
using testing::page_of;
using testing::raw_frame;
using testing::raw_header;
using testing::sample_hello;
using testing::socket_pair;
using testing::write_all;

std::vector<uint8_t> small_state() {
  snapshot::StateHeader h;
  h.vmm_version = "0.1.0";
  h.cpu_template = "minimal";
  h.config = {{"mem", "512M"}};
  snapshot::Section tree;
  tree.add_section("serial0").put_u8("dll", 12);
  tree.put_bytes("blob", std::vector<uint8_t>(100000, 0x5a));
  auto b = snapshot::encode_state(h, tree);
  EXPECT_TRUE(b.ok());
  return *b;
}

struct Sent {
  FrameType type;
  std::vector<uint8_t> payload;
};

// One of each type, in protocol order, plus a full MemPages batch.
std::vector<Sent> every_frame() {
  std::vector<Sent> s;
  s.push_back({FrameType::kHello, *encode_hello(sample_hello())});
  s.push_back({FrameType::kHelloReply, encode_hello_reply({true, ""})});
  MemPagesBuilder small(4096);
  EXPECT_TRUE(small.add_page(0x1000, page_of(1)).ok());
  EXPECT_TRUE(small.add_zero(0x2000).ok());
  auto sp = small.finish();
  s.push_back({FrameType::kMemPages, {sp.begin(), sp.end()}});
  MemPagesBuilder full(4096);
  for (uint64_t i = 0; full.has_room(false); ++i)
    EXPECT_TRUE(full.add_page(i * 4096, page_of(static_cast<uint8_t>(i))).ok());
  auto fp = full.finish();
  s.push_back({FrameType::kMemPages, {fp.begin(), fp.end()}});
  s.push_back({FrameType::kRoundEnd, encode_round_end({0, 4097, 12})});
  s.push_back({FrameType::kState, small_state()});
  s.push_back({FrameType::kComplete, {}});
  s.push_back({FrameType::kAck, encode_ack({true, ""})});
  s.push_back({FrameType::kError, encode_error("destination ran out of memory")});
  s.push_back({FrameType::kCancel, encode_cancel("cancelled by the operator")});
  return s;
}

void round_trip(int wfd, int rfd) {
  const auto frames = every_frame();
  FrameWriter w(wfd);
  uint64_t expect_bytes = 0;
  for (const auto& f : frames) expect_bytes += kFrameOverhead + f.payload.size();
  std::thread writer([&] {
    for (const auto& f : frames) {
      auto r = w.write_frame(f.type, f.payload, 10000);
      EXPECT_TRUE(r.ok()) << r.error().to_string();
    }
  });
  FrameReader r(rfd);
  const RamRange ram[] = {{0, 1ull << 30}};
  for (size_t i = 0; i < frames.size(); ++i) {
    auto f = r.read_frame(10000);
    ASSERT_TRUE(f.ok()) << f.error().to_string();
    EXPECT_EQ(f->type, frames[i].type);
    EXPECT_EQ(f->seq, i);
    ASSERT_EQ(f->payload.size(), frames[i].payload.size());
    EXPECT_TRUE(std::equal(f->payload.begin(), f->payload.end(), frames[i].payload.begin()));
    switch (f->type) {
      case FrameType::kHello:
        EXPECT_EQ(*decode_hello(f->payload), sample_hello());
        break;
      case FrameType::kHelloReply:
        EXPECT_TRUE(decode_hello_reply(f->payload)->accepted);
        break;
      case FrameType::kMemPages: {
        auto v = decode_mem_pages(f->payload, 4096, ram);
        ASSERT_TRUE(v.ok()) << v.error().message;
        EXPECT_GE(v->size(), 2u);
        break;
      }
      case FrameType::kRoundEnd:
        EXPECT_EQ(decode_round_end(f->payload)->pages_sent, 4097u);
        break;
      case FrameType::kState: {
        auto st = snapshot::decode_state(*decode_state_payload(f->payload));
        ASSERT_TRUE(st.ok()) << st.error().message;
        EXPECT_EQ(st->header.cpu_template, "minimal");
        break;
      }
      case FrameType::kComplete:
        EXPECT_TRUE(decode_complete(f->payload).ok());
        break;
      case FrameType::kAck:
        EXPECT_TRUE(decode_ack(f->payload)->ok);
        break;
      case FrameType::kError:
        EXPECT_EQ(*decode_error(f->payload), "destination ran out of memory");
        break;
      case FrameType::kCancel:
        EXPECT_EQ(*decode_cancel(f->payload), "cancelled by the operator");
        break;
    }
  }
  writer.join();
  EXPECT_EQ(w.frames_written(), frames.size());
  EXPECT_EQ(w.next_seq(), frames.size());
  EXPECT_EQ(w.bytes_written(), expect_bytes);
  EXPECT_EQ(r.frames_read(), frames.size());
  EXPECT_EQ(r.bytes_read(), expect_bytes);
  EXPECT_EQ(r.next_seq(), frames.size());
}

TEST(Stream, RoundTripEveryFrameTypeBlocking) {
  auto [a, b] = socket_pair(false);
  round_trip(a.get(), b.get());
}

TEST(Stream, RoundTripEveryFrameTypeNonBlocking) {
  auto [a, b] = socket_pair(true);
  round_trip(a.get(), b.get());
}

TEST(Stream, RoundTripOverAPipe) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  round_trip(wr.get(), rd.get());
}

TEST(Stream, RoundTripOverANonBlockingPipe) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  round_trip(wr.get(), rd.get());
}

TEST(Stream, ReaderReadsExactlyOneFrame) {
  auto [a, b] = socket_pair();
  auto f1 = encode_frame(FrameType::kAck, 0, encode_ack({true, ""}));
  write_all(a.get(), f1);
  write_all(a.get(), std::vector<uint8_t>{'x', 'y'});
  FrameReader r(b.get());
  ASSERT_TRUE(r.read_frame(1000).ok());
  char buf[4];
  EXPECT_EQ(::read(b.get(), buf, sizeof(buf)), 2);  // what follows is still in the socket
}

std::vector<uint8_t> small_frame() {
  return encode_frame(FrameType::kAck, 0, encode_ack({false, "nope"}));
}

TEST(Stream, EofAtEveryOffsetIsNamed) {
  const auto f = small_frame();
  for (size_t cut = 0; cut < f.size(); ++cut) {
    auto [a, b] = socket_pair();
    write_all(a.get(), std::span<const uint8_t>(f).first(cut));
    a.reset();
    FrameReader r(b.get());
    auto got = r.read_frame(5000);
    ASSERT_FALSE(got.ok()) << cut;
    EXPECT_FALSE(is_timeout(got.error()));
    std::string expect;
    if (cut == 0)
      expect = "connection closed by peer between frames (0 frames read)";
    else if (cut < kHeaderBytes)
      expect = fmt::format("connection closed after {} of 24 bytes of a frame header", cut);
    else
      expect = fmt::format("connection closed after {} of {} bytes of a frame (Ack, seq 0)", cut,
                           f.size());
    EXPECT_EQ(got.error().message, expect);
    // Final.
    EXPECT_EQ(r.read_frame(0).error().message, expect);
  }
  auto [a, b] = socket_pair();
  write_all(a.get(), f);
  a.reset();
  FrameReader r(b.get());
  EXPECT_TRUE(r.read_frame(1000).ok());
  EXPECT_EQ(r.read_frame(1000).error().message,
            "connection closed by peer between frames (1 frames read)");
}

TEST(Stream, EverySingleBitFlipIsRefusedWithoutWaiting) {
  const auto f = small_frame();
  for (size_t bit = 0; bit < f.size() * 8; ++bit) {
    auto g = f;
    g[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    auto [a, b] = socket_pair();
    write_all(a.get(), g);
    FrameReader r(b.get());
    auto got = r.read_frame(5000);  // the writer stays open: a wait would be a timeout
    ASSERT_FALSE(got.ok()) << "accepted a flip of bit " << bit;
    EXPECT_FALSE(is_timeout(got.error())) << bit << ": " << got.error().message;
  }
}

TEST(Stream, ReorderedDuplicatedAndLostFramesAreRefused) {
  struct Case {
    std::vector<uint32_t> seqs;
    std::string error;
  } cases[] = {
      {{0, 2, 1}, "Ack frame has seq 2, expected 1 (reordered, duplicated or lost frame)"},
      {{0, 0}, "Ack frame has seq 0, expected 1 (reordered, duplicated or lost frame)"},
      {{0, 1, 3}, "Ack frame has seq 3, expected 2 (reordered, duplicated or lost frame)"},
      {{1}, "Ack frame has seq 1, expected 0 (reordered, duplicated or lost frame)"},
  };
  for (const auto& c : cases) {
    auto [a, b] = socket_pair();
    for (uint32_t s : c.seqs)
      write_all(a.get(), encode_frame(FrameType::kAck, s, encode_ack({true, ""})));
    FrameReader r(b.get());
    Result<Frame> got = Error{};
    for (size_t i = 0; i < c.seqs.size(); ++i) {
      got = r.read_frame(1000);
      if (!got.ok()) break;
    }
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.error().message, c.error);
  }
}

TEST(Stream, OversizeLengthIsRefusedBeforeAllocating) {
  for (auto [type, len] : {std::pair{FrameType::kMemPages, kMaxMemPagesPayload + 1},
                           std::pair{FrameType::kState, 0xffffffffu},
                           std::pair{FrameType::kHello, kMaxControlPayload + 1}}) {
    auto [a, b] = socket_pair();
    write_all(a.get(), raw_header(static_cast<uint16_t>(type), 0, len));
    FrameReader r(b.get());
    auto got = r.read_frame(5000);
    ASSERT_FALSE(got.ok());
    EXPECT_TRUE(contains(got.error().message, "exceeds the limit")) << got.error().message;
    EXPECT_LE(r.buffer_bytes(), 64u);  // the header's buffer, nothing for the payload
    EXPECT_EQ(r.bytes_read(), kHeaderBytes);
  }
}

TEST(Stream, BufferGrowsWithTheBytesThatArriveNotTheLengthAnnounced) {
  auto [a, b] = socket_pair();
  std::vector<uint8_t> payload(kMaxStatePayload - 1000, 0x42);
  auto frame = encode_frame(FrameType::kState, 0, payload);
  write_all(a.get(), std::span<const uint8_t>(frame).first(kHeaderBytes + 100));
  FrameReader r(b.get());
  auto got = r.read_frame(50);
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(is_timeout(got.error())) << got.error().message;
  EXPECT_LE(r.buffer_bytes(), 128u << 10);  // not the 64 MiB announced
  std::thread t([&, fd = a.get()] {
    write_all(fd, std::span<const uint8_t>(frame).subspan(kHeaderBytes + 100));
  });
  got = r.read_frame(20000);
  t.join();
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->payload.size(), payload.size());
  EXPECT_TRUE(std::equal(got->payload.begin(), got->payload.end(), payload.begin()));
}

TEST(Stream, UnknownTypeAndFutureVersionAreNamed) {
  {
    auto [a, b] = socket_pair();
    write_all(a.get(), raw_frame(42, 0, std::vector<uint8_t>{1, 2, 3}));
    FrameReader r(b.get());
    EXPECT_EQ(r.read_frame(1000).error().message, "unknown frame type 42");
  }
  {
    auto [a, b] = socket_pair();
    write_all(a.get(), raw_frame(1, 0, std::vector<uint8_t>{1, 2, 3}, 2));
    FrameReader r(b.get());
    EXPECT_EQ(r.read_frame(1000).error().message,
              "unsupported migration protocol version 2 (this VMM speaks version 1)");
  }
  {
    auto [a, b] = socket_pair();
    const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    write_all(a.get(),
              std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(http), sizeof(http) - 1));
    FrameReader r(b.get());
    EXPECT_TRUE(contains(r.read_frame(1000).error().message, "not a migration stream"));
  }
}

TEST(Stream, ReadTimeoutIsNotFinalAndResumes) {
  auto [a, b] = socket_pair();
  FrameReader r(b.get());
  auto t0 = std::chrono::steady_clock::now();
  auto got = r.read_frame(50);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(is_timeout(got.error()));
  EXPECT_EQ(got.error().message, "timed out after 50 ms waiting for a frame");
  EXPECT_GE(ms, 50);
  EXPECT_LT(ms, 2000);
  EXPECT_FALSE(r.read_frame(0).ok());  // zero: just a look

  // A frame in pieces, each read timing out in between.
  auto f = encode_frame(FrameType::kError, 0, encode_error("partial"));
  write_all(a.get(), std::span<const uint8_t>(f).first(10));
  got = r.read_frame(30);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().message, "timed out after 30 ms with 10 of 24 bytes of a frame header");
  write_all(a.get(), std::span<const uint8_t>(f).subspan(10, 20));
  got = r.read_frame(30);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().message,
            fmt::format("timed out after 30 ms with 30 of {} bytes of a frame", f.size()));
  write_all(a.get(), std::span<const uint8_t>(f).subspan(30));
  got = r.read_frame(1000);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(*decode_error(got->payload), "partial");
  EXPECT_EQ(r.next_seq(), 1u);
}

TEST(Stream, ProtocolErrorsAreFinal) {
  auto [a, b] = socket_pair();
  auto bad = encode_frame(FrameType::kAck, 0, encode_ack({true, ""}));
  bad.back() ^= 1;
  write_all(a.get(), bad);
  write_all(a.get(), encode_frame(FrameType::kAck, 0, encode_ack({true, ""})));
  FrameReader r(b.get());
  auto e1 = r.read_frame(1000);
  ASSERT_FALSE(e1.ok());
  EXPECT_TRUE(contains(e1.error().message, "checksum mismatch"));
  auto e2 = r.read_frame(1000);
  ASSERT_FALSE(e2.ok());
  EXPECT_EQ(e2.error().message, e1.error().message);
}

TEST(Stream, LargeBufferIsReleasedAfterALargeFrame) {
  auto [a, b] = socket_pair();
  // Over twice a MemPages frame: a buffer that large is not kept.
  std::vector<uint8_t> big(2 * kMaxMemPagesPayload + (1u << 20), 7);
  FrameWriter w(a.get());
  std::thread t([&] {
    EXPECT_TRUE(w.write_frame(FrameType::kState, big).ok());
    EXPECT_TRUE(w.write_frame(FrameType::kComplete, {}).ok());
  });
  FrameReader r(b.get());
  auto f = r.read_frame(10000);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->payload.size(), big.size());
  EXPECT_GE(r.buffer_bytes(), big.size());
  auto g = r.read_frame(10000);
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->type, FrameType::kComplete);
  EXPECT_LT(r.buffer_bytes(), 4096u);
  t.join();
}

TEST(Stream, WriterRefusesOversizePayloadsSendingNothing) {
  auto [a, b] = socket_pair();
  FrameWriter w(a.get());
  std::vector<uint8_t> big(kMaxControlPayload + 1);
  auto r = w.write_frame(FrameType::kAck, big);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "refusing to send a Ack frame of 65537 bytes: the limit is 65536");
  EXPECT_EQ(w.bytes_written(), 0u);
  EXPECT_EQ(w.next_seq(), 0u);
  EXPECT_FALSE(w.write_frame(static_cast<FrameType>(77), {}).ok());
  // Still usable.
  EXPECT_TRUE(w.write_frame(FrameType::kComplete, {}).ok());
  FrameReader rd(b.get());
  auto f = rd.read_frame(1000);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->seq, 0u);
}

TEST(Stream, WriterToAClosedPeerFailsWithoutSigpipe) {
  auto [a, b] = socket_pair();
  b.reset();
  FrameWriter w(a.get());
  auto r = w.write_frame(FrameType::kAck, encode_ack({true, ""}), 1000);
  ASSERT_FALSE(r.ok());  // and we are still alive: MSG_NOSIGNAL
  EXPECT_TRUE(
      contains(r.error().message, "connection closed by peer while sending Ack frame seq 0"))
      << r.error().message;
  EXPECT_EQ(r.error().errno_value, EPIPE);
}

TEST(Stream, WriterTimesOutOnAStalledPeerAndStaysFailed) {
  for (bool nonblocking : {false, true}) {
    auto [a, b] = socket_pair(nonblocking);
    FrameWriter w(a.get());
    std::vector<uint8_t> big(kMaxMemPagesPayload, 1);  // more than the socket buffers hold
    auto t0 = std::chrono::steady_clock::now();
    auto r = w.write_frame(FrameType::kMemPages, big, 100);
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(is_timeout(r.error()));
    EXPECT_TRUE(contains(r.error().message, "timed out after 100 ms sending MemPages frame seq 0"))
        << r.error().message;
    EXPECT_GE(ms, 100);
    EXPECT_LT(ms, 5000);
    EXPECT_GT(w.bytes_written(), 0u);
    // Part of the frame went out: the stream is broken for good.
    auto again = w.write_frame(FrameType::kComplete, {}, 100);
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.error().message, r.error().message);
  }
}

// Source and destination through the whole protocol, as a driver would use
// it (the driver itself is not here): Hello/HelloReply, two pre-copy rounds
// of MemPages + RoundEnd, State, Complete, Ack. The destination copies pages
// straight from the frame into its "guest memory".
TEST(Stream, WholeMigrationSession) {
  constexpr uint32_t kPage = 4096;
  constexpr uint64_t kMem = 64 * kPage;
  std::vector<uint8_t> src_mem(kMem, 0), dst_mem(kMem, 0xcc);
  for (uint64_t p = 0; p < kMem / kPage; p += 3) {
    auto pg = page_of(static_cast<uint8_t>(p));
    std::copy(pg.begin(), pg.end(), src_mem.begin() + static_cast<ptrdiff_t>(p * kPage));
  }
  Hello hello = sample_hello();
  hello.mem_bytes = kMem;
  const auto state = small_state();
  auto [s, d] = socket_pair();

  std::thread source([&, fd = s.get()] {
    FrameWriter w(fd);
    FrameReader r(fd);
    ASSERT_TRUE(w.write_frame(FrameType::kHello, *encode_hello(hello)).ok());
    auto reply = r.read_frame(5000);
    ASSERT_TRUE(reply.ok() && reply->type == FrameType::kHelloReply);
    ASSERT_TRUE(decode_hello_reply(reply->payload)->accepted);
    MemPagesBuilder b(kPage, 4 + 10 * (8 + kPage));  // small batches
    for (uint32_t round = 0; round < 2; ++round) {
      uint64_t sent = 0;
      // Round 0 sends everything; round 1 the "dirty" pages (every 5th).
      for (uint64_t p = 0; p < kMem / kPage; p += (round == 0 ? 1 : 5)) {
        if (!b.has_room(false)) {
          ASSERT_TRUE(w.write_frame(FrameType::kMemPages, b.finish()).ok());
          b.reset();
        }
        if (round == 1) src_mem[p * kPage + 1] = static_cast<uint8_t>(round + p);  // dirtied
        ASSERT_TRUE(
            b.add(p * kPage, std::span<const uint8_t>(src_mem).subspan(p * kPage, kPage)).ok());
        ++sent;
      }
      if (!b.empty()) {
        ASSERT_TRUE(w.write_frame(FrameType::kMemPages, b.finish()).ok());
      }
      b.reset();
      ASSERT_TRUE(w.write_frame(FrameType::kRoundEnd, encode_round_end({round, sent, 0})).ok());
    }
    ASSERT_TRUE(w.write_frame(FrameType::kState, state).ok());
    ASSERT_TRUE(w.write_frame(FrameType::kComplete, {}).ok());
    auto ack = r.read_frame(5000);
    ASSERT_TRUE(ack.ok() && ack->type == FrameType::kAck) << (ack.ok() ? "" : ack.error().message);
    EXPECT_TRUE(decode_ack(ack->payload)->ok);
  });

  FrameWriter w(d.get());
  FrameReader r(d.get());
  auto f = r.read_frame(5000);
  ASSERT_TRUE(f.ok() && f->type == FrameType::kHello);
  auto remote = decode_hello(f->payload);
  ASSERT_TRUE(remote.ok());
  ASSERT_TRUE(check_hello(*remote, hello).ok());
  ASSERT_TRUE(w.write_frame(FrameType::kHelloReply, encode_hello_reply({true, ""})).ok());
  const RamRange ram[] = {{0, kMem}};
  uint32_t rounds = 0;
  bool have_state = false;
  for (;;) {
    f = r.read_frame(5000);
    ASSERT_TRUE(f.ok()) << f.error().message;
    if (f->type == FrameType::kMemPages) {
      auto v = decode_mem_pages(f->payload, remote->page_size, ram);
      ASSERT_TRUE(v.ok()) << v.error().message;
      for (const PageRef& p : *v) {
        if (p.zero)
          std::fill_n(dst_mem.begin() + static_cast<ptrdiff_t>(p.gpa), kPage, 0);
        else
          std::copy(p.data.begin(), p.data.end(), dst_mem.begin() + static_cast<ptrdiff_t>(p.gpa));
      }
    } else if (f->type == FrameType::kRoundEnd) {
      EXPECT_EQ(decode_round_end(f->payload)->round, rounds++);
    } else if (f->type == FrameType::kState) {
      EXPECT_TRUE(snapshot::decode_state(f->payload).ok());
      have_state = true;
    } else {
      ASSERT_EQ(f->type, FrameType::kComplete);
      break;
    }
  }
  EXPECT_EQ(rounds, 2u);
  EXPECT_TRUE(have_state);
  ASSERT_TRUE(w.write_frame(FrameType::kAck, encode_ack({true, ""})).ok());
  source.join();
  EXPECT_EQ(dst_mem, src_mem);
}

}  // namespace
}  // namespace vmm::migration
