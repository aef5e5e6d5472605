#include "vmm/core/emulation_fallback.h"

#include <gtest/gtest.h>

#include <vector>

namespace vmm {
namespace {

TEST(EmulationFallback, Int3InjectsBreakpointAndAdvancesOneByte) {
  std::vector<uint8_t> insn = {0xcc, 0x90, 0x90};
  auto d = decide_emulation_fallback(insn);
  EXPECT_EQ(d.action, FallbackAction::kInjectBreakpoint);
  EXPECT_EQ(d.length, 1u);
}

TEST(EmulationFallback, FwaitIsSkipped) {
  std::vector<uint8_t> insn = {0x9b, 0xdb, 0xe3};  // fwait; fninit (the "finit" idiom)
  auto d = decide_emulation_fallback(insn);
  EXPECT_EQ(d.action, FallbackAction::kSkip);
  EXPECT_EQ(d.length, 1u);
}

TEST(EmulationFallback, EverythingElseIsFatal) {
  // The instructions host-notes lists as failing without the command-line mitigation.
  const std::vector<std::vector<uint8_t>> cases = {
      {0xf0, 0x48, 0x0f, 0xc7, 0x0e},  // lock cmpxchg16b
      {0x0f, 0xae, 0x2f},              // xrstor
      {0x0f, 0x01, 0xca},              // clac
      {0xf3, 0x48, 0x0f, 0xb8, 0xc7},  // popcnt
      {0x0f, 0xae, 0x10},              // ldmxcsr
      {0xf3, 0x0f, 0x6f, 0x06},        // movdqu
      {0xcd, 0x03},                    // int 3 (two-byte form): not the fallback's business
      {},                              // unreadable rip
  };
  for (const auto& c : cases) {
    auto d = decide_emulation_fallback(c);
    EXPECT_EQ(d.action, FallbackAction::kFatal) << format_insn_bytes(c);
    EXPECT_EQ(d.length, 0u);
  }
}

TEST(EmulationFallback, FormatsBytes) {
  std::vector<uint8_t> insn = {0x0f, 0x01, 0xca};
  EXPECT_EQ(format_insn_bytes(insn), "0f 01 ca");
  EXPECT_EQ(format_insn_bytes({}), "(none)");
  std::vector<uint8_t> longer(20, 0x90);
  EXPECT_EQ(format_insn_bytes(longer).size(), 15u * 3 - 1);  // capped at 15 bytes
}

}  // namespace
}  // namespace vmm
