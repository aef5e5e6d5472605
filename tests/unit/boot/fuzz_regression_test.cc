// Regressions for bugs found by the libFuzzer targets in fuzz/.
#include <gtest/gtest.h>

#include "boot/x86_64/kernel_loader.h"
#include "boot/x86_64/layout.h"
#include "test_images.h"

namespace vmm::boot {
namespace {

using namespace vmm::boot::testing;

// fuzz_kernel_loader, seed corpus/fuzz_kernel_loader/bzimage-reloc: for a
// relocatable bzImage, load_bzimage() passed the packed (misaligned)
// SetupHeader::pref_address to std::max<uint64_t>, binding a const uint64_t&
// to a misaligned address: undefined behaviour, reported by clang's
// -fsanitize=undefined ("reference binding to misaligned address"). GCC copies
// packed fields into a temporary, so only a clang UBSan build of this test
// catches a regression; every build checks the resulting load address.
TEST(FuzzRegression, RelocatableBzImagePrefAddressIsReadByValue) {
  auto mem = make_guest(64ull << 20);
  for (uint64_t pref : {uint64_t{0x1000000}, uint64_t{0x1100000}, uint64_t{0x3000000}}) {
    auto h = good_setup_header();
    h.pref_address = pref;
    auto r = load_kernel(mem, make_bzimage(h));
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    uint64_t want = (pref + 0x1fffff) & ~uint64_t{0x1fffff};  // kernel_alignment 2 MiB
    EXPECT_EQ(r->load_start, want) << std::hex << pref;
    EXPECT_EQ(r->entry, want + 0x200);
  }
}

}  // namespace
}  // namespace vmm::boot
