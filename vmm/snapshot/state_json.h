// JSON views of a state tree and a state file, for snapshot-inspect and for
// debugging: fields become members ("dll": 12), sections nested objects,
// bytes {"size": N, "hex": "..."} with "truncated": true when longer than
// JsonOptions::max_bytes.
#pragma once

#include <nlohmann/json.hpp>

#include "vmm/snapshot/state_file.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm::snapshot {

struct JsonOptions {
  size_t max_bytes = 64;  // bytes fields: hex of at most this many bytes
};

nlohmann::ordered_json to_json(const Section& s, const JsonOptions& opts = {});
// {"header": {format_version, vmm_version, cpu_template, created_unix,
//  config: {...}, payload_bytes, crc32c}, "state": <tree>}
nlohmann::ordered_json to_json(const StateFile& f, const JsonOptions& opts = {});

}  // namespace vmm::snapshot
