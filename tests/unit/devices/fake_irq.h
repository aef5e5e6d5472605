// A fake IrqLine for device tests: records the current level and counts
// level changes and calls.
#pragma once

#include <mutex>

#include "devices/bus.h"

namespace vmm::testing {

class FakeIrqLine : public IrqLine {
 public:
  void set_level(bool high) override {
    std::lock_guard lock(mu_);
    ++calls_;
    if (high != level_) ++changes_;
    if (high && !level_) ++raises_;
    level_ = high;
  }
  bool level() const {
    std::lock_guard lock(mu_);
    return level_;
  }
  int calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  int changes() const {
    std::lock_guard lock(mu_);
    return changes_;
  }
  int raises() const {
    std::lock_guard lock(mu_);
    return raises_;
  }

 private:
  mutable std::mutex mu_;
  bool level_ = false;
  int calls_ = 0;
  int changes_ = 0;
  int raises_ = 0;
};

}  // namespace vmm::testing
