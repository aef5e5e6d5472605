// check_cpuid: restoring onto a host/template whose CPUID differs from the
// snapshot's is refused with the differences named.
#include <gtest/gtest.h>

#include <vector>

#include "vmm/core/vm_state.h"

namespace vmm {
namespace {

kvm_cpuid_entry2 leaf(uint32_t fn, uint32_t idx, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  kvm_cpuid_entry2 e{};
  e.function = fn;
  e.index = idx;
  e.eax = a;
  e.ebx = b;
  e.ecx = c;
  e.edx = d;
  return e;
}

std::vector<kvm_cpuid_entry2> table() {
  return {leaf(0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69),
          leaf(1, 0, 0x806f8, 0x800, 0xfffa3223, 0x1f8bfbff),
          leaf(7, 0, 0, 0xf1bf07ab, 0x1b405f4e, 0xfc1cc410)};
}

TEST(CheckCpuid, IdenticalTablesInAnyOrderPass) {
  auto a = table();
  auto b = table();
  std::swap(b[0], b[2]);
  b[1].flags = 7;  // flags/padding are not CPUID values
  EXPECT_TRUE(check_cpuid(a, b).ok());
}

TEST(CheckCpuid, ChangedRegisterIsNamed) {
  auto a = table();
  auto b = table();
  b[2].ebx &= ~(1u << 5);  // AVX2 gone on the new host
  auto r = check_cpuid(a, b);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("leaf 0x7.0 ebx: snapshot 0xf1bf07ab, this host 0xf1bf078b"),
            std::string::npos)
      << r.error().to_string();
}

TEST(CheckCpuid, MissingAndExtraLeavesAreNamed) {
  auto a = table();
  auto b = table();
  b.pop_back();
  b.push_back(leaf(0xd, 1, 1, 2, 3, 4));
  auto r = check_cpuid(a, b);
  ASSERT_FALSE(r.ok());
  auto msg = r.error().to_string();
  EXPECT_NE(msg.find("2 differences"), std::string::npos) << msg;
  EXPECT_NE(msg.find("leaf 0x7.0 only in the snapshot"), std::string::npos) << msg;
  EXPECT_NE(msg.find("leaf 0xd.1 only on this host"), std::string::npos) << msg;
}

TEST(CheckCpuid, LongListsAreCut) {
  std::vector<kvm_cpuid_entry2> a, b;
  for (uint32_t i = 0; i < 10; ++i) {
    a.push_back(leaf(i, 0, i, 0, 0, 0));
    b.push_back(leaf(i, 0, i + 1, 0, 0, 0));
  }
  auto r = check_cpuid(a, b);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("and 6 more"), std::string::npos) << r.error().to_string();
}

TEST(CheckCpuid, EmptySavedTableIsRefused) {
  EXPECT_FALSE(check_cpuid({}, table()).ok());
}

}  // namespace
}  // namespace vmm
