#include "boot/x86_64/kernel_loader.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "boot/x86_64/layout.h"
#include "vmm/base/checked_math.h"
#include "vmm/base/unique_fd.h"

namespace vmm::boot {

static_assert(sizeof(Elf64_Ehdr) == 64);
static_assert(sizeof(Elf64_Phdr) == 56);
static_assert(sizeof(Elf64_Nhdr) == 12);
static_assert(sizeof(Elf32_Nhdr) == sizeof(Elf64_Nhdr));

namespace {

constexpr uint64_t kBzEntryOffset = 0x200;  // 64-bit entry: startup_64 = load address + 0x200
constexpr uint64_t kSectorSize = 512;

// Copies a T out of the image at offset, if it lies entirely inside it.
template <typename T>
std::optional<T> read_at(std::span<const uint8_t> image, uint64_t offset) {
  static_assert(std::is_trivially_copyable_v<T>);
  if (offset > image.size() || sizeof(T) > image.size() - offset) return std::nullopt;
  T v;
  std::memcpy(&v, image.data() + offset, sizeof(T));
  return v;
}

bool is_elf(std::span<const uint8_t> image) {
  return image.size() >= SELFMAG && std::memcmp(image.data(), ELFMAG, SELFMAG) == 0;
}

bool is_bzimage(std::span<const uint8_t> image) {
  auto flag = read_at<uint16_t>(image, 0x1fe);
  auto magic = read_at<uint32_t>(image, 0x202);
  return flag && magic && *flag == kBootFlagMagic && *magic == kHdrSMagic;
}

// Writes `len` zero bytes at gpa (the .bss part of a segment).
Result<void> zero_guest(const GuestMemory& mem, Gpa gpa, uint64_t len) {
  static const std::vector<uint8_t> zeros(64 * 1024, 0);
  while (len > 0) {
    uint64_t chunk = std::min<uint64_t>(len, zeros.size());
    VMM_CHECK(mem.write(gpa, std::span(zeros.data(), chunk)));
    gpa += chunk;
    len -= chunk;
  }
  return ok();
}

// ---------------------------------------------------------------- bzImage --

Result<KernelInfo> load_bzimage(const GuestMemory& mem, std::span<const uint8_t> image) {
  auto hdr_opt = read_at<SetupHeader>(image, kSetupHeaderOffset);
  if (!hdr_opt)
    return make_error("bzImage is truncated: {} bytes, the setup header needs {}", image.size(),
                      kSetupHeaderOffset + sizeof(SetupHeader));
  SetupHeader hdr = *hdr_opt;

  // The header ends at 0x202 + the jump's displacement byte; anything past it
  // is setup code, not header fields, so it must not be interpreted.
  uint64_t hdr_end = 0x202 + (hdr.jump >> 8);
  uint64_t valid = std::min<uint64_t>(sizeof(SetupHeader), hdr_end - kSetupHeaderOffset);
  std::memset(reinterpret_cast<uint8_t*>(&hdr) + valid, 0, sizeof(SetupHeader) - valid);

  if (hdr.version < kMinBootProtocol)
    return make_error("bzImage boot protocol {}.{:02} is too old (need 2.06 or newer)",
                      hdr.version >> 8, hdr.version & 0xff);
  if (!(hdr.loadflags & kLoadedHigh))
    return make_error("bzImage is not loaded high (zImage kernels are not supported)");
  if (!(hdr.xloadflags & kXlfKernel64))
    return make_error("bzImage has no 64-bit entry point (xloadflags XLF_KERNEL_64 is clear)");

  uint64_t setup_sects = hdr.setup_sects == 0 ? 4 : hdr.setup_sects;
  uint64_t kernel_off = (setup_sects + 1) * kSectorSize;  // at most 257 * 512: no overflow
  if (kernel_off >= image.size())
    return make_error(
        "bzImage is truncated: setup_sects={} puts the protected-mode kernel at {:#x}, past the "
        "end of the {}-byte file",
        setup_sects, kernel_off, image.size());
  auto payload = image.subspan(kernel_off);
  if (payload.size() <= kBzEntryOffset)
    return make_error("bzImage protected-mode kernel is only {} bytes (no 64-bit entry at +{:#x})",
                      payload.size(), kBzEntryOffset);

  uint64_t load_addr;
  if (hdr.relocatable_kernel) {
    uint64_t align = hdr.kernel_alignment;
    if (align == 0 || (align & (align - 1)) != 0 || align > (1ull << 30))
      return make_error("bzImage kernel_alignment {:#x} is not a power of two up to 1 GiB",
                        align);
    // Copy the packed (misaligned) field: std::max takes references.
    uint64_t want = std::max(uint64_t{hdr.pref_address}, layout::kDefaultKernelAddr);
    auto bumped = checked_add(want, align - 1);
    if (!bumped) return make_error("bzImage pref_address {:#x} overflows",
                                   uint64_t{hdr.pref_address});
    load_addr = align_down(*bumped, align);
  } else {
    load_addr = hdr.pref_address;
    if (load_addr < layout::kHimemStart)
      return make_error("non-relocatable bzImage wants pref_address {:#x}, below 1 MiB",
                        load_addr);
  }

  uint64_t need = std::max<uint64_t>(hdr.init_size, payload.size());
  auto load_end = checked_add(load_addr, need);
  if (!load_end || !mem.contains(load_addr, need))
    return make_error(
        "bzImage needs {:#x} bytes (init_size {:#x}) at {:#x}, which do not fit in guest memory",
        need, uint64_t{hdr.init_size}, load_addr);
  auto w = mem.write(load_addr, payload);
  if (!w.ok()) return make_error("loading bzImage: {}", w.error().to_string());

  KernelInfo info{};
  info.kind = KernelInfo::Kind::BzImage;
  info.entry = load_addr + kBzEntryOffset;
  info.has_pvh = false;
  info.pvh_entry = 0;
  info.load_start = load_addr;
  info.load_end = *load_end;
  info.setup_header = hdr;
  return info;
}

// -------------------------------------------------------------------- ELF --

struct LoadSeg {
  uint64_t offset, filesz, paddr, memsz, vaddr;
};

// Copies validated segments into guest memory (file part, then zeroed .bss).
Result<void> copy_segments(const GuestMemory& mem, std::span<const uint8_t> image,
                           const std::vector<LoadSeg>& segs) {
  for (const auto& s : segs) {
    auto w = mem.write(s.paddr, image.subspan(s.offset, s.filesz));
    if (w.ok()) w = zero_guest(mem, s.paddr + s.filesz, s.memsz - s.filesz);
    if (!w.ok())
      return make_error("loading ELF segment at {:#x}: {}", s.paddr, w.error().to_string());
  }
  return ok();
}

// Parses the notes in [off, off+len) of the image; records a Xen PVH entry.
// (Elf32_Nhdr and Elf64_Nhdr are the same three u32.)
Result<void> scan_notes(std::span<const uint8_t> image, uint64_t off, uint64_t len,
                        std::optional<uint64_t>& pvh_entry) {
  auto notes = image.subspan(off, len);
  uint64_t pos = 0;
  while (pos < notes.size()) {
    uint64_t left = notes.size() - pos;
    auto nh = read_at<Elf64_Nhdr>(notes, pos);
    if (!nh) return make_error("ELF note at {:#x} is truncated ({} bytes left)", off + pos, left);
    uint64_t name_padded = align_up(uint64_t{nh->n_namesz}, 4);  // u32 -> no overflow in u64
    uint64_t desc_padded = align_up(uint64_t{nh->n_descsz}, 4);
    uint64_t body = left - sizeof(Elf64_Nhdr);
    if (name_padded > body || nh->n_descsz > body - name_padded)
      return make_error("ELF note at {:#x} has namesz {} / descsz {} beyond its segment",
                        off + pos, nh->n_namesz, nh->n_descsz);
    const uint8_t* name = notes.data() + pos + sizeof(Elf64_Nhdr);
    const uint8_t* desc = name + name_padded;
    if (nh->n_namesz == 4 && std::memcmp(name, "Xen", 4) == 0 &&
        nh->n_type == kXenElfNotePhys32Entry) {
      uint64_t value;
      if (nh->n_descsz == 4) {
        uint32_t v32;
        std::memcpy(&v32, desc, 4);
        value = v32;
      } else if (nh->n_descsz == 8) {
        std::memcpy(&value, desc, 8);
        if (value > 0xffffffffull)
          return make_error("Xen PHYS32_ENTRY note value {:#x} is not a 32-bit address", value);
      } else {
        return make_error("Xen PHYS32_ENTRY note has descsz {} (expected 4 or 8)", nh->n_descsz);
      }
      pvh_entry = value;
    }
    pos += sizeof(Elf64_Nhdr) + name_padded + std::min(desc_padded, body - name_padded);
  }
  return ok();
}

// The fields of an ELF header and program header the loader uses, from
// either class (ELFCLASS64, or ELFCLASS32 for a PVH-only kernel).
struct ElfHeader {
  bool is64;
  uint64_t entry, phoff;
  uint16_t phentsize, phnum;
};
struct ElfPhdr {
  uint32_t type;
  uint64_t offset, vaddr, paddr, filesz, memsz;
};

template <typename Ehdr, typename Phdr>
Result<ElfHeader> check_elf_header(std::span<const uint8_t> image, bool is64, uint16_t machine) {
  auto eh = read_at<Ehdr>(image, 0);
  if (!eh)
    return make_error("ELF file is truncated ({} bytes, header needs {})", image.size(),
                      sizeof(Ehdr));
  if (eh->e_ident[EI_DATA] != ELFDATA2LSB) return make_error("ELF kernel is not little-endian");
  if (eh->e_machine != machine)
    return make_error("{}-bit ELF kernel is for machine {}, not {}", is64 ? 64 : 32,
                      eh->e_machine, is64 ? "x86-64" : "i386");
  if (eh->e_type != ET_EXEC)
    return make_error("ELF kernel has type {}, expected ET_EXEC", eh->e_type);
  if (eh->e_phentsize != sizeof(Phdr))
    return make_error("ELF e_phentsize {} is not {}", eh->e_phentsize, sizeof(Phdr));
  return ElfHeader{is64, eh->e_entry, eh->e_phoff, eh->e_phentsize, eh->e_phnum};
}

Result<ElfHeader> read_elf_header(std::span<const uint8_t> image) {
  if (image.size() <= EI_CLASS) return make_error("ELF file is truncated");
  switch (image[EI_CLASS]) {
    case ELFCLASS64: return check_elf_header<Elf64_Ehdr, Elf64_Phdr>(image, true, EM_X86_64);
    case ELFCLASS32: return check_elf_header<Elf32_Ehdr, Elf32_Phdr>(image, false, EM_386);
    default: return make_error("ELF class {} is neither 32- nor 64-bit", image[EI_CLASS]);
  }
}

// Program header i (bounds already checked by the caller).
ElfPhdr read_phdr(std::span<const uint8_t> image, const ElfHeader& h, unsigned i) {
  uint64_t at = h.phoff + uint64_t{i} * h.phentsize;
  if (h.is64) {
    Elf64_Phdr p = *read_at<Elf64_Phdr>(image, at);
    return {p.p_type, p.p_offset, p.p_vaddr, p.p_paddr, p.p_filesz, p.p_memsz};
  }
  Elf32_Phdr p = *read_at<Elf32_Phdr>(image, at);
  return {p.p_type, p.p_offset, p.p_vaddr, p.p_paddr, p.p_filesz, p.p_memsz};
}

Result<KernelInfo> load_elf(const GuestMemory& mem, std::span<const uint8_t> image) {
  VMM_TRY(ElfHeader eh, read_elf_header(image));
  if (eh.phnum == 0 || eh.phnum > kElfMaxPhnum)
    return make_error("ELF has {} program headers (expected 1..{})", eh.phnum, kElfMaxPhnum);
  uint64_t ph_bytes = uint64_t{eh.phnum} * eh.phentsize;
  auto ph_end = checked_add(eh.phoff, ph_bytes);
  if (!ph_end || *ph_end > image.size())
    return make_error("ELF program headers [{:#x}, +{:#x}) run past the end of the {}-byte file",
                      eh.phoff, ph_bytes, image.size());

  std::vector<LoadSeg> segs;
  std::optional<uint64_t> pvh_entry;
  for (unsigned i = 0; i < eh.phnum; ++i) {
    ElfPhdr ph = read_phdr(image, eh, i);
    if (ph.type != PT_LOAD && ph.type != PT_NOTE) continue;
    auto file_end = checked_add(ph.offset, ph.filesz);
    if (!file_end || *file_end > image.size())
      return make_error("ELF segment {}: file range [{:#x}, +{:#x}) is outside the {}-byte file",
                        i, ph.offset, ph.filesz, image.size());
    if (ph.type == PT_NOTE) {
      VMM_CHECK(scan_notes(image, ph.offset, ph.filesz, pvh_entry));
      continue;
    }
    if (ph.filesz > ph.memsz)
      return make_error("ELF segment {}: p_filesz {:#x} exceeds p_memsz {:#x}", i, ph.filesz,
                        ph.memsz);
    auto mem_end = checked_add(ph.paddr, ph.memsz);
    if (!mem_end)
      return make_error("ELF segment {}: p_paddr {:#x} + p_memsz {:#x} overflows", i, ph.paddr,
                        ph.memsz);
    if (ph.memsz == 0) continue;
    if (ph.paddr < layout::kHimemStart)
      return make_error("ELF segment {} at {:#x} overlaps the boot area below 1 MiB", i,
                        ph.paddr);
    if (!mem.contains(ph.paddr, ph.memsz))
      return make_error("ELF segment {}: [{:#x}, {:#x}) is outside guest memory", i, ph.paddr,
                        *mem_end);
    segs.push_back(LoadSeg{ph.offset, ph.filesz, ph.paddr, ph.memsz, ph.vaddr});
  }
  if (segs.empty()) return make_error("ELF kernel has no loadable segments");

  KernelInfo info{};
  info.kind = KernelInfo::Kind::Elf;
  info.load_start = ~uint64_t{0};
  info.load_end = 0;
  for (const auto& s : segs) {
    info.load_start = std::min(info.load_start, s.paddr);
    info.load_end = std::max(info.load_end, s.paddr + s.memsz);
  }

  if (!eh.is64) {
    // A 32-bit kernel can only be entered through PVH (32-bit by definition);
    // its e_entry is some other 32-bit protocol's.
    if (!pvh_entry)
      return make_error("32-bit ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
                        "only its PVH entry could be used");
    if (*pvh_entry < info.load_start || *pvh_entry >= info.load_end)
      return make_error("ELF PVH entry {:#x} is outside the loaded kernel [{:#x}, {:#x})",
                        *pvh_entry, info.load_start, info.load_end);
    info.has_entry64 = false;
    info.entry = *pvh_entry;
    info.has_pvh = true;
    info.pvh_entry = *pvh_entry;
    VMM_CHECK(copy_segments(mem, image, segs));
    return info;
  }

  // Entry point: physical, or a kernel-virtual address to translate.
  uint64_t entry = eh.entry;
  if (entry >= kKernelVirtualBase) {
    const LoadSeg* hit = nullptr;
    for (const auto& s : segs)
      if (entry >= s.vaddr && entry - s.vaddr < s.memsz) hit = &s;
    if (!hit)
      return make_error("ELF virtual entry {:#x} is not inside any loadable segment", entry);
    entry = entry - hit->vaddr + hit->paddr;  // < paddr + memsz: no overflow
  }
  if (entry < info.load_start || entry >= info.load_end)
    return make_error("ELF entry {:#x} is outside the loaded kernel [{:#x}, {:#x})", entry,
                      info.load_start, info.load_end);
  info.entry = entry;
  if (pvh_entry) {
    if (*pvh_entry < info.load_start || *pvh_entry >= info.load_end)
      return make_error("ELF PVH entry {:#x} is outside the loaded kernel [{:#x}, {:#x})",
                        *pvh_entry, info.load_start, info.load_end);
    info.has_pvh = true;
    info.pvh_entry = *pvh_entry;
  }

  VMM_CHECK(copy_segments(mem, image, segs));
  return info;
}

}  // namespace

Result<KernelInfo> load_kernel(const GuestMemory& mem, std::span<const uint8_t> image) {
  if (is_elf(image)) return load_elf(mem, image);
  if (is_bzimage(image)) return load_bzimage(mem, image);
  return make_error("kernel image ({} bytes) is not a bzImage or ELF vmlinux", image.size());
}

uint64_t max_cmdline_len(const KernelInfo& kernel) {
  uint64_t len = kDefaultCmdlineMaxLen;
  if (kernel.setup_header) {
    // cmdline_size exists from protocol 2.06; earlier kernels accept 255 bytes.
    len = kernel.setup_header->version >= 0x0206 ? kernel.setup_header->cmdline_size : 255;
  }
  return std::min<uint64_t>(len, layout::kCmdlineMaxSize - 1);
}

uint64_t initrd_addr_max(const KernelInfo& kernel) {
  if (kernel.setup_header) {
    uint32_t m = kernel.setup_header->initrd_addr_max;
    return m != 0 ? m : 0x37ffffff;  // the documented default for old kernels
  }
  return 0xffffffff;
}

Result<std::vector<uint8_t>> read_file(const std::string& path, uint64_t max_size) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_error("cannot open '{}'", path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return errno_error("cannot stat '{}'", path);
  if (!S_ISREG(st.st_mode)) return make_error("'{}' is not a regular file", path);
  if (st.st_size <= 0) return make_error("'{}' is empty", path);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > max_size)
    return make_error("'{}' is {} bytes, more than the limit of {}", path, size, max_size);
  std::vector<uint8_t> data(size);
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = ::read(fd.get(), data.data() + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("cannot read '{}'", path);
    }
    if (n == 0) return make_error("'{}' shrank while being read ({} of {} bytes)", path, done, size);
    done += static_cast<uint64_t>(n);
  }
  return data;
}

}  // namespace vmm::boot
