// ACPI tables for a hardware-reduced x86 platform, written from the ACPI 6.4
// specification: RSDP -> XSDT -> {FADT -> DSDT, MADT}, all in one block at
// layout::kAcpiTablesAddr (RSDP first).
//
// How the VMM uses this:
//   1. rsdp = write_acpi_tables(mem, cpus)  -- any time before step 3, e.g.
//      next to write_mptable() (keeping the MP table is harmless: Linux uses
//      the MADT when both exist, and the MP table still serves acpi=off).
//   2. write_zero_page(...) or write_pvh_start_info(...) as today; both write
//      their whole structure and so leave the RSDP address 0.
//   3. set_zero_page_rsdp(mem, rsdp) or set_pvh_rsdp(mem, rsdp): patch the
//      RSDP address into BootParams::acpi_rsdp_addr / HvmStartInfo::rsdp_paddr.
//      (Linux also finds the RSDP without it, by scanning 0xe0000..0xfffff.)
//   4. Register an AcpiPm (devices/legacy/acpi_pm.h) on the port bus at
//      layout::kAcpiPmPort, layout::kAcpiPmPortLen ports: it implements the
//      FADT's sleep-control/status and reset registers (poweroff, reboot).
//
// What the guest sees, and why:
// - FADT with HW_REDUCED_ACPI: no PM1/GPE/PM-timer blocks, no SCI, no FACS.
//   Power off is the ACPI 5+ sleep control register; reboot the RESET_REG.
//   Linux then also ignores the 8259 PIC and the PIT (acpi_generic_reduced_hw_init
//   installs null_legacy_pic and skips the timer init; the LAPIC timer ticks)
//   and, with no legacy PIC, pre-maps no ISA IRQ: a device with a fixed ISA IRQ
//   gets its interrupt only if the DSDT describes it (Firecracker and Cloud
//   Hypervisor do the same). So the DSDT describes COM1 (PNP0501, ports
//   kSerialPort..+7, IRQ kSerialIrq); without it ttyS0 could not be opened.
// - DSDT: \_S5_ plus \_SB_.COM1, static Name()s only, no methods (59 bytes of
//   AML, cheap for an interpreted guest to load).
// - MADT: one enabled local APIC per vCPU (UID = APIC ID = index), the I/O
//   APIC (ID num_cpus, GSI base 0), an NMI on LINT1 of every CPU, and no
//   Interrupt Source Override; see write_acpi_tables() in acpi.cc for why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::boot {

inline constexpr int kAcpiMaxCpus = 254;  // APIC IDs 0..253; the I/O APIC takes num_cpus

// Revisions written (ACPI 6.4).
inline constexpr uint8_t kRsdpRevision = 2;  // ACPI 2.0+ RSDP (has the XSDT address)
inline constexpr uint8_t kXsdtRevision = 1;
inline constexpr uint8_t kFadtRevision = 6;
inline constexpr uint8_t kFadtMinorRevision = 4;
inline constexpr uint8_t kMadtRevision = 5;
inline constexpr uint8_t kDsdtRevision = 2;  // 2+: AML integers are 64-bit

// FADT Flags.
inline constexpr uint32_t kFadtPwrButton = 1u << 4;   // no fixed-feature power button
inline constexpr uint32_t kFadtSlpButton = 1u << 5;   // no fixed-feature sleep button
inline constexpr uint32_t kFadtResetRegSup = 1u << 10;
inline constexpr uint32_t kFadtHwReducedAcpi = 1u << 20;
// FADT IAPC_BOOT_ARCH.
inline constexpr uint16_t kIapcLegacyDevices = 1u << 0;
inline constexpr uint16_t kIapc8042 = 1u << 1;
inline constexpr uint16_t kIapcVgaNotPresent = 1u << 2;
inline constexpr uint16_t kIapcMsiNotSupported = 1u << 3;
inline constexpr uint16_t kIapcPcieAspmControls = 1u << 4;
inline constexpr uint16_t kIapcCmosRtcNotPresent = 1u << 5;

// Generic Address Structure address space IDs and access sizes.
inline constexpr uint8_t kGasSystemMemory = 0;
inline constexpr uint8_t kGasSystemIo = 1;
inline constexpr uint8_t kGasAccessByte = 1;

// MADT.
inline constexpr uint32_t kMadtPcatCompat = 1u << 0;  // dual 8259s present (KVM's PIC)
inline constexpr uint8_t kMadtLocalApic = 0;
inline constexpr uint8_t kMadtIoApic = 1;
inline constexpr uint8_t kMadtInterruptOverride = 2;
inline constexpr uint8_t kMadtLocalApicNmi = 4;
inline constexpr uint32_t kMadtLapicEnabled = 1u << 0;
inline constexpr uint8_t kMadtAllProcessors = 0xff;  // Local APIC NMI: every processor

struct __attribute__((packed)) AcpiTableHeader {
  char signature[4];
  uint32_t length;  // whole table, header included
  uint8_t revision;
  uint8_t checksum;  // all bytes of the table sum to 0
  char oem_id[6];
  char oem_table_id[8];
  uint32_t oem_revision;
  char creator_id[4];
  uint32_t creator_revision;
};
static_assert(sizeof(AcpiTableHeader) == 36);

struct __attribute__((packed)) AcpiRsdp {
  char signature[8];  // "RSD PTR "
  uint8_t checksum;   // first 20 bytes sum to 0
  char oem_id[6];
  uint8_t revision;
  uint32_t rsdt_address;  // 0: XSDT only
  uint32_t length;        // 36
  uint64_t xsdt_address;
  uint8_t extended_checksum;  // all 36 bytes sum to 0
  uint8_t reserved[3];
};
static_assert(sizeof(AcpiRsdp) == 36);
static_assert(offsetof(AcpiRsdp, length) == 20);
static_assert(offsetof(AcpiRsdp, xsdt_address) == 24);
inline constexpr size_t kRsdpV1Length = 20;  // the part the first checksum covers

struct __attribute__((packed)) AcpiGas {  // Generic Address Structure
  uint8_t space_id;
  uint8_t bit_width;
  uint8_t bit_offset;
  uint8_t access_size;  // 1 byte, 2 word, 3 dword, 4 qword
  uint64_t address;
};
static_assert(sizeof(AcpiGas) == 12);

struct __attribute__((packed)) AcpiFadt {
  AcpiTableHeader header;  // "FACP"
  uint32_t firmware_ctrl;
  uint32_t dsdt;
  uint8_t reserved0;
  uint8_t preferred_pm_profile;
  uint16_t sci_int;
  uint32_t smi_cmd;
  uint8_t acpi_enable;
  uint8_t acpi_disable;
  uint8_t s4bios_req;
  uint8_t pstate_cnt;
  uint32_t pm1a_evt_blk;
  uint32_t pm1b_evt_blk;
  uint32_t pm1a_cnt_blk;
  uint32_t pm1b_cnt_blk;
  uint32_t pm2_cnt_blk;
  uint32_t pm_tmr_blk;
  uint32_t gpe0_blk;
  uint32_t gpe1_blk;
  uint8_t pm1_evt_len;
  uint8_t pm1_cnt_len;
  uint8_t pm2_cnt_len;
  uint8_t pm_tmr_len;
  uint8_t gpe0_blk_len;
  uint8_t gpe1_blk_len;
  uint8_t gpe1_base;
  uint8_t cst_cnt;
  uint16_t p_lvl2_lat;
  uint16_t p_lvl3_lat;
  uint16_t flush_size;
  uint16_t flush_stride;
  uint8_t duty_offset;
  uint8_t duty_width;
  uint8_t day_alrm;
  uint8_t mon_alrm;
  uint8_t century;
  uint16_t iapc_boot_arch;
  uint8_t reserved1;
  uint32_t flags;
  AcpiGas reset_reg;
  uint8_t reset_value;
  uint16_t arm_boot_arch;
  uint8_t minor_version;
  uint64_t x_firmware_ctrl;
  uint64_t x_dsdt;
  AcpiGas x_pm1a_evt_blk;
  AcpiGas x_pm1b_evt_blk;
  AcpiGas x_pm1a_cnt_blk;
  AcpiGas x_pm1b_cnt_blk;
  AcpiGas x_pm2_cnt_blk;
  AcpiGas x_pm_tmr_blk;
  AcpiGas x_gpe0_blk;
  AcpiGas x_gpe1_blk;
  AcpiGas sleep_control_reg;
  AcpiGas sleep_status_reg;
  uint64_t hypervisor_vendor_id;
};
static_assert(sizeof(AcpiFadt) == 276);
static_assert(offsetof(AcpiFadt, dsdt) == 40);
static_assert(offsetof(AcpiFadt, sci_int) == 46);
static_assert(offsetof(AcpiFadt, pm1a_evt_blk) == 56);
static_assert(offsetof(AcpiFadt, pm1_evt_len) == 88);
static_assert(offsetof(AcpiFadt, iapc_boot_arch) == 109);
static_assert(offsetof(AcpiFadt, flags) == 112);
static_assert(offsetof(AcpiFadt, reset_reg) == 116);
static_assert(offsetof(AcpiFadt, reset_value) == 128);
static_assert(offsetof(AcpiFadt, minor_version) == 131);
static_assert(offsetof(AcpiFadt, x_dsdt) == 140);
static_assert(offsetof(AcpiFadt, x_pm1a_evt_blk) == 148);
static_assert(offsetof(AcpiFadt, x_gpe1_blk) == 232);
static_assert(offsetof(AcpiFadt, sleep_control_reg) == 244);
static_assert(offsetof(AcpiFadt, sleep_status_reg) == 256);
static_assert(offsetof(AcpiFadt, hypervisor_vendor_id) == 268);

struct __attribute__((packed)) AcpiMadtHeader {
  AcpiTableHeader header;  // "APIC"
  uint32_t local_apic_address;
  uint32_t flags;
};
static_assert(sizeof(AcpiMadtHeader) == 44);

struct __attribute__((packed)) MadtLocalApic {
  uint8_t type;    // 0
  uint8_t length;  // 8
  uint8_t processor_uid;
  uint8_t apic_id;
  uint32_t flags;
};
static_assert(sizeof(MadtLocalApic) == 8);

struct __attribute__((packed)) MadtIoApic {
  uint8_t type;    // 1
  uint8_t length;  // 12
  uint8_t io_apic_id;
  uint8_t reserved;
  uint32_t address;
  uint32_t gsi_base;
};
static_assert(sizeof(MadtIoApic) == 12);

// Not written (see acpi.cc); defined so that tests and readers of the table
// have the layout.
struct __attribute__((packed)) MadtInterruptOverride {
  uint8_t type;    // 2
  uint8_t length;  // 10
  uint8_t bus;     // 0: ISA
  uint8_t source;  // ISA IRQ
  uint32_t gsi;
  uint16_t flags;  // MPS INTI flags
};
static_assert(sizeof(MadtInterruptOverride) == 10);

struct __attribute__((packed)) MadtLocalApicNmi {
  uint8_t type;    // 4
  uint8_t length;  // 6
  uint8_t processor_uid;  // 0xff: all processors
  uint16_t flags;         // MPS INTI flags; 0: conforms to the bus
  uint8_t lint;
};
static_assert(sizeof(MadtLocalApicNmi) == 6);

// A virtio-mmio device for the DSDT: \_SB_.VRnn with _HID "LNRO0005" (the ID
// Linux's virtio_mmio driver matches), _UID n, and _CRS = one 32-bit fixed
// memory range + one ISA IRQ (edge, active high). Kernels without
// VIRTIO_MMIO_CMDLINE_DEVICES (Debian's) find the devices only this way.
struct AcpiMmioDevice {
  uint64_t base;  // below 4 GiB
  uint32_t size;
  uint32_t irq;   // < 16
};

// Writes RSDP, XSDT, FADT, DSDT and MADT at layout::kAcpiTablesAddr and returns
// the RSDP's address (kAcpiTablesAddr). Refuses num_cpus outside
// 1..kAcpiMaxCpus, more than 100 or malformed virtio devices, and tables that
// would not fit in kAcpiTablesMaxSize bytes.
Result<uint64_t> write_acpi_tables(const GuestMemory& mem, int num_cpus,
                                   std::span<const AcpiMmioDevice> virtio = {});

// Patch the RSDP address into the already-written zero page (at
// layout::kZeroPageAddr) or PVH start info (at layout::kPvhStartInfoAddr).
// Each refuses if that structure has not been written yet (no "HdrS" / PVH
// magic: the later write would clear the field again) or if rsdp does not point
// at an RSDP signature.
Result<void> set_zero_page_rsdp(const GuestMemory& mem, uint64_t rsdp);
Result<void> set_pvh_rsdp(const GuestMemory& mem, uint64_t rsdp);

namespace aml {

// AML PkgLength encoding (ACPI 6.4, 20.2.4) for a package whose contents after
// the PkgLength field are body_len bytes: the encoded value counts the
// PkgLength bytes themselves. Up to 4 bytes; body_len must be < 2^28 - 4.
std::vector<uint8_t> pkg_length(size_t body_len);

// The DSDT's AML body (everything after the table header).
std::vector<uint8_t> dsdt_body(std::span<const AcpiMmioDevice> virtio = {});

}  // namespace aml

}  // namespace vmm::boot
