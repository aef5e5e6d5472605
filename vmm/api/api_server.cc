#include "vmm/api/api_server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace vmm {
namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Result<std::unique_ptr<ApiServer>> ApiServer::start(const std::string& path, Handler handler) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path))
    return make_error("--api-socket '{}': path must be 1-{} bytes", path, sizeof(addr.sun_path) - 1);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return make_error("--api-socket '{}': exists and is not a socket", path);
    ::unlink(path.c_str());
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return errno_error("socket");
  UniqueFd listener(fd);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0)
    return errno_error("--api-socket '{}': bind", path);
  if (::listen(fd, 16) < 0) return errno_error("--api-socket '{}': listen", path);
  VMM_TRY(auto loop, EventLoop::create());
  VMM_TRY(auto wake, make_eventfd());
  auto server = std::unique_ptr<ApiServer>(
      new ApiServer(path, std::move(listener), std::move(loop), std::move(handler), std::move(wake)));
  ApiServer* s = server.get();
  VMM_CHECK(s->loop_->add(s->listener_.get(), EPOLLIN, [s](uint32_t) { s->on_accept(); }));
  VMM_CHECK(s->loop_->add(s->wake_.get(), EPOLLIN, [s](uint32_t) {
    drain_eventfd(s->wake_.get());
    std::lock_guard lock(s->mu_);
    std::vector<int> fds;
    for (auto& [cfd, c] : s->clients_) fds.push_back(cfd);
    for (int cfd : fds) {
      auto it = s->clients_.find(cfd);
      if (it != s->clients_.end()) (void)s->flush(*it->second);
    }
  }));
  s->thread_ = std::thread([s] {
    auto r = s->loop_->run();
    if (!r.ok()) spdlog::error("api socket: {}", r.error().to_string());
  });
  return server;
}

ApiServer::ApiServer(std::string path, UniqueFd listener, std::unique_ptr<EventLoop> loop,
                     Handler handler, UniqueFd wake)
    : path_(std::move(path)),
      listener_(std::move(listener)),
      loop_(std::move(loop)),
      handler_(std::move(handler)),
      wake_(std::move(wake)) {}

ApiServer::~ApiServer() {
  loop_->stop();
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
}

void ApiServer::on_accept() {
  for (;;) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;  // EAGAIN, or a transient error: try on the next event
    auto c = std::make_unique<Client>();
    c->fd.reset(fd);
    {
      std::lock_guard lock(mu_);
      clients_[fd] = std::move(c);
    }
    auto r = loop_->add(fd, EPOLLIN, [this, fd](uint32_t ev) { on_client(fd, ev); });
    if (!r.ok()) {
      std::lock_guard lock(mu_);
      clients_.erase(fd);
    }
  }
}

void ApiServer::on_client(int fd, uint32_t events) {
  std::vector<std::string> lines;
  {
    std::lock_guard lock(mu_);
    auto it = clients_.find(fd);
    if (it == clients_.end()) return;
    Client& c = *it->second;
    // flush() may close the client (and free `c`): nothing touches either after that.
    if ((events & EPOLLOUT) && !flush(c)) return;
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      close_client(fd);
      return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    size_t pos;
    while ((pos = c.in.find('\n')) != std::string::npos) {
      lines.push_back(c.in.substr(0, pos));
      c.in.erase(0, pos + 1);
    }
    if (c.in.size() > kMaxLine) {
      spdlog::warn("api socket: client sent a line over {} bytes; disconnecting it", kMaxLine);
      close_client(fd);
      return;
    }
  }
  // Requests run without mu_ held, so a handler can emit() events.
  for (const auto& line : lines) {
    std::string reply;
    nlohmann::json id = nullptr;
    nlohmann::json out;
    auto req = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (req.is_discarded() || !req.is_object()) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank line
      out = {{"id", nullptr}, {"ok", false}, {"error", "request is not a JSON object"}};
    } else {
      if (req.contains("id")) id = req["id"];
      if (!req.contains("cmd") || !req["cmd"].is_string()) {
        out = {{"id", id}, {"ok", false}, {"error", "request has no \"cmd\" string"}};
      } else {
        Handler handler;
        {
          std::lock_guard hl(handler_mu_);
          handler = handler_;
        }
        auto r = handler(req["cmd"].get<std::string>(), req);
        if (r.ok()) {
          out = r->is_object() ? *r : nlohmann::json::object();
          out["id"] = id;
          out["ok"] = true;
        } else {
          out = {{"id", id}, {"ok", false}, {"error", r.error().to_string()}};
        }
      }
    }
    std::lock_guard lock(mu_);
    auto it = clients_.find(fd);
    if (it == clients_.end()) return;
    if (!queue_output(*it->second, out.dump() + "\n")) return;
  }
}

void ApiServer::set_handler(Handler handler) {
  std::lock_guard hl(handler_mu_);
  handler_ = std::move(handler);
}

void ApiServer::emit(const std::string& event, nlohmann::json fields) {
  if (!fields.is_object()) fields = nlohmann::json::object();
  fields["event"] = event;
  fields["ts_ms"] = now_ms();
  std::string text = fields.dump() + "\n";
  {
    std::lock_guard lock(mu_);
    for (auto& [fd, c] : clients_) {
      if (c->out.size() + text.size() > kMaxPendingOutput) continue;  // a stuck reader
      c->out += text;
    }
  }
  signal_eventfd(wake_.get());
}

bool ApiServer::queue_output(Client& c, const std::string& text) {
  if (c.out.size() + text.size() > kMaxPendingOutput) {
    spdlog::warn("api socket: client is not reading; disconnecting it");
    close_client(c.fd.get());
    return false;
  }
  c.out += text;
  return flush(c);
}

bool ApiServer::flush(Client& c) {
  while (!c.out.empty()) {
    ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      close_client(c.fd.get());
      return false;
    }
    c.out.erase(0, static_cast<size_t>(n));
  }
  (void)loop_->modify(c.fd.get(), c.out.empty() ? uint32_t{EPOLLIN} : uint32_t{EPOLLIN | EPOLLOUT});
  return true;
}

void ApiServer::close_client(int fd) {
  (void)loop_->remove(fd);
  clients_.erase(fd);  // closes fd
}

}  // namespace vmm
