// vmmctl: command-line client of the VMM's control socket (docs/api.md).
//
//   vmmctl --socket PATH status|pause|resume|shutdown
//   vmmctl --socket PATH events            print events until the VMM exits
//   vmmctl --socket PATH raw '{"cmd": "status"}'
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vmmctl - talk to a running vmm through its --api-socket", "vmmctl"};
  std::string socket_path, command, raw;
  bool compact = false;
  app.add_option("-s,--socket", socket_path, "The VMM's --api-socket path")->required();
  app.add_flag("--compact", compact, "Print replies on one line");
  app.add_option("command", command, "status | pause | resume | shutdown | events | raw")
      ->required();
  app.add_option("request", raw, "For raw: a JSON request object");
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
