#include "boot/x86_64/cpuid.h"

#include <gtest/gtest.h>

#include <optional>

namespace vmm::boot {
namespace {

constexpr uint32_t kAllOnes = 0xffffffff;

std::vector<CpuidEntry> fake_supported() {
  return {
      {0x0, 0, 0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69},
      {0x1, 0, 0, 0x000906ea, 0xaabbccdd, 0x7ffafbff, 0xbfebfbff},
      {0x4, 0, 1, 0x1c004121, 0, 0, 0},  // L1d
      {0x4, 1, 1, 0x1c004122, 0, 0, 0},  // L1i
      {0x4, 2, 1, 0x1c004143, 0, 0, 0},  // L2
      {0x4, 3, 1, 0x1c03c163, 0, 0, 0},  // L3
      {0x4, 4, 1, 0, 0, 0, 0},           // end
      {0x7, 0, 1, 0, kAllOnes, 0x12345678, 0x9abcdef0},
      {0x7, 1, 1, 0, kAllOnes, 0, 0},
      {0xb, 0, 1, 1, 2, 0x100, 7},
      {0xb, 1, 1, 4, 8, 0x201, 7},
      {0xb, 2, 1, 0, 0, 2, 7},
      {0xd, 0, 1, 7, 0x340, 0x340, 0},
      {0xd, 1, 1, 0xf, 0, 0, 0},
      {0x1f, 0, 1, 1, 2, 0x100, 7},
      {0x1f, 1, 1, 4, 8, 0x201, 7},
      {0x40000000, 0, 0, 0x40000001, 0, 0, 0},
      {0x40000001, 0, 0, 0x01007afb, 0, 0, 0},
      {0x80000000, 0, 0, 0x80000008, 0, 0, 0},
  };
}

std::optional<CpuidEntry> find(const std::vector<CpuidEntry>& v, uint32_t fn, uint32_t idx = 0) {
  for (const auto& e : v)
    if (e.function == fn && e.index == idx) return e;
  return std::nullopt;
}

TEST(Cpuid, HostTemplatePerVcpuFields) {
  auto r = apply_cpu_template(fake_supported(), "host", 3, 4);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), fake_supported().size());

  auto l1 = find(*r, 1);
  ASSERT_TRUE(l1);
  EXPECT_EQ(l1->ebx >> 24, 3u);             // APIC id
  EXPECT_EQ((l1->ebx >> 16) & 0xff, 4u);    // logical processors
  EXPECT_EQ(l1->ebx & 0xffff, 0xccddu);     // untouched
  EXPECT_TRUE(l1->ecx & (1u << 31));        // hypervisor
  EXPECT_TRUE(l1->edx & (1u << 28));        // HTT
  EXPECT_EQ(l1->ecx & ~(1u << 31), 0x7ffafbffu);  // host: no feature clearing

  for (uint32_t sub = 0; sub < 4; ++sub) {
    auto l4 = find(*r, 4, sub);
    ASSERT_TRUE(l4);
    EXPECT_EQ(l4->eax >> 26, 3u) << sub;  // cores - 1
    uint32_t level = (l4->eax >> 5) & 7;
    EXPECT_EQ((l4->eax >> 14) & 0xfff, level == 3 ? 3u : 0u) << sub;
    EXPECT_EQ(l4->eax & 0x3fff, fake_supported()[2 + sub].eax & 0x3fff);
  }
  EXPECT_EQ(find(*r, 4, 4)->eax, 0u);

  for (uint32_t leaf : {0xbu, 0x1fu}) {
    auto s0 = find(*r, leaf, 0), s1 = find(*r, leaf, 1);
    ASSERT_TRUE(s0 && s1);
    EXPECT_EQ(s0->edx, 3u);
    EXPECT_EQ(s1->edx, 3u);
    EXPECT_EQ(s0->ebx, 1u);
    EXPECT_EQ((s0->ecx >> 8) & 0xff, 1u);  // SMT level
    EXPECT_EQ(s1->ebx, 4u);
    EXPECT_EQ((s1->ecx >> 8) & 0xff, 2u);  // core level
    EXPECT_EQ(s1->eax, 2u);                // log2(4)
  }
  EXPECT_EQ(find(*r, 0xb, 2)->edx, 3u);
  EXPECT_EQ((find(*r, 0xb, 2)->ecx >> 8) & 0xff, 0u);

  auto hv = find(*r, 0x40000000);
  ASSERT_TRUE(hv);
  EXPECT_EQ(hv->eax, 0x40000001u);
  char sig[13] = {};
  std::memcpy(sig, &hv->ebx, 4);
  std::memcpy(sig + 4, &hv->ecx, 4);
  std::memcpy(sig + 8, &hv->edx, 4);
  EXPECT_EQ(std::string(sig, 12), std::string("KVMKVMKVM\0\0\0", 12));

  EXPECT_TRUE(find(*r, 0xd, 0));
  EXPECT_EQ(find(*r, 7)->ebx, kAllOnes);
}

TEST(Cpuid, SingleVcpuAndBsp) {
  auto r = apply_cpu_template(fake_supported(), "host", 0, 1);
  ASSERT_TRUE(r.ok());
  auto l1 = find(*r, 1);
  EXPECT_EQ(l1->ebx >> 24, 0u);
  EXPECT_EQ((l1->ebx >> 16) & 0xff, 1u);
  EXPECT_FALSE(l1->edx & (1u << 28));
  EXPECT_EQ(find(*r, 4, 0)->eax >> 26, 0u);
  EXPECT_EQ(find(*r, 0xb, 1)->eax, 0u);
}

TEST(Cpuid, MinimalTemplateClearsFeatures) {
  auto r = apply_cpu_template(fake_supported(), "minimal", 1, 2);
  ASSERT_TRUE(r.ok());
  auto l1 = find(*r, 1);
  for (int bit : {9, 19, 20, 22, 23, 25, 26, 27, 28, 30})
    EXPECT_FALSE(l1->ecx & (1u << bit)) << "leaf 1 ecx bit " << bit;
  EXPECT_TRUE(l1->ecx & (1u << 0));   // SSE3 stays
  EXPECT_TRUE(l1->ecx & (1u << 31));  // hypervisor
  EXPECT_EQ(l1->edx, 0xbfebfbffu);    // EDX features untouched (HTT already set)

  auto l7 = find(*r, 7, 0);
  for (int bit : {0, 5, 7, 16, 18, 20, 29})
    EXPECT_FALSE(l7->ebx & (1u << bit)) << "leaf 7 ebx bit " << bit;
  EXPECT_EQ(l7->ebx | kMinimalLeaf7EbxMask, kAllOnes);
  EXPECT_EQ(l7->ecx, 0x12345678u);
  EXPECT_EQ(find(*r, 7, 1)->ebx, kAllOnes);  // only subleaf 0

  EXPECT_FALSE(find(*r, 0xd, 0));
  EXPECT_FALSE(find(*r, 0xd, 1));
  EXPECT_EQ(r->size(), fake_supported().size() - 2);
  EXPECT_EQ(find(*r, 1)->ebx >> 24, 1u);
}

TEST(Cpuid, RefusesUnknownTemplateAndBadIndices) {
  auto r = apply_cpu_template(fake_supported(), "fancy", 0, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("fancy"), std::string::npos);
  EXPECT_NE(r.error().message.find("host"), std::string::npos);
  EXPECT_NE(r.error().message.find("minimal"), std::string::npos);
  EXPECT_FALSE(apply_cpu_template(fake_supported(), "host", 2, 2).ok());
  EXPECT_FALSE(apply_cpu_template(fake_supported(), "host", 0, 0).ok());
  EXPECT_FALSE(apply_cpu_template(fake_supported(), "host", 0, 255).ok());
}

TEST(Cpuid, NoHypervisorLeafIsFine) {
  auto v = fake_supported();
  std::erase_if(v, [](const CpuidEntry& e) { return e.function >= 0x40000000 &&
                                                   e.function < 0x40000100; });
  auto r = apply_cpu_template(v, "host", 0, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(find(*r, 0x40000000));
}

TEST(Cpuid, MitigationCmdline) {
  EXPECT_EQ(cpuid_mitigation_cmdline(),
            "noxsave clearcpuid=ssse3,sse4_1,sse4_2,avx,avx2,avx512f,aes,pclmulqdq,sha_ni,popcnt,"
            "smap,smep,xsave,rdrand,rdseed,fsgsbase,movbe,cx16");
}

}  // namespace
}  // namespace vmm::boot
