#include "vmm/snapshot/state_file.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "vmm/base/unique_fd.h"
#include "vmm/snapshot/byte_io.h"
#include "vmm/snapshot/crc32c.h"

namespace vmm::snapshot {

namespace {

constexpr size_t kCrcBytes = 4;

Section header_tree(const StateHeader& h) {
  Section s;
  s.put_string("vmm_version", h.vmm_version);
  s.put_string("cpu_template", h.cpu_template);
  s.put_u64("created_unix", h.created_unix);
  Section& c = s.add_section("config");
  for (const auto& [k, v] : h.config) c.put_string(k, v);
  return s;
}

Result<StateHeader> header_from_tree(const Section& s) {
  StateHeader h;
  VMM_TRY(h.vmm_version, s.get_string("vmm_version"));
  VMM_TRY(h.cpu_template, s.get_string("cpu_template"));
  VMM_TRY(h.created_unix, s.get_u64("created_unix"));
  VMM_TRY(const Section* c, s.section("config"));
  if (!c->sections().empty())
    return make_error("config: unexpected section '{}'", c->sections().front().name());
  for (const auto& f : c->fields()) {
    VMM_TRY(auto v, c->get_string(f.name));
    h.config.emplace_back(f.name, std::move(v));
  }
  return h;
}

std::string dirname_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Result<void> write_all(int fd, std::span<const uint8_t> data, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("write {}", what);
    }
    data = data.subspan(static_cast<size_t>(n));
  }
  return ok();
}

}  // namespace

Result<std::vector<uint8_t>> encode_state(const StateHeader& header, const Section& tree) {
  auto h = encode_tree(header_tree(header));
  if (!h) return make_error("state header: {}", h.error().message);
  if (h->size() > kMaxHeaderBytes)
    return make_error("state header: {} bytes is larger than the {} byte limit", h->size(),
                      kMaxHeaderBytes);
  VMM_TRY(auto payload, encode_tree(tree));
  uint64_t total = kStateFixedHeaderBytes + h->size() + payload.size() + kCrcBytes;
  if (total > kMaxStateBytes)
    return make_error("state: {} bytes is larger than the {} MiB limit", total,
                      kMaxStateBytes >> 20);
  ByteWriter w;
  w.reserve(static_cast<size_t>(total));
  w.bytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(kStateMagic), 8));
  w.u32(kStateFormatVersion);
  w.u32(0);
  w.u32(static_cast<uint32_t>(h->size()));
  w.u64(payload.size());
  w.bytes(*h);
  w.bytes(payload);
  w.u32(crc32c(w.data()));
  return w.take();
}

Result<StateFile> decode_state(std::span<const uint8_t> data, const std::string& what) {
  auto fail = [&](const Error& e) { return make_error("{}: {}", what, e.message); };
  if (data.size() > kMaxStateBytes)
    return fail(make_error("{} bytes is larger than the {} MiB limit", data.size(),
                           kMaxStateBytes >> 20));
  if (data.size() < kStateFixedHeaderBytes + kCrcBytes)
    return fail(make_error("truncated: {} bytes, a state file has at least {}", data.size(),
                           kStateFixedHeaderBytes + kCrcBytes));
  if (std::memcmp(data.data(), kStateMagic, sizeof(kStateMagic)) != 0)
    return fail(make_error(
        "not a VMM state file (magic '{}', expected 'VMMSTATE')",
        printable(std::string_view(reinterpret_cast<const char*>(data.data()), 8))));
  ByteReader r(data.subspan(8, kStateFixedHeaderBytes - 8), 8);
  uint32_t version = *r.u32("version");
  uint32_t flags = *r.u32("flags");
  uint32_t header_len = *r.u32("header length");
  uint64_t payload_len = *r.u64("payload length");
  if (version > kStateFormatVersion)
    return fail(make_error(
        "format version {} is newer than this VMM supports (version {}); restore it with the "
        "VMM that wrote it or a newer one",
        version, kStateFormatVersion));
  if (version < kStateFormatVersion)
    return fail(make_error("format version {} is older than this VMM supports (version {})",
                           version, kStateFormatVersion));
  if (flags != 0) return fail(make_error("unsupported flags {:#x}", flags));
  if (header_len > kMaxHeaderBytes)
    return fail(make_error("header length {} exceeds the {} byte limit", header_len,
                           kMaxHeaderBytes));
  if (payload_len > kMaxStateBytes)
    return fail(make_error("payload length {} exceeds the {} MiB limit", payload_len,
                           kMaxStateBytes >> 20));
  uint64_t expected = kStateFixedHeaderBytes + uint64_t{header_len} + payload_len + kCrcBytes;
  if (data.size() < expected)
    return fail(make_error("truncated: {} bytes, the header says {}", data.size(), expected));
  if (data.size() > expected)
    return fail(make_error("{} bytes of trailing garbage after the {} the header says",
                           data.size() - expected, expected));
  uint32_t stored = load_le32(data.data() + data.size() - kCrcBytes);
  uint32_t computed = crc32c(data.first(data.size() - kCrcBytes));
  if (stored != computed)
    return fail(make_error("checksum mismatch (stored {:#010x}, computed {:#010x}): the file is "
                           "corrupt",
                           stored, computed));

  auto header_bytes = data.subspan(kStateFixedHeaderBytes, header_len);
  auto htree = decode_tree(header_bytes, kStateFixedHeaderBytes);
  if (!htree) return fail(make_error("header: {}", htree.error().message));
  auto header = header_from_tree(*htree);
  if (!header) return fail(make_error("header: {}", header.error().message));
  StateFile out;
  out.header = std::move(header).value();
  out.header.format_version = version;
  auto payload = data.subspan(kStateFixedHeaderBytes + header_len, payload_len);
  auto tree = decode_tree(payload, kStateFixedHeaderBytes + header_len);
  if (!tree) return fail(tree.error());
  out.tree = std::move(tree).value();
  out.payload_bytes = payload_len;
  out.crc = stored;
  return out;
}

Result<void> write_state_file_at(int dirfd, const std::string& name, const StateHeader& header,
                                 const Section& tree, const std::string& what) {
  VMM_TRY(auto bytes, encode_state(header, tree));
  // A fresh temporary name: O_EXCL|O_NOFOLLOW never opens what is already
  // there (a planted symlink or file).
  UniqueFd fd;
  std::string tmp;
  for (int attempt = 0; attempt < 100 && !fd.valid(); ++attempt) {
    uint64_t r = 0;
    if (::getrandom(&r, sizeof(r), 0) != sizeof(r)) r = static_cast<uint64_t>(::getpid()) + attempt;
    tmp = fmt::format("{}.tmp.{:016x}", name, r);
    fd.reset(::openat(dirfd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                      0600));
    if (!fd.valid() && errno != EEXIST)
      return errno_error("cannot create a temporary file for {}", what);
  }
  if (!fd.valid()) return make_error("cannot create a temporary file for {}", what);
  auto cleanup_on_error = [&](Error e) {
    ::unlinkat(dirfd, tmp.c_str(), 0);
    return e;
  };
  auto w = write_all(fd.get(), bytes, what);
  if (!w) return cleanup_on_error(std::move(w).error());
  if (::fsync(fd.get()) < 0) return cleanup_on_error(errno_error("fsync {}", what));
  if (::close(fd.release()) < 0) return cleanup_on_error(errno_error("close {}", what));
  if (::renameat(dirfd, tmp.c_str(), dirfd, name.c_str()) < 0)
    return cleanup_on_error(errno_error("rename the temporary file to {}", what));
  if (::fsync(dirfd) < 0) return errno_error("fsync the directory of {}", what);
  return ok();
}

Result<void> write_state_file(const std::string& path, const StateHeader& header,
                              const Section& tree) {
  std::string dir = dirname_of(path);
  std::string name = path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1);
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd.valid()) return errno_error("open directory {}", dir);
  return write_state_file_at(dfd.get(), name, header, tree, path);
}

Result<StateFile> read_state_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_error("cannot open state file {}", path);
  struct stat st{};
  if (::fstat(fd.get(), &st) < 0) return errno_error("stat {}", path);
  if (!S_ISREG(st.st_mode)) return make_error("{}: not a regular file", path);
  auto size = static_cast<uint64_t>(st.st_size);
  if (size > kMaxStateBytes)
    return make_error("{}: {} bytes is larger than the {} MiB limit for a state file", path, size,
                      kMaxStateBytes >> 20);
  std::vector<uint8_t> buf(static_cast<size_t>(size));
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd.get(), buf.data() + got, buf.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("read {}", path);
    }
    if (n == 0) break;  // shrank under us: decode reports it truncated
    got += static_cast<size_t>(n);
  }
  buf.resize(got);
  return decode_state(buf, path);
}

Result<void> check_compatible(const StateHeader& saved, const StateHeader& current) {
  std::vector<std::string> diffs;
  if (saved.cpu_template != current.cpu_template)
    diffs.push_back(fmt::format("CPU template '{}' in the snapshot, '{}' in this VM",
                                printable(saved.cpu_template), printable(current.cpu_template)));
  std::map<std::string, std::string> a(saved.config.begin(), saved.config.end());
  std::map<std::string, std::string> b(current.config.begin(), current.config.end());
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end())
      diffs.push_back(fmt::format("snapshot has {}={}, this VM has no {}", k, printable(v), k));
    else if (it->second != v)
      diffs.push_back(
          fmt::format("snapshot has {}={}, this VM {}={}", k, printable(v), k, printable(it->second)));
  }
  for (const auto& [k, v] : b)
    if (!a.contains(k))
      diffs.push_back(fmt::format("this VM has {}={}, the snapshot has no {}", k, printable(v), k));
  if (diffs.empty()) return ok();
  std::string msg;
  for (const auto& d : diffs) msg += (msg.empty() ? "" : "; ") + d;
  return make_error("snapshot does not match this VM's configuration: {}", msg);
}

}  // namespace vmm::snapshot
