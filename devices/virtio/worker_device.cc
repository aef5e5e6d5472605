#include "devices/virtio/worker_device.h"

#include <spdlog/spdlog.h>

#include <utility>

namespace vmm::virtio {

void RateLimitedLog::warn(const std::string& msg) {
  ++total_;
  std::lock_guard lock(mu_);
  auto now = std::chrono::steady_clock::now();
  if (now - window_start_ >= period_) {
    window_start_ = now;
    in_window_ = 0;
  }
  if (in_window_ >= burst_) {
    ++suppressed_;
    return;
  }
  ++in_window_;
  if (suppressed_ != 0) {
    spdlog::warn("{} ({} similar messages suppressed)", msg, suppressed_);
    suppressed_ = 0;
  } else {
    spdlog::warn("{}", msg);
  }
}

WorkerDevice::WorkerDevice(std::string name, std::vector<uint16_t> queue_sizes)
    : name_(std::move(name)), queue_sizes_(std::move(queue_sizes)) {}

WorkerDevice::~WorkerDevice() {
  // Subclasses must call reset() in their own destructor (on_reset is
  // virtual); this is the last line of defence for the thread.
  if (worker_.joinable()) {
    loop_->stop();
    worker_.join();
  }
}

Result<void> WorkerDevice::init_events() {
  queue_events_.clear();
  for (size_t i = 0; i < queue_sizes_.size(); ++i) {
    VMM_TRY(auto fd, make_eventfd());
    queue_events_.push_back(std::move(fd));
  }
  return ok();
}

void WorkerDevice::notify_queue(uint32_t i) {
  if (i >= queue_events_.size()) return;
  if (inline_) {
    if (active_.load() && !broken_.load() && !paused_) process_queue(i);
    return;
  }
  signal_eventfd(queue_events_[i].get());
}

void WorkerDevice::poll_backends() {
  if (inline_ && loop_ && !paused_) (void)loop_->run_once(0);
}

Result<void> WorkerDevice::activate(const GuestMemory& mem, uint64_t acked_features,
                                    std::vector<Queue> queues, InterruptFn interrupt) {
  return start(mem, acked_features, std::move(queues), std::move(interrupt), false, false);
}

Result<void> WorkerDevice::activate_restored(const GuestMemory& mem, uint64_t acked_features,
                                             std::vector<Queue> queues, InterruptFn interrupt,
                                             bool broken) {
  return start(mem, acked_features, std::move(queues), std::move(interrupt), true, broken);
}

Result<std::vector<QueueState>> WorkerDevice::save_queues() const {
  if (!active_.load()) return make_error("{}: not active", name_);
  // paused_ is only written by the thread that pauses and saves (the VMM's),
  // and the worker was joined in pause(): its queue updates are visible.
  if (!paused_) return make_error("{}: pause the device before saving its state", name_);
  std::vector<QueueState> out;
  out.reserve(queues_.size());
  for (const auto& q : queues_) out.push_back(q.save());
  return out;
}

Result<void> WorkerDevice::start(const GuestMemory& mem, uint64_t acked_features,
                                 std::vector<Queue> queues, InterruptFn interrupt, bool restored,
                                 bool broken) {
  if (worker_.joinable() || active_.load()) return make_error("{}: already active", name_);
  if (queues.size() != queue_sizes_.size() || queue_events_.size() != queue_sizes_.size())
    return make_error("{}: expected {} queues, got {}", name_, queue_sizes_.size(), queues.size());
  auto undo = [this](Error e) -> Result<void> {
    loop_.reset();
    queues_.clear();
    interrupt_ = nullptr;
    broken_ = false;
    return e;
  };
  mem_ = &mem;
  acked_features_ = acked_features;
  queues_ = std::move(queues);
  interrupt_ = std::move(interrupt);
  broken_ = broken;
  auto loop = EventLoop::create();
  if (!loop.ok()) return undo(std::move(loop).error());
  loop_ = std::move(*loop);
  for (size_t i = 0; i < queue_events_.size(); ++i) {
    int fd = queue_events_[i].get();
    auto r = loop_->add(fd, EPOLLIN, [this, fd, i](uint32_t) {
      drain_eventfd(fd);
      if (!broken_.load()) process_queue(i);
    });
    if (!r.ok()) return undo(std::move(r).error());
    // The driver may have made buffers available before DRIVER_OK without
    // notifying: look at every queue once (a restored device: at resume()).
    if (!inline_ && !restored) signal_eventfd(fd);
  }
  if (auto r = on_activate(*loop_); !r.ok()) return undo(std::move(r).error());
  active_ = true;
  if (restored) {
    paused_ = true;  // resume() starts the worker
    return ok();
  }
  if (!inline_) worker_ = std::thread([this] { worker_main(); });
  return ok();
}

void WorkerDevice::worker_main() {
  auto r = loop_->run();
  if (!r.ok()) spdlog::error("{}: event loop failed: {}", name_, r.error().to_string());
}

void WorkerDevice::reset() {
  if (worker_.joinable()) {
    loop_->stop();
    worker_.join();
  }
  paused_ = false;
  if (active_.exchange(false)) on_reset();
  loop_.reset();
  queues_.clear();
  interrupt_ = nullptr;
  broken_ = false;
  for (auto& fd : queue_events_) drain_eventfd(fd.get());
}

void WorkerDevice::pause() {
  if (paused_ || !active_.load()) return;
  if (worker_.joinable()) {
    loop_->stop();
    worker_.join();
  }
  on_pause();
  paused_ = true;
}

void WorkerDevice::resume() {
  if (!paused_) return;
  paused_ = false;
  if (!active_.load()) return;
  if (inline_) {
    for (size_t i = 0; i < queues_.size() && !broken_.load(); ++i) process_queue(i);
    return;
  }
  loop_->rearm();
  for (auto& fd : queue_events_) signal_eventfd(fd.get());
  worker_ = std::thread([this] { worker_main(); });
}

void WorkerDevice::signal_used(size_t i) {
  if (queues_.at(i).needs_notification(*mem_) && interrupt_) interrupt_(Interrupt::kUsedBuffer);
}

void WorkerDevice::fail(size_t i, const Error& e) {
  log_.warn(fmt::format("{}: queue {}: {}; device needs reset", name_, i, e.to_string()));
  broken_ = true;
  if (interrupt_) interrupt_(Interrupt::kNeedsReset);
}

}  // namespace vmm::virtio
