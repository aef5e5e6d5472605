// vmmctl: command-line client of the VMM's control socket (docs/api.md).
//
//   vmmctl --socket PATH status|pause|resume|shutdown
//   vmmctl --socket PATH events            print events until the VMM exits
//   vmmctl --socket PATH raw '{"cmd": "status"}'
//   vmmctl --socket PATH migrate tcp:HOST:PORT [--downtime-ms N] [--bandwidth MiBs]
//          [--timeout-s N] [--max-rounds N] [--on-timeout stop-copy|fail]
//   vmmctl --socket PATH migrate-cancel
//   vmmctl --socket PATH snapshot create DIR
//
// migrate shows progress (one line per pre-copy round; redrawn in place on a
// terminal) and ends with a summary; exit 0 when the guest runs on the
// destination, 1 when the migration failed (the guest keeps running here).
//
// Prints the reply as JSON (pretty unless --compact). Exit status: 0 the
// command succeeded, 1 the VMM refused it (its error is printed), 2 usage,
// 3 cannot reach the socket / connection lost.
#include <CLI/CLI.hpp>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

namespace {

int connect_to(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return -1;
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

bool send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads one line; false on EOF/error.
bool read_line(int fd, std::string& buf, std::string& line) {
  for (;;) {
    size_t pos = buf.find('\n');
    if (pos != std::string::npos) {
      line = buf.substr(0, pos);
      buf.erase(0, pos + 1);
      return true;
    }
    char tmp[4096];
    ssize_t n = ::read(fd, tmp, sizeof(tmp));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(tmp, static_cast<size_t>(n));
  }
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char out[32];
  std::snprintf(out, sizeof(out), u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return out;
}

double num(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

void show_progress(const nlohmann::json& e, bool tty) {
  // The bar: what is sent out of what is sent plus what is still dirty.
  double sent = num(e, "transferred_bytes"), left = num(e, "remaining_bytes");
  int filled = sent + left > 0 ? static_cast<int>(20 * sent / (sent + left)) : 0;
  std::string bar = "[" + std::string(filled, '#') + std::string(20 - filled, '.') + "] ";
  std::fprintf(stderr,
               "%s%sround %d | sent %s | remaining %s | dirty %.1f MiB/s | bandwidth %.1f MiB/s | "
               "expected downtime %.0f ms%s",
               tty ? "\r\033[K" : "", bar.c_str(), static_cast<int>(num(e, "round")),
               human_bytes(num(e, "transferred_bytes")).c_str(),
               human_bytes(num(e, "remaining_bytes")).c_str(), num(e, "dirty_rate_mibs"),
               num(e, "bandwidth_mibs"), num(e, "expected_downtime_ms"), tty ? "" : "\n");
  std::fflush(stderr);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vmmctl - talk to a running vmm through its --api-socket", "vmmctl"};
  std::string socket_path, command, raw;
  bool compact = false;
  app.add_option("-s,--socket", socket_path, "The VMM's --api-socket path")->required();
  app.add_flag("--compact", compact, "Print replies on one line");
  app.add_option("command", command,
                 "status | pause | resume | shutdown | events | raw | snapshot | migrate | "
                 "migrate-cancel")
      ->required();
  app.add_option("request", raw, "For raw: a JSON request object; for migrate: tcp:HOST:PORT or "
                                 "unix:PATH; for snapshot: create");
  std::string arg2;
  app.add_option("dir", arg2, "For snapshot create: the snapshot directory");
  std::optional<uint32_t> downtime_ms, bandwidth, timeout_s, max_rounds;
  std::string on_timeout;
  app.add_option("--downtime-ms", downtime_ms, "migrate: downtime target (default 300)");
  app.add_option("--bandwidth", bandwidth, "migrate: cap in MiB/s (default unlimited)");
  app.add_option("--timeout-s", timeout_s, "migrate: give up after N seconds (default never)");
  app.add_option("--max-rounds", max_rounds, "migrate: pre-copy rounds at most (default 30)");
  app.add_option("--on-timeout", on_timeout,
                 "migrate: stop-copy (default: pause and send the rest) | fail (give up)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  auto print = [&](const nlohmann::json& j) {
    std::cout << (compact ? j.dump() : j.dump(2)) << std::endl;
  };

  nlohmann::json req;
  if (command == "raw") {
    req = nlohmann::json::parse(raw, nullptr, false);
    if (req.is_discarded() || !req.is_object()) {
      std::fprintf(stderr, "vmmctl: raw: not a JSON object: %s\n", raw.c_str());
      return 2;
    }
  } else if (command == "status" || command == "pause" || command == "resume" ||
             command == "shutdown") {
    req = {{"cmd", command}};
  } else if (command == "migrate") {
    if (raw.empty()) {
      std::fprintf(stderr, "vmmctl: migrate needs a destination: tcp:HOST:PORT or unix:PATH\n");
      return 2;
    }
    req = {{"cmd", "migrate"}, {"uri", raw}};
    if (downtime_ms) req["downtime_ms"] = *downtime_ms;
    if (bandwidth) req["bandwidth_mibs"] = *bandwidth;
    if (timeout_s) req["timeout_s"] = *timeout_s;
    if (max_rounds) req["max_rounds"] = *max_rounds;
    if (!on_timeout.empty()) req["on_timeout"] = on_timeout;
  } else if (command == "snapshot" || command == "snapshot-create") {
    // "snapshot create DIR" (or "snapshot-create DIR")
    std::string dir = command == "snapshot" ? arg2 : raw;
    if ((command == "snapshot" && raw != "create") || dir.empty() ||
        (command == "snapshot-create" && !arg2.empty())) {
      std::fprintf(stderr, "vmmctl: usage: snapshot create DIR\n");
      return 2;
    }
    req = {{"cmd", "snapshot-create"}, {"dir", dir}};
  } else if (command == "migrate-cancel") {
    req = {{"cmd", "migrate-cancel"}};
  } else if (command != "events") {
    std::fprintf(stderr, "vmmctl: unknown command '%s'\n", command.c_str());
    return 2;
  }

  int fd = connect_to(socket_path);
  if (fd < 0) {
    std::fprintf(stderr, "vmmctl: cannot connect to %s: %s\n", socket_path.c_str(),
                 std::strerror(errno));
    return 3;
  }
  std::string buf, line;
  if (command == "events") {
    while (read_line(fd, buf, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded()) print(j);
    }
    return 0;
  }
  const int id = static_cast<int>(::getpid());
  req["id"] = id;
  if (!send_all(fd, req.dump() + "\n")) {
    std::fprintf(stderr, "vmmctl: send failed: %s\n", std::strerror(errno));
    return 3;
  }
  if (command == "migrate") {
    // The reply says it started; events tell the rest.
    const bool tty = ::isatty(STDERR_FILENO);
    bool started = false;
    while (read_line(fd, buf, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object()) continue;
      if (!j.contains("event")) {
        if (!j.contains("id") || j["id"] != id) continue;
        if (!j.value("ok", false)) {
          std::fprintf(stderr, "vmmctl: migrate: %s\n",
                       j.value("error", std::string("failed")).c_str());
          return 1;
        }
        started = true;
        continue;
      }
      const std::string ev = j["event"].is_string() ? j["event"].get<std::string>() : "";
      if (ev == "migration-progress") {
        show_progress(j, tty);
      } else if (ev == "migration-done") {
        if (tty) std::fprintf(stderr, "\n");
        std::fprintf(stderr,
                     "migrated: total %.0f ms, downtime %.1f ms, %d rounds, %s sent (%d pages, "
                     "%d zero)\n",
                     num(j, "total_ms"), num(j, "downtime_ms"), static_cast<int>(num(j, "rounds")),
                     human_bytes(num(j, "bytes")).c_str(), static_cast<int>(num(j, "pages")),
                     static_cast<int>(num(j, "zero_pages")));
        j.erase("event");
        print(j);
        return 0;
      } else if (ev == "migration-failed") {
        if (tty) std::fprintf(stderr, "\n");
        std::fprintf(stderr, "vmmctl: migration failed: %s (the guest keeps running here)\n",
                     j.value("error", std::string("?")).c_str());
        return 1;
      }
    }
    std::fprintf(stderr, "vmmctl: connection closed %s\n",
                 started ? "before the migration ended" : "before a reply");
    return 3;
  }
  // Skip events until our reply arrives.
  while (read_line(fd, buf, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || j.contains("event")) continue;
    if (!j.contains("id") || j["id"] != id) continue;
    bool ok = j.value("ok", false);
    if (!ok) {
      std::fprintf(stderr, "vmmctl: %s: %s\n", command.c_str(),
                   j.value("error", std::string("failed")).c_str());
      return 1;
    }
    j.erase("id");
    j.erase("ok");
    if (!j.empty()) print(j);
    return 0;
  }
  std::fprintf(stderr, "vmmctl: connection closed before a reply\n");
  return 3;
}
