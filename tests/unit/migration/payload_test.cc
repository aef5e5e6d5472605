// Payload codecs: round trips, canonical encodings, and what each decoder
// refuses; the MemPages builder and decoder; check_hello.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/unit/migration/migration_test_util.h"
#include "vmm/migration/protocol.h"
#include "vmm/snapshot/byte_io.h"

namespace vmm::migration {
namespace {

using snapshot::ByteWriter;
using snapshot::store_le32;
using testing::contains;
using testing::page_of;
using testing::sample_hello;

// ------------------------------------------------------------------- Hello --

TEST(Hello, RoundTripAndLayout) {
  Hello h = sample_hello();
  auto b = encode_hello(h);
  ASSERT_TRUE(b.ok()) << b.error().message;
  auto d = decode_hello(*b);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(*d, h);
  // string vmm_version, string cpu_template, u64 mem, u32 page size, u32 n, ...
  ByteWriter w;
  w.u32(5);
  w.bytes(std::string_view("0.1.0"));
  w.u32(7);
  w.bytes(std::string_view("minimal"));
  w.u64(512ull << 20);
  w.u32(4096);
  w.u32(3);
  for (const auto& [k, v] : h.config) {
    w.u32(static_cast<uint32_t>(k.size()));
    w.bytes(std::string_view(k));
    w.u32(static_cast<uint32_t>(v.size()));
    w.bytes(std::string_view(v));
  }
  EXPECT_EQ(*b, w.data());
}

TEST(Hello, EmptyConfigAndStrings) {
  Hello h;
  h.mem_bytes = 2u << 20;
  h.page_size = 2u << 20;
  auto b = encode_hello(h);
  ASSERT_TRUE(b.ok()) << b.error().message;
  auto d = decode_hello(*b);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(*d, h);
}

TEST(Hello, EncodeRefusesWhatDecodeWould) {
  auto expect_refused = [](Hello h, std::string_view msg) {
    auto b = encode_hello(h);
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.error().message, msg);
  };
  Hello h = sample_hello();
  h.config.emplace_back("bad key", "x");
  expect_refused(h, "Hello: config key 'bad key' is not a valid name");
  h = sample_hello();
  h.config.emplace_back("mem", "1G");
  expect_refused(h, "Hello: duplicate config key 'mem'");
  h = sample_hello();
  h.page_size = 8192 + 4096;
  expect_refused(h, "Hello: page size 12288 is not a power of two in [4096, 2097152]");
  h.page_size = 2048;
  expect_refused(h, "Hello: page size 2048 is not a power of two in [4096, 2097152]");
  h = sample_hello();
  h.mem_bytes = 4096 * 3 + 1;
  expect_refused(h, "Hello: memory size 12289 is not a non-zero multiple of the page size 4096");
  h.mem_bytes = 0;
  expect_refused(h, "Hello: memory size 0 is not a non-zero multiple of the page size 4096");
  h = sample_hello();
  h.cpu_template = std::string(kMaxStringBytes + 1, 'x');
  expect_refused(h, "Hello: cpu_template is 4097 bytes, at most 4096");
  h = sample_hello();
  h.config.clear();
  for (size_t i = 0; i <= kMaxConfigEntries; ++i)
    h.config.emplace_back("k" + std::to_string(i), "v");
  expect_refused(h, "Hello: 1025 config entries, at most 1024");
  // Valid piece by piece, but too big for a control frame.
  h = sample_hello();
  h.config.clear();
  for (size_t i = 0; i < 20; ++i)
    h.config.emplace_back("k" + std::to_string(i), std::string(kMaxStringBytes, 'v'));
  auto b = encode_hello(h);
  ASSERT_FALSE(b.ok());
  EXPECT_TRUE(contains(b.error().message, "exceeds the limit of 65536")) << b.error().message;
}

TEST(Hello, DecodeRefusesHostileBytes) {
  auto good = *encode_hello(sample_hello());
  // Every truncation.
  for (size_t n = 0; n < good.size(); ++n) {
    auto d = decode_hello(std::span<const uint8_t>(good).first(n));
    ASSERT_FALSE(d.ok()) << "accepted " << n << " bytes";
    EXPECT_TRUE(d.error().message.starts_with("Hello: ")) << d.error().message;
  }
  // Trailing bytes.
  auto t = good;
  t.push_back(0);
  EXPECT_EQ(decode_hello(t).error().message,
            fmt::format("Hello: 1 trailing bytes at byte {}", good.size()));
  // A string length over the limit is refused before it is read.
  auto s = good;
  store_le32(&s[0], 0xfffffff0);
  EXPECT_EQ(decode_hello(s).error().message,
            "Hello: vmm_version at byte 0 is 4294967280 bytes, at most 4096");
  // A huge config count.
  ByteWriter w;
  w.u32(0);
  w.u32(0);
  w.u64(4096);
  w.u32(4096);
  w.u32(0xffffffff);
  EXPECT_EQ(decode_hello(w.data()).error().message,
            "Hello: config count at byte 20 is 4294967295, at most 1024");
  // Values the encoder refuses, decoded from the wire.
  ByteWriter k;
  k.u32(0);
  k.u32(0);
  k.u64(4096);
  k.u32(4096);
  k.u32(1);
  k.u32(3);
  k.bytes(std::string_view("a/b"));
  k.u32(0);
  EXPECT_EQ(decode_hello(k.data()).error().message, "Hello: config key 'a/b' is not a valid name");
  ByteWriter p;
  p.u32(0);
  p.u32(0);
  p.u64(4096);
  p.u32(4097);
  p.u32(0);
  EXPECT_EQ(decode_hello(p.data()).error().message,
            "Hello: page size 4097 is not a power of two in [4096, 2097152]");
}

TEST(Hello, CheckListsEveryDifference) {
  Hello a = sample_hello(), b = sample_hello();
  EXPECT_TRUE(check_hello(a, b).ok());
  b.vmm_version = "0.2.0";  // may differ
  EXPECT_TRUE(check_hello(a, b).ok());
  b.config = {{"cpus", "2"}, {"mem", "512M"}, {"disk0", "path=/x.img,readonly=off"}};  // order
  EXPECT_TRUE(check_hello(a, b).ok());
  b.mem_bytes = 1ull << 30;
  b.page_size = 8192;
  b.cpu_template = "host";
  b.config = {{"mem", "1G"}, {"cpus", "2"}, {"net0", "tap0"}};
  auto r = check_hello(a, b);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(
      r.error().message,
      "source VM does not match this one: source has page_size=4096, this VM page_size=8192; "
      "source has mem_bytes=536870912, this VM mem_bytes=1073741824; CPU template 'minimal' on "
      "the source, 'host' in this VM; source has disk0=path=/x.img,readonly=off, this VM has no "
      "disk0; source has mem=512M, this VM mem=1G; this VM has net0=tap0, the source has no net0");
}

// --------------------------------------------------- small control payloads --

TEST(Payloads, HelloReplyAckRoundEndErrorCancel) {
  for (bool accepted : {false, true}) {
    HelloReply r{accepted, accepted ? "" : "CPU template differs"};
    auto d = decode_hello_reply(encode_hello_reply(r));
    ASSERT_TRUE(d.ok()) << d.error().message;
    EXPECT_EQ(*d, r);
    Ack a{accepted, "reason"};
    auto e = decode_ack(encode_ack(a));
    ASSERT_TRUE(e.ok()) << e.error().message;
    EXPECT_EQ(*e, a);
  }
  RoundEnd re{7, 123456789012ull, ~uint64_t{0}};
  auto reb = encode_round_end(re);
  EXPECT_EQ(reb.size(), 20u);
  EXPECT_EQ(*decode_round_end(reb), re);
  EXPECT_EQ(*decode_error(encode_error("disk full")), "disk full");
  EXPECT_EQ(*decode_cancel(encode_cancel("operator")), "operator");
  EXPECT_EQ(*decode_error(encode_error("")), "");
  EXPECT_TRUE(decode_complete({}).ok());
  std::vector<uint8_t> blob = {1, 2, 3};
  auto s = decode_state_payload(blob);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->data(), blob.data());
}

TEST(Payloads, LongReasonsAreCut) {
  std::string longer(kMaxStringBytes + 100, 'r');
  auto d = decode_error(encode_error(longer));
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(*d, longer.substr(0, kMaxStringBytes));
  auto a = decode_ack(encode_ack(Ack{false, longer}));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->reason.size(), kMaxStringBytes);
}

TEST(Payloads, DecodersRefuseHostileBytes) {
  std::vector<uint8_t> two = {2, 0, 0, 0, 0};
  EXPECT_EQ(decode_hello_reply(two).error().message, "HelloReply: accepted is 2, expected 0 or 1");
  EXPECT_EQ(decode_ack(two).error().message, "Ack: ok is 2, expected 0 or 1");
  EXPECT_EQ(decode_hello_reply({}).error().message,
            "HelloReply: truncated at byte 0: accepted needs 1 bytes, 0 left");
  auto trailing = encode_ack(Ack{true, "x"});
  trailing.push_back(9);
  EXPECT_EQ(decode_ack(trailing).error().message, "Ack: 1 trailing bytes at byte 6");
  EXPECT_EQ(decode_round_end(std::vector<uint8_t>(19)).error().message,
            "RoundEnd: payload is 19 bytes, expected 20");
  EXPECT_EQ(decode_round_end(std::vector<uint8_t>(21)).error().message,
            "RoundEnd: payload is 21 bytes, expected 20");
  std::vector<uint8_t> lie = {10, 0, 0, 0, 'a'};
  EXPECT_EQ(decode_error(lie).error().message,
            "Error: truncated at byte 4: reason needs 10 bytes, 1 left");
  EXPECT_EQ(decode_cancel({}).error().message,
            "Cancel: truncated at byte 0: reason needs 4 bytes, 0 left");
  EXPECT_EQ(decode_complete(std::vector<uint8_t>(3)).error().message,
            "Complete: payload is 3 bytes, expected none");
  EXPECT_EQ(decode_state_payload({}).error().message,
            "State: empty payload, expected a state file");
  // Every truncation of each is refused.
  for (const auto& good : {encode_hello_reply({true, "fine"}), encode_ack({false, "no"}),
                           encode_error("boom"), encode_round_end({1, 2, 3})}) {
    for (size_t n = 0; n < good.size(); ++n) {
      auto in = std::span<const uint8_t>(good).first(n);
      EXPECT_FALSE(decode_hello_reply(in).ok() && decode_ack(in).ok() && decode_error(in).ok() &&
                   decode_round_end(in).ok());
    }
  }
}

// ---------------------------------------------------------------- MemPages --

const RamRange kOneGig[] = {{0, 1ull << 30}};

TEST(MemPages, BuildAndDecodeWithoutCopies) {
  MemPagesBuilder b(4096);
  EXPECT_TRUE(b.empty());
  auto p1 = page_of(1), p2 = page_of(2);
  std::vector<uint8_t> zero(4096, 0);
  ASSERT_TRUE(b.add_page(0x1000, p1).ok());
  ASSERT_TRUE(b.add_zero(0x2000).ok());
  auto z = b.add(0x3000, zero);
  ASSERT_TRUE(z.ok());
  EXPECT_TRUE(*z);
  auto nz = b.add(0x3ffff000, p2);
  ASSERT_TRUE(nz.ok());
  EXPECT_FALSE(*nz);
  EXPECT_EQ(b.page_count(), 4u);
  EXPECT_EQ(b.size(), 4 + 4 * 8 + 2 * 4096u);
  auto payload = b.finish();
  EXPECT_EQ(payload.size(), b.size());
  EXPECT_EQ(snapshot::load_le32(payload.data()), 4u);
  EXPECT_EQ(snapshot::load_le64(payload.data() + 4), 0x1000u);
  EXPECT_EQ(snapshot::load_le64(payload.data() + 4 + 8 + 4096), 0x2001u);  // zero flag

  auto v = decode_mem_pages(payload, 4096, kOneGig);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->size(), 4u);
  EXPECT_EQ(v->zero_pages(), 2u);
  EXPECT_EQ(v->data_pages(), 2u);
  std::vector<PageRef> pages(v->begin(), v->end());
  ASSERT_EQ(pages.size(), 4u);
  EXPECT_EQ(pages[0].gpa, 0x1000u);
  EXPECT_FALSE(pages[0].zero);
  EXPECT_EQ(pages[0].data.data(), payload.data() + 12);  // a view into the payload
  EXPECT_TRUE(std::equal(pages[0].data.begin(), pages[0].data.end(), p1.begin(), p1.end()));
  EXPECT_EQ(pages[1].gpa, 0x2000u);
  EXPECT_TRUE(pages[1].zero);
  EXPECT_TRUE(pages[1].data.empty());
  EXPECT_EQ(pages[2].gpa, 0x3000u);
  EXPECT_TRUE(pages[2].zero);
  EXPECT_EQ(pages[3].gpa, 0x3ffff000u);
  EXPECT_TRUE(std::equal(pages[3].data.begin(), pages[3].data.end(), p2.begin(), p2.end()));

  // Reset keeps the buffer and starts a new batch.
  b.reset();
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.size(), 4u);
  auto e = decode_mem_pages(b.finish(), 4096, kOneGig);
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_TRUE(e->empty());
  EXPECT_EQ(e->begin(), e->end());
}

TEST(MemPages, A4096PageBatchFitsAFrame) {
  MemPagesBuilder b(4096);
  auto p = page_of(9);
  uint32_t n = 0;
  while (b.has_room(false)) {
    ASSERT_TRUE(b.add_page(uint64_t{n} * 4096, p).ok());
    ++n;
  }
  EXPECT_GE(n, 4096u);
  EXPECT_LE(b.size(), kMaxMemPagesPayload);
  auto full = b.add_page(uint64_t{n} * 4096, p);
  ASSERT_FALSE(full.ok());
  EXPECT_TRUE(contains(full.error().message, "batch full")) << full.error().message;
  EXPECT_EQ(b.page_count(), n);  // nothing added
  auto v = decode_mem_pages(b.finish(), 4096, kOneGig);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->size(), n);
  auto f = encode_frame(FrameType::kMemPages, 0, b.finish());
  EXPECT_TRUE(parse_frame(f, 0).ok());
}

TEST(MemPages, BuilderRefusesBadPages) {
  MemPagesBuilder b(4096, 4 + 8 + 4096 + 8);
  EXPECT_EQ(b.add_zero(0x1001).error().message,
            "MemPagesBuilder: gpa 0x1001 is not aligned to the page size 4096");
  EXPECT_EQ(b.add_page(0x1800, page_of(1)).error().message,
            "MemPagesBuilder: gpa 0x1800 is not aligned to the page size 4096");
  EXPECT_EQ(b.add_page(0x1000, std::vector<uint8_t>(100, 1)).error().message,
            "MemPagesBuilder: page at gpa 0x1000 is 100 bytes, the page size is 4096");
  EXPECT_FALSE(b.add(0x1000, {}).ok());
  EXPECT_TRUE(b.empty());
  ASSERT_TRUE(b.add_page(0, page_of(1)).ok());
  EXPECT_FALSE(b.has_room(false));
  EXPECT_TRUE(b.has_room(true));
  ASSERT_TRUE(b.add_zero(0x1000).ok());
  EXPECT_FALSE(b.has_room(true));
  EXPECT_FALSE(b.add_zero(0x2000).ok());
  MemPagesBuilder bad(1000);
  EXPECT_EQ(bad.add_zero(0).error().message,
            "MemPagesBuilder: page size 1000 is not a power of two in [4096, 2097152]");
  EXPECT_FALSE(bad.add(0, std::vector<uint8_t>(1000)).ok());
}

// A MemPages payload written by hand: u32 count, then words and data.
std::vector<uint8_t> pages_payload(std::initializer_list<uint64_t> words, uint32_t page_size = 4096,
                                   int64_t count_delta = 0, size_t extra = 0) {
  ByteWriter w;
  w.u32(static_cast<uint32_t>(static_cast<int64_t>(words.size()) + count_delta));
  for (uint64_t word : words) {
    w.u64(word);
    if (!(word & kPageZero)) w.bytes(std::vector<uint8_t>(page_size, 0xab));
  }
  for (size_t i = 0; i < extra; ++i) w.u8(0);
  return w.take();
}

TEST(MemPages, DecoderValidation) {
  // x86 layout for 4 GiB: [0, 3G) and [4G, 5G).
  const RamRange ram[] = {{0, 3ull << 30}, {4ull << 30, 1ull << 30}};
  auto refuse = [&](const std::vector<uint8_t>& p, std::string_view msg,
                    uint32_t page_size = 4096) {
    auto v = decode_mem_pages(p, page_size, ram);
    ASSERT_FALSE(v.ok()) << "accepted; expected: " << msg;
    EXPECT_EQ(v.error().message, msg);
  };
  EXPECT_TRUE(
      decode_mem_pages(
          pages_payload({0, (3ull << 30) - 4096, 4ull << 30, ((5ull << 30) - 4096) | 1}), 4096, ram)
          .ok());
  refuse({1, 0, 0}, "MemPages: payload is 3 bytes, the page count needs 4");
  refuse(pages_payload({0x1000}, 4096, +1),
         "MemPages: page 1 of 2 at byte 4108: truncated, its address needs 8 bytes, 0 left");
  refuse(pages_payload({0x1001, 0x2001}, 4096, +1),
         "MemPages: 3 pages need at least 28 bytes, the payload has 20");
  refuse(pages_payload({0x1001 | 0x2}),
         "MemPages: page 0 at byte 4: unknown flag bits 0x2 in address 0x1003 (addresses are "
         "page-aligned; only bit 0, zero page, is defined)");
  refuse(pages_payload({0x1800}),
         "MemPages: page 0 at byte 4: unknown flag bits 0x800 in address 0x1800 (addresses are "
         "page-aligned; only bit 0, zero page, is defined)");
  refuse(pages_payload({0x1000, 3ull << 30}),
         "MemPages: page 1 at byte 4108: gpa 0xc0000000 (+0x1000) is outside guest RAM");
  refuse(pages_payload({(5ull << 30) | 1}),
         "MemPages: page 0 at byte 4: gpa 0x140000000 (+0x1000) is outside guest RAM");
  refuse(pages_payload({(~uint64_t{0} & ~uint64_t{0xfff}) | 1}),
         "MemPages: page 0 at byte 4: gpa 0xfffffffffffff000 (+0x1000) is outside guest RAM");
  refuse(pages_payload({0x1000}, 4096, 0, 3),
         "MemPages: 3 trailing bytes at byte 4108 after the last of 1 pages");
  // A zero page that is followed by data anyway: the data are trailing bytes.
  {
    auto p = pages_payload({0x1001});
    p.insert(p.end(), 4096, 0);
    refuse(p, "MemPages: 4096 trailing bytes at byte 12 after the last of 1 pages");
  }
  // Data cut short.
  {
    auto p = pages_payload({0x1000, 0x2000});
    p.resize(p.size() - 1);
    refuse(p,
           "MemPages: page 1 (gpa 0x2000) at byte 4116: truncated, its data needs 4096 bytes, 4095 "
           "left");
  }
  // A count consistent with the minimum size, but the data pages run out.
  {
    ByteWriter w;
    w.u32(3);
    w.u64(0x1000);
    w.u64(0x2001);
    w.u64(0x3001);
    refuse(
        w.take(),
        "MemPages: page 0 (gpa 0x1000) at byte 12: truncated, its data needs 4096 bytes, 16 left");
  }
  // Address cut short after a data page.
  {
    auto p = pages_payload({0x1000});
    snapshot::store_le32(p.data(), 2);
    p.insert(p.end(), {1, 0, 0, 0});
    refuse(p, "MemPages: page 1 of 2 at byte 4108: truncated, its address needs 8 bytes, 4 left");
    auto q = pages_payload({0x1000, 0x2001, 0x3001});
    q.resize(q.size() - 2);
    refuse(q, "MemPages: page 2 of 3 at byte 4116: truncated, its address needs 8 bytes, 6 left");
  }
  // Page size: the decoder's own, and any invalid one is refused.
  refuse(pages_payload({0x1000}),
         "MemPages: page size 4095 is not a power of two in [4096, 2097152]", 4095);
  EXPECT_TRUE(decode_mem_pages(pages_payload({0x200000}, 2u << 20), 2u << 20, ram).ok());
  refuse(pages_payload({0x201000 | 1}, 2u << 20),
         "MemPages: page 0 at byte 4: unknown flag bits 0x1000 in address 0x201001 (addresses are "
         "page-aligned; only bit 0, zero page, is defined)",
         2u << 20);
  // No RAM at all: nothing is inside.
  EXPECT_FALSE(decode_mem_pages(pages_payload({0x1001}), 4096, {}).ok());
  // A range smaller than a page holds no page.
  const RamRange tiny[] = {{0, 100}};
  EXPECT_FALSE(decode_mem_pages(pages_payload({0x1}), 4096, tiny).ok());
}

TEST(MemPages, EveryTruncationAndFlipIsSafe) {
  MemPagesBuilder b(4096);
  ASSERT_TRUE(b.add_page(0x1000, page_of(3)).ok());
  ASSERT_TRUE(b.add_zero(0x5000).ok());
  ASSERT_TRUE(b.add_page(0x9000, page_of(4)).ok());
  auto payload = std::vector<uint8_t>(b.finish().begin(), b.finish().end());
  for (size_t n = 0; n < payload.size(); ++n)
    ASSERT_FALSE(decode_mem_pages(std::span<const uint8_t>(payload).first(n), 4096, kOneGig).ok())
        << n;
  // Flips in the count and the address words: refused or still consistent.
  for (size_t byte : {0, 1, 3, 4, 5, 9, 11, 4108, 4109, 4116 + 4, 4116 + 7}) {
    for (int bit = 0; bit < 8; ++bit) {
      auto p = payload;
      p[byte] ^= static_cast<uint8_t>(1 << bit);
      auto v = decode_mem_pages(p, 4096, kOneGig);
      if (!v.ok()) continue;
      size_t total = 4;
      for (const PageRef& pr : *v) {
        EXPECT_EQ(pr.gpa % 4096, 0u);
        EXPECT_LE(pr.gpa + 4096, 1ull << 30);
        EXPECT_EQ(pr.data.size(), pr.zero ? 0u : 4096u);
        total += 8 + pr.data.size();
      }
      EXPECT_EQ(total, p.size());
    }
  }
}

}  // namespace
}  // namespace vmm::migration
