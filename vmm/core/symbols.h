// A System.map reader for symbolizing guest rip samples ("func+0x1c").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vmm/base/result.h"

namespace vmm {

class SymbolMap {
 public:
  // Parses "ffffffff81000000 T _text" lines; malformed lines are skipped.
  static SymbolMap parse(const std::string& text);
  static Result<SymbolMap> load(const std::string& path);
  // "name+0xoff", or a hex address when nothing covers it.
  std::string symbolize(uint64_t addr) const;
  // Just the name (for histograms), "?" when unknown.
  std::string function(uint64_t addr) const;
  size_t size() const { return syms_.size(); }

 private:
  const std::pair<uint64_t, std::string>* lookup(uint64_t addr) const;
  std::vector<std::pair<uint64_t, std::string>> syms_;  // sorted by address
};

}  // namespace vmm
