#include "vmm/snapshot/state_tree.h"

#include <algorithm>
#include <unordered_set>

#include "vmm/base/checked_math.h"
#include "vmm/snapshot/byte_io.h"

namespace vmm::snapshot {

namespace {

// Value width of a fixed-size kind; 0 for sections, bytes and strings.
size_t fixed_width(Kind k) {
  switch (k) {
    case Kind::kU8:
    case Kind::kBool:
      return 1;
    case Kind::kU16:
      return 2;
    case Kind::kU32:
      return 4;
    case Kind::kU64:
    case Kind::kI64:
      return 8;
    default:
      return 0;
  }
}

bool known_kind(uint8_t k) { return k >= 1 && k <= 9; }

constexpr size_t kRecordHeader = 1 + 1 + 4;  // kind, name_len, value_len (+ name)

std::string join_path(const std::string& parent, std::string_view name) {
  if (parent.empty()) return std::string(name);
  return parent + "/" + std::string(name);
}

}  // namespace

std::string kind_name(Kind k) {
  switch (k) {
    case Kind::kSection: return "section";
    case Kind::kU8: return "u8";
    case Kind::kU16: return "u16";
    case Kind::kU32: return "u32";
    case Kind::kU64: return "u64";
    case Kind::kI64: return "i64";
    case Kind::kBool: return "bool";
    case Kind::kBytes: return "bytes";
    case Kind::kString: return "string";
  }
  return fmt::format("kind {}", static_cast<unsigned>(k));
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == ':' || c == '-';
  });
}

std::string printable(std::string_view s) {
  std::string out;
  size_t n = std::min<size_t>(s.size(), 64);
  for (size_t i = 0; i < n; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'')
      out += static_cast<char>(c);
    else
      out += fmt::format("\\x{:02x}", c);
  }
  if (s.size() > n) out += "...";
  return out;
}

// ------------------------------------------------------------------ Section --

std::string Section::where() const { return path_.empty() ? "state tree" : path_; }

void Section::remove(std::string_view name) {
  std::erase_if(fields_, [&](const Field& f) { return f.name == name; });
  std::erase_if(sections_, [&](const Section& s) { return s.name_ == name; });
}

Field& Section::put(std::string_view name, Kind kind) {
  for (auto& f : fields_) {
    if (f.name == name) {
      f.kind = kind;
      f.scalar = 0;
      f.bytes.clear();
      return f;
    }
  }
  std::erase_if(sections_, [&](const Section& s) { return s.name_ == name; });
  Field& f = fields_.emplace_back();
  f.name = std::string(name);
  f.kind = kind;
  return f;
}

void Section::put_field(const Field& f) {
  switch (f.kind) {
    case Kind::kU8: put_u8(f.name, static_cast<uint8_t>(f.scalar)); break;
    case Kind::kU16: put_u16(f.name, static_cast<uint16_t>(f.scalar)); break;
    case Kind::kU32: put_u32(f.name, static_cast<uint32_t>(f.scalar)); break;
    case Kind::kU64: put_u64(f.name, f.scalar); break;
    case Kind::kI64: put_i64(f.name, static_cast<int64_t>(f.scalar)); break;
    case Kind::kBool: put_bool(f.name, f.scalar != 0); break;
    case Kind::kBytes: put_bytes(f.name, f.bytes); break;
    case Kind::kString:
      put_string(f.name, std::string_view(reinterpret_cast<const char*>(f.bytes.data()),
                                          f.bytes.size()));
      break;
    case Kind::kSection: break;
  }
}

Section& Section::add_section(std::string_view name) { return put_section(name, Section()); }

Section& Section::put_section(std::string_view name, Section child) {
  child.name_ = std::string(name);
  child.set_parent_path(path_);
  std::erase_if(fields_, [&](const Field& f) { return f.name == name; });
  for (auto& s : sections_) {
    if (s.name_ == name) {
      s = std::move(child);
      return s;
    }
  }
  return sections_.emplace_back(std::move(child));
}

void Section::set_parent_path(const std::string& parent) {
  path_ = join_path(parent, name_);
  for (auto& s : sections_) s.set_parent_path(path_);
}

bool Section::has(std::string_view name) const {
  return find_field(name) != nullptr || find_section(name) != nullptr;
}

const Field* Section::find_field(std::string_view name) const {
  for (const auto& f : fields_)
    if (f.name == name) return &f;
  return nullptr;
}

const Section* Section::find_section(std::string_view name) const {
  for (const auto& s : sections_)
    if (s.name_ == name) return &s;
  return nullptr;
}

Result<const Field*> Section::get(std::string_view name, Kind kind) const {
  const Field* f = find_field(name);
  if (f == nullptr) {
    if (find_section(name) != nullptr)
      return make_error("{}: '{}' is a section, expected a {} field", where(), printable(name),
                        kind_name(kind));
    return make_error("{}: no field '{}'", where(), printable(name));
  }
  if (f->kind != kind)
    return make_error("{}: field '{}' is a {}, expected {}", where(), printable(name),
                      kind_name(f->kind), kind_name(kind));
  return f;
}

Result<uint8_t> Section::get_u8(std::string_view name) const {
  VMM_TRY(const Field* f, get(name, Kind::kU8));
  return static_cast<uint8_t>(f->scalar);
}
Result<uint16_t> Section::get_u16(std::string_view name) const {
  VMM_TRY(const Field* f, get(name, Kind::kU16));
  return static_cast<uint16_t>(f->scalar);
}
Result<uint32_t> Section::get_u32(std::string_view name) const {
  VMM_TRY(const Field* f, get(name, Kind::kU32));
  return static_cast<uint32_t>(f->scalar);
}
Result<uint64_t> Section::get_u64(std::string_view name) const {
  VMM_TRY(const Field* f, get(name, Kind::kU64));
  return f->scalar;
}
Result<int64_t> Section::get_i64(std::string_view name) const {
  VMM_TRY(const Field* f, get(name, Kind::kI64));
  return static_cast<int64_t>(f->scalar);
}
Result<bool> Section::get_bool(std::string_view name) const {
  VMM_TRY(const Field* f, get(name, Kind::kBool));
  return f->scalar != 0;
}
Result<std::span<const uint8_t>> Section::get_bytes(std::string_view name) const {
  VMM_TRY(const Field* f, get(name, Kind::kBytes));
  return std::span<const uint8_t>(f->bytes);
}
Result<std::string> Section::get_string(std::string_view name) const {
  VMM_TRY(const Field* f, get(name, Kind::kString));
  return std::string(f->bytes.begin(), f->bytes.end());
}

Result<const Section*> Section::section(std::string_view name) const {
  const Section* s = find_section(name);
  if (s == nullptr) {
    if (find_field(name) != nullptr)
      return make_error("{}: '{}' is a field, expected a section", where(), printable(name));
    return make_error("{}: no section '{}'", where(), printable(name));
  }
  return s;
}

std::vector<std::string> Section::unknown(std::initializer_list<std::string_view> known) const {
  auto is_known = [&](const std::string& n) {
    return std::find(known.begin(), known.end(), n) != known.end();
  };
  std::vector<std::string> out;
  for (const auto& f : fields_)
    if (!is_known(f.name)) out.push_back(f.name);
  for (const auto& s : sections_)
    if (!is_known(s.name_)) out.push_back(s.name_);
  return out;
}

Result<void> Section::expect_only(std::initializer_list<std::string_view> known) const {
  auto u = unknown(known);
  if (u.empty()) return ok();
  std::string list;
  for (const auto& n : u) list += (list.empty() ? "" : ", ") + printable(n);
  return make_error("{}: unknown entries: {}", where(), list);
}

// ----------------------------------------------------------------- encoding --

namespace {

// Checks names, nesting and counts, and returns the encoded size of `s`'s
// entries; refuses anything over kMaxStateBytes before a byte is allocated.
Result<uint64_t> measure(const Section& s, int depth, size_t& entries) {
  uint64_t total = 0;
  std::unordered_set<std::string_view> seen;
  auto account = [&](std::string_view name, uint64_t value_len) -> Result<void> {
    if (!valid_name(name))
      return make_error("{}: invalid entry name '{}' (1-{} bytes of [A-Za-z0-9_.:-])", s.where(),
                        printable(name), kMaxNameBytes);
    if (!seen.insert(name).second)
      return make_error("{}: duplicate entry '{}'", s.where(), printable(name));
    if (++entries > kMaxEntries)
      return make_error("{}: more than {} entries in the tree", s.where(), kMaxEntries);
    auto t = checked_add(total, kRecordHeader + name.size());
    if (t) t = checked_add(*t, value_len);
    if (!t || *t > kMaxStateBytes || value_len > UINT32_MAX)
      return make_error("{}: state larger than the {} MiB limit (at entry '{}')", s.where(),
                        kMaxStateBytes >> 20, name);
    total = *t;
    return ok();
  };
  for (const auto& f : s.fields()) {
    size_t w = fixed_width(f.kind);
    VMM_CHECK(account(f.name, w != 0 ? w : f.bytes.size()));
  }
  for (const auto& c : s.sections()) {
    if (depth + 1 > kMaxDepth)
      return make_error("{}: sections nested deeper than {}", c.where(), kMaxDepth);
    VMM_TRY(uint64_t inner, measure(c, depth + 1, entries));
    VMM_CHECK(account(c.name(), inner));
  }
  return total;
}

void write_entries(const Section& s, ByteWriter& w) {
  for (const auto& f : s.fields()) {
    w.u8(static_cast<uint8_t>(f.kind));
    w.u8(static_cast<uint8_t>(f.name.size()));
    w.bytes(f.name);
    size_t width = fixed_width(f.kind);
    if (width != 0) {
      w.u32(static_cast<uint32_t>(width));
      for (size_t i = 0; i < width; ++i) w.u8(static_cast<uint8_t>(f.scalar >> (8 * i)));
    } else {
      w.u32(static_cast<uint32_t>(f.bytes.size()));
      w.bytes(f.bytes);
    }
  }
  for (const auto& c : s.sections()) {
    w.u8(static_cast<uint8_t>(Kind::kSection));
    w.u8(static_cast<uint8_t>(c.name().size()));
    w.bytes(c.name());
    size_t len_at = w.size();
    w.u32(0);
    write_entries(c, w);
    w.patch_u32(len_at, static_cast<uint32_t>(w.size() - len_at - 4));
  }
}

}  // namespace

Result<std::vector<uint8_t>> encode_tree(const Section& root) {
  size_t entries = 0;
  VMM_TRY(uint64_t size, measure(root, 0, entries));
  ByteWriter w;
  w.reserve(static_cast<size_t>(size));
  write_entries(root, w);
  return w.take();
}

// ----------------------------------------------------------------- decoding --

class TreeDecoder {
 public:
  Result<void> entries(ByteReader& r, Section& s, int depth) {
    std::unordered_set<std::string_view> seen;
    while (!r.empty()) {
      uint64_t at = r.offset();
      auto fail = [&](const Error& e) {
        return make_error("state tree: {}: {}", s.path().empty() ? "(root)" : s.path(), e.message);
      };
      if (++count_ > kMaxEntries)
        return fail(make_error("more than {} entries at byte {}", kMaxEntries, at));
      auto kind_r = r.u8("entry kind");
      if (!kind_r) return fail(kind_r.error());
      uint8_t kind = *kind_r;
      if (!known_kind(kind)) return fail(make_error("unknown entry kind {} at byte {}", kind, at));
      auto nlen_r = r.u8("name length");
      if (!nlen_r) return fail(nlen_r.error());
      auto name_r = r.bytes(*nlen_r, "name");
      if (!name_r) return fail(name_r.error());
      std::string_view name(reinterpret_cast<const char*>(name_r->data()), name_r->size());
      if (!valid_name(name))
        return fail(make_error("invalid entry name '{}' at byte {}", printable(name), at));
      if (!seen.insert(name).second)
        return fail(make_error("duplicate entry '{}' at byte {}", name, at));
      auto vlen_r = r.u32(fmt::format("length of '{}'", name));
      if (!vlen_r) return fail(vlen_r.error());
      uint64_t value_at = r.offset();
      auto value_r = r.bytes(*vlen_r, fmt::format("'{}' ({})", name, kind_name(Kind{kind})));
      if (!value_r) return fail(value_r.error());
      auto value = *value_r;

      if (Kind{kind} == Kind::kSection) {
        if (depth + 1 > kMaxDepth)
          return fail(make_error("section '{}' at byte {} nested deeper than {}", name, at,
                                 kMaxDepth));
        Section child;
        child.name_ = std::string(name);
        child.path_ = join_path(s.path_, name);
        ByteReader sub(value, value_at);
        VMM_CHECK(entries(sub, child, depth + 1));
        s.sections_.push_back(std::move(child));
        continue;
      }
      Field f;
      f.name = std::string(name);
      f.kind = Kind{kind};
      size_t width = fixed_width(f.kind);
      if (width != 0) {
        if (value.size() != width)
          return fail(make_error("field '{}' at byte {}: a {} is {} bytes, not {}", name, at,
                                 kind_name(f.kind), width, value.size()));
        for (size_t i = 0; i < width; ++i) f.scalar |= uint64_t{value[i]} << (8 * i);
        if (f.kind == Kind::kBool && f.scalar > 1)
          return fail(make_error("field '{}' at byte {}: bool value {}", name, at, f.scalar));
      } else {
        f.bytes.assign(value.begin(), value.end());
      }
      s.fields_.push_back(std::move(f));
    }
    return ok();
  }

 private:
  size_t count_ = 0;
};

Result<Section> decode_tree(std::span<const uint8_t> data, uint64_t base) {
  if (data.size() > kMaxStateBytes)
    return make_error("state tree: {} bytes is larger than the {} MiB limit", data.size(),
                      kMaxStateBytes >> 20);
  Section root;
  ByteReader r(data, base);
  TreeDecoder d;
  VMM_CHECK(d.entries(r, root, 0));
  return root;
}

}  // namespace vmm::snapshot
