#include "boot/x86_64/mptable.h"

#include <cstring>
#include <vector>

#include "boot/x86_64/layout.h"
#include "boot/x86_64/table_bytes.h"

namespace vmm::boot {

Result<void> write_mptable(const GuestMemory& mem, int num_cpus) {
  if (num_cpus < 1 || num_cpus > kMpMaxCpus)
    return make_error("MP table: {} vCPUs is outside the supported range 1..{}", num_cpus,
                      kMpMaxCpus);
  const uint64_t total = mptable_size(num_cpus);
  if (layout::kMpTableAddr + total > layout::kHimemStart)
    return make_error("MP table for {} vCPUs ({} bytes) does not fit below 1 MiB", num_cpus,
                      total);

  const uint64_t config_addr = layout::kMpTableAddr + sizeof(MpFloatingPointer);
  std::vector<uint8_t> table;  // configuration table: header + entries
  table.resize(sizeof(MpConfigHeader));
  uint16_t entries = 0;

  for (int i = 0; i < num_cpus; ++i) {
    MpProcessorEntry cpu{};
    cpu.type = kMpProcessor;
    cpu.apic_id = static_cast<uint8_t>(i);
    cpu.apic_version = kLapicVersion;
    cpu.cpu_flags = kMpCpuEnabled | (i == 0 ? kMpCpuBsp : 0);
    cpu.cpu_signature = 0x600;            // family 6
    cpu.feature_flags = (1u << 9) | 1u;   // APIC | FPU
    append_bytes(table, cpu);
    ++entries;
  }
  MpBusEntry bus{};
  bus.type = kMpBus;
  bus.bus_id = 0;
  std::memcpy(bus.bus_type, "ISA   ", 6);
  append_bytes(table, bus);
  ++entries;

  const uint8_t ioapic_id = static_cast<uint8_t>(num_cpus);
  MpIoapicEntry ioapic{};
  ioapic.type = kMpIoapic;
  ioapic.apic_id = ioapic_id;
  ioapic.apic_version = kIoapicVersion;
  ioapic.flags = 1;
  ioapic.addr = static_cast<uint32_t>(layout::kIoapicAddr);
  append_bytes(table, ioapic);
  ++entries;

  for (int irq = 0; irq < kMpIsaIrqs; ++irq) {
    MpIntsrcEntry src{};
    src.type = kMpIntsrc;
    src.irq_type = kMpIrqInt;
    src.irq_flags = 0;  // conforms to bus
    src.src_bus = 0;
    src.src_bus_irq = static_cast<uint8_t>(irq);
    src.dst_ioapic = ioapic_id;
    src.dst_pin = static_cast<uint8_t>(irq);
    append_bytes(table, src);
    ++entries;
  }
  const uint8_t lints[2][2] = {{kMpIrqExtInt, 0}, {kMpIrqNmi, 1}};
  for (const auto& l : lints) {
    MpLintsrcEntry lint{};
    lint.type = kMpLintsrc;
    lint.irq_type = l[0];
    lint.src_bus = 0;
    lint.src_bus_irq = 0;
    lint.dst_lapic = 0xff;
    lint.dst_lint = l[1];
    append_bytes(table, lint);
    ++entries;
  }

  MpConfigHeader hdr{};
  std::memcpy(hdr.signature, "PCMP", 4);
  hdr.length = static_cast<uint16_t>(table.size());
  hdr.spec_rev = kMpSpecRev;
  std::memcpy(hdr.oem_id, "VMM     ", 8);
  std::memcpy(hdr.product_id, "VMM-x86-64  ", 12);
  hdr.entry_count = entries;
  hdr.lapic_addr = static_cast<uint32_t>(layout::kLapicAddr);
  std::memcpy(table.data(), &hdr, sizeof(hdr));
  table[offsetof(MpConfigHeader, checksum)] = table_checksum(table.data(), table.size());

  MpFloatingPointer mpf{};
  std::memcpy(mpf.signature, "_MP_", 4);
  mpf.physptr = static_cast<uint32_t>(config_addr);
  mpf.length = 1;
  mpf.spec_rev = kMpSpecRev;
  mpf.checksum = table_checksum(reinterpret_cast<const uint8_t*>(&mpf), sizeof(mpf));

  auto w = mem.write_obj(layout::kMpTableAddr, mpf);
  if (w.ok()) w = mem.write(config_addr, table);
  if (!w.ok()) return make_error("writing MP table: {}", w.error().to_string());
  return ok();
}

}  // namespace vmm::boot
