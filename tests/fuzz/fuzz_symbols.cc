// libFuzzer target: the two parsers of guest-controlled text in vmm_core.
//   * SymbolMap::parse over the input as a System.map, then symbolize() and
//     function() for addresses taken from the input (and a few fixed ones).
//   * PanicDetector::feed over every input byte (guest console output).
//
// Invariants (abort() on violation): symbolize() is never empty and is either
// a plain hex address or "name+0x..." whose offset is at most 1 MiB;
// function() is "[user]" below the kernel half, else "?" or a parsed name;
// PanicDetector reports kPanic at most once, only on a newline, with a
// reason that starts with the panic text and is bounded by the line limit.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_check.h"
#include "vmm/core/console.h"
#include "vmm/core/symbols.h"

namespace {

using namespace vmm;

void check_symbolize(const SymbolMap& m, uint64_t addr) {
  std::string s = m.symbolize(addr);
  FUZZ_CHECK(!s.empty());
  auto plus = s.rfind("+0x");
  if (plus == std::string::npos) {
    FUZZ_CHECK(s.rfind("0x", 0) == 0);  // "0x..." when nothing covers addr
  } else {
    uint64_t off = std::stoull(s.substr(plus + 3), nullptr, 16);
    FUZZ_CHECK(off <= (1u << 20));
    FUZZ_CHECK(plus > 0);  // a name precedes the offset
  }
  std::string f = m.function(addr);
  FUZZ_CHECK(!f.empty());
  if (addr < 0x800000000000ull) FUZZ_CHECK(f == "[user]");
  if (m.size() == 0 && addr >= 0x800000000000ull) FUZZ_CHECK(f == "?");
}

void fuzz_symbols(std::string_view text) {
  SymbolMap m = SymbolMap::parse(std::string(text));
  // No more symbols than lines.
  size_t lines = 1;
  for (char c : text) lines += c == '\n';
  FUZZ_CHECK(m.size() <= lines);

  for (uint64_t a : {uint64_t{0}, uint64_t{0x1000}, uint64_t{0xffffffff81000000},
                     uint64_t{0xffffffffffffffff}, uint64_t{0x800000000000},
                     uint64_t{0x7fffffffffff}})
    check_symbolize(m, a);
  // Addresses from the input itself, 8 bytes at a time (and each +/- small).
  for (size_t i = 0; i + 8 <= text.size() && i < 256; i += 8) {
    uint64_t a;
    std::memcpy(&a, text.data() + i, 8);
    check_symbolize(m, a);
    check_symbolize(m, a | 0xffff800000000000ull);
    check_symbolize(m, a + (1u << 20));
  }
}

void fuzz_panic(std::string_view text) {
  PanicDetector d;
  int panics = 0;
  for (char c : text) {
    auto ev = d.feed(static_cast<uint8_t>(c));
    if (ev != PanicDetector::Event::kNone) FUZZ_CHECK(c == '\n');
    if (ev == PanicDetector::Event::kPanic) {
      ++panics;
      FUZZ_CHECK(d.reason().rfind("Kernel panic - not syncing", 0) == 0);
    }
    FUZZ_CHECK(d.reason().size() <= 512);
  }
  FUZZ_CHECK(panics <= 1);
  FUZZ_CHECK((panics == 1) == !d.reason().empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 256 * 1024) return -1;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz_symbols(text);
  fuzz_panic(text);
  return 0;
}
