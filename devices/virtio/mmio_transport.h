// virtio-mmio transport, version 2 ("modern"; VIRTIO 1.2 section 4.2.2), and
// the VirtioDevice interface that device models (blk, net, rng...) implement.
//
// Register accesses (offsets < 0x100) must be 4 bytes wide and 4-byte
// aligned; any other access is ignored (reads return 0). Device configuration
// space starts at 0x100 and is passed to the device at any width. Every offset
// is safe: unknown registers read 0 and ignore writes.
//
// Status state machine: the driver can only add bits (a write that clears a
// bit, other than writing 0, is ignored) and must add them in order:
// ACKNOWLEDGE, DRIVER (needs ACKNOWLEDGE), FEATURES_OK (needs DRIVER; refused,
// i.e. the bit stays clear, unless the driver's features are a subset of the
// offered ones and include VIRTIO_F_VERSION_1), DRIVER_OK (needs FEATURES_OK).
// DRIVER_OK validates every ready queue and activates the device; if either
// fails, DEVICE_NEEDS_RESET is set and a configuration-change interrupt
// raised. FAILED may be set at any time. Writing 0 resets the device and the
// transport. Queue registers are writable only while the selected queue is
// not ready and the driver has not set DRIVER_OK.
//
// Interrupts: InterruptStatus bit 0 (used buffer) and bit 1 (configuration
// change), acknowledged through InterruptACK; the IRQ line level is
// (InterruptStatus != 0).
//
// Thread-safety: bus accesses are serialized by an internal mutex. The
// interrupt callback handed to the device may be called from any thread
// (it takes only a separate interrupt lock), including from activate(). It
// holds only a weak reference to the transport and does nothing once the
// device has been reset.
//
// Snapshots (docs/snapshot-format.md): save()/restore() of an
// MmioTransportState, or save_section()/restore_section() for the state tree,
// which adds the device model's own "device" child section. An activated
// device's queues live in the device (its worker advances them), so saving
// asks the device for them, which only works while the device is quiescent
// (WorkerDevice: paused). Restoring re-activates a device that was activated,
// with its queues exactly as saved (they continue at next_avail/next_used),
// and leaves it paused: the VMM resumes it when the vCPUs run again.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "devices/bus.h"
#include "devices/virtio/queue.h"
#include "vmm/base/result.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm::virtio {

// Feature bits (VIRTIO 1.2 section 6).
inline constexpr uint64_t kFeatureRingIndirectDesc = 1ULL << 28;
inline constexpr uint64_t kFeatureRingEventIdx = 1ULL << 29;
inline constexpr uint64_t kFeatureVersion1 = 1ULL << 32;

// Device status bits.
inline constexpr uint32_t kStatusAcknowledge = 0x01;
inline constexpr uint32_t kStatusDriver = 0x02;
inline constexpr uint32_t kStatusDriverOk = 0x04;
inline constexpr uint32_t kStatusFeaturesOk = 0x08;
inline constexpr uint32_t kStatusNeedsReset = 0x40;
inline constexpr uint32_t kStatusFailed = 0x80;

// InterruptStatus bits.
inline constexpr uint32_t kInterruptUsedBuffer = 0x1;
inline constexpr uint32_t kInterruptConfigChange = 0x2;

// What a device reports through its interrupt callback.
enum class Interrupt {
  kUsedBuffer,    // used ring updated (InterruptStatus bit 0)
  kConfigChange,  // configuration space changed (bit 1; bumps ConfigGeneration)
  kNeedsReset,    // device hit an unrecoverable error (e.g. a hostile ring):
                  // sets DEVICE_NEEDS_RESET and raises a config-change interrupt
};
using InterruptFn = std::function<void(Interrupt)>;

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  virtual uint32_t device_type() const = 0;
  // Offered feature bits. The transport always adds VIRTIO_F_VERSION_1.
  virtual uint64_t features() const = 0;
  // Fixed for the device's lifetime; queue_max_size(i) a power of two <= 1024.
  virtual size_t num_queues() const = 0;
  virtual uint16_t queue_max_size(size_t index) const = 0;

  // Configuration space access at `offset` bytes into it. The device must
  // bound-check: out-of-range bytes read 0 and writes to them are ignored.
  virtual void read_config(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write_config(uint64_t offset, std::span<const uint8_t> data) = 0;

  // Called at DRIVER_OK with the negotiated features and the configured
  // queues (ready ones already validated; event idx set from the features).
  // The device takes ownership of the queue copies. `mem` outlives the device.
  virtual Result<void> activate(const GuestMemory& mem, uint64_t acked_features,
                                std::vector<Queue> queues, InterruptFn interrupt) = 0;
  // Called when the driver resets an activated device (Status 0). Afterwards
  // the device must not touch guest memory or call the interrupt callback.
  virtual void reset() = 0;

  // ---- snapshots; called by the transport (with its lock held).
  // The live queues of an activated device. Only while the device is
  // quiescent (nothing advances the queues: a WorkerDevice must be paused);
  // otherwise an error.
  virtual Result<std::vector<QueueState>> save_queues() const = 0;
  // Snapshot restore of a device that was activated: like activate(), but the
  // queues continue where they were saved (the device neither resets nor
  // looks at them yet) and the device stays quiescent until the VMM resumes
  // it (a WorkerDevice is left activated and paused). `broken`: the saved
  // transport had DEVICE_NEEDS_RESET, so the device keeps ignoring its queues
  // until the driver resets it.
  virtual Result<void> activate_restored(const GuestMemory& mem, uint64_t acked_features,
                                         std::vector<Queue> queues, InterruptFn interrupt,
                                         bool broken) = 0;
  // Device-specific state, in the transport section's child "device". The
  // device models here keep only their guest-visible identity there (fixed at
  // creation from their configuration and backend), and
  // restore_device_section() refuses a state that does not match this device.
  // It is called after the transport state was validated and before anything
  // changes; on error nothing may change. Defaults: no device state (an empty
  // section, anything in it refused).
  virtual void save_device_section(snapshot::Section& /*s*/) const {}
  virtual Result<void> restore_device_section(const snapshot::Section& s) {
    return s.expect_only({});
  }
};

// The transport's state for snapshots. Write-only selector registers are kept
// in canonical form (a selector past the last page or queue is stored as
// that bound), so every field has a small domain that restore() checks.
struct MmioTransportState {
  uint32_t device_type = 0;          // must equal the device's device_type()
  uint32_t status = 0;               // the Status register, DEVICE_NEEDS_RESET included
  uint32_t device_features_sel = 0;  // 0, 1, or 2 (a page with no features)
  uint32_t driver_features_sel = 0;  // 0, 1, or 2 (writes ignored)
  uint64_t driver_features = 0;      // acked features (as written so far before FEATURES_OK)
  uint32_t queue_sel = 0;            // 0..num_queues (num_queues: no queue selected)
  uint32_t shm_sel = 0;              // any value (there are no shared memory regions)
  bool activated = false;            // the device was activated at DRIVER_OK
  uint32_t interrupt_status = 0;     // InterruptStatus: bits 0-1
  uint32_t config_generation = 0;
  // One per device queue: the device's live queues when activated, else the
  // transport's copies (the driver's configuration so far).
  std::vector<QueueState> queues;

  bool operator==(const MmioTransportState&) const = default;
};

// MmioTransportState <-> a state-tree section ("virtio0"): u32 device_type
// status device_features_sel driver_features_sel queue_sel shm_sel
// interrupt_status config_generation, u64 driver_features, bool activated,
// and sections queue0..queue<N-1> (QueueState). A child section "device"
// (the device model's state) is allowed and left to restore_section().
// Strict otherwise: missing, mistyped or unknown entries are refused.
void to_section(const MmioTransportState& st, snapshot::Section& s);
Result<void> from_section(const snapshot::Section& s, MmioTransportState& st);

class MmioTransport : public BusDevice, public std::enable_shared_from_this<MmioTransport> {
 public:
  static constexpr uint32_t kMagic = 0x74726976;  // "virt"
  static constexpr uint32_t kVersion = 2;
  static constexpr uint32_t kVendorId = 0x554d4551;  // "QEMU", as most VMMs use
  static constexpr uint64_t kConfigOffset = 0x100;
  static constexpr size_t kMaxQueues = 1024;

  // Register offsets.
  static constexpr uint64_t kRegMagic = 0x000;
  static constexpr uint64_t kRegVersion = 0x004;
  static constexpr uint64_t kRegDeviceId = 0x008;
  static constexpr uint64_t kRegVendorId = 0x00c;
  static constexpr uint64_t kRegDeviceFeatures = 0x010;
  static constexpr uint64_t kRegDeviceFeaturesSel = 0x014;
  static constexpr uint64_t kRegDriverFeatures = 0x020;
  static constexpr uint64_t kRegDriverFeaturesSel = 0x024;
  static constexpr uint64_t kRegQueueSel = 0x030;
  static constexpr uint64_t kRegQueueNumMax = 0x034;
  static constexpr uint64_t kRegQueueNum = 0x038;
  static constexpr uint64_t kRegQueueReady = 0x044;
  static constexpr uint64_t kRegQueueNotify = 0x050;
  static constexpr uint64_t kRegInterruptStatus = 0x060;
  static constexpr uint64_t kRegInterruptAck = 0x064;
  static constexpr uint64_t kRegStatus = 0x070;
  static constexpr uint64_t kRegQueueDescLow = 0x080;
  static constexpr uint64_t kRegQueueDescHigh = 0x084;
  static constexpr uint64_t kRegQueueDriverLow = 0x090;
  static constexpr uint64_t kRegQueueDriverHigh = 0x094;
  static constexpr uint64_t kRegQueueDeviceLow = 0x0a0;
  static constexpr uint64_t kRegQueueDeviceHigh = 0x0a4;
  static constexpr uint64_t kRegShmSel = 0x0ac;
  static constexpr uint64_t kRegShmLenLow = 0x0b0;
  static constexpr uint64_t kRegShmLenHigh = 0x0b4;
  static constexpr uint64_t kRegShmBaseLow = 0x0b8;
  static constexpr uint64_t kRegShmBaseHigh = 0x0bc;
  static constexpr uint64_t kRegConfigGeneration = 0x0fc;

  using NotifyFn = std::function<void(uint32_t queue_index)>;

  // Refuses a device with more than 1024 queues or with a queue whose max size
  // is not a power of two <= kMaxQueueSize. `mem` must outlive the transport;
  // irq may be null; notify may be empty. notify is called (outside the
  // transport lock) for QueueNotify writes naming an existing queue of an
  // activated device.
  static Result<std::shared_ptr<MmioTransport>> create(const GuestMemory& mem,
                                                       std::shared_ptr<VirtioDevice> device,
                                                       std::shared_ptr<IrqLine> irq,
                                                       NotifyFn notify);

  MmioTransport(const GuestMemory& mem, std::shared_ptr<VirtioDevice> device,
                std::shared_ptr<IrqLine> irq, NotifyFn notify);  // use create()

  void read(uint64_t base, uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) override;

  // For the VMM and tests.
  uint32_t status() const;
  uint32_t interrupt_status() const;
  bool activated() const;
  uint64_t acked_features() const;
  // Why the last DRIVER_OK failed (queue validation or device activation), for
  // the VMM's log; empty if it did not, and after a reset.
  std::string last_error() const;
  // The transport-side copy of queue i's configuration (nullptr if none).
  const Queue* queue(size_t i) const;
  // Raises an interrupt as the device would through its callback.
  void raise_interrupt(Interrupt kind);

  // ---- snapshots. save() fails if the device is activated and not
  // quiescent (pause the WorkerDevice first); nothing changes either way.
  Result<MmioTransportState> save() const;
  // Validates `state` against this transport's device and guest memory and,
  // if it is consistent, installs it: an activated device is reset first; if
  // the saved device was activated, it is activated again with the saved
  // queues via VirtioDevice::activate_restored() (left paused: the VMM calls
  // WorkerDevice::resume() when the guest runs), and the IRQ line is driven
  // to (InterruptStatus != 0). Checks: device type; status bits known and in
  // order (DRIVER needs ACKNOWLEDGE, FEATURES_OK needs DRIVER, DRIVER_OK needs
  // FEATURES_OK; activated needs DRIVER_OK; DRIVER_OK without activation only
  // with DEVICE_NEEDS_RESET, i.e. a failed activation); no acked features
  // before DRIVER; with FEATURES_OK the features a subset of the offered ones
  // with VERSION_1; selectors and InterruptStatus in their domains; one
  // QueueState per queue with the device's max size, indices zero on a queue
  // that never ran, and on an activated device each ready queue's rings
  // aligned and inside guest memory (Queue::restore), event idx as
  // negotiated and at most `size` chains between next_used and next_avail.
  // Queues of a device that was not activated are register values only
  // (DRIVER_OK validates them, as live), so their rings are not checked.
  // On a validation error nothing changes. If re-activation itself fails (a
  // host resource), the transport is left as after a failed DRIVER_OK
  // (DEVICE_NEEDS_RESET) and the error is returned.
  Result<void> restore(const MmioTransportState& state);
  // The same through the state tree: the transport's fields and queues, plus
  // the child section "device" (VirtioDevice::save_device_section()).
  Result<void> save_section(snapshot::Section& s) const;
  Result<void> restore_section(const snapshot::Section& s);

 private:
  uint32_t read_reg(uint64_t reg);
  // Returns true if QueueNotify should call notify_ with *notify_index.
  bool write_reg(uint64_t reg, uint32_t value, uint32_t* notify_index);
  void write_status(uint32_t value);
  void activate_locked();
  Result<void> restore_locked(const MmioTransportState& s, const snapshot::Section* device_section);
  Result<std::vector<Queue>> check_state_locked(const MmioTransportState& s) const;
  InterruptFn make_interrupt_fn();
  void reset_locked();
  Queue* selected_queue_for_write();
  void set_interrupt_bits(uint32_t bits);
  void update_irq_locked();  // irq_mu_ held

  const GuestMemory& mem_;
  const std::shared_ptr<VirtioDevice> device_;
  const std::shared_ptr<IrqLine> irq_;
  const NotifyFn notify_;

  mutable std::mutex mu_;  // register state below
  uint32_t status_ = 0;    // without NEEDS_RESET (kept in needs_reset_)
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t queue_sel_ = 0;
  uint32_t shm_sel_ = 0;
  bool activated_ = false;
  std::string last_error_;
  std::vector<Queue> queues_;

  // Written by the device's interrupt callback from any thread.
  mutable std::mutex irq_mu_;
  uint32_t interrupt_status_ = 0;
  bool irq_level_ = false;
  std::atomic<bool> needs_reset_{false};
  std::atomic<uint32_t> config_generation_{0};
  // Bumped by every reset: interrupt callbacks from an earlier activation
  // become no-ops.
  std::atomic<uint64_t> epoch_{0};
};

}  // namespace vmm::virtio
