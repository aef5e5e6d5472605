#include "devices/virtio/mmio_transport.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace vmm::virtio {
namespace {

constexpr uint32_t kDriverStatusBits =
    kStatusAcknowledge | kStatusDriver | kStatusDriverOk | kStatusFeaturesOk | kStatusFailed;

uint64_t set_low(uint64_t v, uint32_t low) { return (v & ~0xffffffffULL) | low; }
uint64_t set_high(uint64_t v, uint32_t high) {
  return (v & 0xffffffffULL) | (uint64_t{high} << 32);
}

// Feature pages: 0 and 1 hold the 64 feature bits; every later page is empty,
// so any selector >= 2 is stored as 2.
constexpr uint32_t kFeaturePages = 2;
constexpr uint32_t kInterruptBits = kInterruptUsedBuffer | kInterruptConfigChange;

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
    // The selectors are write-only: a value past the last page or queue acts
    // like any other such value, so it is stored as that bound (a small,
    // checkable domain for snapshots).
    case kRegDeviceFeaturesSel:
      device_features_sel_ = std::min(value, kFeaturePages);
      return false;
    case kRegDriverFeatures:
      // Features are settable after DRIVER and until FEATURES_OK.
      if ((status_ & kStatusDriver) && !(status_ & kStatusFeaturesOk)) {
        if (driver_features_sel_ == 0) driver_features_ = set_low(driver_features_, value);
        if (driver_features_sel_ == 1) driver_features_ = set_high(driver_features_, value);
      }
      return false;
    case kRegDriverFeaturesSel:
      driver_features_sel_ = std::min(value, kFeaturePages);
      return false;
    case kRegQueueSel:
      queue_sel_ = static_cast<uint32_t>(std::min<uint64_t>(value, queues_.size()));
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
  auto r = device_->activate(mem_, driver_features_, queues_, make_interrupt_fn());
  if (!r.ok()) {
    fail(r.error());
    return;
  }
  activated_ = true;
}

InterruptFn MmioTransport::make_interrupt_fn() {
  std::weak_ptr<MmioTransport> weak = weak_from_this();
  uint64_t epoch = epoch_.load();
  return [weak, epoch](Interrupt kind) {
    if (auto t = weak.lock(); t && t->epoch_.load() == epoch) t->raise_interrupt(kind);
  };
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

// --- snapshots ---------------------------------------------------------------

void to_section(const MmioTransportState& st, snapshot::Section& s) {
  s.put_u32("device_type", st.device_type);
  s.put_u32("status", st.status);
  s.put_u32("device_features_sel", st.device_features_sel);
  s.put_u32("driver_features_sel", st.driver_features_sel);
  s.put_u64("driver_features", st.driver_features);
  s.put_u32("queue_sel", st.queue_sel);
  s.put_u32("shm_sel", st.shm_sel);
  s.put_bool("activated", st.activated);
  s.put_u32("interrupt_status", st.interrupt_status);
  s.put_u32("config_generation", st.config_generation);
  for (size_t i = 0; i < st.queues.size(); ++i)
    to_section(st.queues[i], s.add_section(fmt::format("queue{}", i)));
}

namespace {

// The index i of a section named "queue<i>" (canonical decimal, i <= 9999),
// or -1.
int queue_index(std::string_view n) {
  constexpr std::string_view kPrefix = "queue";
  if (n.size() <= kPrefix.size() || n.substr(0, kPrefix.size()) != kPrefix) return -1;
  std::string_view digits = n.substr(kPrefix.size());
  if (digits.size() > 4 || (digits.size() > 1 && digits[0] == '0')) return -1;
  int v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

Result<void> from_section(const snapshot::Section& s, MmioTransportState& st) {
  static constexpr std::string_view kFields[] = {
      "device_type",     "status",    "device_features_sel", "driver_features_sel",
      "driver_features", "queue_sel", "shm_sel",             "activated",
      "interrupt_status", "config_generation"};
  // Queues are the sections queue0, queue1... up to the first missing one.
  // One pass over the entries (a hostile tree may hold many).
  std::vector<const snapshot::Section*> by_index(10000, nullptr);
  for (const auto& c : s.sections())
    if (int i = queue_index(c.name()); i >= 0) by_index[static_cast<size_t>(i)] = &c;
  size_t nq = 0;
  while (nq < by_index.size() && by_index[nq] != nullptr) ++nq;
  if (nq > MmioTransport::kMaxQueues)
    return make_error("{}: {} queues, at most {} allowed", s.where(), nq,
                      MmioTransport::kMaxQueues);
  std::string unknown;
  auto note = [&](const std::string& name) {
    unknown += (unknown.empty() ? "" : ", ") + snapshot::printable(name);
  };
  for (const auto& f : s.fields())
    if (std::find(std::begin(kFields), std::end(kFields), f.name) == std::end(kFields))
      note(f.name);
  for (const auto& c : s.sections()) {
    int i = queue_index(c.name());
    if (c.name() != "device" && !(i >= 0 && static_cast<size_t>(i) < nq)) note(c.name());
  }
  if (!unknown.empty()) return make_error("{}: unknown entries: {}", s.where(), unknown);

  VMM_TRY(st.device_type, s.get_u32("device_type"));
  VMM_TRY(st.status, s.get_u32("status"));
  VMM_TRY(st.device_features_sel, s.get_u32("device_features_sel"));
  VMM_TRY(st.driver_features_sel, s.get_u32("driver_features_sel"));
  VMM_TRY(st.driver_features, s.get_u64("driver_features"));
  VMM_TRY(st.queue_sel, s.get_u32("queue_sel"));
  VMM_TRY(st.shm_sel, s.get_u32("shm_sel"));
  VMM_TRY(st.activated, s.get_bool("activated"));
  VMM_TRY(st.interrupt_status, s.get_u32("interrupt_status"));
  VMM_TRY(st.config_generation, s.get_u32("config_generation"));
  st.queues.assign(nq, QueueState{});
  for (size_t i = 0; i < nq; ++i) VMM_CHECK(from_section(*by_index[i], st.queues[i]));
  return ok();
}

Result<MmioTransportState> MmioTransport::save() const {
  std::lock_guard lock(mu_);
  MmioTransportState st;
  st.device_type = device_ ? device_->device_type() : 0;
  st.status = status_ | (needs_reset_.load() ? kStatusNeedsReset : 0);
  st.device_features_sel = device_features_sel_;
  st.driver_features_sel = driver_features_sel_;
  st.driver_features = driver_features_;
  st.queue_sel = queue_sel_;
  st.shm_sel = shm_sel_;
  st.activated = activated_;
  st.config_generation = config_generation_.load();
  if (activated_) {
    // The device owns the live queues; it refuses unless quiescent.
    VMM_TRY(st.queues, device_->save_queues());
    if (st.queues.size() != queues_.size())
      return make_error("virtio-mmio: device saved {} queues, expected {}", st.queues.size(),
                        queues_.size());
  } else {
    for (const auto& q : queues_) st.queues.push_back(q.save());
  }
  std::lock_guard irq_lock(irq_mu_);
  st.interrupt_status = interrupt_status_;
  return st;
}

Result<void> MmioTransport::save_section(snapshot::Section& s) const {
  VMM_TRY(MmioTransportState st, save());
  to_section(st, s);
  device_->save_device_section(s.add_section("device"));
  return ok();
}

Result<void> MmioTransport::restore(const MmioTransportState& state) {
  std::lock_guard lock(mu_);
  return restore_locked(state, nullptr);
}

Result<void> MmioTransport::restore_section(const snapshot::Section& s) {
  MmioTransportState st;
  VMM_CHECK(from_section(s, st));
  VMM_TRY(const snapshot::Section* dev, s.section("device"));
  std::lock_guard lock(mu_);
  return restore_locked(st, dev);
}

Result<std::vector<Queue>> MmioTransport::check_state_locked(const MmioTransportState& s) const {
  if (!device_) return make_error("virtio-mmio: no device");
  if (s.device_type != device_->device_type())
    return make_error("virtio-mmio: the saved device is of type {}, this one of type {}",
                      s.device_type, device_->device_type());
  const uint32_t st = s.status;
  if (st & ~(kDriverStatusBits | kStatusNeedsReset))
    return make_error("virtio-mmio: status {:#x} has unknown bits", st);
  if ((st & kStatusDriver) && !(st & kStatusAcknowledge))
    return make_error("virtio-mmio: status {:#x}: DRIVER without ACKNOWLEDGE", st);
  if ((st & kStatusFeaturesOk) && !(st & kStatusDriver))
    return make_error("virtio-mmio: status {:#x}: FEATURES_OK without DRIVER", st);
  if ((st & kStatusDriverOk) && !(st & kStatusFeaturesOk))
    return make_error("virtio-mmio: status {:#x}: DRIVER_OK without FEATURES_OK", st);
  if (!(st & kStatusDriver) && s.driver_features != 0)
    return make_error("virtio-mmio: driver features {:#x} acked before DRIVER (status {:#x})",
                      s.driver_features, st);
  if (st & kStatusFeaturesOk) {
    uint64_t offered = device_->features() | kFeatureVersion1;
    if (s.driver_features & ~offered)
      return make_error(
          "virtio-mmio: acked features {:#x} include {:#x}, which this device does not offer",
          s.driver_features, s.driver_features & ~offered);
    if (!(s.driver_features & kFeatureVersion1))
      return make_error("virtio-mmio: acked features {:#x} lack VIRTIO_F_VERSION_1",
                        s.driver_features);
  }
  if (s.activated && !(st & kStatusDriverOk))
    return make_error("virtio-mmio: activated without DRIVER_OK (status {:#x})", st);
  if ((st & kStatusDriverOk) && !s.activated && !(st & kStatusNeedsReset))
    return make_error(
        "virtio-mmio: DRIVER_OK without activation needs DEVICE_NEEDS_RESET (status {:#x})", st);
  if (s.device_features_sel > kFeaturePages || s.driver_features_sel > kFeaturePages)
    return make_error("virtio-mmio: feature selectors {}/{} beyond {}", s.device_features_sel,
                      s.driver_features_sel, kFeaturePages);
  if (s.queue_sel > queues_.size())
    return make_error("virtio-mmio: queue selector {} beyond the {} queues", s.queue_sel,
                      queues_.size());
  if (s.interrupt_status & ~kInterruptBits)
    return make_error("virtio-mmio: interrupt status {:#x} has unknown bits", s.interrupt_status);
  if (s.queues.size() != queues_.size())
    return make_error("virtio-mmio: {} saved queues, the device has {}", s.queues.size(),
                      queues_.size());

  const bool event_idx = (s.driver_features & kFeatureRingEventIdx) != 0;
  std::vector<Queue> out;
  out.reserve(queues_.size());
  for (size_t i = 0; i < s.queues.size(); ++i) {
    const QueueState& qs = s.queues[i];
    auto fail = [i](const std::string& why) {
      return make_error("virtio-mmio: queue {}: {}", i, why);
    };
    bool moved = qs.next_avail != 0 || qs.next_used != 0 || qs.signalled_used != 0;
    // A queue only moves while ready on an activated device, and reset
    // zeroes it.
    if (moved && (!qs.ready || !s.activated))
      return fail(fmt::format("indices {}/{}/{} on a queue that never ran", qs.next_avail,
                              qs.next_used, qs.signalled_used));
    if (!qs.ready && qs.event_idx) return fail("event idx set on a queue that is not ready");
    Queue q(queues_[i].max_size());
    if (s.activated) {
      // The device will use this queue as is: rings must be valid.
      if (auto r = q.restore(qs, mem_); !r.ok()) return fail(r.error().to_string());
      if (qs.ready && qs.event_idx != event_idx)
        return fail(fmt::format("event idx {} but the acked features say {}", qs.event_idx,
                                event_idx));
      uint16_t in_flight = static_cast<uint16_t>(qs.next_avail - qs.next_used);
      if (qs.ready && in_flight > qs.size)
        return fail(fmt::format("{} chains in flight (next_avail {}, next_used {}), more than "
                                "the queue size {}",
                                in_flight, qs.next_avail, qs.next_used, qs.size));
    } else {
      // Register values only, as the driver wrote them: DRIVER_OK validates
      // the rings before any use, exactly as for a live device.
      QueueState regs = qs;
      regs.ready = false;
      if (auto r = q.restore(regs, mem_); !r.ok()) return fail(r.error().to_string());
      q.set_ready(qs.ready);
    }
    out.push_back(std::move(q));
  }
  return out;
}

Result<void> MmioTransport::restore_locked(const MmioTransportState& s,
                                           const snapshot::Section* device_section) {
  VMM_TRY(std::vector<Queue> queues, check_state_locked(s));
  if (device_section) VMM_CHECK(device_->restore_device_section(*device_section));

  // Valid: from here on the state is installed. Callbacks of the current
  // activation become no-ops, and the device lets go of its queues.
  ++epoch_;
  if (activated_) device_->reset();
  activated_ = false;
  last_error_.clear();
  status_ = s.status & ~kStatusNeedsReset;
  device_features_sel_ = s.device_features_sel;
  driver_features_sel_ = s.driver_features_sel;
  driver_features_ = s.driver_features;
  queue_sel_ = s.queue_sel;
  shm_sel_ = s.shm_sel;
  queues_ = std::move(queues);
  const bool needs_reset = (s.status & kStatusNeedsReset) != 0;
  needs_reset_ = needs_reset;
  config_generation_ = s.config_generation;
  {
    // Re-assert the line from InterruptStatus: a pending interrupt stays
    // pending for the guest (an edge on an irqfd line).
    std::lock_guard irq_lock(irq_mu_);
    interrupt_status_ = s.interrupt_status;
    irq_level_ = interrupt_status_ != 0;
    if (irq_) irq_->set_level(irq_level_);
  }
  if (!s.activated) return ok();
  auto r = device_->activate_restored(mem_, driver_features_, queues_, make_interrupt_fn(),
                                      needs_reset);
  if (!r.ok()) {
    last_error_ = r.error().to_string();
    raise_interrupt(Interrupt::kNeedsReset);
    return make_error("virtio-mmio: re-activating the restored device: {}", last_error_);
  }
  activated_ = true;
  return ok();
}

}  // namespace vmm::virtio
