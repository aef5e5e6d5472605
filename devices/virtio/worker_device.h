// WorkerDevice: the part every virtio device model shares. Device work runs
// on one worker thread per device (an EventLoop), never on a vCPU thread:
//
//  * Each queue has an eventfd, created with the device, that the VMM hands
//    to KVM as an ioeventfd for the QueueNotify register (datamatch = queue
//    index), so a guest notification wakes the worker without a VM exit to
//    user space. notify_queue() signals the same eventfd for transports that
//    see the write themselves (no ioeventfd, or tests).
//  * activate() starts the worker; reset() stops and joins it before
//    returning, so afterwards nothing touches guest memory.
//  * A queue the guest corrupted puts the device in DEVICE_NEEDS_RESET
//    (through the transport) with a rate-limited warning; the worker then
//    ignores the device's queues until the driver resets it.
//  * Snapshots: the device's state (its queues) is read only while nothing
//    runs on the worker: pause() before MmioTransport::save(), which asks
//    save_queues() and gets an error on an active device that is not paused.
//    Restore goes through activate_restored(), which leaves the device
//    activated and paused with the saved queues; resume() starts the worker,
//    which then looks at every queue once. Nothing is in flight in a paused
//    device (block requests are synchronous; net hands back the RX chain it
//    held, see on_pause()), so the saved queues are the whole device state.
//
// Subclasses implement process_queue() (called on the worker thread when the
// queue was notified, and once after activation) and may register more
// descriptors (a TAP fd...) in on_activate().
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "devices/virtio/mmio_transport.h"
#include "vmm/base/event_loop.h"
#include "vmm/base/unique_fd.h"

namespace vmm::virtio {

// Device type IDs (VIRTIO 1.2 section 5).
inline constexpr uint32_t kDeviceIdNet = 1;
inline constexpr uint32_t kDeviceIdBlock = 2;
inline constexpr uint32_t kDeviceIdRng = 4;

// At most `burst` messages per `period`; the rest are counted and reported
// with the next message that gets through.
class RateLimitedLog {
 public:
  explicit RateLimitedLog(int burst = 10, std::chrono::seconds period = std::chrono::seconds(10))
      : burst_(burst), period_(period) {}
  void warn(const std::string& msg);
  uint64_t total() const { return total_.load(); }

 private:
  std::mutex mu_;
  int burst_;
  std::chrono::seconds period_;
  std::chrono::steady_clock::time_point window_start_{};
  int in_window_ = 0;
  uint64_t suppressed_ = 0;
  std::atomic<uint64_t> total_{0};
};

class WorkerDevice : public VirtioDevice {
 public:
  ~WorkerDevice() override;

  size_t num_queues() const override { return queue_sizes_.size(); }
  uint16_t queue_max_size(size_t i) const override { return queue_sizes_.at(i); }

  Result<void> activate(const GuestMemory& mem, uint64_t acked_features, std::vector<Queue> queues,
                        InterruptFn interrupt) final;
  void reset() final;
  // Snapshots (VirtioDevice): the queues of an active device, only while it
  // is paused (otherwise an error: the worker owns them).
  Result<std::vector<QueueState>> save_queues() const final;
  // Activated and paused, queues as given, nothing processed until resume().
  Result<void> activate_restored(const GuestMemory& mem, uint64_t acked_features,
                                 std::vector<Queue> queues, InterruptFn interrupt,
                                 bool broken) final;

  // Quiesce: stop the worker after the request in progress (block requests
  // are synchronous, so none stays in flight) and keep all queue state;
  // resume() restarts it and looks at every queue once (also for a device
  // that activate_restored() left paused). pause() is a no-op on an inactive
  // device; both are safe to repeat. Called with the vCPUs paused. In inline
  // mode a paused device ignores notify_queue() and poll_backends(), and
  // resume() processes every queue once on the caller's thread.
  void pause();
  void resume();
  bool paused() const { return paused_; }

  // The eventfd for queue i (for KVM_IOEVENTFD); valid for the device's life.
  int queue_eventfd(size_t i) const { return queue_events_.at(i).get(); }
  // For a transport without ioeventfd: wakes the worker for queue i.
  void notify_queue(uint32_t i);

  // Inline mode, for fuzzers and deterministic tests: no worker thread;
  // notify_queue() processes the queue on the caller's thread and
  // poll_backends() dispatches ready backend descriptors (a TAP) once. Set
  // before activation.
  void set_inline_for_testing(bool on) { inline_ = on; }
  void poll_backends();

  const std::string& name() const { return name_; }
  bool active() const { return active_.load(); }
  // True once a bad guest queue has made this device stop (until reset).
  bool broken() const { return broken_.load(); }
  uint64_t warnings() const { return log_.total(); }

 protected:
  // queue_sizes: max size of each queue (powers of two <= kMaxQueueSize).
  WorkerDevice(std::string name, std::vector<uint16_t> queue_sizes);
  // Creates the queue eventfds; call from the subclass factory.
  Result<void> init_events();

  // --- for subclasses, on the worker thread ---
  virtual Result<void> on_activate(EventLoop& /*loop*/) { return ok(); }
  virtual void on_reset() {}
  // On the pausing thread, after the worker stopped: hand back anything
  // popped but not used (e.g. an RX chain waiting for a frame).
  virtual void on_pause() {}
  virtual void process_queue(size_t index) = 0;

  const GuestMemory& mem() const { return *mem_; }
  uint64_t acked_features() const { return acked_features_; }
  Queue& queue(size_t i) { return queues_.at(i); }
  // Raises a used-buffer interrupt if the driver wants one for queue i.
  void signal_used(size_t i);
  // The guest broke queue i: warn (rate-limited), NEEDS_RESET, stop serving.
  void fail(size_t i, const Error& e);
  // A per-request problem (bad request, host I/O error): rate-limited warning.
  void warn(const std::string& msg) { log_.warn(name_ + ": " + msg); }

  // Pops every available chain of queue i and hands it to `handle`, which
  // returns the used length (or an error, which fails the queue). Keeps
  // driver notifications suppressed while draining and re-checks after
  // enabling them, so no chain is missed.
  template <typename Handle>
  void drain_queue(size_t i, Handle&& handle);

 private:
  void worker_main();
  Result<void> start(const GuestMemory& mem, uint64_t acked_features, std::vector<Queue> queues,
                     InterruptFn interrupt, bool restored, bool broken);

  std::string name_;
  std::vector<uint16_t> queue_sizes_;
  std::vector<UniqueFd> queue_events_;

  const GuestMemory* mem_ = nullptr;
  uint64_t acked_features_ = 0;
  std::vector<Queue> queues_;
  InterruptFn interrupt_;
  std::unique_ptr<EventLoop> loop_;
  std::thread worker_;
  std::atomic<bool> active_{false};
  std::atomic<bool> broken_{false};
  bool inline_ = false;
  bool paused_ = false;
  RateLimitedLog log_;
};

template <typename Handle>
void WorkerDevice::drain_queue(size_t i, Handle&& handle) {
  if (broken_.load()) return;
  Queue& q = queues_.at(i);
  if (!q.ready()) return;
  for (;;) {
    if (auto r = q.disable_notification(*mem_); !r.ok()) return fail(i, r.error());
    for (;;) {
      auto chain = q.pop(*mem_);
      if (!chain.ok()) return fail(i, chain.error());
      if (!chain->has_value()) break;
      Result<uint32_t> used = handle(**chain);
      if (!used.ok()) return fail(i, used.error());
      (*chain)->mark_written(*mem_);
      if (auto r = q.add_used(*mem_, (*chain)->head_index(), *used); !r.ok())
        return fail(i, r.error());
    }
    signal_used(i);
    auto more = q.enable_notification(*mem_);
    if (!more.ok()) return fail(i, more.error());
    if (!*more) return;
  }
}

}  // namespace vmm::virtio
