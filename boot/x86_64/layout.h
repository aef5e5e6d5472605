// Every fixed guest-physical address and port the VMM uses, named once.
#pragma once

#include <cstdint>

namespace vmm::layout {

// --- Low memory (below 1 MiB) ---
inline constexpr uint64_t kGdtAddr = 0x500;         // boot GDT (4 entries)
inline constexpr uint64_t kIdtAddr = 0x520;         // empty boot IDT
inline constexpr uint64_t kPvhStartInfoAddr = 0x6000;  // hvm_start_info + memmap (PVH boot)
inline constexpr uint64_t kZeroPageAddr = 0x7000;   // struct boot_params
inline constexpr uint64_t kBootStackTop = 0x8ff0;   // initial rsp
inline constexpr uint64_t kPml4Addr = 0x9000;       // identity page tables: PML4
inline constexpr uint64_t kPdptAddr = 0xa000;       //   PDPT
inline constexpr uint64_t kPdAddr = 0xb000;         //   4 PDs (0xb000..0xefff), 2 MiB pages
inline constexpr uint64_t kIdentityMapSize = 4ull << 30;  // first 4 GiB identity-mapped
inline constexpr uint64_t kCmdlineAddr = 0x20000;   // kernel command line
inline constexpr uint64_t kCmdlineMaxSize = 0x10000;
inline constexpr uint64_t kEbdaStart = 0x9fc00;     // MP table lives here; reserved to 1 MiB
inline constexpr uint64_t kMpTableAddr = kEbdaStart;
// ACPI tables (RSDP first, 16-byte aligned), inside the RESERVED e820 range
// [kEbdaStart, 1 MiB) and in the BIOS area Linux scans for the RSDP.
inline constexpr uint64_t kAcpiTablesAddr = 0xe0000;
inline constexpr uint64_t kAcpiTablesMaxSize = 0x10000;
inline constexpr uint64_t kHimemStart = 0x100000;   // 1 MiB
inline constexpr uint64_t kDefaultKernelAddr = 0x1000000;  // 16 MiB: bzImage protected-mode code

// --- The 32-bit hole: RAM stops at kMmioGapStart and resumes at 4 GiB ---
inline constexpr uint64_t kMmioGapStart = 0xc0000000;  // 3 GiB
inline constexpr uint64_t kMmioGapEnd = 0x100000000;   // 4 GiB
inline constexpr uint64_t kBootProbeMmioAddr = 0xd0000000;  // boot probe, MMIO window (8 bytes)
inline constexpr uint64_t kVirtioMmioBase = 0xd0001000;     // virtio-mmio devices, 4 KiB apart
inline constexpr uint64_t kVirtioMmioSize = 0x1000;
// virtio-mmio device n gets kVirtioIrqs[n]: ISA IRQs no other device of ours
// uses (0 PIT, 1 keyboard, 2 cascade, 3 COM2, 4 COM1, 8 RTC, 12 PS/2 mouse,
// 13 FPU stay free), so kernels configure them edge-triggered/active-high
// from the MP table or ACPI defaults without an override (irqfd is an edge).
inline constexpr uint32_t kVirtioIrqs[] = {5, 6, 7, 9, 10, 11, 14, 15};
inline constexpr size_t kMaxVirtioDevices = sizeof(kVirtioIrqs) / sizeof(kVirtioIrqs[0]);
inline constexpr uint64_t kIoapicAddr = 0xfec00000;
inline constexpr uint64_t kLapicAddr = 0xfee00000;
inline constexpr uint64_t kKvmIdentityMapAddr = 0xfffbc000;  // KVM_SET_IDENTITY_MAP_ADDR (1 page)
inline constexpr uint64_t kKvmTssAddr = 0xfffbd000;          // KVM_SET_TSS_ADDR (3 pages)

// --- Port I/O ---
inline constexpr uint16_t kSerialPort = 0x3f8;  // COM1
inline constexpr uint32_t kSerialIrq = 4;
inline constexpr uint16_t kI8042DataPort = 0x60;
inline constexpr uint16_t kI8042CommandPort = 0x64;
inline constexpr uint32_t kI8042Irq = 1;  // keyboard (described in the DSDT; the model raises none)
inline constexpr uint16_t kBootProbePort = 0x4f0;  // boot probe, port window (8 ports)
inline constexpr uint16_t kBootProbePortLen = 8;
// ACPI hardware-reduced registers (FADT SLEEP_CONTROL_REG, SLEEP_STATUS_REG,
// RESET_REG), 8 bits each, served by one AcpiPm device at kAcpiPmPort.
inline constexpr uint16_t kAcpiPmPort = 0x3c0;
inline constexpr uint16_t kAcpiPmPortLen = 3;
inline constexpr uint16_t kAcpiSleepControlPort = 0x3c0;
inline constexpr uint16_t kAcpiSleepStatusPort = 0x3c1;
inline constexpr uint16_t kAcpiResetPort = 0x3c2;
// Values the ACPI tables promise and AcpiPm acts on.
inline constexpr uint8_t kAcpiS5SleepType = 5;  // SLP_TYP of \_S5_ (soft off)
inline constexpr uint8_t kAcpiResetValue = 0x01;  // FADT RESET_VALUE

}  // namespace vmm::layout
