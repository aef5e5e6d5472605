// The state tree: ONE serialization path for VM state, used by the snapshot
// file (state_file.h) and, later, the migration stream.
//
// Each device contributes a named Section ("serial0", "virtio0" with a child
// "queue1", "vcpu0" with "regs"...) holding typed, named fields. A device's
// save() fills a Section; its restore() reads the fields back through the
// typed getters, which fail with the section path in the message
// ("vcpu0/msrs: field 'entries' is 20 bytes, not a multiple of 16").
//
// Encoding (all integers little-endian): a tree is the concatenation of the
// root section's entries; an entry is a TLV record
//
//   u8 kind | u8 name_len | name[name_len] | u32 value_len | value[value_len]
//
// where kind is a Kind below. u8/u16/u32/u64/i64/bool values are exactly 1, 2,
// 4, 8, 8 and 1 bytes (bool 0 or 1); bytes and string values are raw; a
// section's value is the concatenation of its entries. Names are 1-64 bytes of
// [A-Za-z0-9_.:-] and unique within a section ('/' separates path components).
// Encoding is canonical: fields first, then sections, each in insertion order.
//
// decode_tree() takes hostile input: every length is checked against what
// remains of its enclosing section, nesting is bounded (kMaxDepth), as are the
// entry count (kMaxEntries) and the total size (kMaxStateBytes); errors name
// the section path and the absolute byte offset. Unknown names decode fine
// (a device lists them with unknown()); unknown kinds are refused.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "vmm/base/result.h"

namespace vmm::snapshot {

inline constexpr size_t kMaxStateBytes = size_t{64} << 20;  // an encoded tree or a state file
inline constexpr int kMaxDepth = 16;                       // section nesting below the root
inline constexpr size_t kMaxEntries = size_t{1} << 18;     // fields + sections in one tree
inline constexpr size_t kMaxNameBytes = 64;

enum class Kind : uint8_t {
  kSection = 1,
  kU8 = 2,
  kU16 = 3,
  kU32 = 4,
  kU64 = 5,
  kI64 = 6,
  kBool = 7,
  kBytes = 8,
  kString = 9,
};

// "u8", "section", ...; "kind N" for values outside the enum.
std::string kind_name(Kind k);
// 1-64 bytes of [A-Za-z0-9_.:-].
bool valid_name(std::string_view name);
// `s` with non-printable bytes as \xNN and at most 64 bytes shown: for
// quoting hostile input in messages.
std::string printable(std::string_view s);

struct Field {
  std::string name;
  Kind kind = Kind::kU8;
  uint64_t scalar = 0;         // u8..u64, i64 (two's complement), bool (0/1)
  std::vector<uint8_t> bytes;  // bytes, string

  bool operator==(const Field&) const = default;
};

class Section {
 public:
  Section() = default;  // a root: empty name and path

  const std::string& name() const { return name_; }
  // "vcpu0/regs"; empty for the root.
  const std::string& path() const { return path_; }
  // path(), or "state tree" for the root: the prefix of every error message.
  std::string where() const;

  // ---- building. Putting a name that exists (as a field or a section)
  // replaces that entry. Names are checked by encode_tree(), not here.
  void put_u8(std::string_view name, uint8_t v) { put(name, Kind::kU8).scalar = v; }
  void put_u16(std::string_view name, uint16_t v) { put(name, Kind::kU16).scalar = v; }
  void put_u32(std::string_view name, uint32_t v) { put(name, Kind::kU32).scalar = v; }
  void put_u64(std::string_view name, uint64_t v) { put(name, Kind::kU64).scalar = v; }
  void put_i64(std::string_view name, int64_t v) {
    put(name, Kind::kI64).scalar = static_cast<uint64_t>(v);
  }
  void put_bool(std::string_view name, bool v) { put(name, Kind::kBool).scalar = v ? 1 : 0; }
  void put_bytes(std::string_view name, std::span<const uint8_t> v) {
    put(name, Kind::kBytes).bytes.assign(v.begin(), v.end());
  }
  void put_string(std::string_view name, std::string_view v) {
    put(name, Kind::kString).bytes.assign(v.begin(), v.end());
  }
  // A trivially copyable struct as a bytes field in host (x86-64) layout: for
  // structs whose layout is fixed by an ABI (kvm_regs, kvm_lapic_state...).
  template <typename T>
  void put_pod(std::string_view name, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put_bytes(name, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&v), sizeof(T)));
  }
  template <typename T>
  void put_pod_array(std::string_view name, std::span<const T> v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put_bytes(name, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                             v.size_bytes()));
  }
  // A copy of `f` (from another tree) stored as the typed put_* above would
  // store it: the scalar cut to its kind's width, a bool as 0/1. A field of
  // kind kSection (never one in fields()) is ignored.
  void put_field(const Field& f);
  // A new empty child section (replacing any entry of that name).
  Section& add_section(std::string_view name);
  // Adopts `child` (built elsewhere, e.g. by a device's save()) under `name`.
  Section& put_section(std::string_view name, Section child);

  // ---- reading. Every getter fails with "<path>: no field 'x'" or
  // "<path>: field 'x' is a u16, expected u8"; there are no conversions.
  bool has(std::string_view name) const;
  const Field* find_field(std::string_view name) const;
  const Section* find_section(std::string_view name) const;
  Result<uint8_t> get_u8(std::string_view name) const;
  Result<uint16_t> get_u16(std::string_view name) const;
  Result<uint32_t> get_u32(std::string_view name) const;
  Result<uint64_t> get_u64(std::string_view name) const;
  Result<int64_t> get_i64(std::string_view name) const;
  Result<bool> get_bool(std::string_view name) const;
  // A view into this Section (valid while it lives and is not modified).
  Result<std::span<const uint8_t>> get_bytes(std::string_view name) const;
  Result<std::string> get_string(std::string_view name) const;
  // Exactly sizeof(T) bytes.
  template <typename T>
  Result<T> get_pod(std::string_view name) const {
    static_assert(std::is_trivially_copyable_v<T> && std::is_default_constructible_v<T>);
    VMM_TRY(auto b, get_bytes(name));
    if (b.size() != sizeof(T))
      return make_error("{}: field '{}' is {} bytes, expected {}", where(), name, b.size(),
                        sizeof(T));
    T v{};
    std::memcpy(&v, b.data(), sizeof(T));
    return v;
  }
  // A multiple of sizeof(T) bytes, at most max_count elements.
  template <typename T>
  Result<std::vector<T>> get_pod_array(std::string_view name, size_t max_count) const {
    static_assert(std::is_trivially_copyable_v<T> && std::is_default_constructible_v<T>);
    VMM_TRY(auto b, get_bytes(name));
    if (b.size() % sizeof(T) != 0)
      return make_error("{}: field '{}' is {} bytes, not a multiple of {}", where(), name,
                        b.size(), sizeof(T));
    if (b.size() / sizeof(T) > max_count)
      return make_error("{}: field '{}' has {} elements, at most {} allowed", where(), name,
                        b.size() / sizeof(T), max_count);
    std::vector<T> v(b.size() / sizeof(T));
    if (!b.empty()) std::memcpy(v.data(), b.data(), b.size());
    return v;
  }
  Result<const Section*> section(std::string_view name) const;

  const std::vector<Field>& fields() const { return fields_; }
  const std::vector<Section>& sections() const { return sections_; }
  size_t entry_count() const { return fields_.size() + sections_.size(); }
  // Names of this section's entries (fields and sections) not in `known`.
  std::vector<std::string> unknown(std::initializer_list<std::string_view> known) const;
  // Fails with "<path>: unknown entries: a, b" if unknown() is not empty.
  Result<void> expect_only(std::initializer_list<std::string_view> known) const;

  // Names, fields and sections, recursively (paths follow from names).
  bool operator==(const Section& o) const {
    return name_ == o.name_ && fields_ == o.fields_ && sections_ == o.sections_;
  }

 private:
  Field& put(std::string_view name, Kind kind);
  Result<const Field*> get(std::string_view name, Kind kind) const;
  void remove(std::string_view name);
  void set_parent_path(const std::string& parent);
  friend class TreeDecoder;

  std::string name_;
  std::string path_;
  std::vector<Field> fields_;
  std::vector<Section> sections_;
};

// Encodes `root`'s entries (the root's own name is not stored). Fails on an
// invalid or duplicate name, nesting deeper than kMaxDepth, more than
// kMaxEntries entries, or more than kMaxStateBytes bytes.
Result<std::vector<uint8_t>> encode_tree(const Section& root);

// Decodes a tree from hostile input. `base` is the offset of data[0] in the
// enclosing input (for messages, e.g. the payload's offset in a state file).
Result<Section> decode_tree(std::span<const uint8_t> data, uint64_t base = 0);

}  // namespace vmm::snapshot
