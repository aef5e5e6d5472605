// Loads a guest kernel (bzImage or ELF vmlinux) into guest memory. Every byte
// of the image is treated as hostile: all offsets and sizes are bounds- and
// overflow-checked and failures come back as Result errors.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "boot/x86_64/boot_params.h"
#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::boot {

inline constexpr uint16_t kMinBootProtocol = 0x0206;
inline constexpr uint32_t kElfMaxPhnum = 64;
inline constexpr uint32_t kXenElfNotePhys32Entry = 18;  // XEN_ELFNOTE_PHYS32_ENTRY
// Entries at or above this are kernel-virtual (__START_KERNEL_map) addresses.
inline constexpr uint64_t kKernelVirtualBase = 0xffffffff80000000ull;
// Linux x86 COMMAND_LINE_SIZE (2048) minus the NUL: the limit for kernels that
// carry no setup header (ELF vmlinux).
inline constexpr uint64_t kDefaultCmdlineMaxLen = 2047;

struct KernelInfo {
  enum class Kind { BzImage, Elf } kind;
  uint64_t entry;      // guest-physical 64-bit entry point (rsi = boot_params), or the
                       // PVH entry for a kernel without one (has_entry64 false)
  bool has_entry64 = true;  // false for a 32-bit ELF: PVH is its only way in
  bool has_pvh;        // ELF carries a XEN_ELFNOTE_PHYS32_ENTRY note
  uint64_t pvh_entry;  // 32-bit PVH entry (valid if has_pvh)
  uint64_t load_start, load_end;  // guest-physical [start, end) the kernel occupies
  std::optional<SetupHeader> setup_header;  // bzImage only (copied from the file)
};

// Detects the format by magic and loads the kernel. Errors for anything that is
// neither "\x7fELF" (ET_EXEC: 64-bit x86-64, or 32-bit i386 with a PVH note,
// as QEMU accepts) nor a bzImage (0xAA55 at 0x1fe and "HdrS" at 0x202).
Result<KernelInfo> load_kernel(const GuestMemory& mem, std::span<const uint8_t> image);

// Longest command line (without the NUL) the kernel accepts: the setup header's
// cmdline_size when present, else kDefaultCmdlineMaxLen; capped by kCmdlineMaxSize - 1.
uint64_t max_cmdline_len(const KernelInfo& kernel);

// Highest address the initrd may occupy (last byte, inclusive): the setup
// header's initrd_addr_max when present, else 0xffffffff (load_initrd further
// keeps it below the MMIO gap).
uint64_t initrd_addr_max(const KernelInfo& kernel);

// Reads a whole regular file of 1..max_size bytes.
Result<std::vector<uint8_t>> read_file(const std::string& path, uint64_t max_size);

}  // namespace vmm::boot
