// The host side of the serial console: output to stdout or a file (with guest
// panic detection), input from stdin (raw terminal mode, restored on exit, with
// a Ctrl-A escape: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A).
#pragma once

#include <termios.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace vmm {

// Watches the guest's console output line by line for a kernel panic.
class PanicDetector {
 public:
  enum class Event { kNone, kPanic, kPanicEnd };
  // Feeds output bytes; returns kPanic when a "Kernel panic - not syncing" line
  // completes, kPanicEnd at the "---[ end Kernel panic" line.
  Event feed(uint8_t byte);
  const std::string& reason() const { return reason_; }

 private:
  std::string line_;
  std::string reason_;
};

class SerialOutput {
 public:
  // fd < 0: discard. The fd is not owned if owned == false (stdout).
  SerialOutput(int fd, bool owned, std::function<void(PanicDetector::Event, const std::string&)> on_panic);
  ~SerialOutput();
  void write(std::span<const uint8_t> bytes);

 private:
  int fd_;
  bool owned_;
  PanicDetector detector_;
  std::function<void(PanicDetector::Event, const std::string&)> on_panic_;
};

class ConsoleInput {
 public:
  // sink returns how many bytes it accepted (the rest is retried later).
  ConsoleInput(int fd, std::function<size_t(std::span<const uint8_t>)> sink,
               std::function<void()> on_quit);
  ~ConsoleInput();
  Result<void> start();
  void stop();

 private:
  void loop();
  void handle(uint8_t c, std::vector<uint8_t>& out);

  int fd_;
  std::function<size_t(std::span<const uint8_t>)> sink_;
  std::function<void()> on_quit_;
  UniqueFd stop_fd_;
  std::thread thread_;
  bool raw_ = false;
  termios saved_{};
  bool escape_ = false;
};

}  // namespace vmm
