#include "boot/x86_64/acpi.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "boot/x86_64/e820.h"
#include "boot/x86_64/layout.h"
#include "boot/x86_64/mptable.h"
#include "boot/x86_64/zero_page.h"
#include "test_images.h"

namespace vmm::boot {
namespace {

using namespace vmm::boot::testing;

constexpr uint64_t k128M = 128ull << 20;

uint8_t byte_sum(const std::vector<uint8_t>& v) {
  uint8_t s = 0;
  for (auto b : v) s = static_cast<uint8_t>(s + b);
  return s;
}

std::vector<uint8_t> read_bytes(const GuestMemory& mem, uint64_t gpa, uint64_t len) {
  std::vector<uint8_t> v(len);
  EXPECT_TRUE(mem.read(gpa, v).ok());
  return v;
}

template <typename T>
T read_at(const std::vector<uint8_t>& buf, size_t off) {
  T v{};
  EXPECT_LE(off + sizeof(T), buf.size());
  if (off + sizeof(T) <= buf.size()) std::memcpy(&v, buf.data() + off, sizeof(T));
  return v;
}

std::string sig(const char* s, size_t n) { return std::string(s, n); }

// A whole table (header.length bytes) at gpa, after checking it lies in the
// ACPI area.
std::vector<uint8_t> read_table(const GuestMemory& mem, uint64_t gpa) {
  auto hdr = mem.read_obj<AcpiTableHeader>(gpa);
  EXPECT_TRUE(hdr.ok());
  if (!hdr.ok()) return {};
  EXPECT_GE(gpa, layout::kAcpiTablesAddr);
  EXPECT_GE(uint32_t{hdr->length}, sizeof(AcpiTableHeader));
  EXPECT_LE(gpa + hdr->length, layout::kAcpiTablesAddr + layout::kAcpiTablesMaxSize);
  return read_bytes(mem, gpa, hdr->length);
}

struct Tables {
  AcpiRsdp rsdp;
  std::vector<uint64_t> xsdt_entries;
  std::vector<uint8_t> xsdt, fadt, madt, dsdt;
  uint64_t fadt_addr = 0, madt_addr = 0, dsdt_addr = 0;
};

// Follows RSDP -> XSDT -> FADT/MADT, FADT -> DSDT, as an OS does.
Tables walk(const GuestMemory& mem, uint64_t rsdp_addr) {
  Tables t{};
  auto rsdp = mem.read_obj<AcpiRsdp>(rsdp_addr);
  EXPECT_TRUE(rsdp.ok());
  if (!rsdp.ok()) return t;
  t.rsdp = *rsdp;
  t.xsdt = read_table(mem, t.rsdp.xsdt_address);
  if (t.xsdt.size() < sizeof(AcpiTableHeader)) return t;
  for (size_t off = sizeof(AcpiTableHeader); off + 8 <= t.xsdt.size(); off += 8)
    t.xsdt_entries.push_back(read_at<uint64_t>(t.xsdt, off));
  for (uint64_t e : t.xsdt_entries) {
    auto tab = read_table(mem, e);
    if (tab.size() < 4) continue;
    std::string s(reinterpret_cast<const char*>(tab.data()), 4);
    if (s == "FACP") {
      t.fadt = tab;
      t.fadt_addr = e;
    } else if (s == "APIC") {
      t.madt = tab;
      t.madt_addr = e;
    }
  }
  if (t.fadt.size() == sizeof(AcpiFadt)) {
    auto f = read_at<AcpiFadt>(t.fadt, 0);
    t.dsdt_addr = f.x_dsdt;
    t.dsdt = read_table(mem, f.x_dsdt);
  }
  return t;
}

TEST(Acpi, ReturnsRsdpAtTheStartOfTheArea) {
  auto mem = make_guest(k128M);
  auto rsdp = write_acpi_tables(mem, 1);
  ASSERT_TRUE(rsdp.ok()) << rsdp.error().to_string();
  EXPECT_EQ(*rsdp, layout::kAcpiTablesAddr);
  EXPECT_EQ(*rsdp % 16, 0u);
}

TEST(Acpi, RsdpFields) {
  auto mem = make_guest(k128M);
  auto addr = write_acpi_tables(mem, 2);
  ASSERT_TRUE(addr.ok());
  auto rsdp = mem.read_obj<AcpiRsdp>(*addr);
  ASSERT_TRUE(rsdp.ok());
  EXPECT_EQ(sig(rsdp->signature, 8), "RSD PTR ");
  EXPECT_EQ(sig(rsdp->oem_id, 6), "VMMKVM");
  EXPECT_EQ(rsdp->revision, 2);
  // The ACPI structures are packed: gtest takes its arguments by reference, so
  // multi-byte fields are copied to values first (here and below).
  EXPECT_EQ(uint32_t{rsdp->rsdt_address}, 0u);
  EXPECT_EQ(uint32_t{rsdp->length}, 36u);
  EXPECT_NE(uint64_t{rsdp->xsdt_address}, 0u);
  EXPECT_EQ(byte_sum(read_bytes(mem, *addr, 20)), 0);  // ACPI 1.0 checksum
  EXPECT_EQ(byte_sum(read_bytes(mem, *addr, 36)), 0);  // extended checksum
}

// Linux (acpi_find_root_pointer) and other OSes look for "RSD PTR " on 16-byte
// boundaries in 0xe0000..0xfffff and accept the first with a valid checksum.
TEST(Acpi, RsdpFoundByBiosAreaScan) {
  auto mem = make_guest(k128M);
  auto addr = write_acpi_tables(mem, 4);
  ASSERT_TRUE(addr.ok());
  auto area = read_bytes(mem, 0xe0000, 0x20000);
  std::vector<uint64_t> found;
  for (size_t off = 0; off + 36 <= area.size(); off += 16) {
    if (std::memcmp(&area[off], "RSD PTR ", 8) != 0) continue;
    std::vector<uint8_t> v1(area.begin() + off, area.begin() + off + 20);
    std::vector<uint8_t> v2(area.begin() + off, area.begin() + off + 36);
    if (byte_sum(v1) == 0 && byte_sum(v2) == 0) found.push_back(0xe0000 + off);
  }
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0], *addr);
}

TEST(Acpi, EveryTableChecksumsToZero) {
  for (int cpus : {1, 2, 254}) {
    SCOPED_TRACE(cpus);
    auto mem = make_guest(k128M);
    auto addr = write_acpi_tables(mem, cpus);
    ASSERT_TRUE(addr.ok()) << addr.error().to_string();
    Tables t = walk(mem, *addr);
    ASSERT_FALSE(t.xsdt.empty());
    ASSERT_FALSE(t.fadt.empty());
    ASSERT_FALSE(t.madt.empty());
    ASSERT_FALSE(t.dsdt.empty());
    EXPECT_EQ(byte_sum(t.xsdt), 0);
    EXPECT_EQ(byte_sum(t.fadt), 0);
    EXPECT_EQ(byte_sum(t.madt), 0);
    EXPECT_EQ(byte_sum(t.dsdt), 0);
  }
}

TEST(Acpi, XsdtListsFadtAndMadt) {
  auto mem = make_guest(k128M);
  auto addr = write_acpi_tables(mem, 2);
  ASSERT_TRUE(addr.ok());
  Tables t = walk(mem, *addr);
  auto xh = read_at<AcpiTableHeader>(t.xsdt, 0);
  EXPECT_EQ(sig(xh.signature, 4), "XSDT");
  EXPECT_EQ(xh.revision, 1);
  EXPECT_EQ(uint32_t{xh.length}, 36u + 2 * 8);
  EXPECT_EQ(sig(xh.oem_id, 6), "VMMKVM");
  ASSERT_EQ(t.xsdt_entries.size(), 2u);
  EXPECT_EQ(t.xsdt_entries[0], t.fadt_addr);
  EXPECT_EQ(t.xsdt_entries[1], t.madt_addr);
  // The DSDT is reached through the FADT only.
  for (uint64_t e : t.xsdt_entries) EXPECT_NE(e, t.dsdt_addr);
  // Tables are 16-byte aligned and do not overlap.
  struct Span {
    uint64_t start, len;
  };
  std::vector<Span> spans = {{*addr, 36},
                             {t.rsdp.xsdt_address, t.xsdt.size()},
                             {t.fadt_addr, t.fadt.size()},
                             {t.madt_addr, t.madt.size()},
                             {t.dsdt_addr, t.dsdt.size()}};
  for (size_t i = 0; i < spans.size(); ++i) {
    EXPECT_EQ(spans[i].start % 16, 0u);
    for (size_t j = i + 1; j < spans.size(); ++j)
      EXPECT_TRUE(spans[i].start + spans[i].len <= spans[j].start ||
                  spans[j].start + spans[j].len <= spans[i].start)
          << i << " overlaps " << j;
  }
}

TEST(Acpi, FadtFields) {
  auto mem = make_guest(k128M);
  auto addr = write_acpi_tables(mem, 1);
  ASSERT_TRUE(addr.ok());
  Tables t = walk(mem, *addr);
  ASSERT_EQ(t.fadt.size(), 276u);
  auto f = read_at<AcpiFadt>(t.fadt, 0);
  EXPECT_EQ(sig(f.header.signature, 4), "FACP");
  EXPECT_EQ(uint32_t{f.header.length}, 276u);
  EXPECT_EQ(f.header.revision, 6);
  EXPECT_EQ(f.minor_version, 4);
  EXPECT_EQ(sig(f.header.oem_table_id, 8), "VMMFACP ");

  EXPECT_TRUE(f.flags & (1u << 20)) << "HW_REDUCED_ACPI";
  EXPECT_TRUE(f.flags & (1u << 10)) << "RESET_REG_SUP";
  EXPECT_EQ(uint32_t{f.flags}, (1u << 20) | (1u << 10) | (1u << 4) | (1u << 5));
  // i8042 present, VGA not present, CMOS RTC not present; nothing else.
  EXPECT_EQ(uint16_t{f.iapc_boot_arch}, (1u << 1) | (1u << 2) | (1u << 5));
  EXPECT_EQ(f.preferred_pm_profile, 0);

  // Hardware-reduced: no fixed hardware, no SCI, no FACS.
  EXPECT_EQ(uint32_t{f.firmware_ctrl}, 0u);
  EXPECT_EQ(uint64_t{f.x_firmware_ctrl}, 0u);
  EXPECT_EQ(uint16_t{f.sci_int}, 0);
  EXPECT_EQ(uint32_t{f.smi_cmd}, 0u);
  EXPECT_EQ(uint32_t{f.pm1a_evt_blk}, 0u);
  EXPECT_EQ(uint32_t{f.pm1a_cnt_blk}, 0u);
  EXPECT_EQ(uint32_t{f.pm_tmr_blk}, 0u);
  EXPECT_EQ(uint32_t{f.gpe0_blk}, 0u);
  EXPECT_EQ(f.pm1_evt_len, 0);
  EXPECT_EQ(uint64_t{f.x_pm1a_evt_blk.address}, 0u);
  EXPECT_EQ(uint64_t{f.x_pm1a_cnt_blk.address}, 0u);
  EXPECT_EQ(uint64_t{f.x_pm_tmr_blk.address}, 0u);
  EXPECT_EQ(uint64_t{f.x_gpe0_blk.address}, 0u);

  // DSDT: both pointers, same table.
  EXPECT_EQ(uint64_t{f.x_dsdt}, t.dsdt_addr);
  EXPECT_EQ(uint32_t{f.dsdt}, t.dsdt_addr);
  EXPECT_EQ(sig(reinterpret_cast<const char*>(t.dsdt.data()), 4), "DSDT");

  auto check_io8 = [](const AcpiGas& g, uint16_t port) {
    EXPECT_EQ(g.space_id, 1);  // System I/O
    EXPECT_EQ(g.bit_width, 8);
    EXPECT_EQ(g.bit_offset, 0);
    EXPECT_EQ(g.access_size, 1);  // byte
    EXPECT_EQ(uint64_t{g.address}, port);
  };
  check_io8(f.sleep_control_reg, 0x3c0);
  check_io8(f.sleep_status_reg, 0x3c1);
  check_io8(f.reset_reg, 0x3c2);
  EXPECT_EQ(uint64_t{f.sleep_control_reg.address}, layout::kAcpiSleepControlPort);
  EXPECT_EQ(uint64_t{f.sleep_status_reg.address}, layout::kAcpiSleepStatusPort);
  EXPECT_EQ(uint64_t{f.reset_reg.address}, layout::kAcpiResetPort);
  EXPECT_EQ(f.reset_value, 0x01);
  EXPECT_EQ(f.reset_value, layout::kAcpiResetValue);
  char vendor[8];
  std::memcpy(vendor, &f.hypervisor_vendor_id, 8);
  EXPECT_EQ(std::string(vendor, 8), std::string("VMMKVM\0\0", 8));
}

// The exact AML, cross-checked against iasl 20200925 compiling:
//   Name (_S5, Package (0x04) { 0x05, 0x05, 0x00, 0x00 })
//   Scope (\_SB) { Device (COM1) {
//       Name (_HID, EisaId ("PNP0501"))
//       Name (_CRS, ResourceTemplate () {
//           IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
//           IRQNoFlags () {4} }) }
//     Device (PS2K) {
//       Name (_HID, EisaId ("PNP0303"))
//       Name (_CRS, ResourceTemplate () {
//           IO (Decode16, 0x0060, 0x0060, 0x00, 0x01)
//           IO (Decode16, 0x0064, 0x0064, 0x00, 0x01)
//           IRQNoFlags () {1} }) } }
const std::vector<uint8_t> kExpectedDsdtAml = {
    // NameOp "_S5_" PackageOp PkgLength(8) NumElements(4)
    0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04,
    // BytePrefix 5, BytePrefix 5, ZeroOp, ZeroOp
    0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
    // ScopeOp PkgLength(92, two bytes) "_SB_"
    0x10, 0x4c, 0x05, 0x5f, 0x53, 0x42, 0x5f,
    // DeviceOp (ExtOpPrefix 0x82) PkgLength(37) "COM1"
    0x5b, 0x82, 0x25, 0x43, 0x4f, 0x4d, 0x31,
    // NameOp "_HID" DWordPrefix EISAID("PNP0501")
    0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x05, 0x01,
    // NameOp "_CRS" BufferOp PkgLength(16) BytePrefix 13
    0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x10, 0x0a, 0x0d,
    // IO: 16-bit decode, min 0x3f8, max 0x3f8, align 0, length 8
    0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08,
    // IRQ mask 1 << 4; End Tag
    0x22, 0x10, 0x00, 0x79, 0x00,
    // DeviceOp PkgLength(45) "PS2K"
    0x5b, 0x82, 0x2d, 0x50, 0x53, 0x32, 0x4b,
    // NameOp "_HID" DWordPrefix EISAID("PNP0303")
    0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x03, 0x03,
    // NameOp "_CRS" BufferOp PkgLength(24) BytePrefix 21
    0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x18, 0x0a, 0x15,
    // IO 0x60 length 1; IO 0x64 length 1
    0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x00, 0x01, 0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x00, 0x01,
    // IRQ mask 1 << 1; End Tag
    0x22, 0x02, 0x00, 0x79, 0x00};

TEST(Acpi, DsdtAmlExactBytes) {
  EXPECT_EQ(aml::dsdt_body(), kExpectedDsdtAml);

  auto mem = make_guest(k128M);
  auto addr = write_acpi_tables(mem, 1);
  ASSERT_TRUE(addr.ok());
  Tables t = walk(mem, *addr);
  ASSERT_EQ(t.dsdt.size(), 36 + kExpectedDsdtAml.size());
  auto h = read_at<AcpiTableHeader>(t.dsdt, 0);
  EXPECT_EQ(h.revision, 2);
  EXPECT_EQ(sig(h.oem_id, 6), "VMMKVM");
  std::vector<uint8_t> body(t.dsdt.begin() + 36, t.dsdt.end());
  EXPECT_EQ(body, kExpectedDsdtAml);
}

// Cross-checked against iasl 20200925 compiling (inside Scope (\_SB)):
//   Device (VR00) { Name (_HID, "LNRO0005") Name (_UID, 0)
//     Name (_CRS, ResourceTemplate () {
//       Memory32Fixed (ReadWrite, 0xD0001000, 0x1000) IRQNoFlags () {5} }) }
const std::vector<uint8_t> kExpectedVirtioDeviceAml = {
    0x5b, 0x82, 0x34, 0x56, 0x52, 0x30, 0x30, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x4c,
    0x4e, 0x52, 0x4f, 0x30, 0x30, 0x30, 0x35, 0x00, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x00,
    0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x14, 0x0a, 0x11, 0x86, 0x09, 0x00, 0x01, 0x00,
    0x10, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00, 0x22, 0x20, 0x00, 0x79, 0x00};

TEST(Acpi, DsdtDescribesVirtioMmioDevices) {
  const AcpiMmioDevice devs[] = {{0xd0001000, 0x1000, 5}, {0xd0002000, 0x1000, 6}};
  auto body = aml::dsdt_body(std::span(devs, 1));
  // COM1 and PS2K are unchanged; VR00 follows them inside \_SB_.
  ASSERT_GE(body.size(), kExpectedVirtioDeviceAml.size());
  std::vector<uint8_t> tail(body.end() - static_cast<long>(kExpectedVirtioDeviceAml.size()),
                            body.end());
  EXPECT_EQ(tail, kExpectedVirtioDeviceAml);
  EXPECT_EQ(body[14], 0x10);  // ScopeOp
  EXPECT_EQ(body[15], 0x40 | ((body.size() - 15) & 0xf));  // 2-byte PkgLength now

  auto mem = make_guest(k128M);
  auto addr = write_acpi_tables(mem, 1, devs);
  ASSERT_TRUE(addr.ok()) << addr.error().to_string();
  Tables t = walk(mem, *addr);
  EXPECT_EQ(byte_sum(t.dsdt), 0);
  std::string text(t.dsdt.begin(), t.dsdt.end());
  EXPECT_NE(text.find("VR01"), std::string::npos);

  const AcpiMmioDevice bad_irq[] = {{0xd0001000, 0x1000, 16}};
  EXPECT_FALSE(write_acpi_tables(mem, 1, bad_irq).ok());
  const AcpiMmioDevice above_4g[] = {{0xfffff000, 0x2000, 5}};
  EXPECT_FALSE(write_acpi_tables(mem, 1, above_4g).ok());
}

TEST(Acpi, AmlS5PackageMatchesTheSleepType) {
  // The first element of \_S5_ is the SLP_TYP AcpiPm powers off on.
  auto body = aml::dsdt_body();
  ASSERT_GE(body.size(), 10u);
  EXPECT_EQ(body[8], 0x0a);
  EXPECT_EQ(body[9], layout::kAcpiS5SleepType);
}

// Boundaries cross-checked against iasl output for Buffers of 60, 61, 4090 and
// 4091 data bytes.
TEST(Acpi, AmlPkgLengthEncoding) {
  EXPECT_EQ(aml::pkg_length(0), (std::vector<uint8_t>{0x01}));
  EXPECT_EQ(aml::pkg_length(7), (std::vector<uint8_t>{0x08}));
  EXPECT_EQ(aml::pkg_length(62), (std::vector<uint8_t>{0x3f}));
  EXPECT_EQ(aml::pkg_length(63), (std::vector<uint8_t>{0x41, 0x04}));
  EXPECT_EQ(aml::pkg_length(4093), (std::vector<uint8_t>{0x4f, 0xff}));
  EXPECT_EQ(aml::pkg_length(4094), (std::vector<uint8_t>{0x81, 0x00, 0x01}));
  EXPECT_EQ(aml::pkg_length((1u << 20) - 4), (std::vector<uint8_t>{0x8f, 0xff, 0xff}));
  EXPECT_EQ(aml::pkg_length((1u << 20) - 3), (std::vector<uint8_t>{0xc1, 0x00, 0x00, 0x01}));
  EXPECT_EQ(aml::pkg_length((1u << 28) - 5), (std::vector<uint8_t>{0xcf, 0xff, 0xff, 0xff}));
  EXPECT_TRUE(aml::pkg_length(1u << 28).empty());
}

void check_madt(int cpus) {
  SCOPED_TRACE(cpus);
  auto mem = make_guest(k128M);
  auto addr = write_acpi_tables(mem, cpus);
  ASSERT_TRUE(addr.ok()) << addr.error().to_string();
  Tables t = walk(mem, *addr);
  ASSERT_GE(t.madt.size(), sizeof(AcpiMadtHeader));
  auto h = read_at<AcpiMadtHeader>(t.madt, 0);
  EXPECT_EQ(sig(h.header.signature, 4), "APIC");
  EXPECT_EQ(h.header.revision, 5);
  EXPECT_EQ(uint32_t{h.local_apic_address}, layout::kLapicAddr);
  EXPECT_EQ(uint32_t{h.flags}, 1u);  // PCAT_COMPAT
  EXPECT_EQ(uint32_t{h.header.length}, 44u + 8u * cpus + 12u + 6u);

  int lapics = 0, ioapics = 0, overrides = 0, nmis = 0, others = 0;
  size_t off = sizeof(AcpiMadtHeader);
  while (off + 2 <= t.madt.size()) {
    uint8_t type = t.madt[off], len = t.madt[off + 1];
    ASSERT_GE(len, 2);
    ASSERT_LE(off + len, t.madt.size());
    switch (type) {
      case 0: {
        ASSERT_EQ(len, 8);
        auto e = read_at<MadtLocalApic>(t.madt, off);
        EXPECT_EQ(e.processor_uid, lapics);
        EXPECT_EQ(e.apic_id, lapics);
        EXPECT_EQ(uint32_t{e.flags}, 1u);  // enabled
        ++lapics;
        break;
      }
      case 1: {
        ASSERT_EQ(len, 12);
        auto e = read_at<MadtIoApic>(t.madt, off);
        EXPECT_EQ(e.io_apic_id, cpus);
        EXPECT_EQ(uint32_t{e.address}, layout::kIoapicAddr);
        EXPECT_EQ(uint32_t{e.gsi_base}, 0u);
        ++ioapics;
        break;
      }
      case 2:
        ++overrides;
        break;
      case 4: {
        ASSERT_EQ(len, 6);
        auto e = read_at<MadtLocalApicNmi>(t.madt, off);
        EXPECT_EQ(e.processor_uid, 0xff);
        EXPECT_EQ(uint16_t{e.flags}, 0);
        EXPECT_EQ(e.lint, 1);
        ++nmis;
        break;
      }
      default:
        ++others;
    }
    off += len;
  }
  EXPECT_EQ(off, t.madt.size());
  EXPECT_EQ(lapics, cpus);
  EXPECT_EQ(ioapics, 1);
  EXPECT_EQ(overrides, 0);
  EXPECT_EQ(nmis, 1);
  EXPECT_EQ(others, 0);
}

TEST(Acpi, MadtOneCpu) { check_madt(1); }
TEST(Acpi, MadtTwoCpus) { check_madt(2); }
TEST(Acpi, MadtMaxCpus) { check_madt(254); }

TEST(Acpi, RefusesBadCpuCounts) {
  for (int cpus : {0, -1, 255, 1000}) {
    SCOPED_TRACE(cpus);
    auto mem = make_guest(k128M);
    auto r = write_acpi_tables(mem, cpus);
    EXPECT_FALSE(r.ok());
    // Nothing written.
    auto area = read_bytes(mem, layout::kAcpiTablesAddr, 0x1000);
    EXPECT_EQ(std::count(area.begin(), area.end(), 0), 0x1000);
  }
}

TEST(Acpi, FitsBesideTheMpTable) {
  auto mem = make_guest(k128M);
  ASSERT_TRUE(write_mptable(mem, kMpMaxCpus).ok());
  auto before = read_bytes(mem, layout::kMpTableAddr, mptable_size(kMpMaxCpus));
  auto addr = write_acpi_tables(mem, kAcpiMaxCpus);
  ASSERT_TRUE(addr.ok());
  EXPECT_EQ(read_bytes(mem, layout::kMpTableAddr, mptable_size(kMpMaxCpus)), before);
  Tables t = walk(mem, *addr);
  EXPECT_LE(t.madt_addr + t.madt.size(), layout::kAcpiTablesAddr + layout::kAcpiTablesMaxSize);
  // And inside the e820 RESERVED range.
  bool reserved = false;
  for (const auto& e : build_e820(k128M))
    if (e.type == kE820Reserved && e.addr <= layout::kAcpiTablesAddr &&
        e.addr + e.size >= layout::kAcpiTablesAddr + layout::kAcpiTablesMaxSize)
      reserved = true;
  EXPECT_TRUE(reserved);
}

TEST(Acpi, ErrorWhenTheAreaIsNotGuestRam) {
  auto mem = GuestMemory::create_anonymous({{0, 0x80000}});
  ASSERT_TRUE(mem.ok());
  EXPECT_FALSE(write_acpi_tables(*mem, 1).ok());
}

TEST(Acpi, SetZeroPageRsdp) {
  auto mem = make_guest(k128M);
  auto rsdp = write_acpi_tables(mem, 1);
  ASSERT_TRUE(rsdp.ok());
  // Before the zero page exists: refused (write_zero_page would clear it).
  EXPECT_FALSE(set_zero_page_rsdp(mem, *rsdp).ok());

  auto kernel = load_kernel(mem, make_bzimage());
  ASSERT_TRUE(kernel.ok()) << kernel.error().to_string();
  ASSERT_TRUE(write_zero_page(mem, *kernel, 1, std::nullopt, build_e820(k128M)).ok());
  auto before = mem.read_obj<BootParams>(layout::kZeroPageAddr);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(uint64_t{before->acpi_rsdp_addr}, 0u);

  // Not an RSDP: refused.
  EXPECT_FALSE(set_zero_page_rsdp(mem, *rsdp + 16).ok());
  EXPECT_FALSE(set_zero_page_rsdp(mem, 1ull << 40).ok());

  ASSERT_TRUE(set_zero_page_rsdp(mem, *rsdp).ok());
  auto after = mem.read_obj<BootParams>(layout::kZeroPageAddr);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(uint64_t{after->acpi_rsdp_addr}, *rsdp);
  // Nothing else changed.
  BootParams expect = *before;
  expect.acpi_rsdp_addr = *rsdp;
  EXPECT_EQ(std::memcmp(&expect, &*after, sizeof(BootParams)), 0);
}

TEST(Acpi, SetPvhRsdp) {
  auto mem = make_guest(k128M);
  auto rsdp = write_acpi_tables(mem, 2);
  ASSERT_TRUE(rsdp.ok());
  EXPECT_FALSE(set_pvh_rsdp(mem, *rsdp).ok());  // start info not written yet

  ASSERT_TRUE(
      write_pvh_start_info(mem, layout::kCmdlineAddr, std::nullopt, build_e820(k128M)).ok());
  auto before = mem.read_obj<HvmStartInfo>(layout::kPvhStartInfoAddr);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(uint64_t{before->rsdp_paddr}, 0u);
  EXPECT_FALSE(set_pvh_rsdp(mem, 0).ok());  // no RSDP at 0

  ASSERT_TRUE(set_pvh_rsdp(mem, *rsdp).ok());
  auto after = mem.read_obj<HvmStartInfo>(layout::kPvhStartInfoAddr);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(uint64_t{after->rsdp_paddr}, *rsdp);
  HvmStartInfo expect = *before;
  expect.rsdp_paddr = *rsdp;
  EXPECT_EQ(std::memcmp(&expect, &*after, sizeof(HvmStartInfo)), 0);
}

}  // namespace
}  // namespace vmm::boot
