#include "boot/x86_64/kernel_loader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "boot/x86_64/layout.h"
#include "test_images.h"

namespace vmm::boot {
namespace {

using namespace vmm::boot::testing;

constexpr uint64_t k64M = 64ull << 20;

std::string error_of(const Result<KernelInfo>& r) {
  return r.ok() ? std::string("(ok)") : r.error().to_string();
}

// ---------------------------------------------------------------- bzImage --

TEST(BzImage, LoadsGoodImage) {
  auto mem = make_guest(k64M);
  auto img = make_bzimage();
  auto r = load_kernel(mem, img);
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_EQ(r->kind, KernelInfo::Kind::BzImage);
  EXPECT_EQ(r->load_start, layout::kDefaultKernelAddr);
  EXPECT_EQ(r->entry, layout::kDefaultKernelAddr + 0x200);
  EXPECT_EQ(r->load_end, layout::kDefaultKernelAddr + 0x800000);  // init_size > payload
  EXPECT_FALSE(r->has_pvh);
  ASSERT_TRUE(r->setup_header.has_value());
  // SetupHeader is packed: copy its fields before gtest binds them to references.
  EXPECT_EQ(uint16_t{r->setup_header->version}, 0x020f);
  EXPECT_EQ(uint32_t{r->setup_header->cmdline_size}, 2047u);

  std::vector<uint8_t> got(kBzPayloadSize);
  ASSERT_TRUE(mem.read(layout::kDefaultKernelAddr, got).ok());
  for (uint64_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], static_cast<uint8_t>(i)) << i;
}

TEST(BzImage, SetupSectsZeroMeansFour) {
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.setup_sects = 0;
  auto img = make_bzimage(h);  // payload at (4+1)*512
  auto r = load_kernel(mem, img);
  ASSERT_TRUE(r.ok()) << error_of(r);
  auto first = mem.read_obj<uint8_t>(layout::kDefaultKernelAddr + 1);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, 1);
}

TEST(BzImage, HonoursPrefAddressAndAlignment) {
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.pref_address = 0x1100000;  // above the default, not 2 MiB aligned
  auto r = load_kernel(mem, make_bzimage(h));
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_EQ(r->load_start, 0x1200000u);
  EXPECT_EQ(r->entry, 0x1200200u);

  h = good_setup_header();
  h.pref_address = 0x200000;  // below the default: load at the default
  r = load_kernel(mem, make_bzimage(h));
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_EQ(r->load_start, layout::kDefaultKernelAddr);
}

TEST(BzImage, NonRelocatableLoadsAtPrefAddress) {
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.relocatable_kernel = 0;
  h.pref_address = 0x1400000;
  auto r = load_kernel(mem, make_bzimage(h));
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_EQ(r->load_start, 0x1400000u);

  h.pref_address = 0x10000;  // inside the boot area
  EXPECT_FALSE(load_kernel(mem, make_bzimage(h)).ok());
}

TEST(BzImage, RefusesBadAlignment) {
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.kernel_alignment = 0x300000;
  EXPECT_FALSE(load_kernel(mem, make_bzimage(h)).ok());
  h.kernel_alignment = 0;
  EXPECT_FALSE(load_kernel(mem, make_bzimage(h)).ok());
  h = good_setup_header();
  h.pref_address = 0xfffffffffff00000ull;  // align-up would overflow
  EXPECT_FALSE(load_kernel(mem, make_bzimage(h)).ok());
}

TEST(BzImage, RefusesTruncatedFiles) {
  auto mem = make_guest(k64M);
  auto img = make_bzimage();
  for (size_t len : {size_t{0}, size_t{1}, size_t{0x200}, size_t{0x206}, size_t{0x240},
                     size_t{0x26b}, size_t{5 * 512}, size_t{5 * 512 + 0x100}}) {
    std::vector<uint8_t> cut(img.begin(), img.begin() + len);
    auto r = load_kernel(mem, cut);
    EXPECT_FALSE(r.ok()) << "length " << len;
  }
}

TEST(BzImage, RefusesWrongMagic) {
  auto mem = make_guest(k64M);
  auto img = make_bzimage();
  auto bad = img;
  bad[0x1fe] = 0;
  auto r = load_kernel(mem, bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("not a bzImage or ELF vmlinux"), std::string::npos);
  bad = img;
  bad[0x202] = 'X';
  EXPECT_FALSE(load_kernel(mem, bad).ok());
  std::vector<uint8_t> junk(8192, 0x90);
  EXPECT_FALSE(load_kernel(mem, junk).ok());
}

TEST(BzImage, RefusesOldProtocol) {
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.version = 0x0205;
  auto r = load_kernel(mem, make_bzimage(h));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("too old"), std::string::npos) << r.error().message;
}

TEST(BzImage, RefusesMissing64BitEntry) {
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.xloadflags = kXlfCanBeLoadedAbove4G;
  auto r = load_kernel(mem, make_bzimage(h));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("64-bit"), std::string::npos);
}

TEST(BzImage, RefusesNotLoadedHigh) {
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.loadflags = 0;
  EXPECT_FALSE(load_kernel(mem, make_bzimage(h)).ok());
}

TEST(BzImage, ShortHeaderHidesLaterFields) {
  // A jump that ends the header before xloadflags: those bytes are setup code.
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.jump = static_cast<uint16_t>(0xeb | (0x20 << 8));  // header ends at 0x222
  EXPECT_FALSE(load_kernel(mem, make_bzimage(h)).ok());
}

TEST(BzImage, RefusesSetupSectsPastEndOfFile) {
  auto mem = make_guest(k64M);
  auto img = make_bzimage();  // 5 sectors + payload
  auto h = good_setup_header();
  h.setup_sects = 255;  // kernel would start at 128 KiB, past the file
  put(img, kSetupHeaderOffset, h);
  auto r = load_kernel(mem, img);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("setup_sects"), std::string::npos);
}

TEST(BzImage, RefusesInitSizeBeyondMemory) {
  auto mem = make_guest(k64M);
  auto h = good_setup_header();
  h.init_size = 0xf0000000;
  auto r = load_kernel(mem, make_bzimage(h));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("init_size"), std::string::npos);

  h = good_setup_header();
  h.init_size = 48u << 20;  // 16 MiB + 48 MiB = exactly the end of a 64 MiB guest
  EXPECT_TRUE(load_kernel(mem, make_bzimage(h)).ok());
  h.init_size = (48u << 20) + 1;
  EXPECT_FALSE(load_kernel(mem, make_bzimage(h)).ok());
}

TEST(BzImage, CmdlineAndInitrdLimits) {
  auto mem = make_guest(k64M);
  auto r = load_kernel(mem, make_bzimage());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(max_cmdline_len(*r), 2047u);
  EXPECT_EQ(initrd_addr_max(*r), 0x7fffffffu);
  r->setup_header->cmdline_size = 0xffffffff;
  EXPECT_EQ(max_cmdline_len(*r), layout::kCmdlineMaxSize - 1);
}

// -------------------------------------------------------------------- ELF --

TEST(Elf, LoadsGoodImage) {
  auto mem = make_guest(k64M);
  auto img = make_elf().build();
  // Pre-fill the .bss area with garbage: the loader must zero it.
  std::vector<uint8_t> junk(kElfSeg2MemSize, 0xee);
  ASSERT_TRUE(mem.write(kElfSeg2Paddr, junk).ok());

  auto r = load_kernel(mem, img);
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_EQ(r->kind, KernelInfo::Kind::Elf);
  EXPECT_EQ(r->entry, kElfSeg1Paddr + 0x40);
  EXPECT_TRUE(r->has_pvh);
  EXPECT_EQ(r->pvh_entry, kElfPvhEntry);
  EXPECT_EQ(r->load_start, kElfSeg1Paddr);
  EXPECT_EQ(r->load_end, kElfSeg2Paddr + kElfSeg2MemSize);
  EXPECT_FALSE(r->setup_header.has_value());
  EXPECT_EQ(max_cmdline_len(*r), kDefaultCmdlineMaxLen);
  EXPECT_EQ(initrd_addr_max(*r), 0xffffffffu);

  std::vector<uint8_t> seg1(kElfSeg1Size), seg2(kElfSeg2MemSize);
  ASSERT_TRUE(mem.read(kElfSeg1Paddr, seg1).ok());
  ASSERT_TRUE(mem.read(kElfSeg2Paddr, seg2).ok());
  for (auto b : seg1) ASSERT_EQ(b, 0xa1);
  for (uint64_t i = 0; i < kElfSeg2FileSize; ++i) ASSERT_EQ(seg2[i], 0xb2) << i;
  for (uint64_t i = kElfSeg2FileSize; i < kElfSeg2MemSize; ++i) ASSERT_EQ(seg2[i], 0) << i;
}

TEST(Elf, TranslatesVirtualEntry) {
  auto mem = make_guest(k64M);
  auto r = load_kernel(mem, make_elf(/*virtual_entry=*/true).build());
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_EQ(r->entry, kElfSeg1Paddr + 0x40);

  auto e = make_elf(true);
  e.ehdr.e_entry = 0xffffffff90000000ull;  // in no segment
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  e = make_elf();
  e.ehdr.e_entry = 0x5000000;  // physical, but outside the kernel
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
}

TEST(Elf, PvhNoteWithFourByteDescAndNoNote) {
  auto mem = make_guest(k64M);
  auto e = make_elf();
  auto note = xen_note(4, kElfPvhEntry + 0x10);
  std::memcpy(e.bytes.data() + kElfNoteOff, note.data(), note.size());
  e.phdrs[2].p_filesz = note.size();
  auto r = load_kernel(mem, e.build());
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_TRUE(r->has_pvh);
  EXPECT_EQ(r->pvh_entry, kElfPvhEntry + 0x10);

  e = make_elf();
  e.phdrs[2].p_type = PT_NULL;
  r = load_kernel(mem, e.build());
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_FALSE(r->has_pvh);
}

TEST(Elf, RefusesSegmentBeyondFile) {
  auto mem = make_guest(k64M);
  auto e = make_elf();
  e.phdrs[0].p_filesz = e.bytes.size();  // offset 0x1000 + whole file size
  auto r = load_kernel(mem, e.build());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("outside the"), std::string::npos) << r.error().message;

  e = make_elf();
  e.phdrs[0].p_offset = 0xfffffffffffff000ull;  // offset + filesz wraps
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
}

TEST(Elf, RefusesMemszOverflow) {
  auto mem = make_guest(k64M);
  auto e = make_elf();
  e.phdrs[1].p_memsz = 0xffffffffffffffffull;
  auto r = load_kernel(mem, e.build());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("overflows"), std::string::npos) << r.error().message;
}

TEST(Elf, RefusesFileszAboveMemsz) {
  auto mem = make_guest(k64M);
  auto e = make_elf();
  e.phdrs[1].p_memsz = kElfSeg2FileSize - 1;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
}

TEST(Elf, RefusesHugePhnum) {
  auto mem = make_guest(k64M);
  auto e = make_elf();
  e.ehdr.e_phnum = 0xffff;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  e.ehdr.e_phnum = 0;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  // Program header table running past the end of the file / wrapping around.
  e = make_elf();
  auto img = e.build();
  Elf64_Ehdr eh = e.ehdr;
  eh.e_phoff = img.size() - 100;  // 3 headers = 168 bytes
  put(img, 0, eh);
  EXPECT_FALSE(load_kernel(mem, img).ok());
  eh = e.ehdr;
  eh.e_phoff = 0xffffffffffffff00ull;
  put(img, 0, eh);
  EXPECT_FALSE(load_kernel(mem, img).ok());
}

TEST(Elf, RefusesSegmentOutsideGuestMemory) {
  auto mem = make_guest(k64M);
  auto e = make_elf();
  e.phdrs[1].p_paddr = k64M - 0x1000;  // runs 0x2000 past the end
  auto r = load_kernel(mem, e.build());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("outside guest memory"), std::string::npos);

  e = make_elf();
  e.phdrs[0].p_paddr = 0x7000;  // would clobber the zero page
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
}

TEST(Elf, RefusesBadNotes) {
  auto mem = make_guest(k64M);
  // descsz running past the end of the note segment
  auto e = make_elf();
  Elf64_Nhdr nh{4, 0x1000, 18};
  put(e.bytes, kElfNoteOff, nh);
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  // namesz huge
  e = make_elf();
  nh = Elf64_Nhdr{0xfffffffe, 4, 1};
  put(e.bytes, kElfNoteOff, nh);
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  // truncated header at the end
  e = make_elf();
  e.phdrs[2].p_filesz = 8;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  // Xen PHYS32_ENTRY with a wrong descriptor size
  e = make_elf();
  auto note = xen_note(2, 0);
  std::memcpy(e.bytes.data() + kElfNoteOff, note.data(), note.size());
  e.phdrs[2].p_filesz = note.size();
  auto r = load_kernel(mem, e.build());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("descsz"), std::string::npos) << r.error().message;
  // 64-bit value that is not a 32-bit address
  e = make_elf();
  note = xen_note(8, 0x100000000ull);
  std::memcpy(e.bytes.data() + kElfNoteOff + 20, note.data(), note.size());
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  // PVH entry outside the loaded kernel
  e = make_elf();
  note = xen_note(4, 0x100);
  std::memcpy(e.bytes.data() + kElfNoteOff, note.data(), note.size());
  e.phdrs[2].p_filesz = note.size();
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
}

// A 32-bit ELF with a PVH note (QEMU microvm boots these): PVH is its entry.
TEST(Elf, Loads32BitKernelThroughItsPvhNote) {
  auto mem = make_guest(k64M);
  auto r = load_kernel(mem, make_elf32());
  ASSERT_TRUE(r.ok()) << error_of(r);
  EXPECT_FALSE(r->has_entry64);
  EXPECT_TRUE(r->has_pvh);
  EXPECT_EQ(r->pvh_entry, kElfPvhEntry);
  EXPECT_EQ(r->entry, kElfPvhEntry);
  EXPECT_EQ(r->load_start, kElfSeg1Paddr);
  EXPECT_EQ(r->load_end, kElfSeg2Paddr + kElfSeg2MemSize);
  std::vector<uint8_t> seg2(kElfSeg2MemSize);
  ASSERT_TRUE(mem.read(kElfSeg2Paddr, seg2).ok());
  EXPECT_EQ(seg2[0], 0xb2);
  EXPECT_EQ(seg2[kElfSeg2MemSize - 1], 0);
  EXPECT_TRUE(make_elf().build().size() > 0 && load_kernel(mem, make_elf().build())->has_entry64);
}

TEST(Elf, Refuses32BitKernelWithoutPvhNoteOrForX86_64) {
  auto mem = make_guest(k64M);
  auto r = load_kernel(mem, make_elf32(/*with_note=*/false));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("no PVH entry note"), std::string::npos) << r.error().message;
  auto img = make_elf32();
  img[offsetof(Elf32_Ehdr, e_machine)] = EM_X86_64;  // ELFCLASS32 + x86-64 (x32): not a kernel
  EXPECT_FALSE(load_kernel(mem, img).ok());
  img = make_elf32();
  img[offsetof(Elf32_Ehdr, e_phentsize)] = sizeof(Elf64_Phdr);
  EXPECT_FALSE(load_kernel(mem, img).ok());
  img = make_elf32();
  img.resize(40);  // truncated 52-byte header
  EXPECT_FALSE(load_kernel(mem, img).ok());
}

TEST(Elf, RefusesWrongClassMachineType) {
  auto mem = make_guest(k64M);
  auto e = make_elf();
  e.ehdr.e_ident[EI_CLASS] = ELFCLASS32;  // 64-bit headers read as 32-bit: garbage
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  e = make_elf();
  e.ehdr.e_ident[EI_CLASS] = 7;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  e = make_elf();
  e.ehdr.e_machine = EM_AARCH64;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  e = make_elf();
  e.ehdr.e_type = ET_DYN;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  e = make_elf();
  e.ehdr.e_phentsize = 32;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());
  e = make_elf();
  e.phdrs[0].p_type = PT_NULL;
  e.phdrs[1].p_type = PT_NULL;
  EXPECT_FALSE(load_kernel(mem, e.build()).ok());  // nothing to load
  auto img = make_elf().build();
  img.resize(40);  // truncated ELF header
  EXPECT_FALSE(load_kernel(mem, img).ok());
}

TEST(Elf, TruncationsNeverCrash) {
  auto mem = make_guest(k64M);
  auto img = make_elf().build();
  for (size_t len = 0; len < img.size(); len += 7) {
    std::vector<uint8_t> cut(img.begin(), img.begin() + len);
    EXPECT_FALSE(load_kernel(mem, cut).ok()) << len;
  }
  auto bz = make_bzimage();
  for (size_t len = 0; len < bz.size(); len += 97) {
    std::vector<uint8_t> cut(bz.begin(), bz.begin() + len);
    (void)load_kernel(mem, cut);  // must not crash; short payloads may still load
  }
}

// Deterministic mutation fuzzing of both formats: any outcome but a crash (or
// an ASan/UBSan report in sanitizer builds) is acceptable.
TEST(KernelLoader, RandomMutationsNeverCrash) {
  auto mem = make_guest(32ull << 20);
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const std::vector<uint8_t> seeds[] = {make_elf().build(), make_elf(true).build(),
                                        make_bzimage()};
  // Offsets worth hitting: headers, program headers, notes, setup header.
  const std::vector<uint64_t> hot = {0x10, 0x18, 0x20, 0x36, 0x38, 0x40, 0x48, 0x50, 0x60,
                                     0x78, 0x80, 0x88, 0x90, 0xb0, 0xb8, 0xc0, 0xc8,
                                     kElfNoteOff, kElfNoteOff + 4, kElfNoteOff + 20,
                                     kElfNoteOff + 24, 0x1f1, 0x206, 0x211, 0x22c, 0x230,
                                     0x234, 0x236, 0x258, 0x260};
  int loaded = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> img = seeds[iter % 3];
    int flips = 1 + static_cast<int>(next() % 4);
    for (int f = 0; f < flips; ++f) {
      uint64_t r = next();
      uint64_t off = (r & 1) ? hot[(r >> 8) % hot.size()] + ((r >> 40) % 8)
                             : (r >> 8) % img.size();
      if (off >= img.size()) continue;
      img[off] = static_cast<uint8_t>(next());
    }
    if (next() % 8 == 0) img.resize(next() % img.size());
    auto k = load_kernel(mem, img);
    if (k.ok()) {
      ++loaded;
      EXPECT_LE(k->load_start, k->load_end);
      EXPECT_TRUE(mem.contains(k->load_start, k->load_end - k->load_start));
      EXPECT_GE(k->entry, k->load_start);
    }
  }
  EXPECT_GT(loaded, 0);
}

// -------------------------------------------------------------- read_file --

class ReadFile : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/boot_read_file_XXXXXX";
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    close(fd);
    path_ = tmpl;
  }
  void TearDown() override { std::remove(path_.c_str()); }
  void write(const std::string& s) { std::ofstream(path_, std::ios::binary) << s; }
  std::string path_;
};

TEST_F(ReadFile, ReadsAndChecks) {
  write("hello");
  auto r = read_file(path_, 100);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(std::string(r->begin(), r->end()), "hello");

  auto big = read_file(path_, 4);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.error().message.find("limit"), std::string::npos);

  write("");
  auto empty = read_file(path_, 100);
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().message.find("empty"), std::string::npos);

  auto missing = read_file(path_ + ".does-not-exist", 100);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().errno_value, ENOENT);

  EXPECT_FALSE(read_file("/tmp", 100).ok());  // a directory
}

}  // namespace
}  // namespace vmm::boot
