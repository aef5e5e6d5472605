// libFuzzer target: the live-migration wire protocol (vmm/migration/protocol.h),
// the code that reads what the other VMM sends.
//
// Input: any bytes, used as
//   1. a frame stream, as is: parse_frame from offset 0 with seq 0, 1, 2...,
//      and the same bytes through a FrameReader on a pipe;
//   2. the same stream with every frame's header fixed up (magic, version,
//      seq, reserved, header CRC) and its frame CRC recomputed, so mutations
//      reach the type and length checks and the payload decoders instead of
//      stopping at a checksum;
//   3. a payload: every payload decoder on the whole input, and on the
//      payload of each frame parsed in 1 and 2;
//   4. a URI string for parse_uri.
//
// Invariants (abort() on violation): every refusal has a non-empty message;
// a parsed frame is within its type's limit and re-encodes (encode_frame) to
// exactly the bytes it was parsed from; FrameReader returns the same frames
// as parse_frame and fails where it fails (with the same message, unless the
// input just ends); every decoded payload re-encodes to the same bytes
// (encodings are canonical); a decoded Hello is compatible with itself; a
// MemPages view yields page-aligned pages inside guest RAM whose sizes add up
// to the payload, and MemPagesBuilder rebuilds the payload byte for byte; a
// parsed URI prints as a URI that parses to the same.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_check.h"
#include "vmm/base/unique_fd.h"
#include "vmm/migration/protocol.h"
#include "vmm/snapshot/byte_io.h"
#include "vmm/snapshot/crc32c.h"

namespace {

using namespace vmm::migration;
using vmm::snapshot::crc32c;
using vmm::snapshot::load_le32;
using vmm::snapshot::store_le32;

// An x86 guest of 4 GiB + 4 KiB: RAM [0, 3 GiB) and [4 GiB, 5 GiB + 4 KiB).
constexpr RamRange kRam[] = {{0, 3ull << 30}, {4ull << 30, (1ull << 30) + 4096}};

bool same(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

void check_mem_pages(std::span<const uint8_t> payload) {
  auto v = decode_mem_pages(payload, 4096, kRam);
  if (!v) {
    FUZZ_CHECK(!v.error().message.empty());
    return;
  }
  MemPagesBuilder b(4096);
  size_t total = 4;
  uint32_t n = 0, zeroes = 0;
  for (const PageRef& p : *v) {
    FUZZ_CHECK(p.gpa % 4096 == 0);
    bool inside = false;
    for (const auto& r : kRam) inside |= p.gpa >= r.start && p.gpa + 4096 <= r.start + r.size;
    FUZZ_CHECK(inside);
    FUZZ_CHECK(p.data.size() == (p.zero ? 0u : 4096u));
    if (!p.zero)
      FUZZ_CHECK(p.data.data() >= payload.data() &&
                 p.data.data() + 4096 <= payload.data() + payload.size());
    total += 8 + p.data.size();
    ++n;
    zeroes += p.zero;
    FUZZ_CHECK((p.zero ? b.add_zero(p.gpa) : b.add_page(p.gpa, p.data)).ok());
  }
  FUZZ_CHECK(n == v->size() && zeroes == v->zero_pages());
  FUZZ_CHECK(total == payload.size());
  FUZZ_CHECK(same(b.finish(), payload));
  // With no RAM, only an empty batch is acceptable.
  FUZZ_CHECK(decode_mem_pages(payload, 4096, {}).ok() == v->empty());
}

void check_payload(std::span<const uint8_t> p) {
  if (auto h = decode_hello(p)) {
    auto again = encode_hello(*h);
    FUZZ_CHECK(again.ok() && same(*again, p));
    FUZZ_CHECK(check_hello(*h, *h).ok());
  } else {
    FUZZ_CHECK(!h.error().message.empty());
  }
  if (auto r = decode_hello_reply(p)) {
    FUZZ_CHECK(same(encode_hello_reply(*r), p));
  } else {
    FUZZ_CHECK(!r.error().message.empty());
  }
  if (auto r = decode_round_end(p)) {
    FUZZ_CHECK(same(encode_round_end(*r), p));
  } else {
    FUZZ_CHECK(!r.error().message.empty());
  }
  if (auto a = decode_ack(p)) {
    FUZZ_CHECK(same(encode_ack(*a), p));
  } else {
    FUZZ_CHECK(!a.error().message.empty());
  }
  if (auto e = decode_error(p)) {
    FUZZ_CHECK(same(encode_error(*e), p));
  } else {
    FUZZ_CHECK(!e.error().message.empty());
  }
  if (auto c = decode_cancel(p)) {
    FUZZ_CHECK(same(encode_cancel(*c), p));
  } else {
    FUZZ_CHECK(!c.error().message.empty());
  }
  auto s = decode_state_payload(p);
  FUZZ_CHECK(s.ok() == !p.empty());
  FUZZ_CHECK(decode_complete(p).ok() == p.empty());
  check_mem_pages(p);
}

// Frames from the start of `in`, as parse_frame and as FrameReader see them.
void check_stream(std::span<const uint8_t> in) {
  std::vector<ParsedFrame> frames;
  size_t off = 0;
  uint32_t seq = 0;
  vmm::Error stop;
  for (;;) {
    auto f = parse_frame(in.subspan(off), seq);
    if (!f) {
      stop = f.error();
      FUZZ_CHECK(!stop.message.empty());
      break;
    }
    FUZZ_CHECK(f->seq == seq);
    FUZZ_CHECK(f->payload.size() <= max_payload(f->type));
    FUZZ_CHECK(f->consumed == kFrameOverhead + f->payload.size());
    FUZZ_CHECK(f->consumed <= in.size() - off);
    FUZZ_CHECK(same(encode_frame(f->type, f->seq, f->payload), in.subspan(off, f->consumed)));
    check_payload(f->payload);
    frames.push_back(*f);
    off += f->consumed;
    ++seq;
  }

  // The same bytes through a FrameReader (a pipe holds 64 KiB without a reader).
  if (in.size() > 60000) return;
  int p[2];
  if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return;
  vmm::UniqueFd rd(p[0]), wr(p[1]);
  if (!in.empty() && ::write(wr.get(), in.data(), in.size()) != static_cast<ssize_t>(in.size()))
    return;
  wr.reset();
  FrameReader r(rd.get());
  for (const auto& f : frames) {
    auto g = r.read_frame(-1);
    FUZZ_CHECK(g.ok());
    FUZZ_CHECK(g->type == f.type && g->seq == f.seq && same(g->payload, f.payload));
  }
  auto last = r.read_frame(-1);
  FUZZ_CHECK(!last.ok());
  FUZZ_CHECK(!is_timeout(last.error()));
  if (!stop.message.starts_with("truncated frame"))
    FUZZ_CHECK(last.error().message == stop.message);
  FUZZ_CHECK(r.frames_read() == frames.size());
  FUZZ_CHECK(r.bytes_read() <= in.size());
}

// Every frame's header made valid but for its type and length, and its CRC
// recomputed where the frame is complete.
std::vector<uint8_t> fix_up(std::span<const uint8_t> in) {
  std::vector<uint8_t> b(in.begin(), in.end());
  size_t off = 0;
  for (uint32_t seq = 0; b.size() - off >= kHeaderBytes; ++seq) {
    uint8_t* h = b.data() + off;
    store_le32(h, kMagic);
    h[4] = static_cast<uint8_t>(kProtocolVersion);
    h[5] = static_cast<uint8_t>(kProtocolVersion >> 8);
    store_le32(h + 8, seq);
    store_le32(h + 16, 0);
    store_le32(h + 20, crc32c(std::span<const uint8_t>(h, 20)));
    uint64_t len = load_le32(h + 12);
    if (b.size() - off < kFrameOverhead + len) break;
    store_le32(h + kHeaderBytes + len, crc32c(std::span<const uint8_t>(h, kHeaderBytes + len)));
    off += kFrameOverhead + len;
  }
  return b;
}

void check_uri(std::span<const uint8_t> in) {
  std::string_view text(reinterpret_cast<const char*>(in.data()), std::min<size_t>(in.size(), 512));
  auto u = parse_uri(text);
  if (!u) {
    FUZZ_CHECK(!u.error().message.empty());
    return;
  }
  auto again = parse_uri(u->to_string());
  FUZZ_CHECK(again.ok() && *again == *u);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  check_stream(in);
  check_stream(fix_up(in));
  check_payload(in);
  check_uri(in);
  return 0;
}
