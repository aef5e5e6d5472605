// snapshot-inspect: prints a snapshot's header and state tree as JSON.
//
//   snapshot-inspect [--max-bytes N] DIR|FILE
//
// DIR is a snapshot directory (its state file is DIR/state; the size of
// DIR/memory is reported when present); FILE a state file. Bytes fields show
// the hex of their first N bytes (default 64, 0 = all) and their size.
// Exit status: 0 printed; 1 unreadable or invalid state (one-line reason on
// stderr); 2 bad command line.
#include <sys/stat.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "vmm/snapshot/state_file.h"
#include "vmm/snapshot/state_json.h"

namespace {

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--max-bytes N] DIR|FILE\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace vmm::snapshot;
  JsonOptions opts;
  std::string target;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    }
    if (a == "--max-bytes") {
      if (++i >= argc) return usage(argv[0]);
      std::string_view v = argv[i];
      size_t n = 0;
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec != std::errc() || p != v.data() + v.size() || v.empty()) return usage(argv[0]);
      opts.max_bytes = n == 0 ? SIZE_MAX : n;
    } else if (!a.empty() && a[0] == '-') {
      return usage(argv[0]);
    } else if (target.empty()) {
      target = a;
    } else {
      return usage(argv[0]);
    }
  }
  if (target.empty()) return usage(argv[0]);

  struct stat st{};
  if (::stat(target.c_str(), &st) < 0) {
    std::fprintf(stderr, "snapshot-inspect: %s: %s\n", target.c_str(), std::strerror(errno));
    return 1;
  }
  std::string state_path = target;
  std::string memory_path;
  if (S_ISDIR(st.st_mode)) {
    state_path = target + "/" + kStateFileName;
    memory_path = target + "/" + kMemoryFileName;
  }
  auto f = read_state_file(state_path);
  if (!f) {
    std::fprintf(stderr, "snapshot-inspect: %s\n", f.error().to_string().c_str());
    return 1;
  }
  auto body = to_json(*f, opts);
  nlohmann::ordered_json out = {{"file", state_path}};
  out["header"] = std::move(body["header"]);
  out["state"] = std::move(body["state"]);
  struct stat mst{};
  if (!memory_path.empty() && ::stat(memory_path.c_str(), &mst) == 0)
    out["memory_file"] = {{"path", memory_path}, {"bytes", static_cast<uint64_t>(mst.st_size)}};
  std::string text = out.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}
