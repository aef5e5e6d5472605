// EventLoop: a small epoll loop for device worker threads. File descriptors
// are registered with a callback; run() dispatches ready ones on the calling
// thread until stop() (safe from any thread). Level-triggered: a callback that
// leaves data unread is called again, so back-pressure is expressed by
// changing a descriptor's interest (modify), never by spinning.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace vmm {

class EventLoop {
 public:
  using Callback = std::function<void(uint32_t events)>;

  static Result<std::unique_ptr<EventLoop>> create();

  // Registration happens on the loop thread or before run(); callbacks may
  // add, modify or remove descriptors (including their own).
  Result<void> add(int fd, uint32_t events, Callback cb);
  Result<void> modify(int fd, uint32_t events);
  Result<void> remove(int fd);

  // Dispatches until stop(). Returns an error only if epoll itself fails.
  Result<void> run();
  // Waits at most timeout_ms (0: not at all, -1: forever) and dispatches
  // what is ready once. For tests and fuzzers.
  Result<void> run_once(int timeout_ms);
  // Thread-safe; run() returns after the callback in progress (if any).
  void stop();
  // After run() returned because of stop(): makes the loop runnable again
  // (registrations are kept). Not concurrent with run().
  void rearm();

 private:
  EventLoop(UniqueFd epoll, UniqueFd stop) : epoll_(std::move(epoll)), stop_fd_(std::move(stop)) {}

  UniqueFd epoll_;
  UniqueFd stop_fd_;
  std::atomic<bool> stopping_{false};
  // shared_ptr so a callback that removes itself stays alive until it returns.
  std::map<int, std::shared_ptr<Callback>> callbacks_;
};

// An eventfd (non-blocking, close-on-exec).
Result<UniqueFd> make_eventfd();
// Adds 1 to an eventfd's counter; a full counter or a closed fd is ignored.
void signal_eventfd(int fd);
// Resets an eventfd's counter to 0; returns whether it was non-zero.
bool drain_eventfd(int fd);

}  // namespace vmm
