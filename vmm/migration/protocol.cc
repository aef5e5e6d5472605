#include "vmm/migration/protocol.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "vmm/base/checked_math.h"
#include "vmm/snapshot/byte_io.h"
#include "vmm/snapshot/crc32c.h"

namespace vmm::migration {

using snapshot::ByteReader;
using snapshot::ByteWriter;
using snapshot::crc32c;
using snapshot::load_le32;
using snapshot::load_le64;
using snapshot::printable;
using snapshot::store_le32;

namespace {

uint16_t load_le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

std::string_view as_view(std::span<const uint8_t> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// Prefixes an error message ("Hello: " + message), keeping errno.
Error prefixed(std::string_view prefix, Error e) {
  e.message = fmt::format("{}: {}", prefix, e.message);
  return e;
}

bool valid_page_size(uint64_t p) {
  return p >= kMinPageSize && p <= kMaxPageSize && (p & (p - 1)) == 0;
}

void put_string(ByteWriter& w, std::string_view s) {
  if (s.size() > kMaxStringBytes) s = s.substr(0, kMaxStringBytes);
  w.u32(static_cast<uint32_t>(s.size()));
  w.bytes(s);
}

Result<std::string> get_string(ByteReader& r, std::string_view what) {
  uint64_t at = r.offset();
  VMM_TRY(uint32_t n, r.u32(what));
  if (n > kMaxStringBytes)
    return make_error("{} at byte {} is {} bytes, at most {}", what, at, n, kMaxStringBytes);
  VMM_TRY(auto b, r.bytes(n, what));
  return std::string(as_view(b));
}

Result<bool> get_bool(ByteReader& r, std::string_view what) {
  VMM_TRY(uint8_t v, r.u8(what));
  if (v > 1) return make_error("{} is {}, expected 0 or 1", what, v);
  return v == 1;
}

Result<void> expect_end(const ByteReader& r) {
  if (!r.empty()) return make_error("{} trailing bytes at byte {}", r.remaining(), r.offset());
  return ok();
}

// Milliseconds left of a timeout; negative = forever.
class Deadline {
 public:
  explicit Deadline(int timeout_ms)
      : forever_(timeout_ms < 0),
        end_(std::chrono::steady_clock::now() +
             std::chrono::milliseconds(std::max(timeout_ms, 0))) {}
  bool forever() const { return forever_; }
  // For poll(): -1 forever, else the remaining milliseconds rounded up, >= 0.
  int poll_ms() const {
    if (forever_) return -1;
    auto left = end_ - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) return 0;
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
    return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
  }
  bool expired() const { return !forever_ && std::chrono::steady_clock::now() >= end_; }

 private:
  bool forever_;
  std::chrono::steady_clock::time_point end_;
};

// Waits until `fd` has one of `events` (or an error/hangup, which the next
// read or write reports). false: the deadline passed.
Result<bool> wait_fd(int fd, short events, const Deadline& dl) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, dl.poll_ms());
    if (r > 0) return true;
    if (r == 0) {
      if (dl.expired()) return false;
      continue;  // poll rounds down; wait out the rest
    }
    if (errno == EINTR) continue;
    return errno_error("poll");
  }
}

Error timeout_error(std::string message) { return Error{std::move(message), ETIMEDOUT}; }

// FrameReader's first buffer growth for a payload.
constexpr size_t kReadChunk = size_t{64} << 10;

}  // namespace

// ------------------------------------------------------------------ frames --

std::string frame_type_name(FrameType t) {
  switch (t) {
    case FrameType::kHello:
      return "Hello";
    case FrameType::kHelloReply:
      return "HelloReply";
    case FrameType::kMemPages:
      return "MemPages";
    case FrameType::kRoundEnd:
      return "RoundEnd";
    case FrameType::kState:
      return "State";
    case FrameType::kComplete:
      return "Complete";
    case FrameType::kAck:
      return "Ack";
    case FrameType::kError:
      return "Error";
    case FrameType::kCancel:
      return "Cancel";
  }
  return fmt::format("type {}", static_cast<uint16_t>(t));
}

bool is_known_frame_type(uint16_t t) {
  return t >= static_cast<uint16_t>(FrameType::kHello) &&
         t <= static_cast<uint16_t>(FrameType::kCancel);
}

uint32_t max_payload(FrameType t) {
  if (!is_known_frame_type(static_cast<uint16_t>(t))) return 0;
  switch (t) {
    case FrameType::kMemPages:
      return kMaxMemPagesPayload;
    case FrameType::kState:
      return kMaxStatePayload;
    default:
      return kMaxControlPayload;
  }
}

std::array<uint8_t, kHeaderBytes> encode_header(FrameType type, uint32_t seq,
                                                uint32_t payload_len) {
  std::array<uint8_t, kHeaderBytes> h{};
  store_le32(&h[0], kMagic);
  h[4] = static_cast<uint8_t>(kProtocolVersion);
  h[5] = static_cast<uint8_t>(kProtocolVersion >> 8);
  auto t = static_cast<uint16_t>(type);
  h[6] = static_cast<uint8_t>(t);
  h[7] = static_cast<uint8_t>(t >> 8);
  store_le32(&h[8], seq);
  store_le32(&h[12], payload_len);
  store_le32(&h[16], 0);
  store_le32(&h[20], crc32c(std::span<const uint8_t>(h).first(20)));
  return h;
}

std::vector<uint8_t> encode_frame(FrameType type, uint32_t seq, std::span<const uint8_t> payload) {
  auto h = encode_header(type, seq, static_cast<uint32_t>(payload.size()));
  std::vector<uint8_t> out;
  out.reserve(kFrameOverhead + payload.size());
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), payload.begin(), payload.end());
  uint32_t crc = crc32c(payload, crc32c(h));
  out.resize(out.size() + kTrailerBytes);
  store_le32(out.data() + out.size() - kTrailerBytes, crc);
  return out;
}

Result<FrameHeader> parse_header(std::span<const uint8_t> bytes, uint32_t expected_seq) {
  if (bytes.size() < kHeaderBytes)
    return make_error("truncated frame: the header needs {} bytes, have {}", kHeaderBytes,
                      bytes.size());
  const uint8_t* p = bytes.data();
  uint32_t magic = load_le32(p);
  if (magic != kMagic)
    return make_error(
        "bad frame magic {:#010x}, expected {:#010x} (\"VMMG\"): not a migration stream", magic,
        kMagic);
  // The version before anything else: a later version may lay out the rest
  // of its header differently.
  uint16_t version = load_le16(p + 4);
  if (version != kProtocolVersion)
    return make_error("unsupported migration protocol version {} (this VMM speaks version {})",
                      version, kProtocolVersion);
  uint32_t stored = load_le32(p + 20);
  uint32_t computed = crc32c(bytes.first(20));
  if (stored != computed)
    return make_error("frame header checksum mismatch (stored {:#010x}, computed {:#010x})", stored,
                      computed);
  uint32_t reserved = load_le32(p + 16);
  if (reserved != 0)
    return make_error("frame header reserved field is {:#x}, expected 0", reserved);
  uint16_t type = load_le16(p + 6);
  if (!is_known_frame_type(type)) return make_error("unknown frame type {}", type);
  FrameHeader h;
  h.type = static_cast<FrameType>(type);
  h.seq = load_le32(p + 8);
  h.payload_len = load_le32(p + 12);
  if (h.payload_len > max_payload(h.type))
    return make_error("{} frame payload of {} bytes exceeds the limit of {}",
                      frame_type_name(h.type), h.payload_len, max_payload(h.type));
  if (h.seq != expected_seq)
    return make_error("{} frame has seq {}, expected {} (reordered, duplicated or lost frame)",
                      frame_type_name(h.type), h.seq, expected_seq);
  return h;
}

Result<ParsedFrame> parse_frame(std::span<const uint8_t> buf, uint32_t expected_seq) {
  VMM_TRY(FrameHeader h, parse_header(buf, expected_seq));
  size_t total = kFrameOverhead + size_t{h.payload_len};
  if (buf.size() < total)
    return make_error("truncated frame: {} seq {} needs {} bytes, have {}", frame_type_name(h.type),
                      h.seq, total, buf.size());
  uint32_t stored = load_le32(buf.data() + kHeaderBytes + h.payload_len);
  uint32_t computed = crc32c(buf.first(kHeaderBytes + h.payload_len));
  if (stored != computed)
    return make_error("{} frame seq {}: checksum mismatch (stored {:#010x}, computed {:#010x})",
                      frame_type_name(h.type), h.seq, stored, computed);
  ParsedFrame f;
  f.type = h.type;
  f.seq = h.seq;
  f.payload = buf.subspan(kHeaderBytes, h.payload_len);
  f.consumed = total;
  return f;
}

// ---------------------------------------------------------------- payloads --

namespace {

Result<void> validate_hello(const Hello& h) {
  if (h.vmm_version.size() > kMaxStringBytes)
    return make_error("vmm_version is {} bytes, at most {}", h.vmm_version.size(), kMaxStringBytes);
  if (h.cpu_template.size() > kMaxStringBytes)
    return make_error("cpu_template is {} bytes, at most {}", h.cpu_template.size(),
                      kMaxStringBytes);
  if (!valid_page_size(h.page_size))
    return make_error("page size {} is not a power of two in [{}, {}]", h.page_size, kMinPageSize,
                      kMaxPageSize);
  if (h.mem_bytes == 0 || h.mem_bytes % h.page_size != 0)
    return make_error("memory size {} is not a non-zero multiple of the page size {}", h.mem_bytes,
                      h.page_size);
  if (h.config.size() > kMaxConfigEntries)
    return make_error("{} config entries, at most {}", h.config.size(), kMaxConfigEntries);
  std::set<std::string_view> keys;
  for (const auto& [k, v] : h.config) {
    if (!snapshot::valid_name(k))
      return make_error("config key '{}' is not a valid name", printable(k));
    if (!keys.insert(k).second) return make_error("duplicate config key '{}'", k);
    if (v.size() > kMaxStringBytes)
      return make_error("config value of '{}' is {} bytes, at most {}", k, v.size(),
                        kMaxStringBytes);
  }
  return ok();
}

Result<Hello> decode_hello_inner(std::span<const uint8_t> payload) {
  ByteReader r(payload);
  Hello h;
  VMM_TRY(h.vmm_version, get_string(r, "vmm_version"));
  VMM_TRY(h.cpu_template, get_string(r, "cpu_template"));
  VMM_TRY(h.mem_bytes, r.u64("mem_bytes"));
  VMM_TRY(h.page_size, r.u32("page_size"));
  uint64_t at = r.offset();
  VMM_TRY(uint32_t n, r.u32("config count"));
  if (n > kMaxConfigEntries)
    return make_error("config count at byte {} is {}, at most {}", at, n, kMaxConfigEntries);
  for (uint32_t i = 0; i < n; ++i) {
    VMM_TRY(std::string k, get_string(r, "config key"));
    VMM_TRY(std::string v, get_string(r, "config value"));
    h.config.emplace_back(std::move(k), std::move(v));
  }
  VMM_CHECK(expect_end(r));
  VMM_CHECK(validate_hello(h));
  return h;
}

Result<std::string> decode_reason(std::string_view type, std::span<const uint8_t> payload) {
  ByteReader r(payload);
  auto s = get_string(r, "reason");
  if (!s) return prefixed(type, std::move(s).error());
  auto e = expect_end(r);
  if (!e) return prefixed(type, std::move(e).error());
  return std::move(s).value();
}

std::vector<uint8_t> encode_reason(std::string_view reason) {
  ByteWriter w;
  put_string(w, reason);
  return w.take();
}

}  // namespace

Result<std::vector<uint8_t>> encode_hello(const Hello& h) {
  auto v = validate_hello(h);
  if (!v) return prefixed("Hello", std::move(v).error());
  ByteWriter w;
  put_string(w, h.vmm_version);
  put_string(w, h.cpu_template);
  w.u64(h.mem_bytes);
  w.u32(h.page_size);
  w.u32(static_cast<uint32_t>(h.config.size()));
  for (const auto& [k, val] : h.config) {
    put_string(w, k);
    put_string(w, val);
  }
  if (w.size() > kMaxControlPayload)
    return make_error("Hello: encoded size {} exceeds the limit of {}", w.size(),
                      kMaxControlPayload);
  return w.take();
}

Result<Hello> decode_hello(std::span<const uint8_t> payload) {
  auto h = decode_hello_inner(payload);
  if (!h) return prefixed("Hello", std::move(h).error());
  return h;
}

Result<void> check_hello(const Hello& source, const Hello& local) {
  std::vector<std::string> diffs;
  if (source.page_size != local.page_size)
    diffs.push_back(fmt::format("source has page_size={}, this VM page_size={}", source.page_size,
                                local.page_size));
  if (source.mem_bytes != local.mem_bytes)
    diffs.push_back(fmt::format("source has mem_bytes={}, this VM mem_bytes={}", source.mem_bytes,
                                local.mem_bytes));
  if (source.cpu_template != local.cpu_template)
    diffs.push_back(fmt::format("CPU template '{}' on the source, '{}' in this VM",
                                printable(source.cpu_template), printable(local.cpu_template)));
  std::map<std::string, std::string> a(source.config.begin(), source.config.end());
  std::map<std::string, std::string> b(local.config.begin(), local.config.end());
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end())
      diffs.push_back(fmt::format("source has {}={}, this VM has no {}", k, printable(v), k));
    else if (it->second != v)
      diffs.push_back(fmt::format("source has {}={}, this VM {}={}", k, printable(v), k,
                                  printable(it->second)));
  }
  for (const auto& [k, v] : b)
    if (!a.contains(k))
      diffs.push_back(fmt::format("this VM has {}={}, the source has no {}", k, printable(v), k));
  if (diffs.empty()) return ok();
  std::string msg;
  for (const auto& d : diffs) msg += (msg.empty() ? "" : "; ") + d;
  return make_error("source VM does not match this one: {}", msg);
}

std::vector<uint8_t> encode_hello_reply(const HelloReply& r) {
  ByteWriter w;
  w.u8(r.accepted ? 1 : 0);
  put_string(w, r.reason);
  return w.take();
}

Result<HelloReply> decode_hello_reply(std::span<const uint8_t> payload) {
  ByteReader r(payload);
  HelloReply h;
  auto a = get_bool(r, "accepted");
  if (!a) return prefixed("HelloReply", std::move(a).error());
  h.accepted = *a;
  auto s = get_string(r, "reason");
  if (!s) return prefixed("HelloReply", std::move(s).error());
  h.reason = std::move(s).value();
  auto e = expect_end(r);
  if (!e) return prefixed("HelloReply", std::move(e).error());
  return h;
}

std::vector<uint8_t> encode_round_end(const RoundEnd& r) {
  ByteWriter w;
  w.u32(r.round);
  w.u64(r.pages_sent);
  w.u64(r.dirty_remaining);
  return w.take();
}

Result<RoundEnd> decode_round_end(std::span<const uint8_t> payload) {
  if (payload.size() != 20)
    return make_error("RoundEnd: payload is {} bytes, expected 20", payload.size());
  RoundEnd r;
  r.round = load_le32(payload.data());
  r.pages_sent = load_le64(payload.data() + 4);
  r.dirty_remaining = load_le64(payload.data() + 12);
  return r;
}

std::vector<uint8_t> encode_ack(const Ack& a) {
  ByteWriter w;
  w.u8(a.ok ? 1 : 0);
  put_string(w, a.reason);
  return w.take();
}

Result<Ack> decode_ack(std::span<const uint8_t> payload) {
  ByteReader r(payload);
  Ack a;
  auto o = get_bool(r, "ok");
  if (!o) return prefixed("Ack", std::move(o).error());
  a.ok = *o;
  auto s = get_string(r, "reason");
  if (!s) return prefixed("Ack", std::move(s).error());
  a.reason = std::move(s).value();
  auto e = expect_end(r);
  if (!e) return prefixed("Ack", std::move(e).error());
  return a;
}

std::vector<uint8_t> encode_error(std::string_view reason) { return encode_reason(reason); }
Result<std::string> decode_error(std::span<const uint8_t> payload) {
  return decode_reason("Error", payload);
}
std::vector<uint8_t> encode_cancel(std::string_view reason) { return encode_reason(reason); }
Result<std::string> decode_cancel(std::span<const uint8_t> payload) {
  return decode_reason("Cancel", payload);
}

Result<std::span<const uint8_t>> decode_state_payload(std::span<const uint8_t> payload) {
  if (payload.empty()) return make_error("State: empty payload, expected a state file");
  return payload;
}

Result<void> decode_complete(std::span<const uint8_t> payload) {
  if (!payload.empty())
    return make_error("Complete: payload is {} bytes, expected none", payload.size());
  return ok();
}

// ---------------------------------------------------------------- MemPages --

MemPagesBuilder::MemPagesBuilder(uint32_t page_size, size_t max_payload)
    : buf_(4, 0),
      page_size_(page_size),
      max_payload_(std::min<size_t>(max_payload, kMaxMemPagesPayload)) {
  buf_.reserve(max_payload_);  // one allocation for the builder's life
}

bool MemPagesBuilder::has_room(bool zero) const {
  size_t need = 8 + (zero ? 0 : size_t{page_size_});
  return count_ < UINT32_MAX && buf_.size() <= max_payload_ && need <= max_payload_ - buf_.size();
}

Result<void> MemPagesBuilder::check(uint64_t gpa, bool zero) const {
  if (!valid_page_size(page_size_))
    return make_error("MemPagesBuilder: page size {} is not a power of two in [{}, {}]", page_size_,
                      kMinPageSize, kMaxPageSize);
  if (gpa & (page_size_ - 1))
    return make_error("MemPagesBuilder: gpa {:#x} is not aligned to the page size {}", gpa,
                      page_size_);
  if (!has_room(zero))
    return make_error("MemPagesBuilder: batch full ({} pages, {} bytes, limit {})", count_,
                      buf_.size(), max_payload_);
  return ok();
}

Result<void> MemPagesBuilder::add_zero(uint64_t gpa) {
  VMM_CHECK(check(gpa, true));
  uint8_t w[8];
  store_le32(w, static_cast<uint32_t>(gpa | kPageZero));
  store_le32(w + 4, static_cast<uint32_t>(gpa >> 32));
  buf_.insert(buf_.end(), w, w + 8);
  ++count_;
  return ok();
}

Result<void> MemPagesBuilder::add_page(uint64_t gpa, std::span<const uint8_t> data) {
  if (data.size() != page_size_)
    return make_error("MemPagesBuilder: page at gpa {:#x} is {} bytes, the page size is {}", gpa,
                      data.size(), page_size_);
  VMM_CHECK(check(gpa, false));
  uint8_t w[8];
  store_le32(w, static_cast<uint32_t>(gpa));
  store_le32(w + 4, static_cast<uint32_t>(gpa >> 32));
  buf_.insert(buf_.end(), w, w + 8);
  buf_.insert(buf_.end(), data.begin(), data.end());
  ++count_;
  return ok();
}

Result<bool> MemPagesBuilder::add(uint64_t gpa, std::span<const uint8_t> data) {
  if (data.size() != page_size_)
    return make_error("MemPagesBuilder: page at gpa {:#x} is {} bytes, the page size is {}", gpa,
                      data.size(), page_size_);
  // Copy first, then test the copy (now in cache) for zeroes: guest memory
  // is read once, and what is tested is exactly what would be sent (the
  // guest may be writing the page meanwhile).
  VMM_CHECK(add_page(gpa, data));
  const uint8_t* copy = buf_.data() + buf_.size() - page_size_;
  uint64_t any = 0;
  for (size_t i = 0; i < page_size_; i += 8) {
    uint64_t w;
    std::memcpy(&w, copy + i, 8);
    any |= w;
  }
  if (any != 0) return false;
  buf_.resize(buf_.size() - page_size_);
  buf_[buf_.size() - 8] |= static_cast<uint8_t>(kPageZero);  // the address word's flag bit
  return true;
}

std::span<const uint8_t> MemPagesBuilder::finish() {
  store_le32(buf_.data(), count_);
  return buf_;
}

void MemPagesBuilder::reset() {
  buf_.resize(4);
  count_ = 0;
}

MemPagesView::iterator::iterator(const MemPagesView* v, uint32_t index, size_t pos)
    : view_(v), index_(index), pos_(pos) {
  if (view_ && index_ < view_->count_) load();
}

void MemPagesView::iterator::load() {
  uint64_t w = load_le64(view_->payload_.data() + pos_);
  cur_.zero = (w & kPageZero) != 0;
  cur_.gpa = w & ~uint64_t{view_->page_size_ - 1};
  cur_.data =
      cur_.zero ? std::span<const uint8_t>() : view_->payload_.subspan(pos_ + 8, view_->page_size_);
}

MemPagesView::iterator& MemPagesView::iterator::operator++() {
  pos_ += 8 + (cur_.zero ? 0 : size_t{view_->page_size_});
  ++index_;
  if (index_ < view_->count_) load();
  return *this;
}

Result<MemPagesView> decode_mem_pages(std::span<const uint8_t> payload, uint32_t page_size,
                                      std::span<const RamRange> ram) {
  if (!valid_page_size(page_size))
    return make_error("MemPages: page size {} is not a power of two in [{}, {}]", page_size,
                      kMinPageSize, kMaxPageSize);
  if (payload.size() < 4)
    return make_error("MemPages: payload is {} bytes, the page count needs 4", payload.size());
  uint32_t count = load_le32(payload.data());
  if (count > (payload.size() - 4) / 8)
    return make_error("MemPages: {} pages need at least {} bytes, the payload has {}", count,
                      4 + uint64_t{count} * 8, payload.size());
  const uint64_t mask = page_size - 1;
  size_t pos = 4;
  uint32_t zeroes = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (payload.size() - pos < 8)
      return make_error(
          "MemPages: page {} of {} at byte {}: truncated, its address needs 8 bytes, {} left", i,
          count, pos, payload.size() - pos);
    uint64_t w = load_le64(payload.data() + pos);
    uint64_t flags = w & mask;
    uint64_t gpa = w & ~mask;
    if (flags & ~kPageZero)
      return make_error(
          "MemPages: page {} at byte {}: unknown flag bits {:#x} in address {:#x} "
          "(addresses are page-aligned; only bit 0, zero page, is defined)",
          i, pos, flags & ~kPageZero, w);
    bool inside = false;
    for (const RamRange& r : ram) {
      if (gpa >= r.start && r.size >= page_size && gpa - r.start <= r.size - page_size) {
        inside = true;
        break;
      }
    }
    if (!inside)
      return make_error("MemPages: page {} at byte {}: gpa {:#x} (+{:#x}) is outside guest RAM", i,
                        pos, gpa, page_size);
    pos += 8;
    if (flags & kPageZero) {
      ++zeroes;
      continue;
    }
    if (payload.size() - pos < page_size)
      return make_error(
          "MemPages: page {} (gpa {:#x}) at byte {}: truncated, its data needs {} bytes, {} left",
          i, gpa, pos, page_size, payload.size() - pos);
    pos += page_size;
  }
  if (pos != payload.size())
    return make_error("MemPages: {} trailing bytes at byte {} after the last of {} pages",
                      payload.size() - pos, pos, count);
  MemPagesView v;
  v.payload_ = payload;
  v.page_size_ = page_size;
  v.count_ = count;
  v.zero_pages_ = zeroes;
  return v;
}

// ----------------------------------------------------------------- streams --

bool is_timeout(const Error& e) { return e.errno_value == ETIMEDOUT; }

Result<void> FrameWriter::write_frame(FrameType type, std::span<const uint8_t> payload,
                                      int timeout_ms) {
  if (failed_) return error_;
  const std::string name = frame_type_name(type);
  if (!is_known_frame_type(static_cast<uint16_t>(type)))
    return make_error("refusing to send a frame of unknown {}", name);
  if (payload.size() > max_payload(type))
    return make_error("refusing to send a {} frame of {} bytes: the limit is {}", name,
                      payload.size(), max_payload(type));
  const auto header = encode_header(type, seq_, static_cast<uint32_t>(payload.size()));
  uint8_t trailer[kTrailerBytes];
  store_le32(trailer, crc32c(payload, crc32c(header)));
  const std::span<const uint8_t> parts[3] = {header, payload, trailer};
  const size_t total = kFrameOverhead + payload.size();
  size_t sent = 0;
  Deadline dl(timeout_ms);
  auto fail = [&](Error e) {
    if (sent > 0) {  // part of the frame is out: the stream is broken for good
      failed_ = true;
      error_ = e;
    }
    return e;
  };
  while (sent < total) {
    iovec iov[3];
    int n_iov = 0;
    size_t skip = sent;
    for (auto p : parts) {
      if (skip >= p.size()) {
        skip -= p.size();
        continue;
      }
      iov[n_iov].iov_base = const_cast<uint8_t*>(p.data() + skip);
      iov[n_iov].iov_len = p.size() - skip;
      ++n_iov;
      skip = 0;
    }
    ssize_t n;
    if (use_send_) {
      msghdr m{};
      m.msg_iov = iov;
      m.msg_iovlen = static_cast<size_t>(n_iov);
      n = ::sendmsg(fd_, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == ENOTSOCK) {
        use_send_ = false;
        continue;
      }
    } else {
      n = ::writev(fd_, iov, n_iov);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        auto ready = wait_fd(fd_, POLLOUT, dl);
        if (!ready) return fail(std::move(ready).error());
        if (!*ready)
          return fail(timeout_error(
              fmt::format("timed out after {} ms sending {} frame seq {} ({} of {} bytes sent)",
                          timeout_ms, name, seq_, sent, total)));
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET)
        return fail(errno_error(
            "connection closed by peer while sending {} frame seq {} ({} of {} bytes sent)", name,
            seq_, sent, total));
      return fail(
          errno_error("sending {} frame seq {} ({} of {} bytes sent)", name, seq_, sent, total));
    }
    sent += static_cast<size_t>(n);
    bytes_ += static_cast<uint64_t>(n);
  }
  ++seq_;
  ++frames_;
  return ok();
}

Result<Frame> FrameReader::read_frame(int timeout_ms) {
  if (failed_) return error_;
  auto fail = [&](Error e) {
    failed_ = true;
    error_ = e;
    return e;
  };
  // Keep a buffer that fits MemPages frames (growth by doubling may have
  // made it up to twice that): freeing and regrowing it for every frame
  // cost more than the copy. Only a larger one (a State frame) is released.
  if (have_ == 0 && buf_.capacity() > 2 * (kMaxMemPagesPayload + kFrameOverhead))
    std::vector<uint8_t>().swap(buf_);
  if (buf_.size() < kHeaderBytes) buf_.resize(kHeaderBytes);
  Deadline dl(timeout_ms);
  for (;;) {
    const size_t target = need_ ? need_ : kHeaderBytes;
    while (have_ < target) {
      if (!dl.forever()) {
        auto ready = wait_fd(fd_, POLLIN, dl);
        if (!ready) return fail(std::move(ready).error());
        if (!*ready) {
          if (have_ == 0)
            return timeout_error(
                fmt::format("timed out after {} ms waiting for a frame", timeout_ms));
          return timeout_error(fmt::format("timed out after {} ms with {} of {} bytes of a frame{}",
                                           timeout_ms, have_, target, need_ ? "" : " header"));
        }
      }
      if (have_ == buf_.size()) {
        // Grow with what actually arrives (doubling), not with what the
        // header announced: a peer that claims a 64 MiB frame and sends a
        // few bytes costs a few bytes.
        buf_.resize(std::min(target, std::max(buf_.size() * 2, kReadChunk)));
      }
      ssize_t n = ::read(fd_, buf_.data() + have_, std::min(target, buf_.size()) - have_);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          if (dl.forever()) {
            auto ready = wait_fd(fd_, POLLIN, dl);
            if (!ready) return fail(std::move(ready).error());
          }
          continue;
        }
        return fail(errno_error("reading a frame ({} of {} bytes read)", have_, target));
      }
      if (n == 0) {
        if (have_ == 0)
          return fail(
              make_error("connection closed by peer between frames ({} frames read)", frames_));
        if (need_ == 0)
          return fail(make_error("connection closed after {} of {} bytes of a frame header", have_,
                                 kHeaderBytes));
        return fail(make_error("connection closed after {} of {} bytes of a frame ({}, seq {})",
                               have_, need_, frame_type_name(type_), seq_));
      }
      have_ += static_cast<size_t>(n);
      bytes_ += static_cast<uint64_t>(n);
    }
    if (need_ != 0) break;
    // The header is in: check it before growing the buffer for the payload.
    auto h = parse_header(std::span<const uint8_t>(buf_.data(), kHeaderBytes), seq_);
    if (!h) return fail(std::move(h).error());
    need_ = kFrameOverhead + size_t{h->payload_len};
    type_ = h->type;
  }
  auto f = parse_frame(std::span<const uint8_t>(buf_.data(), need_), seq_);
  if (!f) return fail(std::move(f).error());
  have_ = 0;
  need_ = 0;
  ++seq_;
  ++frames_;
  return Frame{f->type, f->seq, f->payload};
}

// ----------------------------------------------------------------- sockets --

namespace {

constexpr size_t kMaxUnixPath = sizeof(sockaddr_un::sun_path) - 1;  // 107

bool host_char(char c, bool bracketed) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  if (c == '.' || c == '-' || c == '_') return true;
  return bracketed && (c == ':' || c == '%');
}

std::string sockaddr_string(const sockaddr* sa, socklen_t len) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (::getnameinfo(sa, len, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "?";
  if (sa->sa_family == AF_INET6) return fmt::format("[{}]:{}", host, serv);
  return fmt::format("{}:{}", host, serv);
}

Result<void> set_blocking(int fd, bool blocking) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) return errno_error("fcntl(F_GETFL)");
  int want = blocking ? (fl & ~O_NONBLOCK) : (fl | O_NONBLOCK);
  if (want != fl && ::fcntl(fd, F_SETFL, want) < 0) return errno_error("fcntl(F_SETFL)");
  return ok();
}

// TCP_NODELAY on inet sockets; nothing on others.
Result<void> set_nodelay_if_tcp(int fd) {
  int domain = 0;
  socklen_t len = sizeof(domain);
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
    return errno_error("getsockopt(SO_DOMAIN)");
  if (domain != AF_INET && domain != AF_INET6) return ok();
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
    return errno_error("setsockopt(TCP_NODELAY)");
  return ok();
}

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), std::min(path.size(), kMaxUnixPath));
  return a;
}

struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() {
    if (list) ::freeaddrinfo(list);
  }
};

Result<void> resolve(const Uri& uri, bool passive, AddrInfo& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  std::string port = std::to_string(uri.port);
  int r = ::getaddrinfo(uri.host.c_str(), port.c_str(), &hints, &out.list);
  if (r != 0)
    return make_error("{}: cannot resolve '{}': {}", uri.to_string(), uri.host,
                      r == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(r));
  if (!out.list) return make_error("{}: '{}' has no address", uri.to_string(), uri.host);
  return ok();
}

// One non-blocking connect to `sa` within the deadline; the socket returned is
// blocking. errno_value ETIMEDOUT when the deadline passed.
Result<UniqueFd> connect_addr(int family, const sockaddr* sa, socklen_t len, const Deadline& dl,
                              const std::string& what) {
  for (;;) {
    int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return errno_error("{}: socket", what);
    UniqueFd sock(fd);
    if (::connect(fd, sa, len) == 0) {
      VMM_CHECK(set_blocking(fd, true));
      return sock;
    }
    if (errno == EAGAIN && family == AF_UNIX) {
      // The listener's backlog is full: try again shortly.
      if (dl.expired()) return timeout_error(fmt::format("{}: timed out (backlog full)", what));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (errno != EINPROGRESS && errno != EINTR) return errno_error("{}", what);
    auto ready = wait_fd(fd, POLLOUT, dl);
    if (!ready) return std::move(ready).error();
    if (!*ready) return timeout_error(fmt::format("{}: timed out", what));
    int err = 0;
    socklen_t elen = sizeof(err);
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
      return errno_error("{}: getsockopt", what);
    if (err != 0) return Error{what, err};
    VMM_CHECK(set_blocking(fd, true));
    return sock;
  }
}

}  // namespace

std::string Uri::to_string() const {
  if (kind == Kind::kUnix) return "unix:" + path;
  if (host.find(':') != std::string::npos) return fmt::format("tcp:[{}]:{}", host, port);
  return fmt::format("tcp:{}:{}", host, port);
}

Result<Uri> parse_uri(std::string_view text) {
  auto bad = [&](std::string why) {
    return make_error("migration URI '{}': {}", printable(text), why);
  };
  Uri u;
  if (text.starts_with("unix:")) {
    u.kind = Uri::Kind::kUnix;
    std::string_view path = text.substr(5);
    if (path.empty()) return bad("empty path (expected unix:PATH)");
    if (path.find('\0') != std::string_view::npos) return bad("the path contains a NUL byte");
    if (path.size() > kMaxUnixPath)
      return bad(fmt::format("the path is {} bytes, at most {}", path.size(), kMaxUnixPath));
    u.path = std::string(path);
    return u;
  }
  if (!text.starts_with("tcp:")) {
    auto colon = text.find(':');
    if (colon == std::string_view::npos) return bad("expected tcp:HOST:PORT or unix:PATH");
    return bad(fmt::format("unknown scheme '{}' (expected tcp:HOST:PORT or unix:PATH)",
                           printable(text.substr(0, colon))));
  }
  u.kind = Uri::Kind::kTcp;
  std::string_view rest = text.substr(4), host, port;
  bool bracketed = false;
  if (rest.starts_with('[')) {
    auto close = rest.find(']');
    if (close == std::string_view::npos) return bad("unterminated '[' (expected tcp:[IPV6]:PORT)");
    bracketed = true;
    host = rest.substr(1, close - 1);
    std::string_view after = rest.substr(close + 1);
    if (!after.starts_with(':')) return bad("expected ':PORT' after ']'");
    port = after.substr(1);
    if (host.empty()) return bad("empty IPv6 address in '[]'");
    if (host.find(':') == std::string_view::npos)
      return bad(fmt::format("'[{}]' is not an IPv6 address (brackets are for IPv6 only)",
                             printable(host)));
  } else {
    auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) return bad("missing ':PORT' (expected tcp:HOST:PORT)");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return bad("an IPv6 address must be in brackets (tcp:[ADDRESS]:PORT)");
    if (host.empty()) return bad("empty host (use 0.0.0.0 or [::] to listen on every address)");
  }
  if (host.size() > 253) return bad(fmt::format("the host is {} bytes, at most 253", host.size()));
  for (char c : host)
    if (!host_char(c, bracketed))
      return bad(fmt::format("invalid character '{}' in host '{}'",
                             printable(std::string_view(&c, 1)), printable(host)));
  if (port.empty()) return bad("empty port");
  if (port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return bad(fmt::format("port '{}' is not a number in 0-65535", printable(port)));
  unsigned long p = std::stoul(std::string(port));
  if (p > 65535) return bad(fmt::format("port {} is out of range (0-65535)", p));
  u.host = std::string(host);
  u.port = static_cast<uint16_t>(p);
  return u;
}

Listener::Listener(Listener&& o) noexcept
    : fd_(std::move(o.fd_)),
      uri_(std::move(o.uri_)),
      unlink_(std::exchange(o.unlink_, false)),
      dev_(o.dev_),
      ino_(o.ino_) {}

Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    cleanup();
    fd_ = std::move(o.fd_);
    uri_ = std::move(o.uri_);
    unlink_ = std::exchange(o.unlink_, false);
    dev_ = o.dev_;
    ino_ = o.ino_;
  }
  return *this;
}

Listener::~Listener() { cleanup(); }

void Listener::cleanup() {
  if (unlink_) {
    struct stat st {};
    // Only the file this listener made: not one someone put there since.
    if (::lstat(uri_.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
        static_cast<uint64_t>(st.st_dev) == dev_ && static_cast<uint64_t>(st.st_ino) == ino_)
      ::unlink(uri_.path.c_str());
    unlink_ = false;
  }
  fd_.reset();
}

Result<uint16_t> bound_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0)
    return errno_error("getsockname");
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
  return make_error("socket {} is not a tcp socket (family {})", fd, ss.ss_family);
}

Result<Listener> listen_on(const Uri& uri, int backlog) {
  Listener l;
  l.uri_ = uri;
  const std::string what = uri.to_string();
  if (uri.kind == Uri::Kind::kUnix) {
    if (uri.path.empty() || uri.path.size() > kMaxUnixPath)
      return make_error("{}: the path must be 1-{} bytes", what, kMaxUnixPath);
    sockaddr_un addr = unix_addr(uri.path);
    struct stat st {};
    if (::lstat(uri.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode))
        return make_error("{}: '{}' exists and is not a socket", what, uri.path);
      // A socket file: in use if something accepts on it, else stale.
      int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (probe < 0) return errno_error("{}: socket", what);
      UniqueFd p(probe);
      if (::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 ||
          errno == EAGAIN)
        return make_error("{}: already in use (something listens on '{}')", what, uri.path);
      if (errno != ECONNREFUSED)
        return errno_error("{}: probing the existing socket '{}'", what, uri.path);
      if (::unlink(uri.path.c_str()) < 0 && errno != ENOENT)
        return errno_error("{}: removing the stale socket '{}'", what, uri.path);
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return errno_error("{}: socket", what);
    l.fd_.reset(fd);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0)
      return errno_error("{}: bind", what);
    if (::lstat(uri.path.c_str(), &st) < 0) return errno_error("{}: stat after bind", what);
    l.unlink_ = true;
    l.dev_ = static_cast<uint64_t>(st.st_dev);
    l.ino_ = static_cast<uint64_t>(st.st_ino);
    // Nobody can connect before listen(): make it owner-only first.
    if (::chmod(uri.path.c_str(), 0600) < 0) return errno_error("{}: chmod", what);
    if (::listen(fd, backlog) < 0) return errno_error("{}: listen", what);
    return l;
  }
  AddrInfo ai;
  VMM_CHECK(resolve(uri, true, ai));
  Error last{what + ": no usable address", 0};
  for (addrinfo* a = ai.list; a; a = a->ai_next) {
    std::string addr = sockaddr_string(a->ai_addr, a->ai_addrlen);
    int fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      last = errno_error("{}: socket for {}", what, addr);
      continue;
    }
    UniqueFd sock(fd);
    int one = 1;
    if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
      last = errno_error("{}: setsockopt(SO_REUSEADDR)", what);
      continue;
    }
    if (::bind(fd, a->ai_addr, a->ai_addrlen) < 0) {
      last = errno_error("{}: bind to {}", what, addr);
      continue;
    }
    if (::listen(fd, backlog) < 0) {
      last = errno_error("{}: listen on {}", what, addr);
      continue;
    }
    VMM_TRY(uint16_t port, bound_port(fd));
    l.uri_.port = port;
    l.fd_ = std::move(sock);
    return l;
  }
  return last;
}

Result<UniqueFd> accept_one(int listen_fd, int timeout_ms) {
  Deadline dl(timeout_ms);
  for (;;) {
    auto ready = wait_fd(listen_fd, POLLIN, dl);
    if (!ready) return std::move(ready).error();
    if (!*ready)
      return timeout_error(fmt::format("no migration connection within {} ms", timeout_ms));
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      // Nothing after all, or a connection that went away before we took it.
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
        continue;
      return errno_error("accept");
    }
    UniqueFd sock(fd);
    VMM_CHECK(set_blocking(fd, true));  // accept4 does not inherit O_NONBLOCK, but be sure
    VMM_CHECK(set_nodelay_if_tcp(fd));
    return sock;
  }
}

Result<UniqueFd> connect_to(const Uri& uri, int timeout_ms) {
  Deadline dl(timeout_ms);
  const std::string what = uri.to_string();
  if (uri.kind == Uri::Kind::kUnix) {
    if (uri.path.empty() || uri.path.size() > kMaxUnixPath)
      return make_error("{}: the path must be 1-{} bytes", what, kMaxUnixPath);
    sockaddr_un addr = unix_addr(uri.path);
    return connect_addr(AF_UNIX, reinterpret_cast<sockaddr*>(&addr), sizeof(addr), dl,
                        "connecting to " + what);
  }
  if (uri.port == 0) return make_error("{}: cannot connect to port 0", what);
  AddrInfo ai;
  VMM_CHECK(resolve(uri, false, ai));
  std::string errors;
  Error last;
  for (addrinfo* a = ai.list; a; a = a->ai_next) {
    std::string addr = sockaddr_string(a->ai_addr, a->ai_addrlen);
    auto s = connect_addr(a->ai_family, a->ai_addr, a->ai_addrlen, dl,
                          fmt::format("connecting to {} ({})", what, addr));
    if (s) {
      VMM_CHECK(set_nodelay_if_tcp(s->get()));
      return s;
    }
    last = std::move(s).error();
    if (is_timeout(last)) return last;
  }
  return last;
}

}  // namespace vmm::migration
