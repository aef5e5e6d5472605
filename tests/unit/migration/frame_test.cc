// Framing: the header layout, parse_header / parse_frame on good and hostile
// buffers (truncation, bit flips, seq, limits, types, versions).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/unit/migration/migration_test_util.h"
#include "vmm/migration/protocol.h"
#include "vmm/snapshot/byte_io.h"
#include "vmm/snapshot/crc32c.h"

namespace vmm::migration {
namespace {

using snapshot::crc32c;
using snapshot::load_le32;
using testing::contains;
using testing::raw_frame;
using testing::raw_header;

std::vector<uint8_t> bytes(std::string_view s) { return {s.begin(), s.end()}; }

TEST(Frame, HeaderLayoutIsAsDocumented) {
  auto payload = bytes("hello");
  auto f = encode_frame(FrameType::kAck, 7, payload);
  ASSERT_EQ(f.size(), kFrameOverhead + 5);
  EXPECT_EQ(std::string(f.begin(), f.begin() + 4), "VMMG");
  EXPECT_EQ(load_le32(&f[0]), kMagic);
  EXPECT_EQ(f[4] | f[5] << 8, kProtocolVersion);
  EXPECT_EQ(f[6] | f[7] << 8, static_cast<int>(FrameType::kAck));
  EXPECT_EQ(load_le32(&f[8]), 7u);
  EXPECT_EQ(load_le32(&f[12]), 5u);
  EXPECT_EQ(load_le32(&f[16]), 0u);
  EXPECT_EQ(load_le32(&f[20]), crc32c(std::span<const uint8_t>(f).first(20)));
  EXPECT_EQ(std::string(f.begin() + 24, f.begin() + 29), "hello");
  EXPECT_EQ(load_le32(&f[29]), crc32c(std::span<const uint8_t>(f).first(29)));
  // The same bytes as a hand-made frame.
  EXPECT_EQ(f, raw_frame(static_cast<uint16_t>(FrameType::kAck), 7, payload));
  auto h = encode_header(FrameType::kAck, 7, 5);
  EXPECT_TRUE(std::equal(h.begin(), h.end(), f.begin()));
}

TEST(Frame, ParsesEveryTypeAndReportsConsumed) {
  for (uint16_t t = 1; t <= 9; ++t) {
    auto type = static_cast<FrameType>(t);
    auto payload = bytes("payload of " + frame_type_name(type));
    auto f = encode_frame(type, 3, payload);
    f.push_back(0xee);  // whatever follows is not this frame's business
    auto p = parse_frame(f, 3);
    ASSERT_TRUE(p.ok()) << p.error().message;
    EXPECT_EQ(p->type, type);
    EXPECT_EQ(p->seq, 3u);
    EXPECT_EQ(std::vector<uint8_t>(p->payload.begin(), p->payload.end()), payload);
    EXPECT_EQ(p->consumed, f.size() - 1);
    EXPECT_EQ(p->payload.data(), f.data() + kHeaderBytes);  // a view, not a copy
  }
}

TEST(Frame, EmptyPayload) {
  auto f = encode_frame(FrameType::kComplete, 0, {});
  ASSERT_EQ(f.size(), kFrameOverhead);
  auto p = parse_frame(f, 0);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_TRUE(p->payload.empty());
  EXPECT_EQ(p->consumed, kFrameOverhead);
}

TEST(Frame, TypeNamesAndLimits) {
  EXPECT_EQ(frame_type_name(FrameType::kHello), "Hello");
  EXPECT_EQ(frame_type_name(FrameType::kMemPages), "MemPages");
  EXPECT_EQ(frame_type_name(FrameType::kCancel), "Cancel");
  EXPECT_EQ(frame_type_name(static_cast<FrameType>(99)), "type 99");
  EXPECT_FALSE(is_known_frame_type(0));
  EXPECT_FALSE(is_known_frame_type(10));
  EXPECT_TRUE(is_known_frame_type(9));
  EXPECT_EQ(max_payload(FrameType::kMemPages), kMaxMemPagesPayload);
  EXPECT_EQ(max_payload(FrameType::kState), kMaxStatePayload);
  EXPECT_EQ(max_payload(FrameType::kAck), kMaxControlPayload);
  EXPECT_EQ(max_payload(static_cast<FrameType>(0)), 0u);
  // A batch of 4096 pages of 4 KiB fits in one MemPages frame.
  EXPECT_GE(kMaxMemPagesPayload, 4 + 4096u * (8 + 4096));
}

TEST(Frame, TruncatedAtEveryOffsetIsRefused) {
  auto f = encode_frame(FrameType::kError, 0, bytes("some reason"));
  for (size_t n = 0; n < f.size(); ++n) {
    auto p = parse_frame(std::span<const uint8_t>(f).first(n), 0);
    ASSERT_FALSE(p.ok()) << "accepted a frame cut at byte " << n;
    EXPECT_TRUE(contains(p.error().message, "truncated frame")) << p.error().message;
  }
  EXPECT_EQ(parse_frame(std::span<const uint8_t>(f).first(10), 0).error().message,
            "truncated frame: the header needs 24 bytes, have 10");
  EXPECT_EQ(parse_frame(std::span<const uint8_t>(f).first(30), 0).error().message,
            "truncated frame: Error seq 0 needs 39 bytes, have 30");
}

TEST(Frame, EverySingleBitFlipIsRefused) {
  auto payload = bytes("a payload with some bytes in it");
  auto f = encode_frame(FrameType::kHelloReply, 5, payload);
  for (size_t bit = 0; bit < f.size() * 8; ++bit) {
    auto g = f;
    g[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    auto p = parse_frame(g, 5);
    ASSERT_FALSE(p.ok()) << "accepted a flip of bit " << bit;
    EXPECT_FALSE(p.error().message.empty());
  }
}

TEST(Frame, FlipsAreReportedByTheRightCheck) {
  auto f = encode_frame(FrameType::kAck, 0, bytes("xyz"));
  auto flip = [&](size_t byte) {
    auto g = f;
    g[byte] ^= 0x10;
    return parse_frame(g, 0).error().message;
  };
  EXPECT_TRUE(contains(flip(0), "bad frame magic")) << flip(0);
  EXPECT_TRUE(contains(flip(4), "unsupported migration protocol version 17")) << flip(4);
  for (size_t b : {6, 8, 12, 16, 20})
    EXPECT_TRUE(contains(flip(b), "frame header checksum mismatch")) << b << ": " << flip(b);
  EXPECT_TRUE(contains(flip(25), "Ack frame seq 0: checksum mismatch")) << flip(25);
  EXPECT_TRUE(contains(flip(f.size() - 1), "checksum mismatch")) << flip(f.size() - 1);
}

TEST(Frame, SequenceMustBeExactlyTheExpectedOne) {
  auto f = encode_frame(FrameType::kRoundEnd, 4, {});
  EXPECT_TRUE(parse_frame(f, 4).ok());
  for (uint32_t expected : {0u, 3u, 5u, 0xffffffffu}) {
    auto p = parse_frame(f, expected);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(
        p.error().message,
        fmt::format("RoundEnd frame has seq 4, expected {} (reordered, duplicated or lost frame)",
                    expected));
  }
  // The seq wraps around.
  EXPECT_TRUE(parse_frame(encode_frame(FrameType::kAck, 0xffffffff, {}), 0xffffffff).ok());
}

TEST(Frame, OversizeLengthRefusedFromTheHeaderAlone) {
  // Only the header is given: the length is refused before any payload is
  // needed (so a reader never allocates it).
  struct Case {
    FrameType type;
    uint32_t len;
  } cases[] = {{FrameType::kMemPages, kMaxMemPagesPayload + 1},
               {FrameType::kState, kMaxStatePayload + 1},
               {FrameType::kHello, kMaxControlPayload + 1},
               {FrameType::kAck, 0xffffffff}};
  for (const auto& c : cases) {
    auto h = raw_header(static_cast<uint16_t>(c.type), 0, c.len);
    auto r = parse_header(h, 0);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().message, fmt::format("{} frame payload of {} bytes exceeds the limit of {}",
                                             frame_type_name(c.type), c.len, max_payload(c.type)));
    EXPECT_FALSE(parse_frame(h, 0).ok());
  }
  // At the limit is fine (for the header).
  auto h = raw_header(static_cast<uint16_t>(FrameType::kMemPages), 0, kMaxMemPagesPayload);
  auto r = parse_header(h, 0);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->payload_len, kMaxMemPagesPayload);
}

TEST(Frame, UnknownTypeIsNamed) {
  for (uint16_t t : {0, 10, 99, 0xffff}) {
    auto f = raw_frame(t, 0, {});
    auto p = parse_frame(f, 0);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.error().message, fmt::format("unknown frame type {}", t));
  }
}

TEST(Frame, FutureAndPastVersionsAreNamed) {
  for (uint16_t v : {0, 2, 0x100}) {
    auto f = raw_frame(1, 0, {}, v);
    auto p = parse_frame(f, 0);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(
        p.error().message,
        fmt::format("unsupported migration protocol version {} (this VMM speaks version 1)", v));
  }
}

TEST(Frame, BadMagicAndReservedAreRefused) {
  auto h = raw_header(1, 0, 0, kProtocolVersion, 0, 0x12345678);
  EXPECT_EQ(parse_header(h, 0).error().message,
            "bad frame magic 0x12345678, expected 0x474d4d56 (\"VMMG\"): not a migration stream");
  auto f = raw_frame(1, 0, {}, kProtocolVersion, 4);
  EXPECT_EQ(parse_frame(f, 0).error().message, "frame header reserved field is 0x4, expected 0");
}

TEST(Frame, HeaderChecksumCatchesALengthChange) {
  auto f = encode_frame(FrameType::kState, 0, bytes("abc"));
  snapshot::store_le32(&f[12], 100);  // longer, still under the limit
  EXPECT_TRUE(contains(parse_header(f, 0).error().message, "frame header checksum mismatch"));
}

}  // namespace
}  // namespace vmm::migration
