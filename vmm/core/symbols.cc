#include "vmm/core/symbols.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace vmm {

SymbolMap SymbolMap::parse(const std::string& text) {
  SymbolMap m;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string addr, type, name;
    if (!(ls >> addr >> type >> name)) continue;
    if (type.size() != 1 || (type[0] != 't' && type[0] != 'T')) continue;
    uint64_t a = 0;
    try {
      size_t used = 0;
      a = std::stoull(addr, &used, 16);
      if (used != addr.size()) continue;
    } catch (...) {
      continue;
    }
    m.syms_.emplace_back(a, name);
  }
  std::sort(m.syms_.begin(), m.syms_.end());
  return m;
}

Result<SymbolMap> SymbolMap::load(const std::string& path) {
  std::ifstream f(path);
  if (!f) return make_error("cannot read System.map '{}'", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return parse(ss.str());
}

const std::pair<uint64_t, std::string>* SymbolMap::lookup(uint64_t addr) const {
  auto it = std::upper_bound(syms_.begin(), syms_.end(), addr,
                             [](uint64_t a, const auto& s) { return a < s.first; });
  if (it == syms_.begin()) return nullptr;
  --it;
  if (addr - it->first > (1u << 20)) return nullptr;  // too far: not really inside it
  return &*it;
}

std::string SymbolMap::symbolize(uint64_t addr) const {
  const auto* s = lookup(addr);
  if (!s) return fmt::format("{:#x}", addr);
  return fmt::format("{}+{:#x}", s->second, addr - s->first);
}

std::string SymbolMap::function(uint64_t addr) const {
  if (addr < 0x800000000000ull) return "[user]";
  const auto* s = lookup(addr);
  return s ? s->second : "?";
}

}  // namespace vmm
