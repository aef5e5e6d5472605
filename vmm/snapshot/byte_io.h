// ByteWriter / ByteReader: little-endian fixed-width integers and byte runs,
// the lowest layer of the state format (vmm/snapshot/state_tree.h). The reader
// is for hostile input: every read is checked against what remains, and a
// failure names the absolute byte offset and what was being read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/base/result.h"

namespace vmm::snapshot {

class ByteWriter {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u16(uint16_t v) { put_le(v, 2); }
  void u32(uint32_t v) { put_le(v, 4); }
  void u64(uint64_t v) { put_le(v, 8); }
  void bytes(std::span<const uint8_t> b) { buf_.insert(buf_.end(), b.begin(), b.end()); }
  void bytes(std::string_view s) {
    bytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  }
  // Overwrites 4 bytes at `offset` (which must already be written): for
  // lengths known only after the payload.
  void patch_u32(size_t offset, uint32_t v);

  size_t size() const { return buf_.size(); }
  void reserve(size_t n) { buf_.reserve(n); }
  const std::vector<uint8_t>& data() const { return buf_; }
  std::vector<uint8_t> take() { return std::move(buf_); }

 private:
  void put_le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) buf_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> buf_;
};

class ByteReader {
 public:
  // `base` is the absolute offset of data[0] in the enclosing input, used in
  // error messages only.
  explicit ByteReader(std::span<const uint8_t> data, uint64_t base = 0) : data_(data), base_(base) {}

  // Each read fails with "truncated at byte N: <what> needs K bytes, M left"
  // (N absolute) and consumes nothing on failure.
  Result<uint8_t> u8(std::string_view what);
  Result<uint16_t> u16(std::string_view what);
  Result<uint32_t> u32(std::string_view what);
  Result<uint64_t> u64(std::string_view what);
  Result<std::span<const uint8_t>> bytes(uint64_t n, std::string_view what);

  size_t remaining() const { return data_.size() - pos_; }
  bool empty() const { return pos_ == data_.size(); }
  // Absolute offset of the next byte.
  uint64_t offset() const { return base_ + pos_; }

 private:
  Result<uint64_t> le(int n, std::string_view what);
  std::span<const uint8_t> data_;
  uint64_t base_;
  size_t pos_ = 0;
};

// Little-endian loads/stores on raw buffers (the caller checked the bounds).
inline uint32_t load_le32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
inline uint64_t load_le64(const uint8_t* p) {
  return uint64_t{load_le32(p)} | uint64_t{load_le32(p + 4)} << 32;
}
inline void store_le32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace vmm::snapshot
