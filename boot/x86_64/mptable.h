// Intel MultiProcessor Specification 1.4 tables, written from the spec: a
// floating pointer at kMpTableAddr followed by the configuration table.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"

namespace vmm::boot {

inline constexpr int kMpMaxCpus = 254;  // APIC ids 0..253; the IOAPIC takes num_cpus
inline constexpr uint8_t kMpSpecRev = 4;  // MP spec 1.4
inline constexpr uint8_t kLapicVersion = 0x14;
inline constexpr uint8_t kIoapicVersion = 0x11;
inline constexpr int kMpIsaIrqs = 16;

// Entry types.
inline constexpr uint8_t kMpProcessor = 0;
inline constexpr uint8_t kMpBus = 1;
inline constexpr uint8_t kMpIoapic = 2;
inline constexpr uint8_t kMpIntsrc = 3;
inline constexpr uint8_t kMpLintsrc = 4;
// Interrupt types.
inline constexpr uint8_t kMpIrqInt = 0;
inline constexpr uint8_t kMpIrqNmi = 1;
inline constexpr uint8_t kMpIrqExtInt = 3;
// Processor flags.
inline constexpr uint8_t kMpCpuEnabled = 0x01;
inline constexpr uint8_t kMpCpuBsp = 0x02;

struct __attribute__((packed)) MpFloatingPointer {
  char signature[4];  // "_MP_"
  uint32_t physptr;   // configuration table address
  uint8_t length;     // in 16-byte units: 1
  uint8_t spec_rev;
  uint8_t checksum;
  uint8_t feature1;  // 0: a configuration table is present
  uint8_t feature2;
  uint8_t feature3[3];
};
static_assert(sizeof(MpFloatingPointer) == 16);

struct __attribute__((packed)) MpConfigHeader {
  char signature[4];  // "PCMP"
  uint16_t length;    // base table length, header included
  uint8_t spec_rev;
  uint8_t checksum;
  char oem_id[8];
  char product_id[12];
  uint32_t oem_table_ptr;
  uint16_t oem_table_size;
  uint16_t entry_count;
  uint32_t lapic_addr;
  uint16_t ext_table_length;
  uint8_t ext_table_checksum;
  uint8_t reserved;
};
static_assert(sizeof(MpConfigHeader) == 44);
static_assert(offsetof(MpConfigHeader, entry_count) == 34);
static_assert(offsetof(MpConfigHeader, lapic_addr) == 36);

struct __attribute__((packed)) MpProcessorEntry {
  uint8_t type;
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t cpu_flags;
  uint32_t cpu_signature;
  uint32_t feature_flags;
  uint32_t reserved[2];
};
static_assert(sizeof(MpProcessorEntry) == 20);

struct __attribute__((packed)) MpBusEntry {
  uint8_t type;
  uint8_t bus_id;
  char bus_type[6];
};
static_assert(sizeof(MpBusEntry) == 8);

struct __attribute__((packed)) MpIoapicEntry {
  uint8_t type;
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t flags;  // bit 0: enabled
  uint32_t addr;
};
static_assert(sizeof(MpIoapicEntry) == 8);

struct __attribute__((packed)) MpIntsrcEntry {
  uint8_t type;
  uint8_t irq_type;
  uint16_t irq_flags;
  uint8_t src_bus;
  uint8_t src_bus_irq;
  uint8_t dst_ioapic;
  uint8_t dst_pin;
};
static_assert(sizeof(MpIntsrcEntry) == 8);

struct __attribute__((packed)) MpLintsrcEntry {
  uint8_t type;
  uint8_t irq_type;
  uint16_t irq_flags;
  uint8_t src_bus;
  uint8_t src_bus_irq;
  uint8_t dst_lapic;  // 0xff: all local APICs
  uint8_t dst_lint;
};
static_assert(sizeof(MpLintsrcEntry) == 8);

// Bytes of the floating pointer plus configuration table for num_cpus CPUs.
constexpr uint64_t mptable_size(int num_cpus) {
  return sizeof(MpFloatingPointer) + sizeof(MpConfigHeader) +
         uint64_t(num_cpus) * sizeof(MpProcessorEntry) + sizeof(MpBusEntry) +
         sizeof(MpIoapicEntry) + kMpIsaIrqs * sizeof(MpIntsrcEntry) + 2 * sizeof(MpLintsrcEntry);
}

// Writes the MP tables at kMpTableAddr (config table right after the floating
// pointer). Refuses num_cpus outside 1..254 or tables that would reach 1 MiB.
Result<void> write_mptable(const GuestMemory& mem, int num_cpus);

}  // namespace vmm::boot
