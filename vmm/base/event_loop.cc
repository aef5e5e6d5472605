#include "vmm/base/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>

namespace vmm {

Result<UniqueFd> make_eventfd() {
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return errno_error("eventfd");
  return UniqueFd(fd);
}

void signal_eventfd(int fd) {
  uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(fd, &one, sizeof(one));
  } while (r < 0 && errno == EINTR);
}

bool drain_eventfd(int fd) {
  uint64_t v = 0;
  ssize_t r;
  do {
    r = ::read(fd, &v, sizeof(v));
  } while (r < 0 && errno == EINTR);
  return r == sizeof(v) && v != 0;
}

Result<std::unique_ptr<EventLoop>> EventLoop::create() {
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return errno_error("epoll_create1");
  UniqueFd epoll(ep);
  VMM_TRY(auto stop, make_eventfd());
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = stop.get();
  if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, stop.get(), &ev) < 0)
    return errno_error("epoll_ctl(stop eventfd)");
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(epoll), std::move(stop)));
}

Result<void> EventLoop::add(int fd, uint32_t events, Callback cb) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) return errno_error("epoll add fd {}", fd);
  callbacks_[fd] = std::make_shared<Callback>(std::move(cb));
  return ok();
}

Result<void> EventLoop::modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) < 0)
    return errno_error("epoll modify fd {}", fd);
  return ok();
}

Result<void> EventLoop::remove(int fd) {
  callbacks_.erase(fd);
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr) < 0)
    return errno_error("epoll remove fd {}", fd);
  return ok();
}

Result<void> EventLoop::run_once(int timeout_ms) {
  std::array<epoll_event, 16> events;
  int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return ok();
    return errno_error("epoll_wait");
  }
  for (int i = 0; i < n && !stopping_.load(); ++i) {
    int fd = events[static_cast<size_t>(i)].data.fd;
    if (fd == stop_fd_.get()) continue;
    auto it = callbacks_.find(fd);
    if (it == callbacks_.end()) continue;  // removed by an earlier callback
    auto cb = it->second;
    (*cb)(events[static_cast<size_t>(i)].events);
  }
  return ok();
}

Result<void> EventLoop::run() {
  while (!stopping_.load()) VMM_CHECK(run_once(-1));
  return ok();
}

void EventLoop::rearm() {
  drain_eventfd(stop_fd_.get());
  stopping_ = false;
}

void EventLoop::stop() {
  stopping_ = true;
  signal_eventfd(stop_fd_.get());
}

}  // namespace vmm
