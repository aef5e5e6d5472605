#include "vmm/core/symbols.h"

#include <gtest/gtest.h>

namespace vmm {
namespace {

TEST(SymbolMap, SymbolizesTextSymbols) {
  auto m = SymbolMap::parse(
      "ffffffff81000000 T _text\n"
      "ffffffff81001000 t do_one\n"
      "ffffffff82000000 D some_data\n"
      "garbage line\n"
      "zzzz T bad_hex\n"
      "ffffffff81002000 T do_two\n");
  EXPECT_EQ(m.size(), 3u);
  EXPECT_EQ(m.symbolize(0xffffffff81001010ull), "do_one+0x10");
  EXPECT_EQ(m.function(0xffffffff81002fffull), "do_two");
  EXPECT_EQ(m.function(0x401000), "[user]");
  EXPECT_EQ(m.symbolize(0x1000), "0x1000");
}

}  // namespace
}  // namespace vmm
