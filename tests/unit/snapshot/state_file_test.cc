#include "vmm/snapshot/state_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/unit/snapshot/sample_tree.h"
#include "vmm/snapshot/byte_io.h"
#include "vmm/snapshot/crc32c.h"

namespace vmm::snapshot {
namespace {

namespace fs = std::filesystem;
using testing::sample_header;
using testing::sample_tree;

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

void fix_crc(std::vector<uint8_t>& b) {
  store_le32(b.data() + b.size() - 4, crc32c(std::span<const uint8_t>(b).first(b.size() - 4)));
}

class TempDir {
 public:
  TempDir() {
    std::string t = (fs::temp_directory_path() / "vmm-snapshot-test.XXXXXX").string();
    EXPECT_NE(::mkdtemp(t.data()), nullptr);
    path_ = t;
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<uint8_t> sample_file() {
  auto b = encode_state(sample_header(), sample_tree());
  EXPECT_TRUE(b.ok()) << b.error().message;
  return *b;
}

TEST(StateFile, EncodeDecodeRoundTrip) {
  auto bytes = sample_file();
  ASSERT_GE(bytes.size(), 32u);
  EXPECT_EQ(std::string(bytes.begin(), bytes.begin() + 8), "VMMSTATE");
  EXPECT_EQ(load_le32(&bytes[8]), kStateFormatVersion);
  auto f = decode_state(bytes);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->header, sample_header());
  EXPECT_EQ(f->tree, sample_tree());
  EXPECT_EQ(f->crc, load_le32(&bytes[bytes.size() - 4]));
  uint32_t header_len = load_le32(&bytes[16]);
  EXPECT_EQ(f->payload_bytes, bytes.size() - 32 - header_len);
  EXPECT_EQ(load_le64(&bytes[20]), f->payload_bytes);
}

TEST(StateFile, EmptyConfigAndTree) {
  StateHeader h;
  auto b = encode_state(h, Section());
  ASSERT_TRUE(b.ok());
  auto f = decode_state(*b);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->header, h);
  EXPECT_EQ(f->tree.entry_count(), 0u);
  EXPECT_EQ(f->payload_bytes, 0u);
}

TEST(StateFile, EncodeRefusesBadConfigKeysAndOversize) {
  StateHeader h = sample_header();
  h.config.emplace_back("bad key", "x");
  auto r = encode_state(h, Section());
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.error().message, "state header: config: invalid entry name 'bad key'"))
      << r.error().message;
  StateHeader big;
  big.vmm_version = std::string(kMaxHeaderBytes, 'v');
  auto rb = encode_state(big, Section());
  ASSERT_FALSE(rb.ok());
  EXPECT_TRUE(contains(rb.error().message, "byte limit")) << rb.error().message;
  Section tree;
  tree.put_bytes("mem", std::vector<uint8_t>(kMaxStateBytes - 40));
  auto rt = encode_state(sample_header(), tree);
  ASSERT_FALSE(rt.ok());
  EXPECT_TRUE(contains(rt.error().message, "64 MiB limit")) << rt.error().message;
}

TEST(StateFile, WriteAndReadFile) {
  TempDir d;
  std::string path = (d.path() / "state").string();
  ASSERT_TRUE(write_state_file(path, sample_header(), sample_tree()).ok());
  auto f = read_state_file(path);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->header, sample_header());
  EXPECT_EQ(f->tree, sample_tree());
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);

  // Overwrite in place; no temporary files left behind.
  Section other;
  other.put_u8("x", 1);
  ASSERT_TRUE(write_state_file(path, sample_header(), other).ok());
  auto g = read_state_file(path);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->tree, other);
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(d.path())) ++n;
  EXPECT_EQ(n, 1u);
}

TEST(StateFile, WriteFailuresLeaveNothing) {
  TempDir d;
  auto r = write_state_file((d.path() / "missing" / "state").string(), sample_header(),
                            sample_tree());
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.error().to_string(), "open directory"))
      << r.error().to_string();
  // Encoding failure: nothing created.
  StateHeader h = sample_header();
  h.config.emplace_back("", "x");
  EXPECT_FALSE(write_state_file((d.path() / "state").string(), h, sample_tree()).ok());
  // Rename onto a directory fails; the temporary file is removed.
  fs::create_directory(d.path() / "adir");
  fs::create_directory(d.path() / "adir" / "sub");
  EXPECT_FALSE(write_state_file((d.path() / "adir").string(), sample_header(), sample_tree()).ok());
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(d.path())) ++n;
  EXPECT_EQ(n, 1u);  // just adir
}

TEST(StateFile, ReadRefusesMissingDirectoryAndOversizeFiles) {
  TempDir d;
  auto missing = read_state_file((d.path() / "nope").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().errno_value, ENOENT);
  EXPECT_TRUE(contains(missing.error().message, "cannot open state file"));

  auto dir = read_state_file(d.path().string());
  ASSERT_FALSE(dir.ok());
  EXPECT_TRUE(contains(dir.error().message, "not a regular file")) << dir.error().message;

  // A sparse 65 MiB file: refused from its size, without reading it.
  std::string big = (d.path() / "big").string();
  { std::ofstream(big).put('x'); }
  fs::resize_file(big, kMaxStateBytes + (1 << 20));
  auto b = read_state_file(big);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().message, big + ": 68157440 bytes is larger than the 64 MiB limit for a "
                                     "state file");
}

TEST(StateFile, TruncatedAtEveryByte) {
  auto bytes = sample_file();
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = decode_state(std::span<const uint8_t>(bytes.data(), n), "f");
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_TRUE(contains(r.error().message, "f: truncated: ")) << n << ": " << r.error().message;
  }
  auto t = decode_state(std::span<const uint8_t>(bytes.data(), 40), "f");
  EXPECT_EQ(t.error().message,
            fmt::format("f: truncated: 40 bytes, the header says {}", bytes.size()));
}

TEST(StateFile, EverySingleBitFlipIsRefused) {
  auto bytes = sample_file();
  size_t crc = 0, other = 0;
  for (size_t bit = 0; bit < bytes.size() * 8; ++bit) {
    auto m = bytes;
    m[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    auto r = decode_state(m, "f");
    ASSERT_FALSE(r.ok()) << "flip of bit " << bit << " accepted";
    ASSERT_FALSE(r.error().message.empty());
    if (contains(r.error().message, "checksum mismatch"))
      ++crc;
    else
      ++other;
  }
  // Flips in the payload, header entries and CRC are CRC failures; those in
  // the fixed header have their own messages.
  EXPECT_EQ(crc, (bytes.size() - 28) * 8);
  EXPECT_GT(other, 0u);
}

TEST(StateFile, ClearMessagesForBadFixedHeaders) {
  auto bytes = sample_file();
  auto with = [&](size_t off, uint32_t v) {
    auto m = bytes;
    store_le32(&m[off], v);
    fix_crc(m);
    return m;
  };
  auto msg = [](const std::vector<uint8_t>& m) {
    auto r = decode_state(m, "snap/state");
    EXPECT_FALSE(r.ok());
    return r.ok() ? std::string() : r.error().message;
  };
  EXPECT_EQ(msg(with(8, 2)),
            "snap/state: format version 2 is newer than this VMM supports (version 1); restore "
            "it with the VMM that wrote it or a newer one");
  EXPECT_EQ(msg(with(8, 0)),
            "snap/state: format version 0 is older than this VMM supports (version 1)");
  EXPECT_EQ(msg(with(12, 4)), "snap/state: unsupported flags 0x4");
  EXPECT_EQ(msg(with(16, 65537)),
            "snap/state: header length 65537 exceeds the 65536 byte limit");
  EXPECT_EQ(msg(with(0, 0x464c457f)),
            "snap/state: not a VMM state file (magic '\\x7fELFTATE', expected 'VMMSTATE')");
  // payload_len (u64 at 20): huge, and plausible-but-wrong.
  auto huge = bytes;
  store_le32(&huge[24], 0x100);
  EXPECT_EQ(msg(huge), fmt::format("snap/state: payload length {} exceeds the 64 MiB limit",
                                   (uint64_t{0x100} << 32) + load_le32(&bytes[20])));
  auto longer = with(20, load_le32(&bytes[20]) + 1);
  EXPECT_TRUE(contains(msg(longer), "snap/state: truncated: "));
  auto shorter = with(20, load_le32(&bytes[20]) - 1);
  EXPECT_TRUE(contains(msg(shorter), "1 bytes of trailing garbage")) << msg(shorter);
  // Oversize input.
  std::vector<uint8_t> big(kMaxStateBytes + 1);
  EXPECT_TRUE(contains(msg(big), "larger than the 64 MiB limit"));
  // Bad CRC.
  auto bad = bytes;
  bad[bad.size() - 1] ^= 0x80;
  EXPECT_TRUE(contains(msg(bad), "snap/state: checksum mismatch (stored 0x")) << msg(bad);
}

TEST(StateFile, CorruptTreeWithValidCrcNamesOffset) {
  auto bytes = sample_file();
  uint32_t header_len = load_le32(&bytes[16]);
  size_t payload = 28 + header_len;
  // First payload entry is section serial0: set its kind to 0x42.
  auto m = bytes;
  m[payload] = 0x42;
  fix_crc(m);
  auto r = decode_state(m, "s");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message,
            fmt::format("s: state tree: (root): unknown entry kind 66 at byte {}", payload));
  // In the header: the first header entry's kind.
  auto h = bytes;
  h[28] = 0x42;
  fix_crc(h);
  auto rh = decode_state(h, "s");
  ASSERT_FALSE(rh.ok());
  EXPECT_EQ(rh.error().message, "s: header: state tree: (root): unknown entry kind 66 at byte 28");
}

TEST(StateFile, HeaderMissingFieldsAreRefused) {
  // Hand-build a file whose header lacks cpu_template.
  Section h;
  h.put_string("vmm_version", "x");
  h.put_u64("created_unix", 0);
  h.add_section("config");
  auto hb = *encode_tree(h);
  ByteWriter w;
  w.bytes(std::string_view("VMMSTATE"));
  w.u32(1);
  w.u32(0);
  w.u32(static_cast<uint32_t>(hb.size()));
  w.u64(0);
  w.bytes(hb);
  w.u32(0);
  auto b = w.take();
  fix_crc(b);
  auto r = decode_state(b, "s");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "s: header: state tree: no field 'cpu_template'");
}

TEST(StateFile, CheckCompatible) {
  StateHeader a = sample_header();
  StateHeader b = sample_header();
  b.vmm_version = "9.9.9";  // the VMM version may differ
  b.config = {{"disk0", "raw,rw"}, {"vcpus", "1"}, {"memory", "536870912"}};  // order is irrelevant
  EXPECT_TRUE(check_compatible(a, b).ok());

  b.config[2].second = "1073741824";
  b.cpu_template = "minimal";
  b.config.emplace_back("net0", "tap");
  a.config.emplace_back("rng", "on");
  auto r = check_compatible(a, b);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message,
            "snapshot does not match this VM's configuration: CPU template 'host' in the "
            "snapshot, 'minimal' in this VM; snapshot has memory=536870912, this VM "
            "memory=1073741824; snapshot has rng=on, this VM has no rng; this VM has net0=tap, "
            "the snapshot has no net0");
}

}  // namespace
}  // namespace vmm::snapshot
