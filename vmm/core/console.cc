#include "vmm/core/console.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "vmm/base/log.h"

namespace vmm {

PanicDetector::Event PanicDetector::feed(uint8_t byte) {
  if (byte != '\n') {
    if (byte != '\r' && line_.size() < 512) line_.push_back(static_cast<char>(byte));
    return Event::kNone;
  }
  Event ev = Event::kNone;
  auto pos = line_.find("Kernel panic - not syncing");
  if (pos != std::string::npos && reason_.empty()) {
    reason_ = line_.substr(pos);
    ev = Event::kPanic;
  } else if (line_.find("---[ end Kernel panic") != std::string::npos) {
    ev = Event::kPanicEnd;
  }
  line_.clear();
  return ev;
}

SerialOutput::SerialOutput(int fd, bool owned,
                           std::function<void(PanicDetector::Event, const std::string&)> on_panic)
    : fd_(fd), owned_(owned), on_panic_(std::move(on_panic)) {}

SerialOutput::~SerialOutput() {
  if (owned_ && fd_ >= 0) ::close(fd_);
}

void SerialOutput::write(std::span<const uint8_t> bytes) {
  size_t done = 0;
  while (fd_ >= 0 && done < bytes.size()) {
    ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    if (n <= 0) {
      spdlog::warn("serial output: write failed ({}); further output is discarded",
                   std::strerror(errno));
      fd_ = -1;
      break;
    }
    done += static_cast<size_t>(n);
  }
  for (uint8_t b : bytes) {
    auto ev = detector_.feed(b);
    if (ev != PanicDetector::Event::kNone && on_panic_) on_panic_(ev, detector_.reason());
  }
}

ConsoleInput::ConsoleInput(int fd, std::function<size_t(std::span<const uint8_t>)> sink,
                           std::function<void()> on_quit)
    : fd_(fd), sink_(std::move(sink)), on_quit_(std::move(on_quit)) {}

ConsoleInput::~ConsoleInput() { stop(); }

Result<void> ConsoleInput::start() {
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return errno_error("eventfd");
  stop_fd_.reset(efd);
  if (::isatty(fd_)) {
    if (::tcgetattr(fd_, &saved_) == 0) {
      termios raw = saved_;
      ::cfmakeraw(&raw);
      raw.c_oflag |= OPOST | ONLCR;  // keep the host's newline handling for our own logs
      if (::tcsetattr(fd_, TCSANOW, &raw) == 0) raw_ = true;
    }
  }
  thread_ = std::thread([this] { loop(); });
  return ok();
}

void ConsoleInput::stop() {
  if (stop_fd_.valid()) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof(one));
  }
  if (thread_.joinable()) thread_.join();
  if (raw_) {
    ::tcsetattr(fd_, TCSANOW, &saved_);
    raw_ = false;
  }
}

void ConsoleInput::handle(uint8_t c, std::vector<uint8_t>& out) {
  constexpr uint8_t kCtrlA = 0x01;
  if (escape_) {
    escape_ = false;
    if (c == 'x' || c == 'X') {
      if (on_quit_) on_quit_();
    } else if (c == kCtrlA) {
      out.push_back(kCtrlA);
    } else if (c == 'h' || c == '?') {
      static const char kHelp[] = "\r\n[vmm] Ctrl-A x: quit   Ctrl-A Ctrl-A: send Ctrl-A\r\n";
      [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, kHelp, sizeof(kHelp) - 1);
    }
    return;
  }
  if (c == kCtrlA && raw_) {
    escape_ = true;
    return;
  }
  out.push_back(c);
}

void ConsoleInput::loop() {
  std::vector<uint8_t> pending;
  bool eof = false;
  for (;;) {
    pollfd fds[2] = {{stop_fd_.get(), POLLIN, 0}, {fd_, POLLIN, 0}};
    // With bytes waiting for room in the guest's FIFO, retry every few ms.
    int nfds = (eof || !pending.empty()) ? 1 : 2;
    int timeout = pending.empty() ? -1 : 5;
    int r = ::poll(fds, static_cast<nfds_t>(nfds), timeout);
    if (r < 0 && errno != EINTR) break;
    if (fds[0].revents & POLLIN) break;
    if (!pending.empty()) {
      size_t n = sink_(pending);
      pending.erase(pending.begin(), pending.begin() + static_cast<long>(n));
      continue;
    }
    if (nfds == 2 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      uint8_t buf[256];
      ssize_t n = ::read(fd_, buf, sizeof(buf));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        eof = true;  // stdin closed: the guest keeps running without input
        continue;
      }
      for (ssize_t i = 0; i < n; ++i) handle(buf[i], pending);
      if (!pending.empty()) {
        size_t m = sink_(pending);
        pending.erase(pending.begin(), pending.begin() + static_cast<long>(m));
      }
    }
  }
}

}  // namespace vmm
