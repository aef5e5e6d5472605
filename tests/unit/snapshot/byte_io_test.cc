#include "vmm/snapshot/byte_io.h"

#include <gtest/gtest.h>

#include <string>

#include "vmm/snapshot/crc32c.h"

namespace vmm::snapshot {
namespace {

TEST(ByteIo, RoundTripsLittleEndian) {
  ByteWriter w;
  w.u8(0xab);
  w.u16(0x1234);
  w.u32(0xdeadbeef);
  w.u64(0x0102030405060708ull);
  w.bytes(std::string_view("xyz"));
  const std::vector<uint8_t> expect = {0xab, 0x34, 0x12, 0xef, 0xbe, 0xad, 0xde, 8, 7, 6, 5,
                                       4,    3,    2,    1,    'x',  'y',  'z'};
  EXPECT_EQ(w.data(), expect);

  ByteReader r(w.data());
  EXPECT_EQ(*r.u8("a"), 0xab);
  EXPECT_EQ(*r.u16("b"), 0x1234);
  EXPECT_EQ(*r.u32("c"), 0xdeadbeefu);
  EXPECT_EQ(*r.u64("d"), 0x0102030405060708ull);
  auto b = r.bytes(3, "e");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(std::string(b->begin(), b->end()), "xyz");
  EXPECT_TRUE(r.empty());
}

TEST(ByteIo, ExtremeValues) {
  ByteWriter w;
  w.u8(0);
  w.u8(0xff);
  w.u16(0xffff);
  w.u32(0xffffffff);
  w.u64(~uint64_t{0});
  w.u64(0);
  ByteReader r(w.data());
  EXPECT_EQ(*r.u8(""), 0);
  EXPECT_EQ(*r.u8(""), 0xff);
  EXPECT_EQ(*r.u16(""), 0xffff);
  EXPECT_EQ(*r.u32(""), 0xffffffffu);
  EXPECT_EQ(*r.u64(""), ~uint64_t{0});
  EXPECT_EQ(*r.u64(""), 0u);
}

TEST(ByteIo, TruncationNamesAbsoluteOffsetAndConsumesNothing) {
  std::vector<uint8_t> d = {1, 2, 3};
  ByteReader r(d, 100);
  EXPECT_EQ(*r.u8("first"), 1);
  auto e = r.u32("count");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().message, "truncated at byte 101: count needs 4 bytes, 2 left");
  EXPECT_EQ(r.offset(), 101u);
  EXPECT_EQ(r.remaining(), 2u);
  auto big = r.bytes(~uint64_t{0}, "blob");
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.error().message.find("blob needs 18446744073709551615 bytes, 2 left"),
            std::string::npos);
  EXPECT_EQ(*r.u16("rest"), 0x0302);
  EXPECT_FALSE(r.u8("past end").ok());
}

TEST(ByteIo, PatchU32) {
  ByteWriter w;
  w.u32(0);
  w.u8(9);
  w.patch_u32(0, 0x11223344);
  EXPECT_EQ(w.data(), (std::vector<uint8_t>{0x44, 0x33, 0x22, 0x11, 9}));
}

TEST(Crc32c, KnownVectors) {
  auto s = [](std::string_view v) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size());
  };
  EXPECT_EQ(crc32c(s("123456789")), 0xE3069283u);
  EXPECT_EQ(crc32c(s("")), 0u);
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff);
  EXPECT_EQ(crc32c(zeros), 0x8A9136AAu);  // RFC 3720 B.4
  EXPECT_EQ(crc32c(ones), 0x62A8AB43u);
  // Incremental == whole.
  EXPECT_EQ(crc32c(s("56789"), crc32c(s("1234"))), 0xE3069283u);
  EXPECT_EQ(crc32c_portable(s("123456789")), 0xE3069283u);
}

TEST(Crc32c, FastPathEqualsTableAtEveryLengthAndAlignment) {
  std::vector<uint8_t> buf(300);
  uint32_t x = 12345;
  for (auto& b : buf) b = static_cast<uint8_t>((x = x * 1103515245 + 12345) >> 16);
  for (size_t off = 0; off < 9; ++off)
    for (size_t len = 0; len + off <= buf.size(); len += 7) {
      std::span<const uint8_t> part(buf.data() + off, len);
      ASSERT_EQ(crc32c(part), crc32c_portable(part)) << off << " " << len;
      ASSERT_EQ(crc32c(part, 0xdeadbeef), crc32c_portable(part, 0xdeadbeef)) << off << " " << len;
    }
}

}  // namespace
}  // namespace vmm::snapshot
