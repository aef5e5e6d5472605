#include "boot/x86_64/acpi.h"

#include <cstring>
#include <string_view>

#include "boot/x86_64/boot_params.h"
#include "boot/x86_64/layout.h"
#include "boot/x86_64/table_bytes.h"
#include "boot/x86_64/mptable.h"
#include "boot/x86_64/zero_page.h"

namespace vmm::boot {

namespace {

// The MP table (at the EBDA) must end before the ACPI block starts, and the
// block must stay inside the reserved range below 1 MiB.
static_assert(layout::kMpTableAddr + mptable_size(kMpMaxCpus) <= layout::kAcpiTablesAddr);
static_assert(layout::kAcpiTablesAddr % 16 == 0);  // where Linux scans for the RSDP
static_assert(layout::kAcpiTablesAddr >= layout::kEbdaStart);
static_assert(layout::kAcpiTablesAddr + layout::kAcpiTablesMaxSize <= layout::kHimemStart);
static_assert(layout::kAcpiSleepControlPort >= layout::kAcpiPmPort &&
              layout::kAcpiSleepStatusPort >= layout::kAcpiPmPort &&
              layout::kAcpiResetPort >= layout::kAcpiPmPort &&
              layout::kAcpiSleepControlPort < layout::kAcpiPmPort + layout::kAcpiPmPortLen &&
              layout::kAcpiSleepStatusPort < layout::kAcpiPmPort + layout::kAcpiPmPortLen &&
              layout::kAcpiResetPort < layout::kAcpiPmPort + layout::kAcpiPmPortLen);
static_assert(layout::kAcpiS5SleepType <= 7);  // SLP_TYP is 3 bits
static_assert(layout::kSerialIrq < 16);        // an ISA IRQ (IRQ descriptor mask)
static_assert(layout::kIoapicAddr <= UINT32_MAX && layout::kLapicAddr <= UINT32_MAX);

constexpr char kOemId[6] = {'V', 'M', 'M', 'K', 'V', 'M'};
constexpr char kCreatorId[4] = {'V', 'M', 'M', ' '};
constexpr uint32_t kOemRevision = 1;
constexpr uint32_t kCreatorRevision = 1;
constexpr char kHypervisorVendor[8] = {'V', 'M', 'M', 'K', 'V', 'M', 0, 0};
constexpr uint64_t kTableAlign = 16;


// oem_table_id is "VMM" + the signature, space padded to 8.
AcpiTableHeader make_header(std::string_view sig, uint8_t revision) {
  AcpiTableHeader h{};
  std::memcpy(h.signature, sig.data(), 4);
  h.revision = revision;
  std::memcpy(h.oem_id, kOemId, sizeof(kOemId));
  std::memcpy(h.oem_table_id, "VMM     ", 8);
  std::memcpy(h.oem_table_id + 3, sig.data(), 4);
  h.oem_revision = kOemRevision;
  std::memcpy(h.creator_id, kCreatorId, sizeof(kCreatorId));
  h.creator_revision = kCreatorRevision;
  return h;
}

// Fills in length and checksum of the table in `t` (header at offset 0).
void finish_table(std::vector<uint8_t>& t) {
  uint32_t len = static_cast<uint32_t>(t.size());
  std::memcpy(t.data() + offsetof(AcpiTableHeader, length), &len, sizeof(len));
  t[offsetof(AcpiTableHeader, checksum)] = 0;
  t[offsetof(AcpiTableHeader, checksum)] = table_checksum(t.data(), t.size());
}

AcpiGas io_register8(uint16_t port) {
  AcpiGas g{};
  g.space_id = kGasSystemIo;
  g.bit_width = 8;
  g.bit_offset = 0;
  g.access_size = kGasAccessByte;
  g.address = port;
  return g;
}

std::vector<uint8_t> build_fadt(uint64_t dsdt_addr) {
  AcpiFadt f{};
  f.header = make_header("FACP", kFadtRevision);
  f.minor_version = kFadtMinorRevision;
  // No FACS (optional when hardware-reduced), no SCI, no SMI command port
  // (ACPI is always enabled), no PM1/PM2/GPE/PM-timer blocks.
  f.preferred_pm_profile = 0;  // unspecified
  f.dsdt = static_cast<uint32_t>(dsdt_addr);  // below 1 MiB; X_DSDT holds the same
  f.x_dsdt = dsdt_addr;
  // i8042 present (the VMM emulates enough of one for the reset line); no VGA;
  // no CMOS RTC (so Linux registers no rtc_cmos device, which would want IRQ 8
  // that, hardware-reduced, nothing maps). MSI and ASPM bits: left clear.
  f.iapc_boot_arch = kIapc8042 | kIapcVgaNotPresent | kIapcCmosRtcNotPresent;
  // PWR_BUTTON/SLP_BUTTON set: there are no fixed-feature buttons, so Linux
  // creates no button devices for them.
  f.flags = kFadtHwReducedAcpi | kFadtResetRegSup | kFadtPwrButton | kFadtSlpButton;
  f.reset_reg = io_register8(layout::kAcpiResetPort);
  f.reset_value = layout::kAcpiResetValue;
  f.sleep_control_reg = io_register8(layout::kAcpiSleepControlPort);
  f.sleep_status_reg = io_register8(layout::kAcpiSleepStatusPort);
  std::memcpy(&f.hypervisor_vendor_id, kHypervisorVendor, sizeof(kHypervisorVendor));

  std::vector<uint8_t> t;
  append_bytes(t, f);
  finish_table(t);
  return t;
}

std::vector<uint8_t> build_dsdt(std::span<const AcpiMmioDevice> virtio) {
  std::vector<uint8_t> t;
  append_bytes(t, make_header("DSDT", kDsdtRevision));
  auto body = aml::dsdt_body(virtio);
  t.insert(t.end(), body.begin(), body.end());
  finish_table(t);
  return t;
}

// Interrupt Source Overrides: none. KVM's default GSI routing (kvm_setup_default_irq_routing,
// virt/kvm/irqchip.c / arch/x86/kvm/irq_comm.c: GSI n -> IOAPIC pin n and, for n < 16, PIC
// pin n%8) and its in-kernel PIT (which raises GSI 0) put the PIT on IOAPIC pin 0, not pin 2 as
// on PC chipsets; QEMU only advertises "IRQ0 -> GSI 2" because it installs its own routing with
// GSI 0 -> pin 2 (kvm_pc_setup_irq_routing), which this VMM does not. The MP table here likewise
// maps ISA IRQ 0 to pin 0, and Firecracker's MADT carries no override either. Two more reasons:
// hardware-reduced, Linux never uses the PIT interrupt (its timer init is skipped), and with
// FADT.SCI_INT = 0 Linux's acpi_parse_int_src_ovr() would take an override of source 0 for the
// SCI's and configure GSI 2 level-triggered, active-low. The other ISA IRQs map 1:1, which is
// also what an absent override means.
std::vector<uint8_t> build_madt(int num_cpus) {
  std::vector<uint8_t> t;
  AcpiMadtHeader h{};
  h.header = make_header("APIC", kMadtRevision);
  h.local_apic_address = static_cast<uint32_t>(layout::kLapicAddr);
  h.flags = kMadtPcatCompat;
  append_bytes(t, h);
  for (int i = 0; i < num_cpus; ++i) {
    MadtLocalApic lapic{};
    lapic.type = kMadtLocalApic;
    lapic.length = sizeof(MadtLocalApic);
    lapic.processor_uid = static_cast<uint8_t>(i);
    lapic.apic_id = static_cast<uint8_t>(i);
    lapic.flags = kMadtLapicEnabled;
    append_bytes(t, lapic);
  }
  MadtIoApic ioapic{};
  ioapic.type = kMadtIoApic;
  ioapic.length = sizeof(MadtIoApic);
  ioapic.io_apic_id = static_cast<uint8_t>(num_cpus);  // as in the MP table
  ioapic.address = static_cast<uint32_t>(layout::kIoapicAddr);
  ioapic.gsi_base = 0;
  append_bytes(t, ioapic);
  MadtLocalApicNmi nmi{};
  nmi.type = kMadtLocalApicNmi;
  nmi.length = sizeof(MadtLocalApicNmi);
  nmi.processor_uid = kMadtAllProcessors;
  nmi.flags = 0;  // conforms to the bus: edge, active high
  nmi.lint = 1;
  append_bytes(t, nmi);
  finish_table(t);
  return t;
}

std::vector<uint8_t> build_xsdt(const std::vector<uint64_t>& entries) {
  std::vector<uint8_t> t;
  append_bytes(t, make_header("XSDT", kXsdtRevision));
  for (uint64_t e : entries) append_bytes(t, e);
  finish_table(t);
  return t;
}

AcpiRsdp build_rsdp(uint64_t xsdt_addr) {
  AcpiRsdp r{};
  std::memcpy(r.signature, "RSD PTR ", 8);
  std::memcpy(r.oem_id, kOemId, sizeof(kOemId));
  r.revision = kRsdpRevision;
  r.rsdt_address = 0;
  r.length = sizeof(AcpiRsdp);
  r.xsdt_address = xsdt_addr;
  const auto* p = reinterpret_cast<const uint8_t*>(&r);
  r.checksum = table_checksum(p, kRsdpV1Length);
  r.extended_checksum = table_checksum(p, sizeof(AcpiRsdp));
  return r;
}

uint64_t align_up16(uint64_t v) { return (v + kTableAlign - 1) & ~(kTableAlign - 1); }

// --- AML (ACPI 6.4, chapter 20) ---
constexpr uint8_t kZeroOp = 0x00;
constexpr uint8_t kOneOp = 0x01;
constexpr uint8_t kNameOp = 0x08;
constexpr uint8_t kBytePrefix = 0x0a;
constexpr uint8_t kWordPrefix = 0x0b;
constexpr uint8_t kDWordPrefix = 0x0c;
constexpr uint8_t kScopeOp = 0x10;
constexpr uint8_t kBufferOp = 0x11;
constexpr uint8_t kPackageOp = 0x12;
constexpr uint8_t kExtOpPrefix = 0x5b;
constexpr uint8_t kDeviceOp = 0x82;  // after kExtOpPrefix

using Bytes = std::vector<uint8_t>;

void put(Bytes& b, const Bytes& more) { b.insert(b.end(), more.begin(), more.end()); }

// NameSeg: exactly 4 characters (callers pad with '_').
void put_nameseg(Bytes& b, std::string_view seg) { b.insert(b.end(), seg.begin(), seg.end()); }

// ComputationalData for an integer, in the shortest form (as iasl emits it).
void put_integer(Bytes& b, uint32_t v) {
  if (v == 0) {
    b.push_back(kZeroOp);
  } else if (v == 1) {
    b.push_back(kOneOp);
  } else if (v <= 0xff) {
    b.push_back(kBytePrefix);
    b.push_back(static_cast<uint8_t>(v));
  } else if (v <= 0xffff) {
    b.push_back(kWordPrefix);
    b.push_back(static_cast<uint8_t>(v));
    b.push_back(static_cast<uint8_t>(v >> 8));
  } else {
    b.push_back(kDWordPrefix);
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
}

// Op PkgLength body
Bytes pkg(std::initializer_list<uint8_t> op, const Bytes& body) {
  Bytes b(op);
  put(b, aml::pkg_length(body.size()));
  put(b, body);
  return b;
}

// Name (seg, <data>)
Bytes name(std::string_view seg, const Bytes& data) {
  Bytes b{kNameOp};
  put_nameseg(b, seg);
  put(b, data);
  return b;
}

// EISAID("PNP0501") as the DWordConst iasl emits: three 5-bit letters and four
// hex digits, stored big-endian (ACPI 6.4, 19.6.43).
Bytes eisa_id(std::string_view id) {
  auto hex = [](char c) -> uint32_t {
    return static_cast<uint32_t>(c <= '9' ? c - '0' : c - 'A' + 10);
  };
  uint32_t v = (static_cast<uint32_t>(id[0] - '@') << 26) |
               (static_cast<uint32_t>(id[1] - '@') << 21) |
               (static_cast<uint32_t>(id[2] - '@') << 16) | (hex(id[3]) << 12) |
               (hex(id[4]) << 8) | (hex(id[5]) << 4) | hex(id[6]);
  Bytes b{kDWordPrefix};
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<uint8_t>(v >> shift));
  return b;
}

// Buffer holding a resource template (ACPI 6.4, 6.4) of a legacy ISA device:
// one I/O port range per {port, length}, its IRQ, end tag.
struct IoRange {
  uint16_t port;
  uint8_t length;
};
Bytes isa_device_crs(std::initializer_list<IoRange> io, uint32_t irq) {
  Bytes rt;
  // I/O Port Descriptor (small, type 0x08, 7 bytes): 16-bit decode, min, max,
  // alignment, length.
  for (const auto& r : io)
    rt.insert(rt.end(), {0x47, 0x01, static_cast<uint8_t>(r.port), static_cast<uint8_t>(r.port >> 8),
                         static_cast<uint8_t>(r.port), static_cast<uint8_t>(r.port >> 8), 0x00,
                         r.length});
  // IRQ Descriptor without the flags byte (small, type 0x04, 2 bytes): an IRQ
  // mask; this form means edge-triggered, active-high, exclusive.
  const uint16_t mask = static_cast<uint16_t>(1u << irq);
  rt.insert(rt.end(), {0x22, static_cast<uint8_t>(mask), static_cast<uint8_t>(mask >> 8)});
  rt.insert(rt.end(), {0x79, 0x00});  // End Tag; checksum 0 = "treat as valid"
  Bytes body;
  put_integer(body, static_cast<uint32_t>(rt.size()));  // BufferSize
  put(body, rt);
  return pkg({kBufferOp}, body);
}

// Device (SEG) { Name (_HID, EISAID (hid)) Name (_CRS, crs) }
Bytes isa_device(std::string_view seg, std::string_view hid, const Bytes& crs) {
  Bytes dev;
  put_nameseg(dev, seg);
  put(dev, name("_HID", eisa_id(hid)));
  put(dev, name("_CRS", crs));
  return pkg({kExtOpPrefix, kDeviceOp}, dev);
}

// String constant: StringPrefix, ASCII, NUL.
Bytes string_const(std::string_view text) {
  Bytes b{0x0d};
  b.insert(b.end(), text.begin(), text.end());
  b.push_back(0);
  return b;
}

// Resource template of a virtio-mmio device: Memory32Fixed + IRQ + end tag.
Bytes virtio_crs(const AcpiMmioDevice& d) {
  Bytes rt;
  // 32-bit Fixed Memory Range Descriptor (large, type 0x06, 9 data bytes):
  // information (bit 0: read/write), base, length.
  rt.insert(rt.end(), {0x86, 0x09, 0x00, 0x01});
  for (int i = 0; i < 4; ++i) rt.push_back(static_cast<uint8_t>(d.base >> (8 * i)));
  for (int i = 0; i < 4; ++i) rt.push_back(static_cast<uint8_t>(d.size >> (8 * i)));
  const uint16_t mask = static_cast<uint16_t>(1u << d.irq);
  rt.insert(rt.end(), {0x22, static_cast<uint8_t>(mask), static_cast<uint8_t>(mask >> 8)});
  rt.insert(rt.end(), {0x79, 0x00});
  Bytes body;
  put_integer(body, static_cast<uint32_t>(rt.size()));
  put(body, rt);
  return pkg({kBufferOp}, body);
}

}  // namespace

namespace aml {

std::vector<uint8_t> pkg_length(size_t body_len) {
  // 1 byte: bits 0-5 hold the length (<= 63). n bytes (2..4): bits 6-7 of the
  // lead byte = n - 1, its bits 0-3 = the low nibble, following bytes the rest.
  for (size_t n = 1; n <= 4; ++n) {
    size_t total = body_len + n;
    if (n == 1 && total <= 0x3f) return {static_cast<uint8_t>(total)};
    if (n > 1 && total < (size_t{1} << (4 + 8 * (n - 1)))) {
      std::vector<uint8_t> b;
      b.push_back(static_cast<uint8_t>(((n - 1) << 6) | (total & 0x0f)));
      for (size_t i = 1; i < n; ++i) b.push_back(static_cast<uint8_t>(total >> (4 + 8 * (i - 1))));
      return b;
    }
  }
  return {};  // too long for AML; callers never build such packages
}

std::vector<uint8_t> dsdt_body(std::span<const AcpiMmioDevice> virtio) {
  Bytes aml;
  // Name (\_S5_, Package (0x04) { S5, S5, Zero, Zero }): SLP_TYPa, SLP_TYPb
  // (unused hardware-reduced: Linux writes only SLP_TYPa), two reserved.
  Bytes s5;
  s5.push_back(4);  // NumElements
  put_integer(s5, layout::kAcpiS5SleepType);
  put_integer(s5, layout::kAcpiS5SleepType);
  put_integer(s5, 0);
  put_integer(s5, 0);
  put(aml, name("_S5_", pkg({kPackageOp}, s5)));

  // Scope (\_SB_) { Device (COM1) { Name (_HID, EISAID ("PNP0501"))
  //                                 Name (_CRS, ResourceTemplate () {...}) }
  //                 Device (PS2K) { ... EISAID ("PNP0303") ... } ... }
  // Each _CRS IRQ is how a hardware-reduced ACPI kernel (no legacy PIC, so no
  // ISA IRQ is set up by default) learns to map it, through PNP: Linux's i8042
  // driver finds the controller as PNP0303 and requests the IRQ its _CRS maps.
  // Without PS2K, or with i8042.nopnp on the command line (so no longer in our
  // default), it probes the ports directly and request_irq(1) fails with
  // -EINVAL ("probe of i8042 failed with error -22").
  Bytes sb;
  put_nameseg(sb, "_SB_");
  put(sb, isa_device("COM1", "PNP0501", isa_device_crs({{layout::kSerialPort, 8}},
                                                       layout::kSerialIrq)));
  put(sb, isa_device("PS2K", "PNP0303",
                     isa_device_crs({{layout::kI8042DataPort, 1}, {layout::kI8042CommandPort, 1}},
                                    layout::kI8042Irq)));
  // Device (VRnn) { Name (_HID, "LNRO0005") Name (_UID, n) Name (_CRS, ...) }
  for (size_t i = 0; i < virtio.size(); ++i) {
    Bytes v;
    char seg[5] = {'V', 'R', static_cast<char>('0' + i / 10), static_cast<char>('0' + i % 10), 0};
    put_nameseg(v, seg);
    put(v, name("_HID", string_const("LNRO0005")));
    Bytes uid;
    put_integer(uid, static_cast<uint32_t>(i));
    put(v, name("_UID", uid));
    put(v, name("_CRS", virtio_crs(virtio[i])));
    put(sb, pkg({kExtOpPrefix, kDeviceOp}, v));
  }
  put(aml, pkg({kScopeOp}, sb));
  return aml;
}

}  // namespace aml

Result<uint64_t> write_acpi_tables(const GuestMemory& mem, int num_cpus,
                                   std::span<const AcpiMmioDevice> virtio) {
  if (num_cpus < 1 || num_cpus > kAcpiMaxCpus)
    return make_error("ACPI tables: {} vCPUs is outside the supported range 1..{}", num_cpus,
                      kAcpiMaxCpus);
  if (virtio.size() > 100) return make_error("ACPI tables: {} virtio devices (max 100)", virtio.size());
  for (const auto& d : virtio) {
    if (d.irq >= 16 || d.size == 0 || d.base + d.size > (uint64_t{1} << 32))
      return make_error("ACPI tables: virtio device at {:#x} (+{:#x}, irq {}) cannot be described",
                        d.base, d.size, d.irq);
  }

  // Layout: RSDP, XSDT, FADT, DSDT, MADT, each 16-byte aligned.
  const uint64_t base = layout::kAcpiTablesAddr;
  const uint64_t xsdt_off = align_up16(sizeof(AcpiRsdp));
  const uint64_t xsdt_size = sizeof(AcpiTableHeader) + 2 * sizeof(uint64_t);
  const uint64_t fadt_off = align_up16(xsdt_off + xsdt_size);
  const uint64_t dsdt_off = align_up16(fadt_off + sizeof(AcpiFadt));
  auto dsdt = build_dsdt(virtio);
  const uint64_t madt_off = align_up16(dsdt_off + dsdt.size());
  auto madt = build_madt(num_cpus);
  auto fadt = build_fadt(base + dsdt_off);
  auto xsdt = build_xsdt({base + fadt_off, base + madt_off});
  if (xsdt.size() != xsdt_size) return make_error("ACPI tables: internal XSDT size mismatch");
  const uint64_t total = madt_off + madt.size();
  if (total > layout::kAcpiTablesMaxSize)
    return make_error("ACPI tables for {} vCPUs ({} bytes) exceed the {} bytes reserved at {:#x}",
                      num_cpus, total, layout::kAcpiTablesMaxSize, base);

  std::vector<uint8_t> block(total, 0);
  AcpiRsdp rsdp = build_rsdp(base + xsdt_off);
  std::memcpy(block.data(), &rsdp, sizeof(rsdp));
  std::memcpy(block.data() + xsdt_off, xsdt.data(), xsdt.size());
  std::memcpy(block.data() + fadt_off, fadt.data(), fadt.size());
  std::memcpy(block.data() + dsdt_off, dsdt.data(), dsdt.size());
  std::memcpy(block.data() + madt_off, madt.data(), madt.size());
  auto w = mem.write(base, block);
  if (!w.ok()) return make_error("writing ACPI tables: {}", w.error().to_string());
  return base;
}

namespace {

Result<void> check_rsdp_signature(const GuestMemory& mem, uint64_t rsdp) {
  char sig[8];
  auto r = mem.read(rsdp, std::span(reinterpret_cast<uint8_t*>(sig), sizeof(sig)));
  if (!r.ok() || std::memcmp(sig, "RSD PTR ", 8) != 0)
    return make_error("no ACPI RSDP at {:#x}", rsdp);
  return ok();
}

}  // namespace

Result<void> set_zero_page_rsdp(const GuestMemory& mem, uint64_t rsdp) {
  VMM_CHECK(check_rsdp_signature(mem, rsdp));
  const uint64_t magic_at =
      layout::kZeroPageAddr + offsetof(BootParams, hdr) + offsetof(SetupHeader, header);
  auto magic = mem.read_obj<uint32_t>(magic_at);
  if (!magic.ok() || *magic != kHdrSMagic)
    return make_error("setting the RSDP address: the zero page has not been written yet");
  auto w = mem.write_obj(layout::kZeroPageAddr + offsetof(BootParams, acpi_rsdp_addr), rsdp);
  if (!w.ok()) return make_error("setting the RSDP address: {}", w.error().to_string());
  return ok();
}

Result<void> set_pvh_rsdp(const GuestMemory& mem, uint64_t rsdp) {
  VMM_CHECK(check_rsdp_signature(mem, rsdp));
  auto magic = mem.read_obj<uint32_t>(layout::kPvhStartInfoAddr + offsetof(HvmStartInfo, magic));
  if (!magic.ok() || *magic != kPvhStartMagic)
    return make_error("setting the RSDP address: the PVH start info has not been written yet");
  auto w = mem.write_obj(layout::kPvhStartInfoAddr + offsetof(HvmStartInfo, rsdp_paddr), rsdp);
  if (!w.ok()) return make_error("setting the RSDP address: {}", w.error().to_string());
  return ok();
}

}  // namespace vmm::boot
