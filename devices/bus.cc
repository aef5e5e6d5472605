#include "devices/bus.h"

#include "vmm/base/checked_math.h"

namespace vmm {

Result<void> IoBus::insert(uint64_t base, uint64_t len, std::shared_ptr<BusDevice> device,
                           std::string name) {
  if (len == 0) return make_error("bus range for {} at {:#x} has zero length", name, base);
  if (!device) return make_error("bus range for {} at {:#x} has no device", name, base);
  auto end = checked_add(base, len);
  if (!end) return make_error("bus range for {} at {:#x} wraps around", name, base);
  for (const auto& [b, r] : ranges_) {
    if (base < b + r.len && b < *end)
      return make_error("bus range for {} [{:#x}, {:#x}) overlaps {} [{:#x}, {:#x})", name, base,
                        *end, r.name, b, b + r.len);
  }
  ranges_.emplace(base, Range{base, len, std::move(device), std::move(name)});
  return ok();
}

const IoBus::Range* IoBus::find(uint64_t addr, uint64_t len) const {
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return nullptr;
  --it;
  const Range& r = it->second;
  uint64_t off = addr - r.base;
  if (off >= r.len || len > r.len - off) return nullptr;
  return &r;
}

bool IoBus::read(uint64_t addr, std::span<uint8_t> data) const {
  const Range* r = find(addr, data.size());
  if (!r) return false;
  r->device->read(r->base, addr - r->base, data);
  return true;
}

bool IoBus::write(uint64_t addr, std::span<const uint8_t> data) const {
  const Range* r = find(addr, data.size());
  if (!r) return false;
  r->device->write(r->base, addr - r->base, data);
  return true;
}

}  // namespace vmm
