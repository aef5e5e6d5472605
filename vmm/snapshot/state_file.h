// The state file: a header (who wrote it, for which configuration) and a
// state tree (state_tree.h), with a length and a CRC. Guest memory is NOT in
// here; it travels in its own file (snapshot) or stream (migration).
//
// Layout, format version 1 (integers little-endian):
//
//   0   8  magic "VMMSTATE"
//   8   4  format version (kStateFormatVersion)
//   12  4  flags, 0
//   16  4  header_len: bytes of header entries, at most kMaxHeaderBytes
//   20  8  payload_len: bytes of the state tree
//   28     header entries (a state tree): vmm_version (string),
//          cpu_template (string), created_unix (u64), config (section of
//          string fields: the configuration fingerprint)
//   28+header_len  payload: the state tree
//   end-4  4  CRC-32C of every byte before it
//
// The file is exactly 32 + header_len + payload_len bytes, at most
// kMaxStateBytes. Readers check, in order: size, magic, version, flags,
// lengths, CRC, then decode the header and the tree; each failure is a
// one-line Error naming the file and what is wrong.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "vmm/base/result.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm::snapshot {

inline constexpr char kStateMagic[8] = {'V', 'M', 'M', 'S', 'T', 'A', 'T', 'E'};
inline constexpr uint32_t kStateFormatVersion = 1;
inline constexpr size_t kStateFixedHeaderBytes = 28;
inline constexpr size_t kMaxHeaderBytes = 64 * 1024;
// File names inside a snapshot directory.
inline constexpr const char* kStateFileName = "state";
inline constexpr const char* kMemoryFileName = "memory";

struct StateHeader {
  uint32_t format_version = kStateFormatVersion;  // written as kStateFormatVersion
  std::string vmm_version;
  std::string cpu_template;
  uint64_t created_unix = 0;  // seconds; informational
  // The configuration fingerprint, filled by the VMM (memory size, vCPUs,
  // devices...): restore onto a VM whose fingerprint differs is refused
  // (check_compatible). Keys are entry names (valid_name), unique.
  std::vector<std::pair<std::string, std::string>> config;

  bool operator==(const StateHeader&) const = default;
};

struct StateFile {
  StateHeader header;
  Section tree;
  uint64_t payload_bytes = 0;  // filled by decode
  uint32_t crc = 0;            // filled by decode

  bool operator==(const StateFile&) const = default;
};

// The bytes of a state file (the same blob a migration stream carries).
Result<std::vector<uint8_t>> encode_state(const StateHeader& header, const Section& tree);
// Parses hostile bytes; `what` names the input in messages (a path).
Result<StateFile> decode_state(std::span<const uint8_t> data, const std::string& what = "state");

// Writes atomically: a temporary file (mode 0600, created with
// O_EXCL|O_NOFOLLOW under a random name) in the same directory, fsync,
// rename over `path`, fsync of the directory. On failure `path` is untouched
// and the temporary file removed.
Result<void> write_state_file(const std::string& path, const StateHeader& header,
                              const Section& tree);
// The same, as `name` in the directory open as `dirfd` (a SnapshotDir);
// `what` names the file in messages.
Result<void> write_state_file_at(int dirfd, const std::string& name, const StateHeader& header,
                                 const Section& tree, const std::string& what);
// Refuses non-regular files and files over kMaxStateBytes before reading them.
Result<StateFile> read_state_file(const std::string& path);

// Restoring state saved under `saved` onto a VM described by `current`:
// refused, with every difference listed ("snapshot has memory=512M, this VM
// memory=1G; ..."), when the CPU template or any config key/value differs.
// The VMM version may differ (the format version is what must match).
Result<void> check_compatible(const StateHeader& saved, const StateHeader& current);

}  // namespace vmm::snapshot
