#include "vmm/snapshot/state_tree.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "tests/unit/snapshot/sample_tree.h"
#include "vmm/snapshot/byte_io.h"

namespace vmm::snapshot {
namespace {

using testing::FakeRegs;
using testing::sample_tree;

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

// One hand-made TLV record; `len` overrides the value length field.
std::vector<uint8_t> rec(uint8_t kind, std::string_view name, std::span<const uint8_t> value,
                         std::optional<uint32_t> len = std::nullopt) {
  ByteWriter w;
  w.u8(kind);
  w.u8(static_cast<uint8_t>(name.size()));
  w.bytes(name);
  w.u32(len.value_or(static_cast<uint32_t>(value.size())));
  w.bytes(value);
  return w.take();
}
std::vector<uint8_t> section_rec(std::string_view name, std::span<const uint8_t> inner) {
  return rec(1, name, inner);
}

TEST(StateTree, RoundTripsEveryKind) {
  Section root;
  root.put_u8("u8min", 0);
  root.put_u8("u8max", 0xff);
  root.put_u16("u16", 0xffff);
  root.put_u32("u32", 0xffffffff);
  root.put_u64("u64", ~uint64_t{0});
  root.put_i64("i64neg", INT64_MIN);
  root.put_i64("i64pos", INT64_MAX);
  root.put_bool("t", true);
  root.put_bool("f", false);
  root.put_bytes("blob", std::vector<uint8_t>{0, 1, 2, 0xff});
  root.put_bytes("noblob", {});
  root.put_string("str", std::string("with\0nul", 8));
  root.put_string("nostr", "");
  root.put_u8(std::string(kMaxNameBytes, 'n'), 1);
  root.put_u8("Az09_.:-", 2);
  root.add_section("empty");
  auto bytes = encode_tree(root);
  ASSERT_TRUE(bytes.ok()) << bytes.error().message;
  auto back = decode_tree(*bytes);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, root);
  EXPECT_EQ(*back->get_u8("u8min"), 0);
  EXPECT_EQ(*back->get_u8("u8max"), 0xff);
  EXPECT_EQ(*back->get_u16("u16"), 0xffff);
  EXPECT_EQ(*back->get_u32("u32"), 0xffffffffu);
  EXPECT_EQ(*back->get_u64("u64"), ~uint64_t{0});
  EXPECT_EQ(*back->get_i64("i64neg"), INT64_MIN);
  EXPECT_EQ(*back->get_i64("i64pos"), INT64_MAX);
  EXPECT_TRUE(*back->get_bool("t"));
  EXPECT_FALSE(*back->get_bool("f"));
  EXPECT_EQ(std::vector<uint8_t>(back->get_bytes("blob")->begin(), back->get_bytes("blob")->end()),
            (std::vector<uint8_t>{0, 1, 2, 0xff}));
  EXPECT_TRUE(back->get_bytes("noblob")->empty());
  EXPECT_EQ(*back->get_string("str"), std::string("with\0nul", 8));
  EXPECT_EQ(*back->get_string("nostr"), "");
  EXPECT_TRUE(back->section("empty").ok());
  // Canonical: re-encoding gives the same bytes.
  EXPECT_EQ(*encode_tree(*back), *bytes);
}

TEST(StateTree, PutFieldCopiesAsTheTypedPutWould) {
  Section src;
  src.put_u8("u8", 0xff);
  src.put_u16("u16", 0xffff);
  src.put_u32("u32", 0xffffffff);
  src.put_u64("u64", ~uint64_t{0});
  src.put_i64("i64", INT64_MIN);
  src.put_bool("b", true);
  src.put_bytes("blob", std::vector<uint8_t>{0, 1, 0xff});
  src.put_string("str", std::string("a\0b", 3));
  Section copy;
  for (const auto& f : src.fields()) copy.put_field(f);
  EXPECT_EQ(copy, src);
  // An out-of-range scalar (a mutated field) is stored as the typed put
  // stores it: cut to the kind's width, a bool as 0/1.
  Field wide{"n", Kind::kU8, 0x1234, {}};
  Field truthy{"t", Kind::kBool, 7, {}};
  Section out;
  out.put_field(wide);
  out.put_field(truthy);
  EXPECT_EQ(out.fields()[0].scalar, 0x34u);
  EXPECT_EQ(out.fields()[1].scalar, 1u);
  // Replaces an entry of the same name, as every put does.
  out.put_field(Field{"n", Kind::kU16, 5, {}});
  EXPECT_EQ(*out.get_u16("n"), 5);
  EXPECT_EQ(out.fields().size(), 2u);
}

TEST(StateTree, EmptyTree) {
  auto bytes = encode_tree(Section());
  ASSERT_TRUE(bytes.ok());
  EXPECT_TRUE(bytes->empty());
  auto back = decode_tree(*bytes);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->entry_count(), 0u);
}

TEST(StateTree, WireFormatIsTheDocumentedTlv) {
  Section root;
  root.put_u16("a", 0x1234);
  root.add_section("s").put_bool("b", true);
  const std::vector<uint8_t> e = {
      3, 1, 'a', 2, 0, 0, 0, 0x34, 0x12,  // u16 a
      1, 1, 's', 8, 0, 0, 0,              // section s, 8 bytes:
      7, 1, 'b', 1, 0, 0, 0, 1,           //   bool b
  };
  EXPECT_EQ(*encode_tree(root), e);
}

TEST(StateTree, NestedPathsAndPods) {
  Section root = sample_tree();
  auto back = decode_tree(*encode_tree(root));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, root);
  const Section* vcpu = *back->section("vcpu0");
  const Section* regs = *vcpu->section("regs");
  EXPECT_EQ(regs->path(), "vcpu0/regs");
  EXPECT_EQ(regs->name(), "regs");
  auto r = regs->get_pod<FakeRegs>("regs");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->rip, 0xffffffff81000000ull);
  EXPECT_EQ((*(*back->section("virtio0"))->section("queue1"))->path(), "virtio0/queue1");
  EXPECT_EQ(back->path(), "");
  EXPECT_EQ(back->where(), "state tree");
}

TEST(StateTree, PodSizeAndArrayChecks) {
  Section root;
  Section& s = root.add_section("vcpu0").add_section("msrs");
  struct Msr {
    uint32_t index, reserved;
    uint64_t data;
  };
  std::vector<Msr> msrs = {{0x10, 0, 5}, {0xc0000080, 0, 0xd01}};
  s.put_pod_array("entries", std::span<const Msr>(msrs));
  s.put_bytes("bad", std::vector<uint8_t>(20));
  auto back = decode_tree(*encode_tree(root));
  ASSERT_TRUE(back.ok());
  const Section* m = *(*back->section("vcpu0"))->section("msrs");
  auto arr = m->get_pod_array<Msr>("entries", 16);
  ASSERT_TRUE(arr.ok());
  ASSERT_EQ(arr->size(), 2u);
  EXPECT_EQ((*arr)[1].index, 0xc0000080u);
  EXPECT_EQ((*arr)[1].data, 0xd01u);
  auto tight = m->get_pod_array<Msr>("entries", 1);
  ASSERT_FALSE(tight.ok());
  EXPECT_EQ(tight.error().message, "vcpu0/msrs: field 'entries' has 2 elements, at most 1 allowed");
  auto odd = m->get_pod_array<Msr>("bad", 16);
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.error().message, "vcpu0/msrs: field 'bad' is 20 bytes, not a multiple of 16");
  auto pod = m->get_pod<FakeRegs>("bad");
  ASSERT_FALSE(pod.ok());
  EXPECT_EQ(pod.error().message, "vcpu0/msrs: field 'bad' is 20 bytes, expected 32");
  auto empty = m->get_pod_array<Msr>("missing", 16);
  EXPECT_FALSE(empty.ok());
}

TEST(StateTree, GetterErrorsNameThePath) {
  Section root = sample_tree();
  const Section* serial = *root.section("serial0");
  auto missing = serial->get_u8("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message, "serial0: no field 'nope'");
  auto wrong = serial->get_u16("dll");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().message, "serial0: field 'dll' is a u8, expected u16");
  auto not_section = serial->section("dll");
  ASSERT_FALSE(not_section.ok());
  EXPECT_EQ(not_section.error().message, "serial0: 'dll' is a field, expected a section");
  auto not_field = root.get_u32("serial0");
  ASSERT_FALSE(not_field.ok());
  EXPECT_EQ(not_field.error().message, "state tree: 'serial0' is a section, expected a u32 field");
  auto no_section = root.section("vcpu9");
  ASSERT_FALSE(no_section.ok());
  EXPECT_EQ(no_section.error().message, "state tree: no section 'vcpu9'");
  EXPECT_FALSE(root.get_string("clock").ok());
  EXPECT_FALSE(root.get_bytes("clock").ok());
  EXPECT_FALSE(root.get_bool("clock").ok());
  EXPECT_FALSE(root.get_i64("clock").ok());
  EXPECT_TRUE(root.get_u64("clock").ok());
}

TEST(StateTree, PutReplacesAndKeepsNamesUnique) {
  Section s;
  s.put_u8("x", 1);
  s.put_u32("x", 7);
  ASSERT_EQ(s.fields().size(), 1u);
  EXPECT_EQ(*s.get_u32("x"), 7u);
  s.add_section("x").put_u8("inner", 1);
  EXPECT_TRUE(s.fields().empty());
  ASSERT_EQ(s.sections().size(), 1u);
  s.add_section("x");  // replaced by an empty one
  EXPECT_EQ(s.sections()[0].entry_count(), 0u);
  s.put_bool("x", true);
  EXPECT_TRUE(s.sections().empty());
  EXPECT_EQ(s.entry_count(), 1u);
  EXPECT_TRUE(encode_tree(s).ok());
}

TEST(StateTree, PutSectionReparentsPaths) {
  Section dev;
  dev.add_section("queue0").add_section("deep").put_u8("v", 1);
  Section root;
  Section& vcpu = root.add_section("virtio3");
  Section& adopted = vcpu.put_section("transport", std::move(dev));
  EXPECT_EQ(adopted.path(), "virtio3/transport");
  EXPECT_EQ(adopted.sections()[0].sections()[0].path(), "virtio3/transport/queue0/deep");
}

TEST(StateTree, UnknownEntriesAreListed) {
  Section root = sample_tree();
  const Section* serial = *root.section("serial0");
  EXPECT_TRUE(serial->unknown({"dll", "lcr", "thr_ipending", "rx_fifo"}).empty());
  EXPECT_TRUE(serial->expect_only({"dll", "lcr", "thr_ipending", "rx_fifo"}).ok());
  auto u = serial->unknown({"dll"});
  EXPECT_EQ(u, (std::vector<std::string>{"lcr", "thr_ipending", "rx_fifo"}));
  auto e = root.expect_only({"serial0", "virtio0"});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().message, "state tree: unknown entries: clock, vcpu0");
}

TEST(StateTree, EncodeRefusesBadNamesDepthAndSize) {
  for (std::string bad : {std::string(), std::string(kMaxNameBytes + 1, 'a'), std::string("a/b"),
                          std::string("a b"), std::string("\xff"), std::string("x\0y", 3)}) {
    Section s;
    s.add_section("dev").put_u8(bad, 1);
    auto r = encode_tree(s);
    ASSERT_FALSE(r.ok()) << printable(bad);
    EXPECT_TRUE(contains(r.error().message, "dev: invalid entry name")) << r.error().message;
  }
  Section deep;
  Section* cur = &deep;
  for (int i = 0; i < kMaxDepth; ++i) cur = &cur->add_section("d");
  EXPECT_TRUE(encode_tree(deep).ok());
  cur->add_section("d");
  auto too_deep = encode_tree(deep);
  ASSERT_FALSE(too_deep.ok());
  EXPECT_TRUE(contains(too_deep.error().message, "nested deeper than 16"))
      << too_deep.error().message;

  Section big;
  big.put_bytes("a", std::vector<uint8_t>(kMaxStateBytes - 20));
  EXPECT_TRUE(encode_tree(big).ok());
  big.put_bytes("b", std::vector<uint8_t>(64));
  auto too_big = encode_tree(big);
  ASSERT_FALSE(too_big.ok());
  EXPECT_TRUE(contains(too_big.error().message, "larger than the 64 MiB limit"))
      << too_big.error().message;
}

TEST(StateTree, DecodeTruncatedAtEveryByte) {
  Section root = sample_tree();
  auto bytes = *encode_tree(root);
  // Offsets where a root entry ends: a prefix ending there is a valid, smaller tree.
  std::vector<size_t> boundaries;
  {
    size_t off = 0;
    while (off < bytes.size()) {
      size_t name_len = bytes[off + 1];
      off += 2 + name_len + 4 + load_le32(&bytes[off + 2 + name_len]);
      boundaries.push_back(off);
    }
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = decode_tree(std::span<const uint8_t>(bytes.data(), n));
    bool boundary = n == 0 || std::find(boundaries.begin(), boundaries.end(), n) != boundaries.end();
    if (boundary) {
      ASSERT_TRUE(r.ok()) << n << ": " << r.error().message;
      EXPECT_LT(r->entry_count(), root.entry_count());
    } else {
      ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes decoded";
      EXPECT_TRUE(contains(r.error().message, "truncated at byte")) << r.error().message;
    }
  }
}

TEST(StateTree, DecodeSurvivesEverySingleBitFlip) {
  auto bytes = *encode_tree(sample_tree());
  size_t failed = 0;
  for (size_t bit = 0; bit < bytes.size() * 8; ++bit) {
    auto m = bytes;
    m[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    auto r = decode_tree(m);
    if (!r.ok()) {
      ++failed;
      EXPECT_TRUE(contains(r.error().message, "state tree: ")) << r.error().message;
      continue;
    }
    // A flip in a value is a valid tree: it must round-trip.
    auto again = encode_tree(*r);
    ASSERT_TRUE(again.ok()) << again.error().message;
    auto r2 = decode_tree(*again);
    ASSERT_TRUE(r2.ok());
    EXPECT_EQ(*r2, *r);
  }
  EXPECT_GT(failed, 0u);
}

TEST(StateTree, ErrorNamesSectionPathAndOffset) {
  // vcpu0/msrs/entries claims 4096 bytes, 12 follow.
  std::vector<uint8_t> twelve(12, 0xaa);
  auto field = rec(8, "entries", twelve, 4096);
  auto msrs = section_rec("msrs", field);
  auto vcpu = section_rec("vcpu0", msrs);
  auto r = decode_tree(vcpu);
  ASSERT_FALSE(r.ok());
  // vcpu0 record header is 2+5+4 = 11 bytes, msrs 2+4+4 = 10, field header 2+7+4 = 13.
  EXPECT_EQ(r.error().message,
            "state tree: vcpu0/msrs: truncated at byte 34: 'entries' (bytes) needs 4096 bytes, "
            "12 left");
}

TEST(StateTree, DecodeRefusesOversizeLengths) {
  std::vector<uint8_t> none;
  for (uint32_t len : {0xffffffffu, 0x80000000u, 1u}) {
    auto r = decode_tree(rec(8, "blob", none, len));
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(contains(r.error().message, "truncated at byte 10")) << r.error().message;
  }
  // A section longer than its parent: the inner length is checked against the
  // parent's remaining bytes, not the whole input.
  auto inner = rec(8, "x", std::vector<uint8_t>(8), 100);
  auto outer = section_rec("dev", inner);
  std::vector<uint8_t> input = outer;
  input.resize(input.size() + 200, 0);  // plenty of bytes after the section
  auto r = decode_tree(input);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.error().message, "state tree: dev: truncated")) << r.error().message;
  // Name length past the end.
  std::vector<uint8_t> name_cut = {2, 200, 'a', 'b'};
  auto n = decode_tree(name_cut);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().message,
            "state tree: (root): truncated at byte 2: name needs 200 bytes, 2 left");
  // Input over the limit is refused before parsing.
  std::vector<uint8_t> huge(kMaxStateBytes + 1);
  auto h = decode_tree(huge);
  ASSERT_FALSE(h.ok());
  EXPECT_TRUE(contains(h.error().message, "larger than the 64 MiB limit"));
}

TEST(StateTree, DecodeRefusesDeepNesting) {
  // 17 levels: one too many.
  std::vector<uint8_t> cur = rec(2, "v", std::vector<uint8_t>{1});
  for (int i = 0; i < kMaxDepth; ++i) cur = section_rec("d", cur);
  EXPECT_TRUE(decode_tree(cur).ok());
  cur = section_rec("d", cur);
  auto r = decode_tree(cur);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.error().message, "nested deeper than 16")) << r.error().message;
  EXPECT_TRUE(contains(r.error().message, "state tree: d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d:"))
      << r.error().message;
  // 100000 levels of "section with no name length yet": no recursion blow-up,
  // refused at depth 17.
  std::vector<uint8_t> bomb;
  for (int i = 0; i < 100000; ++i) {
    std::vector<uint8_t> hdr = {1, 1, 'd', 0xff, 0xff, 0xff, 0x00};
    bomb.insert(bomb.end(), hdr.begin(), hdr.end());
  }
  // Each claims to hold the rest: fix the lengths from the inside out.
  for (size_t i = 0; i < 100000; ++i) {
    size_t at = i * 7;
    store_le32(&bomb[at + 3], static_cast<uint32_t>(bomb.size() - at - 7));
  }
  auto b = decode_tree(bomb);
  ASSERT_FALSE(b.ok());
  EXPECT_TRUE(contains(b.error().message, "nested deeper than 16"));
}

TEST(StateTree, DecodeRefusesMalformedEntries) {
  struct Case {
    std::vector<uint8_t> input;
    const char* message;
  };
  std::vector<uint8_t> none;
  std::vector<Case> cases = {
      {rec(0, "a", none), "state tree: (root): unknown entry kind 0 at byte 0"},
      {rec(10, "a", none), "state tree: (root): unknown entry kind 10 at byte 0"},
      {rec(2, "a", std::vector<uint8_t>{1, 2}),
       "state tree: (root): field 'a' at byte 0: a u8 is 1 bytes, not 2"},
      {rec(5, "a", std::vector<uint8_t>(7)),
       "state tree: (root): field 'a' at byte 0: a u64 is 8 bytes, not 7"},
      {rec(7, "a", std::vector<uint8_t>{2}),
       "state tree: (root): field 'a' at byte 0: bool value 2"},
      {rec(2, "", std::vector<uint8_t>{1}), "state tree: (root): invalid entry name '' at byte 0"},
      {rec(2, "a/b", std::vector<uint8_t>{1}),
       "state tree: (root): invalid entry name 'a/b' at byte 0"},
      {rec(2, "\x01\xff", std::vector<uint8_t>{1}),
       "state tree: (root): invalid entry name '\\x01\\xff' at byte 0"},
  };
  auto dup = rec(2, "a", std::vector<uint8_t>{1});
  auto dup2 = rec(1, "a", none);
  dup.insert(dup.end(), dup2.begin(), dup2.end());
  cases.push_back({dup, "state tree: (root): duplicate entry 'a' at byte 8"});
  for (const auto& c : cases) {
    auto r = decode_tree(c.input);
    ASSERT_FALSE(r.ok()) << c.message;
    EXPECT_EQ(r.error().message, c.message);
  }
}

TEST(StateTree, DecodeRefusesTooManyEntries) {
  // Entries must have unique names per section: spread them over sections.
  std::vector<uint8_t> input;
  size_t per_section = 1000;
  size_t sections = kMaxEntries / per_section + 1;
  for (size_t s = 0; s < sections; ++s) {
    std::vector<uint8_t> inner;
    for (size_t i = 0; i < per_section; ++i) {
      auto r = rec(7, "b" + std::to_string(i), std::vector<uint8_t>{0});
      inner.insert(inner.end(), r.begin(), r.end());
    }
    auto sec = section_rec("s" + std::to_string(s), inner);
    input.insert(input.end(), sec.begin(), sec.end());
  }
  auto r = decode_tree(input);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.error().message, "more than 262144 entries")) << r.error().message;
}

TEST(StateTree, PrintableEscapes) {
  EXPECT_EQ(printable("abc"), "abc");
  EXPECT_EQ(printable(std::string("a\0'\\", 4)), "a\\x00\\x27\\x5c");
  EXPECT_EQ(printable(std::string(100, 'x')), std::string(64, 'x') + "...");
}

}  // namespace
}  // namespace vmm::snapshot
