// libFuzzer target: the device state restore path, i.e. the code that reads a
// snapshot's or a migration stream's device sections (hostile: a snapshot file
// can be edited, a migration peer can be malicious). Each run makes a fresh
// device, restores it from the input through restore_section() exactly as
// Vm::apply_state() does, and then drives it a little.
//
// Input: byte 0 picks the device (% 8):
//   0 Serial16550 ("serial0")   1 I8042 ("i8042")   2 AcpiPm ("acpi_pm")
//   3 BootProbe ("boot_probe")  4 virtio-blk, 64 KiB memfd, serial "fuzz"
//   5 virtio-net (socketpair, MAC 52:54:00:12:34:56)   6 virtio-rng (/dev/zero)
//   7 virtio-blk as 4, read-only
// (virtio devices: an inline WorkerDevice behind an MmioTransport, section
// "virtio0", 64 KiB of guest RAM at GPA 0 between PROT_NONE guard areas).
// The rest is an encoded state tree (snapshot::decode_tree). Its root holds
// the device's section under the name the VM uses; without one, the root
// itself is restored. The root may also hold a bytes field "guest_memory"
// (this harness only; it stands for the snapshot's memory file): records
// `u32 gpa | u16 len | data[len]` written into guest RAM before the restore
// (out-of-range records and a trailing partial record are ignored).
//
// Invariants (abort() on violation):
//  * no sanitizer report, and no access to the guard areas around guest RAM
//    (SEGV): restored ring addresses and indices are validated;
//  * a refusal has a non-empty message and leaves the device exactly as it
//    was (same saved state), still answering register reads, savable, and (virtio)
//    able to go through a normal driver bring-up; the only exception is a
//    failed re-activation (a host resource), which must leave DEVICE_NEEDS_RESET;
//  * an accepted virtio state is in the documented domain (status bits and
//    their order, acked features offered and with VERSION_1, selectors,
//    InterruptStatus; on an activated device every ready queue validates
//    against guest RAM, event idx as negotiated, at most `size` chains in
//    flight; indices zero otherwise): the oracle for a check that goes
//    missing without crashing anything (guest memory accessors are checked);
//    a build without Queue::restore()'s ring check fails on it at once;
//  * an accepted state is installed exactly: saving gives the same entries
//    and values (any order in the input); that save restores onto another
//    fresh device through the wire format and saves to identical bytes;
//  * after an accepted virtio restore: resume() (the worker's first look at
//    every queue), every register and config read, a QueueNotify per queue
//    processed inline (and for net a frame from the host side), then pause()
//    and save again work; the driver's status bits are unchanged; a device
//    that did not go NEEDS_RESET completed exactly what it popped; restoring
//    the same section onto the now running device is accepted again and
//    saves to the same bytes; finally a driver reset (Status 0) clears the
//    transport;
//  * legacy devices answer their registers consistently with the restored
//    state (serial drains its FIFO, i8042 status stays in domain, ACPI PM
//    reads SLP_TYP back, boot probe reads the mark and the signature).
//
// Mutations: a custom mutator makes half of them structure-aware (decode the
// tree, give one field a new value of its own kind: bit flips, small deltas,
// boundary values around guest RAM and the integer widths; re-encode), so
// names and kinds survive and the value checks are reached; the rest are
// libFuzzer's byte-level mutations. FUZZ_VERBOSE=1 shows device logs and,
// per input, whether the restore was accepted and how the queues moved.
//
// Seeds: FUZZ_DEVICE_STATE_SEEDS=DIR fuzz_device_state writes a seed per
// interesting saved state of every device kind into DIR (fresh; virtio after
// negotiation only, active with requests processed and more pending, without
// event idx, broken by a bad ring, after a failed activation) and exits; the
// committed corpus/fuzz_device_state/ is its output.
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "boot/x86_64/layout.h"
#include "devices/legacy/acpi_pm.h"
#include "devices/legacy/boot_probe.h"
#include "devices/legacy/i8042.h"
#include "devices/legacy/serial.h"
#include "devices/virtio/block.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "tests/fuzz/fuzz_check.h"
#include "vmm/base/mmap_region.h"
#include "vmm/base/unique_fd.h"
#include "vmm/snapshot/state_tree.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace {

using namespace vmm;
using namespace vmm::virtio;
using snapshot::Field;
using snapshot::Section;
using T = MmioTransport;

constexpr int kKinds = 8;
constexpr const char* kSectionName[kKinds] = {"serial0", "i8042",   "acpi_pm", "boot_probe",
                                              "virtio0", "virtio0", "virtio0", "virtio0"};
constexpr const char* kKindName[kKinds] = {"serial", "i8042", "acpi_pm", "boot_probe",
                                           "blk",    "net",   "rng",     "blk_ro"};
constexpr uint64_t kMemSize = 64 * 1024;
constexpr uint64_t kGuard = 16ull << 20;  // PROT_NONE on each side of guest RAM
constexpr uint64_t kDiskSize = 64 * 1024;
constexpr MacAddress kMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr uint16_t kQueueSize = 16;  // what the seed driver configures

bool g_writing_seeds = false;  // seed mode: a failing save says why before aborting
bool g_verbose = false;        // FUZZ_VERBOSE: device logs and what each run did, on stderr

class LevelIrq : public IrqLine {
 public:
  void set_level(bool high) override { level = high; }
  bool level = false;
};

uint32_t le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ----------------------------------------------------------- guest RAM --

// kMemSize bytes of RAM at GPA 0, mapped between two PROT_NONE areas so that
// a stray host access near guest RAM faults instead of silently hitting some
// other mapping (anonymous mmap memory is not ASan-instrumented).
struct GuardedMemory {
  uint8_t* reservation = nullptr;
  GuestMemory mem;

  GuardedMemory() {
    void* p = ::mmap(nullptr, kGuard * 2 + kMemSize, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    FUZZ_CHECK(p != MAP_FAILED);
    reservation = static_cast<uint8_t*>(p);
    auto ram = MmapRegion::map(reservation + kGuard, kMemSize, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    FUZZ_CHECK(ram.ok());
    FUZZ_CHECK(mem.add_region(0, std::move(*ram)).ok());
  }
  ~GuardedMemory() {
    mem = GuestMemory();  // unmaps the RAM
    ::munmap(reservation, kGuard * 2 + kMemSize);
  }
  GuardedMemory(const GuardedMemory&) = delete;
  GuardedMemory& operator=(const GuardedMemory&) = delete;
};

// Applies the harness-only "guest_memory" records of `root`.
void load_guest_memory(const Section& root, const GuestMemory& mem) {
  const Field* f = root.find_field("guest_memory");
  if (!f || f->kind != snapshot::Kind::kBytes) return;
  const std::vector<uint8_t>& b = f->bytes;
  size_t i = 0;
  while (i + 6 <= b.size()) {
    uint32_t gpa = le32(&b[i]);
    size_t len = b[i + 4] | (size_t{b[i + 5]} << 8);
    i += 6;
    len = std::min(len, b.size() - i);
    (void)mem.write(gpa, std::span<const uint8_t>(b.data() + i, len));  // refused if outside
    i += len;
  }
}

// The non-zero parts of guest RAM as "guest_memory" records (seed mode).
std::vector<uint8_t> dump_guest_memory(const GuestMemory& mem) {
  std::vector<uint8_t> ram(kMemSize);
  FUZZ_CHECK(mem.read(0, ram).ok());
  std::vector<uint8_t> out;
  size_t i = 0;
  while (i < ram.size()) {
    if (ram[i] == 0) {
      ++i;
      continue;
    }
    // A run ends at 16 zero bytes in a row (or at 0xffff bytes).
    size_t end = i, zeros = 0;
    while (end < ram.size() && end - i < 0xffff && zeros < 16) {
      zeros = ram[end] == 0 ? zeros + 1 : 0;
      ++end;
    }
    end -= zeros;
    uint32_t gpa = static_cast<uint32_t>(i);
    size_t len = end - i;
    uint8_t hdr[6] = {static_cast<uint8_t>(gpa), static_cast<uint8_t>(gpa >> 8),
                      static_cast<uint8_t>(gpa >> 16), static_cast<uint8_t>(gpa >> 24),
                      static_cast<uint8_t>(len), static_cast<uint8_t>(len >> 8)};
    out.insert(out.end(), hdr, hdr + 6);
    out.insert(out.end(), ram.begin() + static_cast<long>(i), ram.begin() + static_cast<long>(end));
    i = end;
  }
  return out;
}

// ------------------------------------------------------------- helpers --

// Same entries with the same kinds and values, in any order (names are
// unique per section); the sections' own names are not compared.
bool same_content(const Section& a, const Section& b) {
  if (a.fields().size() != b.fields().size() || a.sections().size() != b.sections().size())
    return false;
  for (const Field& f : a.fields()) {
    const Field* g = b.find_field(f.name);
    if (!g || !(*g == f)) return false;
  }
  for (const Section& c : a.sections()) {
    const Section* d = b.find_section(c.name());
    if (!d || !same_content(c, *d)) return false;
  }
  return true;
}

std::vector<uint8_t> encode_named(const char* name, const Section& dev) {
  Section root;
  root.put_section(name, dev);
  auto bytes = snapshot::encode_tree(root);
  FUZZ_CHECK(bytes.ok());
  return std::move(*bytes);
}

template <typename Dev>
void w8(Dev& d, uint64_t base, uint64_t off, uint8_t v) {
  d.write(base, off, std::span<const uint8_t>(&v, 1));
}
template <typename Dev>
uint8_t r8(Dev& d, uint64_t base, uint64_t off) {
  uint8_t v = 0xee;
  d.read(base, off, std::span<uint8_t>(&v, 1));
  return v;
}

// ---------------------------------------------------------------- rigs --

// A device and its surroundings, made fresh for a run.
class Rig {
 public:
  virtual ~Rig() = default;
  virtual Result<void> restore(const Section& s) = 0;
  // The device's section as the VM saves it (a child named kSectionName).
  virtual Section save() = 0;
  // Register reads a guest could do any time (state-changing reads included).
  virtual void poke() = 0;
  // After an accepted restore: a little guest activity, with checks.
  virtual void drive() = 0;
  // After a refused restore: the device still works from scratch.
  virtual void check_usable() { poke(); }
  virtual const GuestMemory* memory() const { return nullptr; }
};

template <typename Dev>
Section save_legacy(const Dev& d, const char* name) {
  Section root;
  d.save_section(root.add_section(name));
  return *root.find_section(name);
}

class SerialRig : public Rig {
 public:
  Result<void> restore(const Section& s) override { return dev_.restore_section(s); }
  Section save() override { return save_legacy(dev_, "serial0"); }
  void poke() override {
    for (uint64_t r = 0; r < Serial16550::kNumRegisters; ++r) (void)r8(dev_, 0, r);
  }
  void drive() override {
    SerialState st = dev_.save();
    const bool loopback = (st.mcr & 0x10) != 0;
    const bool dlab = (st.lcr & 0x80) != 0;
    FUZZ_CHECK(dev_.rx_space() + st.rx_fifo.size() == Serial16550::kRxFifoSize);
    if (!dlab) {
      // The FIFO drains in order, then DR clears; THR output goes out.
      std::vector<uint8_t> got;
      while (r8(dev_, 0, 5) & 0x01) {
        got.push_back(r8(dev_, 0, 0));
        FUZZ_CHECK(got.size() <= Serial16550::kRxFifoSize);
      }
      FUZZ_CHECK(got == st.rx_fifo);
      FUZZ_CHECK(dev_.rx_space() == Serial16550::kRxFifoSize);
      out_.clear();
      w8(dev_, 0, 0, 'y');
      if (!loopback) FUZZ_CHECK(out_.size() == 1 && out_[0] == 'y');
    }
    poke();
    const uint8_t in[] = {'a', 'b'};
    size_t space = dev_.rx_space();
    FUZZ_CHECK(dev_.enqueue_input(in) == std::min<size_t>(2, space));
    poke();
  }

 private:
  std::vector<uint8_t> out_;
  Serial16550 dev_{std::make_shared<LevelIrq>(),
                   [this](std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }};
};

class I8042Rig : public Rig {
 public:
  static constexpr uint64_t kData = layout::kI8042DataPort;
  static constexpr uint64_t kCmd = layout::kI8042CommandPort;
  Result<void> restore(const Section& s) override { return dev_.restore_section(s); }
  Section save() override { return save_legacy(dev_, "i8042"); }
  void poke() override {
    FUZZ_CHECK((r8(dev_, kCmd, 0) & ~I8042::kStatusObf) == 0);
    (void)r8(dev_, kData, 0);
    FUZZ_CHECK(r8(dev_, kCmd, 0) == 0);  // reading the data port clears OBF
  }
  void drive() override {
    I8042State st = dev_.save();
    if (st.status & I8042::kStatusObf) {
      FUZZ_CHECK(r8(dev_, kCmd, 0) == I8042::kStatusObf);
      FUZZ_CHECK(r8(dev_, kData, 0) == st.output);
    }
    poke();
    w8(dev_, kCmd, 0, I8042::kCmdReadCommandByte);
    FUZZ_CHECK(r8(dev_, kData, 0) == st.command_byte);
    w8(dev_, kCmd, 0, I8042::kCmdResetCpu);
    FUZZ_CHECK(resets_ == 1);
  }

 private:
  int resets_ = 0;
  I8042 dev_{[this] { ++resets_; }};
};

class AcpiPmRig : public Rig {
 public:
  Result<void> restore(const Section& s) override { return dev_.restore_section(s); }
  Section save() override { return save_legacy(dev_, "acpi_pm"); }
  void poke() override {
    for (uint64_t off = 0; off < AcpiPm::kWindowSize; ++off) (void)r8(dev_, 0, off);
  }
  void drive() override {
    AcpiPmState st = dev_.save();
    FUZZ_CHECK(r8(dev_, 0, AcpiPm::kSleepControlOffset) == st.sleep_control);
    FUZZ_CHECK(r8(dev_, 0, AcpiPm::kSleepStatusOffset) == 0);
    w8(dev_, 0, AcpiPm::kSleepControlOffset,
       static_cast<uint8_t>((layout::kAcpiS5SleepType << AcpiPm::kSlpTypShift) | AcpiPm::kSlpEn));
    FUZZ_CHECK(poweroffs_ == 1);
  }

 private:
  int poweroffs_ = 0;
  AcpiPm dev_{[this] { ++poweroffs_; }, {}};
};

class BootProbeRig : public Rig {
 public:
  Result<void> restore(const Section& s) override { return dev_.restore_section(s); }
  Section save() override { return save_legacy(dev_, "boot_probe"); }
  void poke() override {
    uint8_t sig[4];
    dev_.read(0, BootProbe::kExitOffset, sig);
    FUZZ_CHECK(le32(sig) == BootProbe::kSignature);
    (void)r8(dev_, 0, BootProbe::kMarkOffset);
  }
  void drive() override {
    FUZZ_CHECK(r8(dev_, 0, BootProbe::kMarkOffset) == dev_.save().last_mark);
    poke();
    w8(dev_, 0, BootProbe::kMarkOffset, 0x5a);
    FUZZ_CHECK(r8(dev_, 0, BootProbe::kMarkOffset) == 0x5a);
  }

 private:
  BootProbe dev_{{}, {}};
};

// A virtio device behind its transport, run inline (deterministic, no
// threads), over guarded guest RAM.
class VirtioRig : public Rig {
 public:
  explicit VirtioRig(int kind) {
    if (kind == 4 || kind == 7) {
      int fd = ::memfd_create("fuzz-disk", MFD_CLOEXEC);
      FUZZ_CHECK(fd >= 0);
      FUZZ_CHECK(::ftruncate(fd, kDiskSize) == 0);
      std::string path = "/proc/self/fd/" + std::to_string(fd);
      auto d = BlockDevice::create({path, kind == 7, "fuzz"});
      ::close(fd);
      FUZZ_CHECK(d.ok());
      dev_ = *d;
    } else if (kind == 5) {
      int sv[2];
      FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
      peer_.reset(sv[1]);
      auto d = NetDevice::create_for_fd(UniqueFd(sv[0]), kMac);
      FUZZ_CHECK(d.ok());
      dev_ = *d;
    } else {
      auto d = RngDevice::create("/dev/zero");
      FUZZ_CHECK(d.ok());
      dev_ = *d;
    }
    dev_->set_inline_for_testing(true);
    std::weak_ptr<WorkerDevice> weak = dev_;
    auto t = T::create(ram_.mem, dev_, irq_, [weak](uint32_t q) {
      if (auto d = weak.lock()) d->notify_queue(q);
    });
    FUZZ_CHECK(t.ok());
    t_ = *t;
  }
  ~VirtioRig() override {
    // Nothing may touch guest memory once it is gone.
    t_.reset();
    dev_->reset();
    dev_.reset();
  }

  const GuestMemory* memory() const override { return &ram_.mem; }
  WorkerDevice& dev() { return *dev_; }
  T& transport() { return *t_; }
  int peer() const { return peer_.get(); }
  bool irq_level() const { return irq_->level; }

  Result<void> restore(const Section& s) override { return t_->restore_section(s); }
  Section save() override {
    dev_->pause();  // a no-op unless activated
    Section root;
    auto r = t_->save_section(root.add_section("virtio0"));
    if (!r.ok() && g_writing_seeds) std::fprintf(stderr, "save: %s\n", r.error().to_string().c_str());
    FUZZ_CHECK(r.ok());
    return *root.find_section("virtio0");
  }

  uint32_t r32(uint64_t off) {
    uint8_t b[4];
    t_->read(0, off, b);
    return le32(b);
  }
  void w32(uint64_t off, uint32_t v) {
    uint8_t b[4];
    std::memcpy(b, &v, 4);
    t_->write(0, off, b);
  }

  void poke() override {
    FUZZ_CHECK(r32(T::kRegMagic) == T::kMagic);
    FUZZ_CHECK(r32(T::kRegVersion) == T::kVersion);
    FUZZ_CHECK(r32(T::kRegDeviceId) == dev_->device_type());
    for (uint64_t off = 0; off < T::kConfigOffset; off += 4) (void)r32(off);
    for (uint64_t off = T::kConfigOffset; off < T::kConfigOffset + 0x40; off += 8) {
      for (size_t w : {1, 2, 4, 8}) {
        uint8_t b[8];
        t_->read(0, off + w, std::span<uint8_t>(b, w));
      }
    }
    FUZZ_CHECK(((r32(T::kRegInterruptStatus) != 0)) == irq_->level);
  }

  // The whole bring-up a driver does, queue q's rings at desc_base(q),
  // avail_base(q), used_base(q), size kQueueSize.
  static Gpa desc_base(size_t q) { return 0x1000 * (1 + 3 * q); }
  static Gpa avail_base(size_t q) { return desc_base(q) + 0x1000; }
  static Gpa used_base(size_t q) { return desc_base(q) + 0x2000; }
  void bring_up(uint64_t features, bool driver_ok = true, Gpa bad_desc = 0) {
    w32(T::kRegStatus, 0);
    w32(T::kRegStatus, kStatusAcknowledge);
    w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver);
    w32(T::kRegDriverFeaturesSel, 0);
    w32(T::kRegDriverFeatures, static_cast<uint32_t>(features));
    w32(T::kRegDriverFeaturesSel, 1);
    w32(T::kRegDriverFeatures, static_cast<uint32_t>(features >> 32));
    w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    for (uint32_t q = 0; q < dev_->num_queues(); ++q) {
      w32(T::kRegQueueSel, q);
      w32(T::kRegQueueNum, kQueueSize);
      Gpa desc = (q == 0 && bad_desc) ? bad_desc : desc_base(q);
      w32(T::kRegQueueDescLow, static_cast<uint32_t>(desc));
      w32(T::kRegQueueDescHigh, static_cast<uint32_t>(desc >> 32));
      w32(T::kRegQueueDriverLow, static_cast<uint32_t>(avail_base(q)));
      w32(T::kRegQueueDeviceLow, static_cast<uint32_t>(used_base(q)));
      w32(T::kRegQueueReady, 1);
    }
    if (driver_ok)
      w32(T::kRegStatus,
          kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  }

  void check_usable() override {
    poke();
    // A driver can still reset the device and bring it up from scratch.
    bring_up(kFeatureVersion1);
    FUZZ_CHECK(t_->activated());
    FUZZ_CHECK(t_->status() == (kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk |
                                kStatusDriverOk));
    w32(T::kRegQueueNotify, 0);
    w32(T::kRegStatus, 0);
    FUZZ_CHECK(t_->status() == 0 && !t_->activated());
  }

  void drive() override {
    auto before = t_->save();
    FUZZ_CHECK(before.ok());
    const MmioTransportState& st = *before;
    // The worker's first look at every queue (the VMM resumes restored devices).
    dev_->resume();
    poke();
    for (uint32_t q = 0; q <= dev_->num_queues(); ++q) w32(T::kRegQueueNotify, q);
    if (peer_.get() >= 0) {
      std::vector<uint8_t> frame(kNetHdrSize + 60);
      for (size_t k = 0; k < frame.size(); ++k) frame[k] = static_cast<uint8_t>(k);
      (void)::send(peer_.get(), frame.data(), frame.size(), MSG_DONTWAIT);
      dev_->poll_backends();
      uint8_t sink[2048];
      while (::recv(peer_.get(), sink, sizeof(sink), MSG_DONTWAIT) > 0) {
      }
    }
    poke();
    // Still savable; the driver's status bits did not change; a device that
    // kept serving completed every chain it took.
    dev_->pause();
    auto after = t_->save();
    FUZZ_CHECK(after.ok());
    FUZZ_CHECK((after->status & ~kStatusNeedsReset) == (st.status & ~kStatusNeedsReset));
    FUZZ_CHECK(after->activated == st.activated);
    FUZZ_CHECK(after->queues.size() == st.queues.size());
    if (st.activated && !dev_->broken()) {
      for (size_t i = 0; i < st.queues.size(); ++i) {
        const QueueState& a = st.queues[i];
        const QueueState& b = after->queues[i];
        FUZZ_CHECK(static_cast<uint16_t>(a.next_avail - a.next_used) ==
                   static_cast<uint16_t>(b.next_avail - b.next_used));
      }
    }
    if (g_verbose)
      for (size_t i = 0; i < st.queues.size(); ++i)
        std::fprintf(stderr, "queue %zu: avail/used %u/%u -> %u/%u%s\n", i,
                     st.queues[i].next_avail, st.queues[i].next_used,
                     after->queues[i].next_avail, after->queues[i].next_used,
                     dev_->broken() ? " (broken)" : "");
    Section s;
    FUZZ_CHECK(t_->save_section(s).ok());
    dev_->resume();
    w32(T::kRegInterruptAck, kInterruptUsedBuffer | kInterruptConfigChange);
    FUZZ_CHECK(r32(T::kRegMagic) == T::kMagic);
  }

  // An accepted state is in the documented domain (docs/snapshot-format.md):
  // the oracle for a validation that went missing without crashing anything
  // (guest memory accessors are checked, so a bad ring address would only
  // fail requests).
  void check_accepted() {
    auto saved = t_->save();
    FUZZ_CHECK(saved.ok());
    const MmioTransportState& st = *saved;
    const uint32_t s = st.status;
    FUZZ_CHECK((s & ~uint32_t{kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk |
                              kStatusDriverOk | kStatusFailed | kStatusNeedsReset}) == 0);
    FUZZ_CHECK(!(s & kStatusDriver) || (s & kStatusAcknowledge));
    FUZZ_CHECK(!(s & kStatusFeaturesOk) || (s & kStatusDriver));
    FUZZ_CHECK(!(s & kStatusDriverOk) || (s & kStatusFeaturesOk));
    FUZZ_CHECK(!st.activated || (s & kStatusDriverOk));
    FUZZ_CHECK(!(s & kStatusDriverOk) || st.activated || (s & kStatusNeedsReset));
    if (s & kStatusFeaturesOk) {
      FUZZ_CHECK((st.driver_features & ~(dev_->features() | kFeatureVersion1)) == 0);
      FUZZ_CHECK(st.driver_features & kFeatureVersion1);
    }
    FUZZ_CHECK(st.queue_sel <= dev_->num_queues());
    FUZZ_CHECK((st.interrupt_status & ~3u) == 0);
    FUZZ_CHECK(st.queues.size() == dev_->num_queues());
    const bool event_idx = (st.driver_features & kFeatureRingEventIdx) != 0;
    for (size_t i = 0; i < st.queues.size(); ++i) {
      const QueueState& q = st.queues[i];
      FUZZ_CHECK(q.max_size == dev_->queue_max_size(i));
      if (!st.activated) {
        FUZZ_CHECK(q.next_avail == 0 && q.next_used == 0 && q.signalled_used == 0);
        continue;
      }
      if (!q.ready) continue;
      const Queue* live = t_->queue(i);
      FUZZ_CHECK(live && live->validate(ram_.mem).ok());
      FUZZ_CHECK(q.event_idx == event_idx);
      FUZZ_CHECK(static_cast<uint16_t>(q.next_avail - q.next_used) <= q.size);
    }
  }

  // The end of a run: a driver reset clears everything.
  void driver_reset() {
    w32(T::kRegStatus, 0);
    FUZZ_CHECK(t_->status() == 0 && !t_->activated() && !irq_->level);
  }

 private:
  GuardedMemory ram_;
  std::shared_ptr<LevelIrq> irq_ = std::make_shared<LevelIrq>();
  UniqueFd peer_;
  std::shared_ptr<WorkerDevice> dev_;
  std::shared_ptr<T> t_;
};

std::unique_ptr<Rig> make_rig(int kind) {
  switch (kind) {
    case 0: return std::make_unique<SerialRig>();
    case 1: return std::make_unique<I8042Rig>();
    case 2: return std::make_unique<AcpiPmRig>();
    case 3: return std::make_unique<BootProbeRig>();
    default: return std::make_unique<VirtioRig>(kind);
  }
}

// ------------------------------------------------------------- mutator --

// Half of the mutations are structure-aware: decode the tree, give one field
// (any depth, "guest_memory" included) a new value of its own kind, encode
// again. Names and kinds stay valid, so these reach the value checks of
// restore() instead of stopping at "unknown entries". The other half (and
// any input that does not decode) goes to libFuzzer's byte-level mutators.

using Rng = std::minstd_rand;

uint64_t interesting(Rng& rng) {
  static constexpr uint64_t kValues[] = {
      0,          1,           2,           3,           4,           8,
      15,         16,          0x7f,        0x80,        0xff,        0x100,
      0x1000,     0x3000,      0x7fff,      0x8000,      0xffff,      kMemSize - 0x100,
      kMemSize - 16, kMemSize - 8, kMemSize - 6, kMemSize - 2, kMemSize - 1, kMemSize,
      0xffffffff, 1ull << 32,  ~0ull - 15,  ~0ull - 3,   ~0ull,       1ull << 63};
  return kValues[rng() % std::size(kValues)];
}

uint64_t mutate_scalar(uint64_t v, int bits, Rng& rng) {
  switch (rng() % 5) {
    case 0: v ^= 1ull << (rng() % bits); break;
    case 1: v += 1 + rng() % 16; break;
    case 2: v -= 1 + rng() % 16; break;
    case 3: v = interesting(rng); break;
    default: v = (uint64_t{rng()} << 32) ^ rng(); break;
  }
  return bits == 64 ? v : v & ((1ull << bits) - 1);
}

void mutate_field(Field& f, Rng& rng) {
  using snapshot::Kind;
  switch (f.kind) {
    case Kind::kU8: f.scalar = mutate_scalar(f.scalar, 8, rng); break;
    case Kind::kU16: f.scalar = mutate_scalar(f.scalar, 16, rng); break;
    case Kind::kU32: f.scalar = mutate_scalar(f.scalar, 32, rng); break;
    case Kind::kU64:
    case Kind::kI64: f.scalar = mutate_scalar(f.scalar, 64, rng); break;
    case Kind::kBool: f.scalar ^= 1; break;
    case Kind::kBytes:
    case Kind::kString: {
      size_t max = std::min<size_t>(std::max<size_t>(2 * f.bytes.size(), 64), 8192);
      std::vector<uint8_t> buf(f.bytes);
      if (buf.empty()) buf.push_back(static_cast<uint8_t>(rng()));
      size_t len = buf.size();
      buf.resize(max);
      size_t n = LLVMFuzzerMutate(buf.data(), len, max);
      buf.resize(n);
      f.bytes = std::move(buf);
      break;
    }
    case Kind::kSection: break;
  }
}

// A copy of `s` with field number `k` (counting depth-first, fields before
// sections) mutated; `k` counts down to -1 once it is.
Section with_mutated_field(const Section& s, long& k, Rng& rng) {
  Section out;
  for (const Field& f : s.fields()) {
    Field g = f;
    if (k-- == 0) mutate_field(g, rng);
    out.put_field(g);
  }
  for (const Section& c : s.sections()) out.put_section(c.name(), with_mutated_field(c, k, rng));
  return out;
}

long count_fields(const Section& s) {
  long n = static_cast<long>(s.fields().size());
  for (const Section& c : s.sections()) n += count_fields(c);
  return n;
}

// ----------------------------------------------------------- one input --

void run(int kind, const Section& tree) {
  const char* name = kSectionName[kind];
  const Section* sec = tree.find_section(name);
  if (!sec) sec = &tree;

  auto rig = make_rig(kind);
  if (const GuestMemory* m = rig->memory()) load_guest_memory(tree, *m);
  const Section fresh = rig->save();
  auto r = rig->restore(*sec);
  if (g_verbose)
    std::fprintf(stderr, "%s: restore %s%s\n", kKindName[kind], r.ok() ? "accepted" : "refused: ",
                 r.ok() ? "" : r.error().to_string().c_str());
  if (!r.ok()) {
    const std::string msg = r.error().to_string();
    FUZZ_CHECK(!msg.empty());
    if (msg.find("re-activating the restored device") != std::string::npos) {
      // A host resource failed after validation: as after a failed DRIVER_OK.
      auto* v = static_cast<VirtioRig*>(rig.get());
      FUZZ_CHECK(v->transport().status() & kStatusNeedsReset);
    } else {
      FUZZ_CHECK(rig->save() == fresh);  // nothing changed
    }
    rig->check_usable();
    return;
  }

  // Installed exactly, and the round trip through the wire format is stable.
  if (kind >= 4) static_cast<VirtioRig*>(rig.get())->check_accepted();
  const Section saved = rig->save();
  FUZZ_CHECK(same_content(saved, *sec));
  const std::vector<uint8_t> bytes = encode_named(name, saved);
  {
    auto rig2 = make_rig(kind);
    if (const GuestMemory* m = rig2->memory()) load_guest_memory(tree, *m);
    auto decoded = snapshot::decode_tree(bytes);
    FUZZ_CHECK(decoded.ok());
    const Section* s2 = decoded->find_section(name);
    FUZZ_CHECK(s2 != nullptr);
    FUZZ_CHECK(rig2->restore(*s2).ok());
    FUZZ_CHECK(encode_named(name, rig2->save()) == bytes);
  }

  rig->drive();
  // Restoring onto the live, driven device: the same state is accepted again.
  auto again = rig->restore(*sec);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(encode_named(name, rig->save()) == bytes);
  if (kind >= 4) static_cast<VirtioRig*>(rig.get())->driver_reset();
}

// ---------------------------------------------------------- seed mode --

// The seed driver's view of one queue (rings at VirtioRig::*_base(q)).
struct DriverQueue {
  size_t q = 0;
  uint16_t avail = 0;      // next avail idx
  uint16_t next_desc = 0;  // next free descriptor slot
};

struct Buf {
  Gpa addr;
  uint32_t len;
  bool writable;
};

class SeedDriver {
 public:
  explicit SeedDriver(VirtioRig& rig) : rig_(rig), mem_(*rig.memory()) {
    for (size_t i = 0; i < rig.dev().num_queues(); ++i) queues_.push_back(DriverQueue{i});
  }
  void write(Gpa a, std::span<const uint8_t> v) { FUZZ_CHECK(mem_.write(a, v).ok()); }
  template <typename V>
  void put(Gpa a, V v) {
    FUZZ_CHECK(mem_.write_obj(a, v).ok());
  }
  void desc(Gpa table, uint16_t i, Gpa addr, uint32_t len, uint16_t flags, uint16_t next) {
    put<uint64_t>(table + 16 * i, addr);
    put<uint32_t>(table + 16 * i + 8, len);
    put<uint16_t>(table + 16 * i + 12, flags);
    put<uint16_t>(table + 16 * i + 14, next);
  }
  // Publishes a chain (optionally through an indirect table at `indirect`).
  void add(size_t q, const std::vector<Buf>& bufs, Gpa indirect = 0) {
    DriverQueue& d = queues_.at(q);
    Gpa table = VirtioRig::desc_base(q);
    uint16_t head = d.next_desc;
    if (indirect) {
      for (size_t k = 0; k < bufs.size(); ++k) {
        bool last = k + 1 == bufs.size();
        desc(indirect, static_cast<uint16_t>(k), bufs[k].addr, bufs[k].len,
             static_cast<uint16_t>((bufs[k].writable ? kDescFWrite : 0) | (last ? 0 : kDescFNext)),
             last ? 0 : static_cast<uint16_t>(k + 1));
      }
      desc(table, head, indirect, static_cast<uint32_t>(16 * bufs.size()), kDescFIndirect, 0);
      d.next_desc = static_cast<uint16_t>((head + 1) % kQueueSize);
    } else {
      for (size_t k = 0; k < bufs.size(); ++k) {
        bool last = k + 1 == bufs.size();
        uint16_t i = static_cast<uint16_t>((head + k) % kQueueSize);
        desc(table, i, bufs[k].addr, bufs[k].len,
             static_cast<uint16_t>((bufs[k].writable ? kDescFWrite : 0) | (last ? 0 : kDescFNext)),
             last ? 0 : static_cast<uint16_t>((i + 1) % kQueueSize));
      }
      d.next_desc = static_cast<uint16_t>((head + bufs.size()) % kQueueSize);
    }
    Gpa avail = VirtioRig::avail_base(q);
    put<uint16_t>(avail + 4 + 2 * (d.avail % kQueueSize), head);
    ++d.avail;
    put<uint16_t>(avail + 2, d.avail);
  }
  void notify(size_t q) { rig_.w32(T::kRegQueueNotify, static_cast<uint32_t>(q)); }

 private:
  VirtioRig& rig_;
  const GuestMemory& mem_;
  std::vector<DriverQueue> queues_;
};

constexpr Gpa kData = 0x8000;  // request buffers: kData + 0x1000 * q + ...

void blk_requests(SeedDriver& drv, bool indirect, bool notify) {
  auto hdr = [&](Gpa a, uint32_t type, uint64_t sector) {
    drv.put<uint32_t>(a, type);
    drv.put<uint32_t>(a + 4, 0);
    drv.put<uint64_t>(a + 8, sector);
  };
  // GET_ID, OUT (sector 1), IN (sector 1), FLUSH.
  Gpa a = kData;
  hdr(a, kBlkTypeGetId, 0);
  drv.add(0, {{a, 16, false}, {a + 0x20, 20, true}, {a + 0x40, 1, true}});
  a = kData + 0x100;
  hdr(a, kBlkTypeOut, 1);
  std::vector<uint8_t> data(512);
  for (size_t k = 0; k < data.size(); ++k) data[k] = static_cast<uint8_t>(k * 7 + 1);
  drv.write(a + 0x20, data);
  drv.add(0, {{a, 16, false}, {a + 0x20, 512, false}, {a + 0x220, 1, true}},
          indirect ? kData + 0x3000 : 0);
  a = kData + 0x400;
  hdr(a, kBlkTypeIn, 1);
  drv.add(0, {{a, 16, false}, {a + 0x20, 512, true}, {a + 0x220, 1, true}});
  a = kData + 0x700;
  hdr(a, kBlkTypeFlush, 0);
  drv.add(0, {{a, 16, false}, {a + 0x20, 1, true}});
  if (notify) drv.notify(0);
}

void net_requests(VirtioRig& rig, SeedDriver& drv, bool notify) {
  // Two RX buffers, a frame from the host, one TX frame.
  drv.add(0, {{kData, 1526, true}});
  drv.add(0, {{kData + 0x800, 1526, true}});
  if (notify) drv.notify(0);
  std::vector<uint8_t> frame(kNetHdrSize + 60);
  for (size_t k = 0; k < frame.size(); ++k) frame[k] = static_cast<uint8_t>(k < kNetHdrSize ? 0 : k);
  drv.write(kData + 0x1000, frame);
  drv.add(1, {{kData + 0x1000, static_cast<uint32_t>(frame.size()), false}});
  if (notify) {
    drv.notify(1);
    FUZZ_CHECK(::send(rig.peer(), frame.data(), frame.size(), MSG_DONTWAIT) ==
               static_cast<ssize_t>(frame.size()));
    rig.dev().poll_backends();
    uint8_t sink[2048];
    while (::recv(rig.peer(), sink, sizeof(sink), MSG_DONTWAIT) > 0) {
    }
  }
}

void rng_requests(VirtioRig&, SeedDriver& drv, bool indirect, bool notify) {
  drv.add(0, {{kData, 64, true}});
  drv.add(0, {{kData + 0x100, 32, true}, {kData + 0x200, 32, true}}, indirect ? kData + 0x3000 : 0);
  if (notify) drv.notify(0);
}

void requests(int kind, VirtioRig& rig, SeedDriver& drv, bool indirect, bool notify) {
  if (kind == 5) net_requests(rig, drv, notify);
  else if (kind == 6) rng_requests(rig, drv, indirect, notify);
  else blk_requests(drv, indirect, notify);
}

void write_seed(const std::string& dir, int kind, const std::string& what, const Section& dev,
                const GuestMemory* mem) {
  Section root;
  if (mem) {
    std::vector<uint8_t> image = dump_guest_memory(*mem);
    if (!image.empty()) root.put_bytes("guest_memory", image);
  }
  root.put_section(kSectionName[kind], dev);
  auto bytes = snapshot::encode_tree(root);
  FUZZ_CHECK(bytes.ok());
  std::string path = dir + "/" + kKindName[kind] + "-" + what;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  uint8_t k = static_cast<uint8_t>(kind);
  f.write(reinterpret_cast<const char*>(&k), 1);
  f.write(reinterpret_cast<const char*>(bytes->data()), static_cast<std::streamsize>(bytes->size()));
  FUZZ_CHECK(f.good());
  std::printf("%s (%zu bytes)\n", path.c_str(), bytes->size() + 1);
}

void write_legacy_seeds(const std::string& dir) {
  {
    SerialRig r;
    write_seed(dir, 0, "fresh", r.save(), nullptr);
  }
  {
    // A configured console with input waiting, as in a running guest.
    Serial16550 d(std::make_shared<LevelIrq>(), {});
    w8(d, 0, 3, 0x80);
    w8(d, 0, 0, 0x01);
    w8(d, 0, 1, 0x00);
    w8(d, 0, 3, 0x03);
    w8(d, 0, 2, 0xc1);
    w8(d, 0, 1, 0x07);
    w8(d, 0, 4, 0x0b);
    w8(d, 0, 7, 0x5a);
    const uint8_t hello[] = {'h', 'e', 'l', 'l', 'o'};
    FUZZ_CHECK(d.enqueue_input(hello) == 5);
    (void)r8(d, 0, 0);
    w8(d, 0, 0, 'x');
    write_seed(dir, 0, "input", save_legacy(d, "serial0"), nullptr);
  }
  {
    // Loopback: THR into the RX FIFO, modem status deltas.
    Serial16550 d(std::make_shared<LevelIrq>(), {});
    w8(d, 0, 1, 0x0f);
    w8(d, 0, 4, 0x1f);
    w8(d, 0, 4, 0x10);
    for (uint8_t c : {'l', 'o', 'o', 'p'}) w8(d, 0, 0, c);
    write_seed(dir, 0, "loopback", save_legacy(d, "serial0"), nullptr);
  }
  {
    I8042Rig r;
    write_seed(dir, 1, "fresh", r.save(), nullptr);
    I8042 d({});
    w8(d, I8042Rig::kCmd, 0, I8042::kCmdWriteCommandByte);
    w8(d, I8042Rig::kData, 0, 0x47);
    w8(d, I8042Rig::kCmd, 0, I8042::kCmdReadCommandByte);
    w8(d, I8042Rig::kCmd, 0, I8042::kCmdWriteOutputPort);
    write_seed(dir, 1, "pending", save_legacy(d, "i8042"), nullptr);
  }
  {
    AcpiPmRig r;
    write_seed(dir, 2, "fresh", r.save(), nullptr);
    AcpiPm d({}, {});
    w8(d, 0, AcpiPm::kSleepControlOffset, 0x0c);
    write_seed(dir, 2, "sleep_type", save_legacy(d, "acpi_pm"), nullptr);
  }
  {
    BootProbeRig r;
    write_seed(dir, 3, "fresh", r.save(), nullptr);
    BootProbe d({}, {});
    w8(d, 0, BootProbe::kMarkOffset, 0x42);
    write_seed(dir, 3, "mark", save_legacy(d, "boot_probe"), nullptr);
  }
}

void write_virtio_seeds(const std::string& dir, int kind) {
  const uint64_t base = kFeatureVersion1 | kFeatureRingEventIdx | kFeatureRingIndirectDesc |
                        (kind == 5 ? kNetFeatureMac | kNetFeatureCsum : 0) |
                        (kind == 4 || kind == 7 ? kBlkFeatureFlush | kBlkFeatureBlkSize : 0) |
                        (kind == 7 ? kBlkFeatureRo : 0);
  {
    VirtioRig r(kind);
    write_seed(dir, kind, "fresh", r.save(), r.memory());
  }
  {
    // Features negotiated, queues configured, no DRIVER_OK yet.
    VirtioRig r(kind);
    r.bring_up(base, false);
    r.w32(T::kRegQueueSel, 0);
    write_seed(dir, kind, "negotiated", r.save(), r.memory());
  }
  for (bool event_idx : {true, false}) {
    // Active: requests processed, more published but not yet seen, an
    // interrupt pending, selectors moved.
    VirtioRig r(kind);
    uint64_t f = event_idx ? base : base & ~(kFeatureRingEventIdx | kFeatureRingIndirectDesc);
    r.bring_up(f);
    FUZZ_CHECK(r.transport().activated());
    SeedDriver drv(r);
    requests(kind, r, drv, event_idx, true);
    requests(kind, r, drv, false, false);
    r.w32(T::kRegQueueSel, static_cast<uint32_t>(r.dev().num_queues()));
    r.w32(T::kRegDeviceFeaturesSel, 1);
    FUZZ_CHECK(r.transport().interrupt_status() & kInterruptUsedBuffer);
    FUZZ_CHECK(!r.dev().broken());
    write_seed(dir, kind, event_idx ? "active" : "active-no-event-idx", r.save(), r.memory());
  }
  {
    // Broken by the driver: a head index beyond the queue -> NEEDS_RESET.
    VirtioRig r(kind);
    r.bring_up(base);
    SeedDriver drv(r);
    requests(kind, r, drv, false, true);
    const size_t q = r.dev().num_queues() - 1;  // net: TX (RX holds a chain)
    Gpa avail = VirtioRig::avail_base(q);
    uint16_t idx = 0;
    FUZZ_CHECK(r.memory()->read(avail + 2, std::span(reinterpret_cast<uint8_t*>(&idx), 2)).ok());
    drv.put<uint16_t>(avail + 4 + 2 * (idx % kQueueSize), 99);
    drv.put<uint16_t>(avail + 2, static_cast<uint16_t>(idx + 1));
    drv.notify(q);
    FUZZ_CHECK(r.dev().broken());
    write_seed(dir, kind, "broken", r.save(), r.memory());
  }
  {
    // DRIVER_OK with a queue outside guest RAM: activation failed.
    VirtioRig r(kind);
    r.bring_up(base, true, kMemSize - 0x10);
    FUZZ_CHECK(!r.transport().activated());
    FUZZ_CHECK(r.transport().status() & kStatusNeedsReset);
    write_seed(dir, kind, "failed-activation", r.save(), r.memory());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* verbose = std::getenv("FUZZ_VERBOSE");
  g_verbose = verbose && *verbose;
  if (!g_verbose) spdlog::set_level(spdlog::level::off);
  if (const char* dir = std::getenv("FUZZ_DEVICE_STATE_SEEDS")) {
    g_writing_seeds = true;
    write_legacy_seeds(dir);
    for (int kind = 4; kind < kKinds; ++kind) write_virtio_seeds(dir, kind);
    std::exit(0);
  }
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  Rng rng(seed);
  if (size > 1 && rng() % 2 == 0) {
    auto tree = snapshot::decode_tree(std::span<const uint8_t>(data + 1, size - 1));
    if (tree.ok()) {
      long n = count_fields(*tree);
      if (n > 0) {
        long k = static_cast<long>(rng() % static_cast<unsigned long>(n));
        auto bytes = snapshot::encode_tree(with_mutated_field(*tree, k, rng));
        if (bytes.ok() && bytes->size() + 1 <= max_size) {
          std::memcpy(data + 1, bytes->data(), bytes->size());
          return bytes->size() + 1;
        }
      }
    }
  }
  return LLVMFuzzerMutate(data, size, max_size);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  int kind = data[0] % kKinds;
  auto tree = snapshot::decode_tree(std::span<const uint8_t>(data + 1, size - 1));
  if (!tree.ok()) {
    FUZZ_CHECK(!tree.error().message.empty());
    return 0;
  }
  run(kind, *tree);
  return 0;
}
