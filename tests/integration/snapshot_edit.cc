// snapshot-edit: a TEST tool that rewrites a snapshot state file's header the
// way an attacker would, keeping it valid (length and CRC recomputed), so
// that tests can check what restore does with a hostile but well-formed
// header. Not installed; built for the kvm tests only.
//
//   snapshot-edit STATE set KEY VALUE | del KEY | template NAME ...
//
// Operations apply in order to the header's config (set adds a missing key).
#include <cstdio>
#include <string>
#include <vector>

#include "vmm/snapshot/state_file.h"

using namespace vmm::snapshot;

namespace {

int usage() {
  std::fprintf(stderr, "usage: snapshot-edit STATE (set KEY VALUE | del KEY | template NAME)...\n");
  return 2;
}

void set_key(StateHeader& h, const std::string& key, const std::string& value) {
  for (auto& [k, v] : h.config)
    if (k == key) {
      v = value;
      return;
    }
  h.config.emplace_back(key, value);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  std::string path = argv[1];
  auto file = read_state_file(path);
  if (!file) {
    std::fprintf(stderr, "%s\n", file.error().to_string().c_str());
    return 1;
  }
  StateHeader& h = file->header;
  std::vector<std::string> args(argv + 2, argv + argc);
  for (size_t i = 0; i < args.size();) {
    const std::string& op = args[i];
    if (op == "set" && i + 2 < args.size()) {
      set_key(h, args[i + 1], args[i + 2]);
      i += 3;
    } else if (op == "del" && i + 1 < args.size()) {
      std::erase_if(h.config, [&](const auto& kv) { return kv.first == args[i + 1]; });
      i += 2;
    } else if (op == "template" && i + 1 < args.size()) {
      h.cpu_template = args[i + 1];
      i += 2;
    } else {
      return usage();
    }
  }
  auto w = write_state_file(path, h, file->tree);
  if (!w) {
    std::fprintf(stderr, "%s\n", w.error().to_string().c_str());
    return 1;
  }
  return 0;
}
