// Hand-built kernel images for the boot unit tests.
#pragma once

#include <elf.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "boot/x86_64/boot_params.h"
#include "boot/x86_64/e820.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::boot::testing {

inline GuestMemory make_guest(uint64_t mem_size) {
  auto mem = GuestMemory::create_anonymous(guest_ram_ranges(mem_size));
  if (!mem.ok()) abort();
  return std::move(mem).value();
}

template <typename T>
void put(std::vector<uint8_t>& buf, uint64_t off, const T& v) {
  if (buf.size() < off + sizeof(T)) buf.resize(off + sizeof(T));
  std::memcpy(buf.data() + off, &v, sizeof(T));
}

inline SetupHeader good_setup_header() {
  SetupHeader h{};
  h.setup_sects = 4;
  h.boot_flag = kBootFlagMagic;
  h.jump = static_cast<uint16_t>(0xeb | ((0x26c - 0x202) << 8));
  h.header = kHdrSMagic;
  h.version = 0x020f;
  h.loadflags = kLoadedHigh;
  h.relocatable_kernel = 1;
  h.kernel_alignment = 0x200000;
  h.xloadflags = kXlfKernel64 | kXlfCanBeLoadedAbove4G;
  h.cmdline_size = 2047;
  h.initrd_addr_max = 0x7fffffff;
  h.pref_address = 0x1000000;
  h.init_size = 0x800000;
  h.setup_data = 0xdeadbeef;  // hostile: must not reach the zero page
  h.vid_mode = 0xffff;
  return h;
}

inline constexpr uint64_t kBzPayloadSize = 0x3000;

// A bzImage: boot sector + setup sectors, then kBzPayloadSize bytes of
// protected-mode "kernel" (bytes i & 0xff).
inline std::vector<uint8_t> make_bzimage(const SetupHeader& h = good_setup_header(),
                                         uint64_t payload = kBzPayloadSize) {
  uint64_t sects = h.setup_sects == 0 ? 4 : h.setup_sects;
  uint64_t off = (sects + 1) * 512;
  std::vector<uint8_t> img(off + payload, 0);
  put(img, kSetupHeaderOffset, h);
  for (uint64_t i = 0; i < payload; ++i) img[off + i] = static_cast<uint8_t>(i);
  return img;
}

// ELF layout used by make_elf().
inline constexpr uint64_t kElfSeg1Paddr = 0x1000000;
inline constexpr uint64_t kElfSeg1Vaddr = 0xffffffff81000000ull;
inline constexpr uint64_t kElfSeg1Off = 0x1000;
inline constexpr uint64_t kElfSeg1Size = 0x800;
inline constexpr uint64_t kElfSeg2Paddr = 0x1200000;
inline constexpr uint64_t kElfSeg2Vaddr = 0xffffffff81200000ull;
inline constexpr uint64_t kElfSeg2Off = 0x2000;
inline constexpr uint64_t kElfSeg2FileSize = 0x100;
inline constexpr uint64_t kElfSeg2MemSize = 0x3000;  // 0x2f00 bytes of .bss
inline constexpr uint64_t kElfNoteOff = 0x3000;
inline constexpr uint64_t kElfPvhEntry = 0x1000100;

struct ElfImage {
  std::vector<uint8_t> bytes;
  Elf64_Ehdr ehdr;
  std::vector<Elf64_Phdr> phdrs;

  // Re-serializes after tests tweak ehdr / phdrs.
  std::vector<uint8_t> build() const {
    std::vector<uint8_t> out = bytes;
    put(out, 0, ehdr);
    for (size_t i = 0; i < phdrs.size(); ++i)
      put(out, ehdr.e_phoff + i * sizeof(Elf64_Phdr), phdrs[i]);
    return out;
  }
};

inline std::vector<uint8_t> xen_note(uint32_t descsz, uint64_t value, uint32_t namesz = 4) {
  std::vector<uint8_t> n;
  Elf64_Nhdr nh{namesz, descsz, 18};
  put(n, 0, nh);
  put(n, 12, std::array<char, 4>{'X', 'e', 'n', '\0'});
  if (descsz == 4) put(n, 16, static_cast<uint32_t>(value));
  else put(n, 16, value);
  n.resize(16 + ((descsz + 3) & ~3u), 0);
  return n;
}

// ELF64 vmlinux-like image: two PT_LOADs (the second with .bss) and a PT_NOTE
// holding an unrelated note followed by the Xen PVH entry note.
inline ElfImage make_elf(bool virtual_entry = false) {
  ElfImage e{};
  std::memcpy(e.ehdr.e_ident, ELFMAG, SELFMAG);
  e.ehdr.e_ident[EI_CLASS] = ELFCLASS64;
  e.ehdr.e_ident[EI_DATA] = ELFDATA2LSB;
  e.ehdr.e_ident[EI_VERSION] = EV_CURRENT;
  e.ehdr.e_type = ET_EXEC;
  e.ehdr.e_machine = EM_X86_64;
  e.ehdr.e_version = EV_CURRENT;
  e.ehdr.e_entry = virtual_entry ? kElfSeg1Vaddr + 0x40 : kElfSeg1Paddr + 0x40;
  e.ehdr.e_phoff = sizeof(Elf64_Ehdr);
  e.ehdr.e_ehsize = sizeof(Elf64_Ehdr);
  e.ehdr.e_phentsize = sizeof(Elf64_Phdr);
  e.ehdr.e_phnum = 3;

  std::vector<uint8_t> notes;
  {
    Elf64_Nhdr other{4, 4, 1};  // "GNU" note: skipped
    put(notes, 0, other);
    put(notes, 12, std::array<char, 4>{'G', 'N', 'U', '\0'});
    put(notes, 16, uint32_t{0x1234});
    auto x = xen_note(8, kElfPvhEntry);
    notes.insert(notes.end(), x.begin(), x.end());
  }

  Elf64_Phdr p1{};
  p1.p_type = PT_LOAD;
  p1.p_offset = kElfSeg1Off;
  p1.p_vaddr = kElfSeg1Vaddr;
  p1.p_paddr = kElfSeg1Paddr;
  p1.p_filesz = kElfSeg1Size;
  p1.p_memsz = kElfSeg1Size;
  Elf64_Phdr p2{};
  p2.p_type = PT_LOAD;
  p2.p_offset = kElfSeg2Off;
  p2.p_vaddr = kElfSeg2Vaddr;
  p2.p_paddr = kElfSeg2Paddr;
  p2.p_filesz = kElfSeg2FileSize;
  p2.p_memsz = kElfSeg2MemSize;
  Elf64_Phdr pn{};
  pn.p_type = PT_NOTE;
  pn.p_offset = kElfNoteOff;
  pn.p_filesz = notes.size();
  e.phdrs = {p1, p2, pn};

  e.bytes.assign(kElfNoteOff + notes.size(), 0);
  for (uint64_t i = 0; i < kElfSeg1Size; ++i) e.bytes[kElfSeg1Off + i] = 0xa1;
  for (uint64_t i = 0; i < kElfSeg2FileSize; ++i) e.bytes[kElfSeg2Off + i] = 0xb2;
  std::memcpy(e.bytes.data() + kElfNoteOff, notes.data(), notes.size());
  return e;
}

// The same kernel as a 32-bit (ELFCLASS32, i386) ELF with physical
// addresses only, as `objcopy -O elf32-i386` makes of a PVH kernel; with_note
// false drops the PT_NOTE (no PVH entry).
inline std::vector<uint8_t> make_elf32(bool with_note = true) {
  ElfImage e = make_elf();
  std::vector<uint8_t> out = e.bytes;
  Elf32_Ehdr h{};
  std::memcpy(h.e_ident, e.ehdr.e_ident, EI_NIDENT);
  h.e_ident[EI_CLASS] = ELFCLASS32;
  h.e_type = ET_EXEC;
  h.e_machine = EM_386;
  h.e_version = EV_CURRENT;
  h.e_entry = static_cast<uint32_t>(kElfSeg1Paddr);  // some 32-bit entry, not PVH's
  h.e_phoff = sizeof(Elf32_Ehdr);
  h.e_ehsize = sizeof(Elf32_Ehdr);
  h.e_phentsize = sizeof(Elf32_Phdr);
  h.e_phnum = with_note ? 3 : 2;
  put(out, 0, h);
  for (size_t i = 0; i < h.e_phnum; ++i) {
    const Elf64_Phdr& p = e.phdrs[i];
    Elf32_Phdr q{};
    q.p_type = p.p_type;
    q.p_offset = static_cast<uint32_t>(p.p_offset);
    q.p_vaddr = static_cast<uint32_t>(p.p_paddr);
    q.p_paddr = static_cast<uint32_t>(p.p_paddr);
    q.p_filesz = static_cast<uint32_t>(p.p_filesz);
    q.p_memsz = static_cast<uint32_t>(p.p_memsz);
    put(out, h.e_phoff + i * sizeof(Elf32_Phdr), q);
  }
  return out;
}

}  // namespace vmm::boot::testing
