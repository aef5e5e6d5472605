// Boot-time CPU structures in guest memory (identity page tables, GDT, IDT) and
// plain descriptions of the vCPU register state at kernel entry. Nothing here
// knows about KVM: the VMM converts BootCpuState to kvm_regs / kvm_sregs.
#pragma once

#include <cstdint>

#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::boot {

// Control-register / MSR bits used at entry.
inline constexpr uint64_t kCr0Pe = 1ull << 0;
inline constexpr uint64_t kCr0Et = 1ull << 4;
inline constexpr uint64_t kCr0Pg = 1ull << 31;
inline constexpr uint64_t kCr4Pae = 1ull << 5;
inline constexpr uint64_t kEferLme = 1ull << 8;
inline constexpr uint64_t kEferLma = 1ull << 10;
inline constexpr uint64_t kRflagsReserved1 = 1ull << 1;  // bit 1 always reads as 1

// Page-table entry bits.
inline constexpr uint64_t kPtePresent = 1ull << 0;
inline constexpr uint64_t kPteWritable = 1ull << 1;
inline constexpr uint64_t kPtePageSize = 1ull << 7;  // 2 MiB page in a PD entry

// Boot GDT: null, null, 0x10 = flat 64-bit code, 0x18 = flat data.
inline constexpr uint16_t kBootCodeSelector = 0x10;
inline constexpr uint16_t kBootDataSelector = 0x18;
inline constexpr unsigned kBootGdtEntries = 4;
inline constexpr uint16_t kBootGdtLimit = kBootGdtEntries * 8 - 1;
inline constexpr uint16_t kBootIdtLimit = 7;  // one zero 8-byte slot: every vector faults

// Segment descriptor types (S=1 code/data, S=0 system).
inline constexpr uint8_t kSegTypeDataRwAccessed = 0x3;
inline constexpr uint8_t kSegTypeCodeExecReadAccessed = 0xb;
inline constexpr uint8_t kSegTypeLdt = 0x2;
inline constexpr uint8_t kSegTypeTssBusy = 0xb;  // busy 32/64-bit TSS

// Encodes a GDT descriptor. flags holds access byte (bits 0-7) and the
// G/DB/L/AVL nibble (bits 12-15), e.g. 0xa09b for 64-bit code.
constexpr uint64_t encode_gdt_entry(uint16_t flags, uint32_t base, uint32_t limit) {
  return ((uint64_t{base} & 0xff000000ull) << 32) | ((uint64_t{flags} & 0xf0ffull) << 40) |
         ((uint64_t{limit} & 0x000f0000ull) << 32) | ((uint64_t{base} & 0x00ffffffull) << 16) |
         (uint64_t{limit} & 0x0000ffffull);
}
inline constexpr uint64_t kGdtCode64 = encode_gdt_entry(0xa09b, 0, 0xfffff);
inline constexpr uint64_t kGdtData = encode_gdt_entry(0xc093, 0, 0xfffff);
static_assert(kGdtCode64 == 0x00af9b000000ffffull);
static_assert(kGdtData == 0x00cf93000000ffffull);

struct Segment {
  uint64_t base;
  uint32_t limit;  // byte granular (as KVM expects), e.g. 0xffffffff for flat 4 GiB
  uint16_t selector;
  uint8_t type, present, dpl, db, s, l, g, avl;
};

struct BootCpuState {
  uint64_t rip, rsp, rsi, rbx, rflags;
  uint64_t cr0, cr3, cr4, efer;
  Segment cs, ds, es, fs, gs, ss, tr, ldt;
  uint64_t gdt_base;
  uint16_t gdt_limit;
  uint64_t idt_base;
  uint16_t idt_limit;
};

// Identity-maps [0, layout::kIdentityMapSize) with 2 MiB pages: one PML4 at
// kPml4Addr, one PDPT at kPdptAddr, kIdentityMapSize/1GiB PDs from kPdAddr.
Result<void> write_identity_page_tables(const GuestMemory& mem);

// Writes the boot GDT at kGdtAddr and an all-zero IDT (8 bytes) at kIdtAddr.
Result<void> write_boot_gdt(const GuestMemory& mem);

// 64-bit boot protocol entry: long mode, paging on (cr3 = kPml4Addr), CS 0x10
// L=1, data 0x18, rsi = boot_params_gpa, rsp = kBootStackTop, rflags = 2.
BootCpuState long_mode_entry_state(uint64_t entry_rip, uint64_t boot_params_gpa);

// PVH entry (Xen hvm start ABI): 32-bit protected mode, paging off, flat 4 GiB
// CS (exec/read, 32-bit) and data segments, CR0 = PE|ET, rbx = start_info_gpa.
BootCpuState pvh_entry_state(uint64_t entry_rip, uint64_t start_info_gpa);

}  // namespace vmm::boot
