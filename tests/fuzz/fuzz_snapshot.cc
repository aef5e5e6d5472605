// libFuzzer target: the state file parser and the state tree decoder
// (vmm/snapshot), the code that reads snapshot and migration state.
//
// Input: any bytes, fed three ways:
//   1. decode_state(input): magic, version, flags, lengths, CRC, header, tree;
//   2. decode_state(input with its last 4 bytes replaced by the correct
//      CRC-32C), so mutations reach the header and tree decoders instead of
//      stopping at the checksum;
//   3. decode_tree(input): the tree decoder alone.
// A decoded header's config also goes through parse_machine_spec, the
// strict reader restore and incoming use before they allocate or open
// anything (vmm/core/machine_spec.h).
//
// Invariants (abort() on violation): every refusal has a non-empty message; a
// decoded tree re-encodes, and decoding that gives an equal tree whose
// encoding is byte-identical (the encoding is canonical); a decoded state file
// re-encodes to one that decodes to the same header and tree; on every field
// exactly the getter of its kind succeeds; every section path is its parent's
// path plus its name; the JSON view dumps.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "tests/fuzz/fuzz_check.h"
#include "vmm/core/config.h"
#include "vmm/core/machine_spec.h"
#include "vmm/snapshot/byte_io.h"
#include "vmm/snapshot/crc32c.h"
#include "vmm/snapshot/state_file.h"
#include "vmm/snapshot/state_json.h"
#include "vmm/snapshot/state_tree.h"

namespace {

using namespace vmm::snapshot;

void check_section(const Section& s, int depth) {
  FUZZ_CHECK(depth <= kMaxDepth);
  for (const auto& f : s.fields()) {
    int hits = 0;
    hits += s.get_u8(f.name).ok();
    hits += s.get_u16(f.name).ok();
    hits += s.get_u32(f.name).ok();
    hits += s.get_u64(f.name).ok();
    hits += s.get_i64(f.name).ok();
    hits += s.get_bool(f.name).ok();
    hits += s.get_bytes(f.name).ok();
    hits += s.get_string(f.name).ok();
    FUZZ_CHECK(hits == 1);
    FUZZ_CHECK(!s.section(f.name).ok());
    FUZZ_CHECK(valid_name(f.name));
  }
  for (const auto& c : s.sections()) {
    FUZZ_CHECK(valid_name(c.name()));
    FUZZ_CHECK(c.path() == (s.path().empty() ? c.name() : s.path() + "/" + c.name()));
    auto found = s.section(c.name());
    FUZZ_CHECK(found.ok() && *found == &c);
    check_section(c, depth + 1);
  }
}

void check_tree(const Section& tree) {
  check_section(tree, 0);
  auto bytes = encode_tree(tree);
  FUZZ_CHECK(bytes.ok());
  auto again = decode_tree(*bytes);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == tree);
  auto bytes2 = encode_tree(*again);
  FUZZ_CHECK(bytes2.ok() && *bytes2 == *bytes);
  auto text = to_json(tree, JsonOptions{16}).dump(
      -1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  FUZZ_CHECK(!text.empty());
}

// What restore does with a header before anything is opened: parse the
// machine spec strictly; if accepted, the configuration it gives a VM passes
// the same validation as a boot, and the spec round-trips.
void check_machine_spec(const StateHeader& h) {
  auto spec = vmm::parse_machine_spec(h.config);
  if (!spec) {
    FUZZ_CHECK(!spec.error().message.empty());
    return;
  }
  vmm::VmConfig cfg;
  cfg.cpu_template = "host";
  vmm::take_machine_shape(*spec, cfg);
  for (const auto& d : spec->disks) cfg.disks.push_back({"/dev/null", d.readonly, d.id});
  for (const auto& n : spec->nets) cfg.nets.push_back({"tap0", n.mac});
  FUZZ_CHECK(vmm::validate_config(cfg).ok());
  auto again = vmm::parse_machine_spec(vmm::encode_machine_spec(*spec));
  FUZZ_CHECK(again.ok() && *again == *spec);
  FUZZ_CHECK(vmm::compare_machine_specs(*spec, *spec, "fuzz").ok());
}

void check_state(std::span<const uint8_t> data) {
  auto f = decode_state(data, "fuzz");
  if (!f) {
    FUZZ_CHECK(!f.error().message.empty());
    return;
  }
  check_tree(f->tree);
  auto re = encode_state(f->header, f->tree);
  // Config keys were decoded as valid names and the sizes are within the
  // limits, so the file re-encodes.
  FUZZ_CHECK(re.ok());
  auto g = decode_state(*re, "fuzz");
  FUZZ_CHECK(g.ok());
  FUZZ_CHECK(g->header == f->header && g->tree == f->tree);
  auto text = to_json(*f).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  FUZZ_CHECK(!text.empty());
  // Compatibility with itself, always.
  FUZZ_CHECK(check_compatible(f->header, f->header).ok());
  check_machine_spec(f->header);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  check_state(in);
  if (size >= 4) {
    std::vector<uint8_t> fixed(in.begin(), in.end());
    store_le32(fixed.data() + size - 4, crc32c(in.first(size - 4)));
    check_state(fixed);
  }
  auto t = decode_tree(in);
  if (t)
    check_tree(*t);
  else
    FUZZ_CHECK(!t.error().message.empty());
  return 0;
}
