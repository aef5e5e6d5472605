// The data a kernel finds at entry: initrd placement, command line, the Linux
// zero page (struct boot_params) and the PVH hvm_start_info.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "boot/x86_64/boot_params.h"
#include "boot/x86_64/kernel_loader.h"
#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::boot {

// --- PVH (xen/include/public/arch-x86/hvm/start_info.h), written from the spec ---
inline constexpr uint32_t kPvhStartMagic = 0x336ec578;
inline constexpr uint32_t kPvhStartInfoVersion = 1;

struct __attribute__((packed)) HvmStartInfo {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;  // version >= 1
  uint32_t memmap_entries;
  uint32_t reserved;
};
static_assert(sizeof(HvmStartInfo) == 56);
static_assert(offsetof(HvmStartInfo, modlist_paddr) == 16);
static_assert(offsetof(HvmStartInfo, cmdline_paddr) == 24);
static_assert(offsetof(HvmStartInfo, rsdp_paddr) == 32);
static_assert(offsetof(HvmStartInfo, memmap_paddr) == 40);
static_assert(offsetof(HvmStartInfo, memmap_entries) == 48);

struct __attribute__((packed)) HvmModlistEntry {
  uint64_t paddr;
  uint64_t size;
  uint64_t cmdline_paddr;
  uint64_t reserved;
};
static_assert(sizeof(HvmModlistEntry) == 32);

struct __attribute__((packed)) HvmMemmapEntry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;  // same values as E820 types
  uint32_t reserved;
};
static_assert(sizeof(HvmMemmapEntry) == 24);

// Offsets (from kPvhStartInfoAddr) of the arrays that follow hvm_start_info.
inline constexpr uint64_t kPvhModlistOffset = sizeof(HvmStartInfo);
inline constexpr uint64_t kPvhMemmapOffset = kPvhModlistOffset + sizeof(HvmModlistEntry);

inline constexpr uint16_t kHeapEndPtr = 0xfe00;
inline constexpr uint32_t kElfKernelAlignment = 0x1000000;

struct InitrdPlacement {
  uint64_t addr, size;
};

// Copies the initrd to the highest 4 KiB-aligned address such that it ends at
// or below min(initrd_addr_max + 1, kMmioGapStart), lies in one guest RAM
// region, starts at or above kernel_end (and 1 MiB). Errors if it cannot fit.
Result<InitrdPlacement> load_initrd(const GuestMemory& mem, std::span<const uint8_t> initrd,
                                    uint64_t kernel_end, uint64_t initrd_addr_max);

// Writes cmdline + NUL at kCmdlineAddr. Errors if cmdline is longer than
// min(max_len, kCmdlineMaxSize - 1) bytes or contains a NUL.
Result<void> write_cmdline(const GuestMemory& mem, std::string_view cmdline, uint64_t max_len);

// Writes struct boot_params at kZeroPageAddr. cmdline_size: bytes of the
// command line including its NUL (stored in hdr.cmdline_size for kernels
// without a setup header). Errors if e820 is empty or has more than 128 entries.
Result<void> write_zero_page(const GuestMemory& mem, const KernelInfo& kernel,
                             uint64_t cmdline_size, std::optional<InitrdPlacement> initrd,
                             const std::vector<E820Entry>& e820);

// Writes hvm_start_info at kPvhStartInfoAddr, followed by the module list (one
// entry: the initrd, if any) and the memory map, all below kZeroPageAddr.
Result<void> write_pvh_start_info(const GuestMemory& mem, uint64_t cmdline_gpa,
                                  std::optional<InitrdPlacement> initrd,
                                  const std::vector<E820Entry>& e820);

}  // namespace vmm::boot
