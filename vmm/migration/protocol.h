// The live-migration wire protocol: frames, their payloads, and the sockets
// they travel on. Independent of KVM and of the VM: a migration driver (dirty
// tracking, rounds) builds on it. docs/migration.md has the whole protocol.
//
// FRAMES. Every frame is a 24-byte header, the payload, and a CRC-32C trailer
// (all integers little-endian):
//
//   0   4  magic kMagic (0x474D4D56, the bytes "VMMG")
//   4   2  protocol version (kProtocolVersion)
//   6   2  frame type (FrameType)
//   8   4  seq: 0 for the first frame in each direction, +1 per frame (mod 2^32)
//   12  4  payload length, at most max_payload(type)
//   16  4  reserved, 0
//   20  4  header CRC: CRC-32C of bytes 0-19
//   24  N  payload
//   24+N 4 frame CRC: CRC-32C of bytes 0 to 24+N-1 (header and payload)
//
// The header CRC lets a reader trust the length (and everything else in the
// header) before it reads or allocates the payload, so a corrupted length is
// reported as such instead of stalling the stream. A reader checks, in order:
// magic, version, header CRC, reserved, type, length against the type's limit,
// seq; then, with the whole frame, the frame CRC. Any failure ends the
// stream: there is no resynchronization.
//
// PAYLOADS (encode_* / decode_*): strings are u32 length + bytes (at most
// kMaxStringBytes, not required to be UTF-8), bools one byte 0 or 1. Every
// decoder takes hostile bytes, checks every length against what remains,
// refuses trailing bytes, and fails with a one-line message starting with the
// frame type ("Hello: config key 'a b' is not a valid name"). Encodings are
// canonical: decode then encode gives the same bytes.
//
// STREAMS. FrameWriter / FrameReader put frames on / take frames off a stream
// fd (a socket, a pipe), blocking or non-blocking, with timeouts; a reader
// and a writer may work on the same socket from two threads. Neither owns the
// fd. Sockets come from listen_on / accept_one / connect_to, for URIs
// "tcp:HOST:PORT" and "unix:PATH".
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm::migration {

// ------------------------------------------------------------- constants --

inline constexpr uint32_t kMagic = 0x474D4D56;  // "VMMG" on the wire
inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr size_t kHeaderBytes = 24;
inline constexpr size_t kTrailerBytes = 4;
inline constexpr size_t kFrameOverhead = kHeaderBytes + kTrailerBytes;

// Guest page sizes a migration may use (Hello::page_size): powers of two in
// [kMinPageSize, kMaxPageSize].
inline constexpr uint32_t kMinPageSize = 4096;
inline constexpr uint32_t kMaxPageSize = 2u << 20;

// Payload limits, per frame type (max_payload()). A MemPages frame holds up
// to 4096 pages of 4 KiB (16 MiB of data plus 8 bytes of address each); a
// State frame any state file snapshot::encode_state can produce; every other
// frame is small.
inline constexpr uint32_t kMaxMemPagesPayload = (16u << 20) + (64u << 10);
inline constexpr uint32_t kMaxStatePayload = static_cast<uint32_t>(snapshot::kMaxStateBytes);
inline constexpr uint32_t kMaxControlPayload = 64u << 10;
inline constexpr uint32_t kMaxPayload = kMaxStatePayload;  // the largest of them
static_assert(kMaxStatePayload >= kMaxMemPagesPayload && kMaxMemPagesPayload >= kMaxControlPayload);

// Strings in payloads (versions, reasons, config keys and values).
inline constexpr size_t kMaxStringBytes = 4096;
// Entries of Hello::config.
inline constexpr size_t kMaxConfigEntries = 1024;

// ----------------------------------------------------------------- frames --

enum class FrameType : uint16_t {
  kHello = 1,       // source -> destination: who I am, what the VM is (Hello)
  kHelloReply = 2,  // destination -> source: accepted or not, and why (HelloReply)
  kMemPages = 3,    // source -> destination: a batch of guest pages (MemPagesBuilder)
  kRoundEnd = 4,    // source -> destination: end of a pre-copy round (RoundEnd)
  kState = 5,       // source -> destination: the state file (snapshot::encode_state)
  kComplete = 6,    // source -> destination: everything sent; the guest is yours (empty)
  kAck = 7,         // destination -> source: state applied, resuming (or not) (Ack)
  kError = 8,       // either way: giving up, with a reason (string)
  kCancel = 9,      // source -> destination: migration abandoned, with a reason (string)
};

// "Hello", "MemPages", ...; "type N" for values outside the enum.
std::string frame_type_name(FrameType t);
bool is_known_frame_type(uint16_t t);
// The largest payload a reader accepts for a frame of type `t`: kMaxMemPagesPayload
// (MemPages), kMaxStatePayload (State), kMaxControlPayload (the others); 0 for
// unknown types.
uint32_t max_payload(FrameType t);

struct FrameHeader {
  FrameType type = FrameType::kHello;
  uint32_t seq = 0;
  uint32_t payload_len = 0;
};

// Checks the first kHeaderBytes of `bytes` (magic, version, header CRC,
// reserved, type, length limit, seq == expected_seq), reading nothing beyond
// them. Fails if `bytes` is shorter than kHeaderBytes.
Result<FrameHeader> parse_header(std::span<const uint8_t> bytes, uint32_t expected_seq);

struct ParsedFrame {
  FrameType type = FrameType::kHello;
  uint32_t seq = 0;
  std::span<const uint8_t> payload;  // into the parsed buffer
  size_t consumed = 0;               // kFrameOverhead + payload.size()
};

// Parses the frame at the start of `buf` (which may hold more after it):
// parse_header, then that the whole frame is present, then the frame CRC.
// Pure; FrameReader uses it on every frame it returns.
Result<ParsedFrame> parse_frame(std::span<const uint8_t> buf, uint32_t expected_seq);

// The 24 header bytes of a frame, header CRC included.
std::array<uint8_t, kHeaderBytes> encode_header(FrameType type, uint32_t seq, uint32_t payload_len);
// A whole frame. No limit check (FrameWriter has one): a payload over
// max_payload(type) makes a frame every reader refuses.
std::vector<uint8_t> encode_frame(FrameType type, uint32_t seq, std::span<const uint8_t> payload);

// --------------------------------------------------------------- payloads --

// Hello, source -> destination. Layout: string vmm_version, string
// cpu_template, u64 mem_bytes, u32 page_size, u32 config count, then per entry
// string key, string value.
struct Hello {
  std::string vmm_version;   // informational; may differ between the sides
  std::string cpu_template;  // must match the destination's
  // The configuration fingerprint (as snapshot::StateHeader::config: memory,
  // vCPUs, devices...): must match the destination's. Keys are
  // snapshot::valid_name()s, unique; at most kMaxConfigEntries.
  std::vector<std::pair<std::string, std::string>> config;
  uint64_t mem_bytes = 0;     // guest RAM size: a non-zero multiple of page_size
  uint32_t page_size = 4096;  // of every MemPages frame: a power of two in [4 KiB, 2 MiB]

  bool operator==(const Hello&) const = default;
};
// Fails on what decode_hello would refuse (bad key, oversize string, bad
// page size...), so a sender finds out before the peer does.
Result<std::vector<uint8_t>> encode_hello(const Hello& h);
Result<Hello> decode_hello(std::span<const uint8_t> payload);
// The destination's check of the source's Hello against its own: page size,
// memory size, CPU template and config must be equal (the VMM version may
// differ). Fails listing every difference: "source VM does not match this
// one: source has mem=1G, this VM mem=512M; ...".
Result<void> check_hello(const Hello& source, const Hello& local);

// HelloReply, destination -> source: u8 accepted (0/1), string reason (empty
// when accepted).
struct HelloReply {
  bool accepted = false;
  std::string reason;

  bool operator==(const HelloReply&) const = default;
};
// Encoders of reason strings cut them to kMaxStringBytes (never fail).
std::vector<uint8_t> encode_hello_reply(const HelloReply& r);
Result<HelloReply> decode_hello_reply(std::span<const uint8_t> payload);

// RoundEnd, source -> destination, after the MemPages of pre-copy round
// `round` (0-based): exactly u32 round, u64 pages_sent (in the round), u64
// dirty_remaining (pages dirtied meanwhile). Informational: progress for the
// destination's logs; nothing is checked against it.
struct RoundEnd {
  uint32_t round = 0;
  uint64_t pages_sent = 0;
  uint64_t dirty_remaining = 0;

  bool operator==(const RoundEnd&) const = default;
};
std::vector<uint8_t> encode_round_end(const RoundEnd& r);
Result<RoundEnd> decode_round_end(std::span<const uint8_t> payload);

// Ack, destination -> source, after Complete: u8 ok (0/1), string reason.
// ok: the state was applied and the destination resumes the guest (the source
// must not); !ok: it could not (the reason says why) and the source may
// resume its own copy.
struct Ack {
  bool ok = false;
  std::string reason;

  bool operator==(const Ack&) const = default;
};
std::vector<uint8_t> encode_ack(const Ack& a);
Result<Ack> decode_ack(std::span<const uint8_t> payload);

// Error (either way) and Cancel (source -> destination): one string, the
// reason, for the other side's log.
std::vector<uint8_t> encode_error(std::string_view reason);
Result<std::string> decode_error(std::span<const uint8_t> payload);
std::vector<uint8_t> encode_cancel(std::string_view reason);
Result<std::string> decode_cancel(std::span<const uint8_t> payload);

// State: the bytes of a state file (snapshot::encode_state), carried as they
// are; the destination decodes them with snapshot::decode_state. This only
// refuses an empty payload.
Result<std::span<const uint8_t>> decode_state_payload(std::span<const uint8_t> payload);
// Complete: an empty payload; refuses anything else.
Result<void> decode_complete(std::span<const uint8_t> payload);

// ---------------------------------------------------------------- MemPages --
//
// Layout: u32 page count, then per page a u64 address word and, unless the
// page is a zero page, page_size bytes of data. The address word is the
// page's guest-physical address (page-aligned) OR'd with flags in the low
// bits: kPageZero (bit 0) = the page is all zeroes and no data follows. Other
// low bits must be 0. Pages within a batch may repeat (the later one wins).

inline constexpr uint64_t kPageZero = 1;

// A range of guest RAM, [start, start + size): the pages a MemPages frame may
// name. For this VMM's x86 guests that is boot::guest_ram_ranges(mem_bytes)
// (RAM above 3 GiB resumes at 4 GiB), not simply [0, mem_bytes).
struct RamRange {
  uint64_t start = 0;
  uint64_t size = 0;
};

// Appends pages to a reusable payload buffer (one copy of each page's data,
// straight from guest memory):
//
//   MemPagesBuilder b(page_size);
//   for each dirty page:
//     if (!b.has_room(false)) { send(b.finish()); b.reset(); }
//     VMM_TRY(bool zero, b.add(gpa, host_span_of(gpa)));
//   if (!b.empty()) send(b.finish());
class MemPagesBuilder {
 public:
  // `page_size` must be a valid page size (else every add fails);
  // `max_payload` (at most kMaxMemPagesPayload) bounds the batch.
  explicit MemPagesBuilder(uint32_t page_size, size_t max_payload = kMaxMemPagesPayload);

  // Each add fails, adding nothing, on a gpa that is not page-aligned, data
  // that is not page_size bytes, or a batch with no room left.
  Result<void> add_zero(uint64_t gpa);
  Result<void> add_page(uint64_t gpa, std::span<const uint8_t> data);
  // add_zero when `data` is all zeroes (returns true), add_page otherwise.
  Result<bool> add(uint64_t gpa, std::span<const uint8_t> data);

  // Whether one more page (a zero page: 8 bytes; a data page: 8 + page_size)
  // fits under max_payload.
  bool has_room(bool zero) const;
  uint32_t page_count() const { return count_; }
  bool empty() const { return count_ == 0; }
  // Payload bytes so far.
  size_t size() const { return buf_.size(); }
  uint32_t page_size() const { return page_size_; }

  // The payload of a MemPages frame holding every page added since reset().
  // Valid until the next add or reset; may be called more than once.
  std::span<const uint8_t> finish();
  // Empties the batch, keeping the buffer's memory.
  void reset();

 private:
  Result<void> check(uint64_t gpa, bool zero) const;
  std::vector<uint8_t> buf_;
  uint32_t page_size_;
  size_t max_payload_;
  uint32_t count_ = 0;
};

struct PageRef {
  uint64_t gpa = 0;
  bool zero = false;              // all zeroes; `data` is empty
  std::span<const uint8_t> data;  // page_size bytes into the payload, unless zero
};

// A validated MemPages payload: iterating yields its pages in order, each a
// view into the payload (no copies: the destination memcpy's `data` straight
// into guest memory and zeroes `zero` pages). Valid while the payload is.
class MemPagesView {
 public:
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = PageRef;
    using difference_type = std::ptrdiff_t;
    using pointer = const PageRef*;
    using reference = const PageRef&;

    iterator() = default;
    const PageRef& operator*() const { return cur_; }
    const PageRef* operator->() const { return &cur_; }
    iterator& operator++();
    iterator operator++(int) {
      iterator t = *this;
      ++*this;
      return t;
    }
    bool operator==(const iterator& o) const { return index_ == o.index_; }

   private:
    friend class MemPagesView;
    iterator(const MemPagesView* v, uint32_t index, size_t pos);
    void load();
    const MemPagesView* view_ = nullptr;
    uint32_t index_ = 0;
    size_t pos_ = 0;
    PageRef cur_;
  };

  MemPagesView() = default;
  iterator begin() const { return iterator(this, 0, 4); }
  iterator end() const { return iterator(this, count_, 0); }
  uint32_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  uint32_t zero_pages() const { return zero_pages_; }
  uint32_t data_pages() const { return count_ - zero_pages_; }
  uint32_t page_size() const { return page_size_; }

 private:
  friend Result<MemPagesView> decode_mem_pages(std::span<const uint8_t>, uint32_t,
                                               std::span<const RamRange>);
  std::span<const uint8_t> payload_;
  uint32_t page_size_ = 0;
  uint32_t count_ = 0;
  uint32_t zero_pages_ = 0;
};

// Validates a whole MemPages payload before anything is applied: the count
// against the payload length, each address word (no unknown flag bits, i.e.
// page-aligned), each page inside one of `ram` (overflow-checked), each data
// page complete, no trailing bytes. `page_size` is the one the Hello
// announced (an invalid one is refused).
Result<MemPagesView> decode_mem_pages(std::span<const uint8_t> payload, uint32_t page_size,
                                      std::span<const RamRange> ram);

// ----------------------------------------------------------------- streams --

// Timeouts are in milliseconds; a negative one waits forever. A timed-out
// call fails with errno_value ETIMEDOUT (is_timeout()).
bool is_timeout(const Error& e);

class FrameWriter {
 public:
  explicit FrameWriter(int fd) : fd_(fd) {}

  // Sends one frame with the next seq: header, payload and trailer in one
  // gather write (the payload is not copied), resumed after partial writes,
  // EINTR and EAGAIN (poll). On a socket it never blocks past the timeout
  // (MSG_DONTWAIT) and never raises SIGPIPE (MSG_NOSIGNAL); another fd (a
  // pipe) must be non-blocking for the timeout to hold. A payload over
  // max_payload(type) is refused, sending nothing. A failure after part of
  // the frame went out (peer gone, timeout) is final: the stream is
  // desynchronized and every later call fails with the same error. A timeout
  // before any byte went out is not.
  Result<void> write_frame(FrameType type, std::span<const uint8_t> payload, int timeout_ms = -1);

  uint32_t next_seq() const { return seq_; }
  uint64_t frames_written() const { return frames_; }
  uint64_t bytes_written() const { return bytes_; }  // every byte sent, frames and parts

 private:
  int fd_;
  uint32_t seq_ = 0;
  uint64_t frames_ = 0;
  uint64_t bytes_ = 0;
  bool use_send_ = true;  // until the fd turns out not to be a socket
  bool failed_ = false;
  Error error_;
};

// A frame as read: its payload is a view into the reader's buffer, valid until
// the next read_frame().
struct Frame {
  FrameType type = FrameType::kHello;
  uint32_t seq = 0;
  std::span<const uint8_t> payload;
};

class FrameReader {
 public:
  explicit FrameReader(int fd) : fd_(fd) {}

  // Reads the next frame (expected seq next_seq()), exactly its bytes and
  // nothing after it. The header is checked (parse_header) before any of the
  // payload is read, and the buffer then grows with the bytes that arrive
  // (doubling), not with the length announced; the whole frame then goes
  // through parse_frame. Fails on: a header or frame check; EOF between frames
  // ("connection closed by peer between frames") or within one ("connection
  // closed after N of M bytes of a frame (...)"); a read error; the timeout
  // (for the whole frame). A timeout is not final: the bytes read so far are
  // kept and the next call continues the same frame. Every other failure is:
  // later calls fail with the same error.
  Result<Frame> read_frame(int timeout_ms = -1);

  uint32_t next_seq() const { return seq_; }
  uint64_t frames_read() const { return frames_; }
  uint64_t bytes_read() const { return bytes_; }
  // Bytes the reader holds for frames (grows to the largest frame read; a
  // buffer over a MemPages frame's size is released at the next read_frame()).
  size_t buffer_bytes() const { return buf_.capacity(); }

 private:
  int fd_;
  uint32_t seq_ = 0;
  uint64_t frames_ = 0;
  uint64_t bytes_ = 0;
  std::vector<uint8_t> buf_;
  size_t have_ = 0;  // bytes of the current frame in buf_
  size_t need_ = 0;  // its total size once the header is checked, else 0
  FrameType type_ = FrameType::kHello;
  bool failed_ = false;
  Error error_;
};

// ----------------------------------------------------------------- sockets --

// "tcp:HOST:PORT" (HOST a name, an IPv4 literal, or an IPv6 literal in
// brackets: "tcp:[::1]:4444"; PORT 0-65535, 0 to listen on any free port) or
// "unix:PATH" (1-107 bytes).
struct Uri {
  enum class Kind { kTcp, kUnix };
  Kind kind = Kind::kTcp;
  std::string host;   // tcp, without brackets
  uint16_t port = 0;  // tcp
  std::string path;   // unix

  // The URI form parse_uri accepts (IPv6 hosts in brackets).
  std::string to_string() const;
  bool operator==(const Uri&) const = default;
};
// Fails naming the URI and what is wrong with it.
Result<Uri> parse_uri(std::string_view text);

// A listening socket (non-blocking, close-on-exec). A unix listener removes
// its socket file when destroyed (if it is still the one it made).
class Listener {
 public:
  Listener() = default;
  Listener(Listener&& o) noexcept;
  Listener& operator=(Listener&& o) noexcept;
  ~Listener();

  int fd() const { return fd_.get(); }
  // The URI as bound: a tcp port 0 replaced by the port chosen.
  const Uri& uri() const { return uri_; }
  // tcp: the bound port; unix: 0.
  uint16_t port() const { return uri_.kind == Uri::Kind::kTcp ? uri_.port : 0; }

 private:
  friend Result<Listener> listen_on(const Uri&, int);
  void cleanup();
  UniqueFd fd_;
  Uri uri_;
  bool unlink_ = false;
  uint64_t dev_ = 0, ino_ = 0;  // of the socket file made
};

// tcp: resolves HOST (getaddrinfo, may block on DNS), binds the first address
// that works with SO_REUSEADDR. unix: refuses a PATH that exists and is not a
// socket, or is a socket something listens on; removes a stale socket file.
Result<Listener> listen_on(const Uri& uri, int backlog = 1);
// The local port of a bound tcp socket.
Result<uint16_t> bound_port(int fd);
// Waits for and accepts one connection. The socket returned is blocking,
// close-on-exec, TCP_NODELAY for tcp.
Result<UniqueFd> accept_one(int listen_fd, int timeout_ms);
// Connects (trying each address of a tcp HOST in turn) within the timeout.
// The socket returned is blocking, close-on-exec, TCP_NODELAY for tcp.
Result<UniqueFd> connect_to(const Uri& uri, int timeout_ms);

}  // namespace vmm::migration
