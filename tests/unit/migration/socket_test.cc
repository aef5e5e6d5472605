// URIs and sockets: parse_uri good and bad forms; listen/accept/connect on
// unix sockets and tcp loopback (IPv4, IPv6 when the host has it), port 0,
// timeouts, refused connections, socket files in the way.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "tests/unit/migration/migration_test_util.h"
#include "vmm/migration/protocol.h"

namespace vmm::migration {
namespace {

namespace fs = std::filesystem;
using testing::contains;

TEST(Uri, ParsesGoodForms) {
  struct Case {
    const char* text;
    Uri::Kind kind;
    const char* host;
    uint16_t port;
    const char* path;
    const char* canonical;
  } cases[] = {
      {"tcp:127.0.0.1:4444", Uri::Kind::kTcp, "127.0.0.1", 4444, "", "tcp:127.0.0.1:4444"},
      {"tcp:localhost:0", Uri::Kind::kTcp, "localhost", 0, "", "tcp:localhost:0"},
      {"tcp:dest-host.example.com:65535", Uri::Kind::kTcp, "dest-host.example.com", 65535, "",
       "tcp:dest-host.example.com:65535"},
      {"tcp:[::1]:4444", Uri::Kind::kTcp, "::1", 4444, "", "tcp:[::1]:4444"},
      {"tcp:[::]:1", Uri::Kind::kTcp, "::", 1, "", "tcp:[::]:1"},
      {"tcp:[fe80::1%eth0]:80", Uri::Kind::kTcp, "fe80::1%eth0", 80, "", "tcp:[fe80::1%eth0]:80"},
      {"tcp:0.0.0.0:00080", Uri::Kind::kTcp, "0.0.0.0", 80, "", "tcp:0.0.0.0:80"},
      {"unix:/run/vmm/migrate.sock", Uri::Kind::kUnix, "", 0, "/run/vmm/migrate.sock",
       "unix:/run/vmm/migrate.sock"},
      {"unix:relative.sock", Uri::Kind::kUnix, "", 0, "relative.sock", "unix:relative.sock"},
  };
  for (const auto& c : cases) {
    auto u = parse_uri(c.text);
    ASSERT_TRUE(u.ok()) << c.text << ": " << u.error().message;
    EXPECT_EQ(u->kind, c.kind) << c.text;
    EXPECT_EQ(u->host, c.host) << c.text;
    EXPECT_EQ(u->port, c.port) << c.text;
    EXPECT_EQ(u->path, c.path) << c.text;
    EXPECT_EQ(u->to_string(), c.canonical);
    EXPECT_EQ(*parse_uri(u->to_string()), *u);
  }
  auto longest = parse_uri("unix:" + std::string(107, 'a'));
  EXPECT_TRUE(longest.ok());
}

TEST(Uri, RefusesBadFormsClearly) {
  struct Case {
    std::string text;
    std::string error;
  } cases[] = {
      {"", "expected tcp:HOST:PORT or unix:PATH"},
      {"localhost:4444", "unknown scheme 'localhost' (expected tcp:HOST:PORT or unix:PATH)"},
      {"udp:1.2.3.4:5", "unknown scheme 'udp'"},
      {"TCP:1.2.3.4:5", "unknown scheme 'TCP'"},
      {"/tmp/sock", "expected tcp:HOST:PORT or unix:PATH"},
      {"tcp:", "missing ':PORT'"},
      {"tcp:host", "missing ':PORT' (expected tcp:HOST:PORT)"},
      {"tcp::4444", "empty host (use 0.0.0.0 or [::] to listen on every address)"},
      {"tcp:host:", "empty port"},
      {"tcp:host:http", "port 'http' is not a number in 0-65535"},
      {"tcp:host:-1", "port '-1' is not a number in 0-65535"},
      {"tcp:host:+80", "port '+80' is not a number in 0-65535"},
      {"tcp:host:123456", "port '123456' is not a number in 0-65535"},
      {"tcp:host:65536", "port 65536 is out of range (0-65535)"},
      {"tcp:host:99999", "port 99999 is out of range (0-65535)"},
      {"tcp:::1:4444", "an IPv6 address must be in brackets (tcp:[ADDRESS]:PORT)"},
      {"tcp:[::1:4444", "unterminated '['"},
      {"tcp:[::1]4444", "expected ':PORT' after ']'"},
      {"tcp:[::1]", "expected ':PORT' after ']'"},
      {"tcp:[]:80", "empty IPv6 address in '[]'"},
      {"tcp:[1.2.3.4]:80", "'[1.2.3.4]' is not an IPv6 address (brackets are for IPv6 only)"},
      {"tcp:[a%b]:80", "is not an IPv6 address"},
      {"tcp:[::1 ]:80", "invalid character ' ' in host"},
      {"tcp:ho st:80", "invalid character ' ' in host 'ho st'"},
      {"tcp:host/x:80", "invalid character '/' in host"},
      {"tcp:" + std::string(254, 'a') + ":80", "the host is 254 bytes, at most 253"},
      {"unix:", "empty path (expected unix:PATH)"},
      {"unix:" + std::string(108, 'a'), "the path is 108 bytes, at most 107"},
      {std::string("unix:/tmp/a\0b", 13), "the path contains a NUL byte"},
  };
  for (const auto& c : cases) {
    auto u = parse_uri(c.text);
    ASSERT_FALSE(u.ok()) << "accepted '" << c.text << "'";
    EXPECT_TRUE(u.error().message.starts_with("migration URI '")) << u.error().message;
    EXPECT_TRUE(contains(u.error().message, c.error)) << c.text << " -> " << u.error().message;
  }
  EXPECT_EQ(parse_uri("tcp:host:x").error().message,
            "migration URI 'tcp:host:x': port 'x' is not a number in 0-65535");
}

class TempDir {
 public:
  TempDir() {
    std::string t = (fs::temp_directory_path() / "vmm-migration-test.XXXXXX").string();
    EXPECT_NE(::mkdtemp(t.data()), nullptr);
    path_ = t;
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// A frame each way over a connected pair.
void exchange(int client, int server) {
  FrameWriter cw(client), sw(server);
  FrameReader cr(client), sr(server);
  ASSERT_TRUE(cw.write_frame(FrameType::kHello, *encode_hello(testing::sample_hello()), 1000).ok());
  auto f = sr.read_frame(1000);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(*decode_hello(f->payload), testing::sample_hello());
  ASSERT_TRUE(sw.write_frame(FrameType::kHelloReply, encode_hello_reply({true, ""}), 1000).ok());
  auto g = cr.read_frame(1000);
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_TRUE(decode_hello_reply(g->payload)->accepted);
}

bool is_blocking(int fd) { return (::fcntl(fd, F_GETFL) & O_NONBLOCK) == 0; }
bool is_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }
bool nodelay(int fd) {
  int v = 0;
  socklen_t len = sizeof(v);
  return ::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) == 0 && v != 0;
}

TEST(Sockets, UnixListenConnectAccept) {
  TempDir dir;
  auto uri = *parse_uri("unix:" + dir.file("m.sock"));
  {
    auto l = listen_on(uri);
    ASSERT_TRUE(l.ok()) << l.error().to_string();
    EXPECT_EQ(l->uri(), uri);
    EXPECT_EQ(l->port(), 0u);
    struct stat st {};
    ASSERT_EQ(::lstat(uri.path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    auto c = connect_to(uri, 1000);
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    auto s = accept_one(l->fd(), 1000);
    ASSERT_TRUE(s.ok()) << s.error().to_string();
    for (int fd : {c->get(), s->get()}) {
      EXPECT_TRUE(is_blocking(fd));
      EXPECT_TRUE(is_cloexec(fd));
    }
    exchange(c->get(), s->get());
    // A second listener on the same path is refused while the first lives.
    auto l2 = listen_on(uri);
    ASSERT_FALSE(l2.ok());
    EXPECT_TRUE(contains(l2.error().message, "already in use")) << l2.error().message;
    // Moving keeps one owner of the file.
    Listener moved = std::move(*l);
    EXPECT_TRUE(fs::exists(uri.path));
  }
  EXPECT_FALSE(fs::exists(uri.path));  // removed with the listener
}

TEST(Sockets, UnixStaleSocketIsReplacedOtherFilesAreNot) {
  TempDir dir;
  auto uri = *parse_uri("unix:" + dir.file("stale.sock"));
  {
    // A socket file nobody listens on.
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, uri.path.data(), uri.path.size());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ::close(fd);
  }
  auto l = listen_on(uri);
  ASSERT_TRUE(l.ok()) << l.error().to_string();
  auto plain = *parse_uri("unix:" + dir.file("plain"));
  std::ofstream(plain.path) << "not a socket";
  auto l2 = listen_on(plain);
  ASSERT_FALSE(l2.ok());
  EXPECT_TRUE(contains(l2.error().message, "exists and is not a socket")) << l2.error().message;
  EXPECT_TRUE(fs::exists(plain.path));
}

TEST(Sockets, TcpLoopbackPortZero) {
  auto l = listen_on(*parse_uri("tcp:127.0.0.1:0"));
  ASSERT_TRUE(l.ok()) << l.error().to_string();
  ASSERT_NE(l->port(), 0u);
  EXPECT_EQ(*bound_port(l->fd()), l->port());
  EXPECT_EQ(l->uri().to_string(), fmt::format("tcp:127.0.0.1:{}", l->port()));
  auto c = connect_to(l->uri(), 2000);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  auto s = accept_one(l->fd(), 2000);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  for (int fd : {c->get(), s->get()}) {
    EXPECT_TRUE(nodelay(fd));
    EXPECT_TRUE(is_blocking(fd));
    EXPECT_TRUE(is_cloexec(fd));
  }
  exchange(c->get(), s->get());
}

TEST(Sockets, TcpByNameAndReuseAddr) {
  auto l = listen_on(*parse_uri("tcp:localhost:0"));
  ASSERT_TRUE(l.ok()) << l.error().to_string();
  uint16_t port = l->port();
  auto c = connect_to(*parse_uri(fmt::format("tcp:localhost:{}", port)), 2000);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  auto s = accept_one(l->fd(), 2000);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  exchange(c->get(), s->get());
  // Close the server side first (TIME_WAIT there), then listen again on the
  // same port: SO_REUSEADDR makes that work.
  s->reset();
  c->reset();
  std::string host = l->uri().host;
  *l = Listener();
  auto again = listen_on(*parse_uri(fmt::format("tcp:{}:{}", host, port)));
  EXPECT_TRUE(again.ok()) << again.error().to_string();
}

TEST(Sockets, TcpIpv6Loopback) {
  int probe = ::socket(AF_INET6, SOCK_STREAM, 0);
  if (probe < 0) GTEST_SKIP() << "SKIP: no IPv6 sockets on this host";
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  bool ok = ::bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(probe);
  if (!ok) GTEST_SKIP() << "SKIP: no IPv6 loopback on this host";
  auto l = listen_on(*parse_uri("tcp:[::1]:0"));
  ASSERT_TRUE(l.ok()) << l.error().to_string();
  EXPECT_EQ(l->uri().to_string(), fmt::format("tcp:[::1]:{}", l->port()));
  auto c = connect_to(l->uri(), 2000);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  auto s = accept_one(l->fd(), 2000);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  exchange(c->get(), s->get());
}

TEST(Sockets, AcceptTimesOut) {
  auto l = listen_on(*parse_uri("tcp:127.0.0.1:0"));
  ASSERT_TRUE(l.ok());
  auto t0 = std::chrono::steady_clock::now();
  auto s = accept_one(l->fd(), 50);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(is_timeout(s.error()));
  EXPECT_EQ(s.error().message, "no migration connection within 50 ms");
  EXPECT_GE(ms, 50);
}

TEST(Sockets, ConnectFailuresAreClear) {
  // A port nothing listens on: take one, then close it.
  uint16_t port;
  {
    auto l = listen_on(*parse_uri("tcp:127.0.0.1:0"));
    ASSERT_TRUE(l.ok());
    port = l->port();
  }
  auto c = connect_to(*parse_uri(fmt::format("tcp:127.0.0.1:{}", port)), 1000);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().errno_value, ECONNREFUSED);
  EXPECT_TRUE(contains(c.error().to_string(), fmt::format("connecting to tcp:127.0.0.1:{}", port)))
      << c.error().to_string();
  auto z = connect_to(*parse_uri("tcp:127.0.0.1:0"), 1000);
  ASSERT_FALSE(z.ok());
  EXPECT_EQ(z.error().message, "tcp:127.0.0.1:0: cannot connect to port 0");
  auto n = connect_to(*parse_uri("tcp:no-such-host.invalid:80"), 1000);
  ASSERT_FALSE(n.ok());
  EXPECT_TRUE(contains(n.error().message, "cannot resolve 'no-such-host.invalid'"))
      << n.error().message;
  TempDir dir;
  auto u = connect_to(*parse_uri("unix:" + dir.file("nobody")), 1000);
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.error().errno_value, ENOENT);
}

TEST(Sockets, BoundPortOfANonTcpSocket) {
  auto [a, b] = testing::socket_pair();
  EXPECT_FALSE(bound_port(a.get()).ok());
}

}  // namespace
}  // namespace vmm::migration
