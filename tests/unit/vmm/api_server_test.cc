#include "vmm/api/api_server.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

namespace vmm {
namespace {

namespace fs = std::filesystem;

int connect_to(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// One request, one reply line (or "" on timeout).
std::string call(int fd, const std::string& line) {
  std::string req = line + "\n";
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) return "";
  std::string got;
  char buf[4096];
  while (got.find('\n') == std::string::npos) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return "";
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) return "";
    got.append(buf, static_cast<size_t>(n));
  }
  return got.substr(0, got.find('\n'));
}

// A client that asks for more than it reads and then hangs up while the
// server still has output queued: the hang-up event (EPOLLIN|EPOLLOUT|
// EPOLLHUP) makes the server's flush fail and close the client in the
// middle of handling that event. Nothing may touch that client afterwards.
// Before the fix the server went on to read() the closed fd number and
// append to the freed client's buffer; two threads opening /dev/zero
// meanwhile make that number come back as a readable file, so the ASan build
// reported the use after free in the first round (checked).
TEST(ApiServer, ClientClosingWithQueuedOutputIsForgottenSafely) {
  std::string dir = (fs::temp_directory_path() / "vmm-api-test.XXXXXX").string();
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  std::string path = dir + "/api.sock";
  const std::string big(64 * 1024, 'x');
  auto server = ApiServer::start(path, [&](const std::string& cmd, const nlohmann::json&) {
    return Result<nlohmann::json>(nlohmann::json{{"cmd", cmd}, {"pad", big}});
  });
  ASSERT_TRUE(server.ok()) << server.error().to_string();

  std::atomic<bool> stop{false};
  auto reuse = [&] {
    while (!stop) {
      int fd = ::open("/dev/zero", O_RDONLY | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
    }
  };
  std::thread reuser1(reuse), reuser2(reuse);
  std::string burst;
  for (int i = 0; i < 8; ++i) burst += "{\"cmd\":\"fill\"}\n";  // 512 KiB of replies
  for (int round = 0; round < 20; ++round) {
    int fd = connect_to(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, burst.data(), burst.size()), static_cast<ssize_t>(burst.size()));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the server queues replies
    ::close(fd);  // unread replies: the server's next send fails (EPIPE)
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop = true;
  reuser1.join();
  reuser2.join();

  int fd = connect_to(path);
  ASSERT_GE(fd, 0);
  std::string reply = call(fd, "{\"id\":1,\"cmd\":\"status\"}");
  EXPECT_NE(reply.find("\"cmd\":\"status\""), std::string::npos) << reply;
  EXPECT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  ::close(fd);
  server->reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace vmm
