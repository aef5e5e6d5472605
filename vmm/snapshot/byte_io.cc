#include "vmm/snapshot/byte_io.h"

#include <cassert>

namespace vmm::snapshot {

void ByteWriter::patch_u32(size_t offset, uint32_t v) {
  assert(offset + 4 <= buf_.size());
  store_le32(buf_.data() + offset, v);
}

Result<std::span<const uint8_t>> ByteReader::bytes(uint64_t n, std::string_view what) {
  if (n > remaining())
    return make_error("truncated at byte {}: {} needs {} bytes, {} left", offset(), what, n,
                      remaining());
  auto s = data_.subspan(pos_, static_cast<size_t>(n));
  pos_ += static_cast<size_t>(n);
  return s;
}

Result<uint64_t> ByteReader::le(int n, std::string_view what) {
  VMM_TRY(auto s, bytes(static_cast<uint64_t>(n), what));
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{s[static_cast<size_t>(i)]} << (8 * i);
  return v;
}

Result<uint8_t> ByteReader::u8(std::string_view what) {
  VMM_TRY(uint64_t v, le(1, what));
  return static_cast<uint8_t>(v);
}
Result<uint16_t> ByteReader::u16(std::string_view what) {
  VMM_TRY(uint64_t v, le(2, what));
  return static_cast<uint16_t>(v);
}
Result<uint32_t> ByteReader::u32(std::string_view what) {
  VMM_TRY(uint64_t v, le(4, what));
  return static_cast<uint32_t>(v);
}
Result<uint64_t> ByteReader::u64(std::string_view what) { return le(8, what); }

}  // namespace vmm::snapshot
