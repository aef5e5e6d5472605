#include "devices/virtio/mmio_transport.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace vmm::virtio {
namespace {

constexpr size_t kMaxQueues = 1024;
constexpr uint32_t kDriverStatusBits =
    kStatusAcknowledge | kStatusDriver | kStatusDriverOk | kStatusFeaturesOk | kStatusFailed;

uint64_t set_low(uint64_t v, uint32_t low) { return (v & ~0xffffffffULL) | low; }
uint64_t set_high(uint64_t v, uint32_t high) {
  return (v & 0xffffffffULL) | (uint64_t{high} << 32);
}

}  // namespace

Result<std::shared_ptr<MmioTransport>> MmioTransport::create(const GuestMemory& mem,
                                                             std::shared_ptr<VirtioDevice> device,
                                                             std::shared_ptr<IrqLine> irq,
                                                             NotifyFn notify) {
  if (!device) return make_error("virtio-mmio: no device");
  size_t n = device->num_queues();
  if (n > kMaxQueues)
    return make_error("virtio-mmio: device has {} queues (max {})", n, kMaxQueues);
  for (size_t i = 0; i < n; ++i) {
    uint16_t m = device->queue_max_size(i);
    if (!is_power_of_two(m) || m > kMaxQueueSize)
      return make_error("virtio-mmio: queue {} max size {} is not a power of two <= {}", i, m,
                        kMaxQueueSize);
  }
  return std::make_shared<MmioTransport>(mem, std::move(device), std::move(irq), std::move(notify));
}

MmioTransport::MmioTransport(const GuestMemory& mem, std::shared_ptr<VirtioDevice> device,
                             std::shared_ptr<IrqLine> irq, NotifyFn notify)
    : mem_(mem), device_(std::move(device)), irq_(std::move(irq)), notify_(std::move(notify)) {
  size_t n = device_ ? std::min(device_->num_queues(), kMaxQueues) : 0;
  queues_.reserve(n);
  for (size_t i = 0; i < n; ++i) queues_.emplace_back(device_->queue_max_size(i));
}

void MmioTransport::read(uint64_t /*base*/, uint64_t offset, std::span<uint8_t> data) {
  if (offset >= kConfigOffset) {
    std::fill(data.begin(), data.end(), 0);
    if (device_) device_->read_config(offset - kConfigOffset, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) {
    std::fill(data.begin(), data.end(), 0);
    return;
  }
  uint32_t v;
  {
    std::lock_guard lock(mu_);
    v = read_reg(offset);
  }
  std::memcpy(data.data(), &v, 4);
}

void MmioTransport::write(uint64_t /*base*/, uint64_t offset, std::span<const uint8_t> data) {
  if (offset >= kConfigOffset) {
    if (device_) device_->write_config(offset - kConfigOffset, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) return;
  uint32_t v;
  std::memcpy(&v, data.data(), 4);
  uint32_t notify_index = 0;
  bool notify;
  {
    std::lock_guard lock(mu_);
    notify = write_reg(offset, v, &notify_index);
  }
  if (notify && notify_) notify_(notify_index);
}

uint32_t MmioTransport::read_reg(uint64_t reg) {
  const Queue* q = queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
  switch (reg) {
    case kRegMagic:
      return kMagic;
    case kRegVersion:
      return kVersion;
    case kRegDeviceId:
      return device_ ? device_->device_type() : 0;
    case kRegVendorId:
      return kVendorId;
    case kRegDeviceFeatures: {
      uint64_t f = (device_ ? device_->features() : 0) | kFeatureVersion1;
      if (device_features_sel_ == 0) return static_cast<uint32_t>(f);
      if (device_features_sel_ == 1) return static_cast<uint32_t>(f >> 32);
      return 0;
    }
    case kRegQueueNumMax:
      return q ? q->max_size() : 0;
    case kRegQueueReady:
      return q && q->ready() ? 1 : 0;
    case kRegInterruptStatus:
      return interrupt_status();
    case kRegStatus:
      return status_ | (needs_reset_.load() ? kStatusNeedsReset : 0);
    case kRegShmLenLow:
    case kRegShmLenHigh:
    case kRegShmBaseLow:
    case kRegShmBaseHigh:
      return 0xffffffff;  // no shared memory regions: length ~0 means "none"
    case kRegConfigGeneration:
      return config_generation_.load();
    default:  // write-only and unknown registers
      return 0;
  }
}

Queue* MmioTransport::selected_queue_for_write() {
  if (queue_sel_ >= queues_.size()) return nullptr;
  if (status_ & kStatusDriverOk) return nullptr;
  Queue* q = &queues_[queue_sel_];
  return q->ready() ? nullptr : q;
}

bool MmioTransport::write_reg(uint64_t reg, uint32_t value, uint32_t* notify_index) {
  switch (reg) {
    case kRegDeviceFeaturesSel:
      device_features_sel_ = value;
      return false;
    case kRegDriverFeatures:
      // Features are settable after DRIVER and until FEATURES_OK.
      if ((status_ & kStatusDriver) && !(status_ & kStatusFeaturesOk)) {
        if (driver_features_sel_ == 0) driver_features_ = set_low(driver_features_, value);
        if (driver_features_sel_ == 1) driver_features_ = set_high(driver_features_, value);
      }
      return false;
    case kRegDriverFeaturesSel:
      driver_features_sel_ = value;
      return false;
    case kRegQueueSel:
      queue_sel_ = value;
      return false;
    case kRegQueueNum:
      if (Queue* q = selected_queue_for_write())
        q->set_size(value > 0xffff ? 0 : static_cast<uint16_t>(value));  // 0: never valid
      return false;
    case kRegQueueReady:
      if (queue_sel_ < queues_.size() && !(status_ & kStatusDriverOk))
        queues_[queue_sel_].set_ready((value & 1) != 0);
      return false;
    case kRegQueueNotify:
      if (!activated_ || value >= queues_.size()) return false;
      *notify_index = value;
      return true;
    case kRegInterruptAck: {
      std::lock_guard lock(irq_mu_);
      interrupt_status_ &= ~value;
      update_irq_locked();
      return false;
    }
    case kRegStatus:
      write_status(value);
      return false;
    case kRegQueueDescLow:
    case kRegQueueDescHigh:
    case kRegQueueDriverLow:
    case kRegQueueDriverHigh:
    case kRegQueueDeviceLow:
    case kRegQueueDeviceHigh: {
      Queue* q = selected_queue_for_write();
      if (!q) return false;
      if (reg == kRegQueueDescLow) q->set_desc_table(set_low(q->desc_table(), value));
      if (reg == kRegQueueDescHigh) q->set_desc_table(set_high(q->desc_table(), value));
      if (reg == kRegQueueDriverLow) q->set_avail_ring(set_low(q->avail_ring(), value));
      if (reg == kRegQueueDriverHigh) q->set_avail_ring(set_high(q->avail_ring(), value));
      if (reg == kRegQueueDeviceLow) q->set_used_ring(set_low(q->used_ring(), value));
      if (reg == kRegQueueDeviceHigh) q->set_used_ring(set_high(q->used_ring(), value));
      return false;
    }
    case kRegShmSel:
      shm_sel_ = value;
      return false;
    default:  // read-only and unknown registers
      return false;
  }
}

void MmioTransport::write_status(uint32_t value) {
  if (value == 0) {
    reset_locked();
    return;
  }
  uint32_t want = value & kDriverStatusBits;  // NEEDS_RESET and unknown bits are the device's
  if ((want & status_) != status_) return;    // the driver may not clear bits
  uint32_t added = want & ~status_;
  if (added == 0) return;
  if ((added & kStatusDriver) && !(want & kStatusAcknowledge)) return;
  if ((added & kStatusFeaturesOk) && !(want & kStatusDriver)) return;
  if ((added & kStatusDriverOk) && !(want & kStatusFeaturesOk)) return;
  if (added & kStatusFeaturesOk) {
    uint64_t offered = (device_ ? device_->features() : 0) | kFeatureVersion1;
    bool acceptable =
        (driver_features_ & ~offered) == 0 && (driver_features_ & kFeatureVersion1) != 0;
    if (!acceptable) {
      want &= ~kStatusFeaturesOk;  // refused: the driver reads FEATURES_OK back as clear
      if (want & kStatusDriverOk) return;
    }
  }
  status_ = want;
  if ((added & kStatusDriverOk) && !needs_reset_.load()) activate_locked();
}

void MmioTransport::activate_locked() {
  auto fail = [this](const Error& e) {
    last_error_ = e.to_string();  // the guest only sees NEEDS_RESET
    raise_interrupt(Interrupt::kNeedsReset);
  };
  bool event_idx = (driver_features_ & kFeatureRingEventIdx) != 0;
  for (size_t i = 0; i < queues_.size(); ++i) {
    if (!queues_[i].ready()) continue;
    auto r = queues_[i].validate(mem_);
    if (!r.ok()) {
      fail(r.error());
      return;
    }
    queues_[i].set_event_idx(event_idx);
  }
  if (!device_) return;
  std::weak_ptr<MmioTransport> weak = weak_from_this();
  uint64_t epoch = epoch_.load();
  InterruptFn interrupt = [weak, epoch](Interrupt kind) {
    if (auto t = weak.lock(); t && t->epoch_.load() == epoch) t->raise_interrupt(kind);
  };
  auto r = device_->activate(mem_, driver_features_, queues_, std::move(interrupt));
  if (!r.ok()) {
    fail(r.error());
    return;
  }
  activated_ = true;
}

void MmioTransport::reset_locked() {
  ++epoch_;
  if (activated_ && device_) device_->reset();
  activated_ = false;
  last_error_.clear();
  status_ = 0;
  device_features_sel_ = 0;
  driver_features_sel_ = 0;
  driver_features_ = 0;
  queue_sel_ = 0;
  shm_sel_ = 0;
  for (auto& q : queues_) q.reset();
  needs_reset_ = false;
  std::lock_guard lock(irq_mu_);
  interrupt_status_ = 0;
  update_irq_locked();
}

void MmioTransport::raise_interrupt(Interrupt kind) {
  switch (kind) {
    case Interrupt::kUsedBuffer:
      set_interrupt_bits(kInterruptUsedBuffer);
      return;
    case Interrupt::kConfigChange:
      ++config_generation_;
      set_interrupt_bits(kInterruptConfigChange);
      return;
    case Interrupt::kNeedsReset:
      needs_reset_ = true;
      set_interrupt_bits(kInterruptConfigChange);
      return;
  }
}

void MmioTransport::set_interrupt_bits(uint32_t bits) {
  std::lock_guard lock(irq_mu_);
  interrupt_status_ |= bits;
  update_irq_locked();
}

void MmioTransport::update_irq_locked() {
  bool level = interrupt_status_ != 0;
  if (level == irq_level_) return;
  irq_level_ = level;
  if (irq_) irq_->set_level(level);
}

uint32_t MmioTransport::status() const {
  std::lock_guard lock(mu_);
  return status_ | (needs_reset_.load() ? kStatusNeedsReset : 0);
}

uint32_t MmioTransport::interrupt_status() const {
  std::lock_guard lock(irq_mu_);
  return interrupt_status_;
}

bool MmioTransport::activated() const {
  std::lock_guard lock(mu_);
  return activated_;
}

uint64_t MmioTransport::acked_features() const {
  std::lock_guard lock(mu_);
  return driver_features_;
}

std::string MmioTransport::last_error() const {
  std::lock_guard lock(mu_);
  return last_error_;
}

const Queue* MmioTransport::queue(size_t i) const {
  std::lock_guard lock(mu_);
  return i < queues_.size() ? &queues_[i] : nullptr;
}

}  // namespace vmm::virtio
