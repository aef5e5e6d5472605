// Device state through the state tree (the one snapshot/migration path): one
// typed test over every device model (save -> mutate or fresh device ->
// restore -> same save, and the device keeps working), generic hostile-state
// checks (missing, mistyped, unknown entries, truncations, bit flips: a clean
// error and the device unchanged), then per-device out-of-domain states.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
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
#include "devices/virtio/testing/mock_queue.h"
#include "tests/unit/devices/fake_irq.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm {
namespace {

using snapshot::Field;
using snapshot::Kind;
using snapshot::Section;
using virtio::testing::MockBuf;
using virtio::testing::MockQueue;

// ---------------------------------------------------------------- helpers --

template <typename Pred>
bool wait_for(Pred p) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!p()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// A device's section as the VMM would make it: a child of the root.
Section named(Section s, const char* name = "dev0") {
  Section root;
  root.put_section(name, std::move(s));
  return *root.find_section(name);
}

// Every entry of `s` (fields and sections, recursively) as a path.
void entry_paths(const Section& s, const std::vector<std::string>& prefix,
                 std::vector<std::vector<std::string>>& out) {
  for (const auto& f : s.fields()) {
    auto p = prefix;
    p.push_back(f.name);
    out.push_back(p);
  }
  for (const auto& c : s.sections()) {
    auto p = prefix;
    p.push_back(c.name());
    out.push_back(p);
    entry_paths(c, p, out);
  }
}
std::vector<std::vector<std::string>> entry_paths(const Section& s) {
  std::vector<std::vector<std::string>> out;
  entry_paths(s, {}, out);
  return out;
}
std::vector<std::vector<std::string>> section_paths(const Section& s,
                                                    std::vector<std::string> prefix = {}) {
  std::vector<std::vector<std::string>> out{prefix};
  for (const auto& c : s.sections()) {
    auto p = prefix;
    p.push_back(c.name());
    auto sub = section_paths(c, p);
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}
std::string join(const std::vector<std::string>& p) {
  std::string s;
  for (const auto& n : p) s += (s.empty() ? "" : "/") + n;
  return s;
}

// A copy of `s` with the entry at `path` edited: `op` gets the section that
// holds it (a rebuilt copy, without the entry) and the removed entry's name.
using EditOp = std::function<void(Section& holder, const std::string& name)>;
Section edited(const Section& s, const std::vector<std::string>& path, size_t depth,
               const EditOp& op) {
  Section out;
  if (depth + 1 == path.size()) {
    for (const auto& f : s.fields())
      if (f.name != path[depth]) out.put_field(f);
    for (const auto& c : s.sections())
      if (c.name() != path[depth]) out.put_section(c.name(), c);
    op(out, path[depth]);
    return out;
  }
  for (const auto& f : s.fields()) out.put_field(f);
  for (const auto& c : s.sections())
    out.put_section(c.name(), c.name() == path[depth] ? edited(c, path, depth + 1, op) : c);
  return out;
}
Section edited(const Section& dev0, const std::vector<std::string>& path, const EditOp& op) {
  return named(edited(dev0, path, 0, op), dev0.name().c_str());
}

// A copy of section `dev0` with child section `child` changed by `fn`.
Section with_child(const Section& dev0, const std::string& child,
                   const std::function<void(Section&)>& fn) {
  Section copy = dev0;
  Section c = *copy.find_section(child);
  fn(c);
  copy.put_section(child, std::move(c));
  return copy;
}

// ------------------------------------------------------------ legacy rigs --

// Each traits struct: Rig (a device and its surroundings), make(),
// bring_up() (a non-trivial state), mutate() (changes the live state),
// save() (quiesce + save_section), restore(), save_guest()/load_guest()
// (what the VMM saves and restores besides device state: guest memory;
// nothing for legacy devices) and expect_continues() (the restored device
// behaves as the saved one would).

struct Snap {
  Section dev;                  // "dev0"
  std::vector<uint8_t> guest;   // guest memory image (virtio)
  std::vector<uint16_t> avail;  // driver-side avail idx per queue (virtio)
};

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

template <typename Dev>
Result<Section> save_legacy(const Dev& d) {
  Section root;
  d.save_section(root.add_section("dev0"));
  return *root.find_section("dev0");
}

struct SerialTraits {
  static constexpr const char* kName = "Serial16550";
  struct Rig {
    std::shared_ptr<testing::FakeIrqLine> irq = std::make_shared<testing::FakeIrqLine>();
    std::vector<uint8_t> out;
    Serial16550 dev{irq, [this](std::span<const uint8_t> b) { out.insert(out.end(), b.begin(), b.end()); }};
  };
  static std::unique_ptr<Rig> make() { return std::make_unique<Rig>(); }
  static void bring_up(Rig& r) {
    w8(r.dev, 0, 3, 0x80);  // DLAB
    w8(r.dev, 0, 0, 0x01);
    w8(r.dev, 0, 1, 0x00);
    w8(r.dev, 0, 3, 0x03);  // 8N1
    w8(r.dev, 0, 2, 0x01);  // FIFO on
    w8(r.dev, 0, 1, 0x05);  // IER: RDI | RLSI
    w8(r.dev, 0, 4, 0x0b);  // DTR | RTS | OUT2
    w8(r.dev, 0, 7, 0x5a);
    const uint8_t hello[] = {'h', 'e', 'l', 'l', 'o'};
    ASSERT_EQ(r.dev.enqueue_input(hello), 5u);
    ASSERT_EQ(r8(r.dev, 0, 0), 'h');
    w8(r.dev, 0, 0, 'x');
    ASSERT_TRUE(r.irq->level());
  }
  static void mutate(Rig& r) {
    while (r8(r.dev, 0, 5) & 0x01) (void)r8(r.dev, 0, 0);
    w8(r.dev, 0, 7, 0x00);
    w8(r.dev, 0, 1, 0x00);
    const uint8_t zz[] = {'z', 'z'};
    ASSERT_EQ(r.dev.enqueue_input(zz), 2u);
  }
  static Result<Section> save(Rig& r) { return save_legacy(r.dev); }
  static void save_guest(Rig&, Snap&) {}
  static Result<void> restore(Rig& r, const Section& s) { return r.dev.restore_section(s); }
  static void load_guest(Rig&, const Snap&) {}
  static void expect_continues(Rig& r) {
    EXPECT_TRUE(r.irq->level());
    EXPECT_EQ(r8(r.dev, 0, 2) & 0x0f, 0x04);  // received data available
    std::string got;
    while (r8(r.dev, 0, 5) & 0x01) got += static_cast<char>(r8(r.dev, 0, 0));
    EXPECT_EQ(got, "ello");
    EXPECT_FALSE(r.irq->level());
    EXPECT_EQ(r8(r.dev, 0, 7), 0x5a);
    EXPECT_EQ(r8(r.dev, 0, 3), 0x03);
    r.out.clear();
    w8(r.dev, 0, 0, 'y');
    EXPECT_EQ(r.out, std::vector<uint8_t>{'y'});
  }
};

struct I8042Traits {
  static constexpr const char* kName = "I8042";
  static constexpr uint64_t kData = layout::kI8042DataPort;
  static constexpr uint64_t kCmd = layout::kI8042CommandPort;
  struct Rig {
    int resets = 0;
    I8042 dev{[this] { ++resets; }};
  };
  static std::unique_ptr<Rig> make() { return std::make_unique<Rig>(); }
  static void bring_up(Rig& r) {
    w8(r.dev, kCmd, 0, I8042::kCmdWriteCommandByte);
    w8(r.dev, kData, 0, 0x47);
    w8(r.dev, kCmd, 0, I8042::kCmdReadCommandByte);  // output 0x47, OBF
    w8(r.dev, kCmd, 0, I8042::kCmdWriteOutputPort);  // awaiting its data byte
  }
  static void mutate(Rig& r) {
    (void)r8(r.dev, kData, 0);
    w8(r.dev, kCmd, 0, I8042::kCmdWriteCommandByte);
    w8(r.dev, kData, 0, 0x11);
  }
  static Result<Section> save(Rig& r) { return save_legacy(r.dev); }
  static void save_guest(Rig&, Snap&) {}
  static Result<void> restore(Rig& r, const Section& s) { return r.dev.restore_section(s); }
  static void load_guest(Rig&, const Snap&) {}
  static void expect_continues(Rig& r) {
    EXPECT_EQ(r8(r.dev, kCmd, 0), I8042::kStatusObf);
    EXPECT_EQ(r8(r.dev, kData, 0), 0x47);
    EXPECT_EQ(r8(r.dev, kCmd, 0), 0);
    w8(r.dev, kData, 0, 0x00);  // the pending 0xd1 takes it: reset line low
    EXPECT_EQ(r.resets, 1);
    w8(r.dev, kCmd, 0, I8042::kCmdReadCommandByte);
    EXPECT_EQ(r8(r.dev, kData, 0), 0x47);
  }
};

struct AcpiPmTraits {
  static constexpr const char* kName = "AcpiPm";
  struct Rig {
    int poweroffs = 0;
    AcpiPm dev{[this] { ++poweroffs; }, {}};
  };
  static std::unique_ptr<Rig> make() { return std::make_unique<Rig>(); }
  static void bring_up(Rig& r) { w8(r.dev, 0, AcpiPm::kSleepControlOffset, 0x0c); }
  static void mutate(Rig& r) { w8(r.dev, 0, AcpiPm::kSleepControlOffset, 0x10); }
  static Result<Section> save(Rig& r) { return save_legacy(r.dev); }
  static void save_guest(Rig&, Snap&) {}
  static Result<void> restore(Rig& r, const Section& s) { return r.dev.restore_section(s); }
  static void load_guest(Rig&, const Snap&) {}
  static void expect_continues(Rig& r) {
    EXPECT_EQ(r8(r.dev, 0, AcpiPm::kSleepControlOffset), 0x0c);
    w8(r.dev, 0, AcpiPm::kSleepControlOffset,
       static_cast<uint8_t>((layout::kAcpiS5SleepType << AcpiPm::kSlpTypShift) | AcpiPm::kSlpEn));
    EXPECT_EQ(r.poweroffs, 1);
  }
};

struct BootProbeTraits {
  static constexpr const char* kName = "BootProbe";
  struct Rig {
    std::vector<uint8_t> marks;
    BootProbe dev{[this](uint8_t m) { marks.push_back(m); }, {}};
  };
  static std::unique_ptr<Rig> make() { return std::make_unique<Rig>(); }
  static void bring_up(Rig& r) { w8(r.dev, 0, BootProbe::kMarkOffset, 0x42); }
  static void mutate(Rig& r) { w8(r.dev, 0, BootProbe::kMarkOffset, 0x07); }
  static Result<Section> save(Rig& r) { return save_legacy(r.dev); }
  static void save_guest(Rig&, Snap&) {}
  static Result<void> restore(Rig& r, const Section& s) { return r.dev.restore_section(s); }
  static void load_guest(Rig&, const Snap&) {}
  static void expect_continues(Rig& r) {
    EXPECT_EQ(r8(r.dev, 0, BootProbe::kMarkOffset), 0x42);
    w8(r.dev, 0, BootProbe::kMarkOffset, 0x43);
    EXPECT_EQ(r8(r.dev, 0, BootProbe::kMarkOffset), 0x43);
  }
};

// ------------------------------------------------------------ virtio rigs --

using virtio::MmioTransport;
using T = virtio::MmioTransport;

constexpr uint64_t kMemBytes = 4 << 20;
constexpr uint16_t kQSize = 64;
constexpr uint16_t kStride = 4;  // descriptors per chain slot
constexpr Gpa kDataBase = 0x200000;
constexpr uint32_t kAllOk = virtio::kStatusAcknowledge | virtio::kStatusDriver |
                            virtio::kStatusFeaturesOk | virtio::kStatusDriverOk;

Gpa ring_base(size_t q) { return 0x40000 * (q + 1); }
// Data area of queue q's chain number n.
Gpa data_at(size_t q, uint16_t n) { return kDataBase + 0x80000 * q + 0x1000 * (n % kQSize); }
// The head descriptor of a queue's chain number n (chains take kStride
// descriptors each, so a chain's descriptors are its own while in flight).
uint16_t head_of(uint16_t n) { return static_cast<uint16_t>((n * kStride) % kQSize); }

GuestMemory make_mem() {
  auto m = GuestMemory::create_anonymous({{0, kMemBytes}});
  EXPECT_TRUE(m.ok());
  return std::move(m).value();
}

struct VirtioRig {
  GuestMemory mem = make_mem();
  std::shared_ptr<testing::FakeIrqLine> irq = std::make_shared<testing::FakeIrqLine>();
  std::shared_ptr<virtio::WorkerDevice> dev;
  std::shared_ptr<MmioTransport> t;
  std::vector<MockQueue> mocks;
  UniqueFd peer;      // net: the other end of the "TAP"
  std::string path;   // block: the disk

  ~VirtioRig() {
    if (dev) dev->reset();
  }
  void attach(std::shared_ptr<virtio::WorkerDevice> d) {
    dev = std::move(d);
    std::weak_ptr<virtio::WorkerDevice> weak = dev;
    auto tr = MmioTransport::create(mem, dev, irq, [weak](uint32_t q) {
      if (auto x = weak.lock()) x->notify_queue(q);
    });
    ASSERT_TRUE(tr.ok());
    t = *tr;
    for (size_t i = 0; i < dev->num_queues(); ++i)
      mocks.emplace_back(mem, kQSize, ring_base(i), ring_base(i) + 0x10000,
                         ring_base(i) + 0x20000);
  }
  uint32_t r32(uint64_t off) {
    uint8_t b[4] = {};
    t->read(0, off, std::span<uint8_t>(b, 4));
    uint32_t v;
    std::memcpy(&v, b, 4);
    return v;
  }
  void w32(uint64_t off, uint32_t v) {
    uint8_t b[4];
    std::memcpy(b, &v, 4);
    t->write(0, off, std::span<const uint8_t>(b, 4));
  }
  // Negotiates, sets up every queue through the registers, DRIVER_OK.
  void bring_up_transport(uint64_t features) {
    w32(T::kRegStatus, virtio::kStatusAcknowledge);
    w32(T::kRegStatus, virtio::kStatusAcknowledge | virtio::kStatusDriver);
    w32(T::kRegDriverFeaturesSel, 0);
    w32(T::kRegDriverFeatures, static_cast<uint32_t>(features));
    w32(T::kRegDriverFeaturesSel, 1);
    w32(T::kRegDriverFeatures, static_cast<uint32_t>(features >> 32));
    w32(T::kRegStatus, virtio::kStatusAcknowledge | virtio::kStatusDriver |
                           virtio::kStatusFeaturesOk);
    for (size_t i = 0; i < mocks.size(); ++i) {
      const MockQueue& m = mocks[i];
      w32(T::kRegQueueSel, static_cast<uint32_t>(i));
      w32(T::kRegQueueNum, kQSize);
      w32(T::kRegQueueDescLow, static_cast<uint32_t>(m.desc_addr()));
      w32(T::kRegQueueDescHigh, 0);
      w32(T::kRegQueueDriverLow, static_cast<uint32_t>(m.avail_addr()));
      w32(T::kRegQueueDriverHigh, 0);
      w32(T::kRegQueueDeviceLow, static_cast<uint32_t>(m.used_addr()));
      w32(T::kRegQueueDeviceHigh, 0);
      w32(T::kRegQueueReady, 1);
    }
    w32(T::kRegStatus, kAllOk);
    ASSERT_EQ(t->status(), kAllOk) << t->last_error();
    ASSERT_TRUE(t->activated());
  }
  // Publishes queue q's next chain (number = its avail idx) at head_of(n),
  // asking for an interrupt when it completes; returns the chain number.
  uint16_t add_chain(size_t q, const std::vector<MockBuf>& bufs) {
    MockQueue& m = mocks.at(q);
    uint16_t n = m.avail_idx();
    uint16_t head = head_of(n);
    EXPECT_LE(bufs.size(), kStride);
    for (size_t k = 0; k < bufs.size(); ++k) {
      bool last = k + 1 == bufs.size();
      uint16_t idx = static_cast<uint16_t>(head + k);
      m.set_desc(idx, bufs[k].addr, bufs[k].len,
                 static_cast<uint16_t>((bufs[k].writable ? virtio::kDescFWrite : 0) |
                                       (last ? 0 : virtio::kDescFNext)),
                 last ? 0 : static_cast<uint16_t>(idx + 1));
    }
    m.set_used_event(m.used_idx());
    m.push_avail(head);
    return n;
  }
  void notify(size_t q) { w32(T::kRegQueueNotify, static_cast<uint32_t>(q)); }
  // Waits for chain n of queue q to complete, and checks its used element.
  void expect_used(size_t q, uint16_t n, uint32_t len) {
    ASSERT_TRUE(wait_for([&] { return mocks[q].used_idx() == static_cast<uint16_t>(n + 1); }))
        << "queue " << q << " used idx " << mocks[q].used_idx() << ", expected " << n + 1;
    auto e = mocks[q].used_elem(static_cast<uint16_t>(n % kQSize));
    EXPECT_EQ(e.id, head_of(n)) << "queue " << q << " chain " << n;
    EXPECT_EQ(e.len, len) << "queue " << q << " chain " << n;
  }
  void write(Gpa a, const std::vector<uint8_t>& v) { ASSERT_TRUE(mem.write(a, v).ok()); }
  std::vector<uint8_t> read(Gpa a, size_t n) {
    std::vector<uint8_t> v(n);
    EXPECT_TRUE(mem.read(a, v).ok());
    return v;
  }
};

std::vector<uint8_t> pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(i * 7 + seed);
  return v;
}

// A disk file shared by every block rig of the process (same path: same
// GET_ID serial, as a restore with the same configuration has).
std::string make_disk(const std::string& name, off_t size) {
  std::string path = ::testing::TempDir() + "state_roundtrip_" + name + "_" +
                     std::to_string(::getpid());
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, size), 0);
  ::close(fd);
  return path;
}
struct DiskFile {
  std::string path = make_disk("disk", 1 << 20);
  ~DiskFile() { ::unlink(path.c_str()); }
};
const std::string& shared_disk() {
  static DiskFile f;
  return f.path;
}

struct BlockPolicy {
  static constexpr const char* kName = "MmioBlock";
  static constexpr uint64_t kFeatures = virtio::kFeatureVersion1 | virtio::kFeatureRingEventIdx |
                                        virtio::kBlkFeatureFlush | virtio::kBlkFeatureBlkSize;
  static void create(VirtioRig& r, const std::string& path = shared_disk(), bool ro = false) {
    auto d = virtio::BlockDevice::create({path, ro, ""});
    ASSERT_TRUE(d.ok()) << d.error().to_string();
    r.path = path;
    r.attach(*d);
  }
  static void start(VirtioRig&) {}
  // One request on each queue: chain n writes sector n with pattern(n).
  static void exchange(VirtioRig& r) {
    uint16_t n = r.mocks[0].avail_idx();
    Gpa a = data_at(0, n);
    std::vector<uint8_t> hdr(16, 0);
    hdr[0] = static_cast<uint8_t>(virtio::kBlkTypeOut);
    hdr[8] = static_cast<uint8_t>(n);
    r.write(a, hdr);
    r.write(a + 0x100, pattern(512, static_cast<uint8_t>(n)));
    r.write(a + 0x300, {0xff});
    r.add_chain(0, {{a, 16, false}, {a + 0x100, 512, false}, {a + 0x300, 1, true}});
    r.notify(0);
    r.expect_used(0, n, 1);
    EXPECT_EQ(r.read(a + 0x300, 1)[0], virtio::kBlkStatusOk);
    int fd = ::open(r.path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> got(512);
    EXPECT_EQ(::pread(fd, got.data(), 512, static_cast<off_t>(512 * n)), 512);
    ::close(fd);
    EXPECT_EQ(got, pattern(512, static_cast<uint8_t>(n)));
  }
};

struct NetPolicy {
  static constexpr const char* kName = "MmioNet";
  static constexpr virtio::MacAddress kMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  static constexpr uint64_t kFeatures = virtio::kFeatureVersion1 | virtio::kFeatureRingEventIdx |
                                        virtio::kNetFeatureMac;
  static constexpr size_t kRx = 0, kTx = 1;
  static constexpr size_t kFrame = 60;
  static void create(VirtioRig& r, virtio::MacAddress mac = kMac) {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    r.peer.reset(sv[1]);
    auto d = virtio::NetDevice::create_for_fd(UniqueFd(sv[0]), mac);
    ASSERT_TRUE(d.ok()) << d.error().to_string();
    r.attach(*d);
  }
  static void post_rx(VirtioRig& r) {
    uint16_t n = r.mocks[kRx].avail_idx();
    r.add_chain(kRx, {{data_at(kRx, n), 1526, true}});
    r.notify(kRx);
  }
  // Two RX buffers posted ahead: the device holds one popped while waiting
  // for a frame (given back at pause()).
  static void start(VirtioRig& r) {
    post_rx(r);
    post_rx(r);
  }
  // One frame each way.
  static void exchange(VirtioRig& r) {
    uint16_t tx = r.mocks[kTx].avail_idx();
    Gpa a = data_at(kTx, tx);
    auto f = pattern(kFrame, static_cast<uint8_t>(0x80 + tx));
    r.write(a, std::vector<uint8_t>(virtio::kNetHdrSize, 0));
    r.write(a + virtio::kNetHdrSize, f);
    r.add_chain(kTx, {{a, static_cast<uint32_t>(virtio::kNetHdrSize + kFrame), false}});
    r.notify(kTx);
    std::vector<uint8_t> got(2048);
    ASSERT_TRUE(wait_for([&] {
      ssize_t n = ::recv(r.peer.get(), got.data(), got.size(), MSG_DONTWAIT);
      if (n < 0) return false;
      got.resize(static_cast<size_t>(n));
      return true;
    }));
    ASSERT_EQ(got.size(), virtio::kNetHdrSize + kFrame);
    EXPECT_TRUE(std::equal(f.begin(), f.end(), got.begin() + virtio::kNetHdrSize));
    r.expect_used(kTx, tx, 0);

    uint16_t rx = r.mocks[kRx].used_idx();
    auto g = pattern(kFrame, static_cast<uint8_t>(rx));
    std::vector<uint8_t> dgram(virtio::kNetHdrSize, 0);
    dgram.insert(dgram.end(), g.begin(), g.end());
    ASSERT_EQ(::send(r.peer.get(), dgram.data(), dgram.size(), 0),
              static_cast<ssize_t>(dgram.size()));
    r.expect_used(kRx, rx, static_cast<uint32_t>(virtio::kNetHdrSize + kFrame));
    EXPECT_EQ(r.read(data_at(kRx, rx) + virtio::kNetHdrSize, kFrame), g);
    post_rx(r);
  }
};

struct RngPolicy {
  static constexpr const char* kName = "MmioRng";
  static constexpr uint64_t kFeatures = virtio::kFeatureVersion1 | virtio::kFeatureRingEventIdx;
  static void create(VirtioRig& r) {
    auto d = virtio::RngDevice::create();
    ASSERT_TRUE(d.ok()) << d.error().to_string();
    r.attach(*d);
  }
  static void start(VirtioRig&) {}
  static void exchange(VirtioRig& r) {
    uint16_t n = r.mocks[0].avail_idx();
    r.add_chain(0, {{data_at(0, n), 64, true}});
    r.notify(0);
    r.expect_used(0, n, 64);
  }
};

template <typename P>
struct VirtioTraits {
  static constexpr const char* kName = P::kName;
  using Rig = VirtioRig;
  static std::unique_ptr<Rig> make() {
    auto r = std::make_unique<Rig>();
    P::create(*r);
    return r;
  }
  static void bring_up(Rig& r) {
    r.bring_up_transport(P::kFeatures);
    P::start(r);
    P::exchange(r);
    // Leave selectors set and the used-buffer interrupt pending.
    r.w32(T::kRegQueueSel, static_cast<uint32_t>(r.mocks.size() - 1));
    r.w32(T::kRegDeviceFeaturesSel, 1);
    ASSERT_TRUE(wait_for([&] { return r.t->interrupt_status() & virtio::kInterruptUsedBuffer; }));
  }
  static void mutate(Rig& r) {
    r.dev->resume();
    r.w32(T::kRegInterruptAck, 3);
    P::exchange(r);
    r.w32(T::kRegQueueSel, 0);
    r.w32(T::kRegDeviceFeaturesSel, 0);
    r.dev->pause();
  }
  static Result<Section> save(Rig& r) {
    r.dev->pause();
    Section root;
    VMM_CHECK(r.t->save_section(root.add_section("dev0")));
    return *root.find_section("dev0");
  }
  static void save_guest(Rig& r, Snap& s) {
    s.guest.resize(kMemBytes);
    ASSERT_TRUE(r.mem.read(0, s.guest).ok());
    s.avail.clear();
    for (const auto& m : r.mocks) s.avail.push_back(m.avail_idx());
  }
  static Result<void> restore(Rig& r, const Section& s) { return r.t->restore_section(s); }
  // What the VMM restores besides device state: guest memory (and here the
  // test driver's own bookkeeping, which lives in it).
  static void load_guest(Rig& r, const Snap& s) {
    ASSERT_TRUE(r.mem.write(0, s.guest).ok());
    for (size_t i = 0; i < r.mocks.size(); ++i) r.mocks[i].set_avail_idx(s.avail[i]);
  }
  static void expect_continues(Rig& r) {
    // The pending interrupt is still pending, and the line is up again.
    EXPECT_TRUE(r.t->interrupt_status() & virtio::kInterruptUsedBuffer);
    EXPECT_TRUE(r.irq->level());
    EXPECT_TRUE(r.t->activated());
    EXPECT_EQ(r.t->status(), kAllOk);
    EXPECT_TRUE(r.dev->paused());  // restored devices wait for resume()
    r.dev->resume();
    r.w32(T::kRegInterruptAck, 3);
    EXPECT_FALSE(r.irq->level());
    P::exchange(r);  // completes at the next used index of every queue
    EXPECT_TRUE(wait_for([&] { return r.irq->level(); }));
    EXPECT_EQ(r.r32(T::kRegQueueNumMax), r.dev->queue_max_size(r.mocks.size() - 1));
  }
};

using BlockTraits = VirtioTraits<BlockPolicy>;
using NetTraits = VirtioTraits<NetPolicy>;
using RngTraits = VirtioTraits<RngPolicy>;

// ------------------------------------------------------------- typed test --

template <typename Traits>
class StateRoundTrip : public ::testing::Test {
 protected:
  using Rig = typename Traits::Rig;

  // A device brought up and saved: rig_ and snap_.
  void SetUp() override {
    rig_ = Traits::make();
    ASSERT_NO_FATAL_FAILURE(Traits::bring_up(*rig_));
    auto s = Traits::save(*rig_);
    ASSERT_TRUE(s.ok()) << s.error().to_string();
    snap_.dev = std::move(*s);
    Traits::save_guest(*rig_, snap_);
  }

  Section saved_now(Rig& r) {
    auto s = Traits::save(r);
    EXPECT_TRUE(s.ok()) << s.error().to_string();
    return s.ok() ? *s : Section();
  }

  // `bad` must be refused with a message naming where, and leave the device
  // as it was.
  void expect_refused(const Section& bad, const std::string& what) {
    Section before = saved_now(*rig_);
    auto r = Traits::restore(*rig_, bad);
    EXPECT_FALSE(r.ok()) << what;
    if (!r.ok()) {
      EXPECT_FALSE(r.error().to_string().empty()) << what;
    }
    EXPECT_EQ(saved_now(*rig_), before) << what << ": the device changed";
  }

  std::unique_ptr<Rig> rig_;
  Snap snap_;
};

struct TraitsName {
  template <typename Traits>
  static std::string GetName(int) {
    return Traits::kName;
  }
};

using AllDevices = ::testing::Types<SerialTraits, I8042Traits, AcpiPmTraits, BootProbeTraits,
                                    BlockTraits, NetTraits, RngTraits>;
TYPED_TEST_SUITE(StateRoundTrip, AllDevices, TraitsName);

TYPED_TEST(StateRoundTrip, RestoreOntoTheMutatedLiveDevice) {
  auto& rig = *this->rig_;
  ASSERT_NO_FATAL_FAILURE(TypeParam::mutate(rig));
  EXPECT_NE(this->saved_now(rig), this->snap_.dev) << "mutate() changed nothing";
  TypeParam::load_guest(rig, this->snap_);
  auto r = TypeParam::restore(rig, this->snap_.dev);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(this->saved_now(rig), this->snap_.dev);
  TypeParam::expect_continues(rig);
}

TYPED_TEST(StateRoundTrip, RestoreOntoAFreshDeviceThroughTheWireFormat) {
  Section root;
  root.put_section("dev0", this->snap_.dev);
  auto bytes = snapshot::encode_tree(root);
  ASSERT_TRUE(bytes.ok()) << bytes.error().to_string();
  auto decoded = snapshot::decode_tree(*bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.error().to_string();
  const Section* dev0 = decoded->find_section("dev0");
  ASSERT_NE(dev0, nullptr);

  auto fresh = TypeParam::make();
  TypeParam::load_guest(*fresh, this->snap_);
  auto r = TypeParam::restore(*fresh, *dev0);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  Section again = this->saved_now(*fresh);
  EXPECT_EQ(again, this->snap_.dev);
  Section root2;
  root2.put_section("dev0", again);
  auto bytes2 = snapshot::encode_tree(root2);
  ASSERT_TRUE(bytes2.ok());
  EXPECT_EQ(*bytes2, *bytes);
  TypeParam::expect_continues(*fresh);
}

TYPED_TEST(StateRoundTrip, MissingEntriesAreRefused) {
  auto paths = entry_paths(this->snap_.dev);
  ASSERT_FALSE(paths.empty());
  for (const auto& p : paths)
    this->expect_refused(edited(this->snap_.dev, p, [](Section&, const std::string&) {}),
                         "without " + join(p));
}

TYPED_TEST(StateRoundTrip, WrongKindsAreRefused) {
  for (const auto& p : entry_paths(this->snap_.dev)) {
    // u8 becomes u16, everything else (sections included) a u8.
    const Field* f = nullptr;
    const Section* holder = &this->snap_.dev;
    for (size_t i = 0; i + 1 < p.size(); ++i) holder = holder->find_section(p[i]);
    f = holder->find_field(p.back());
    bool was_u8 = f && f->kind == Kind::kU8;
    this->expect_refused(edited(this->snap_.dev, p,
                                [was_u8](Section& s, const std::string& name) {
                                  if (was_u8) s.put_u16(name, 1);
                                  else s.put_u8(name, 1);
                                }),
                         join(p) + " of the wrong kind");
  }
}

TYPED_TEST(StateRoundTrip, UnknownEntriesAreRefused) {
  for (const auto& p : section_paths(this->snap_.dev)) {
    Section bad = this->snap_.dev;
    if (p.empty()) {
      bad.put_u8("from_the_future", 1);
    } else {
      Section child = this->snap_.dev;
      for (const auto& n : p) child = *child.find_section(n);
      child.put_u8("from_the_future", 1);
      bad = edited(this->snap_.dev, p, [&](Section& holder, const std::string& name) {
        holder.put_section(name, child);
      });
    }
    this->expect_refused(bad, "unknown field in '" + join(p) + "'");
  }
  Section bad = this->snap_.dev;
  bad.add_section("future_section");
  this->expect_refused(bad, "unknown section");
}

TYPED_TEST(StateRoundTrip, EveryTruncationIsRefused) {
  // The section's entries, cut at every byte: either the tree does not
  // decode, or (cut at an entry boundary) entries are missing.
  auto bytes = snapshot::encode_tree(this->snap_.dev);
  ASSERT_TRUE(bytes.ok());
  for (size_t n = 0; n < bytes->size(); ++n) {
    auto d = snapshot::decode_tree(std::span<const uint8_t>(bytes->data(), n));
    if (!d.ok()) continue;
    this->expect_refused(named(*d), "cut at byte " + std::to_string(n));
  }
}

TYPED_TEST(StateRoundTrip, BitFlipsAreRefusedOrRoundTrip) {
  auto bytes = snapshot::encode_tree(this->snap_.dev);
  ASSERT_TRUE(bytes.ok());
  int accepted = 0, refused = 0;
  for (size_t bit = 0; bit < bytes->size() * 8; ++bit) {
    auto flipped = *bytes;
    flipped[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    auto d = snapshot::decode_tree(flipped);
    if (!d.ok()) continue;
    Section bad = named(*d);
    Section before = this->saved_now(*this->rig_);
    auto r = TypeParam::restore(*this->rig_, bad);
    if (!r.ok()) {
      ++refused;
      ASSERT_EQ(this->saved_now(*this->rig_), before) << "bit " << bit << ": " << r.error().to_string();
      continue;
    }
    ++accepted;
    // Accepted: the device holds exactly that state; then put the original
    // back for the next flip.
    ASSERT_EQ(this->saved_now(*this->rig_), bad) << "bit " << bit;
    auto back = TypeParam::restore(*this->rig_, this->snap_.dev);
    ASSERT_TRUE(back.ok()) << back.error().to_string();
  }
  EXPECT_GT(refused, 0);
  ::testing::Test::RecordProperty("accepted", accepted);
  ::testing::Test::RecordProperty("refused", refused);
}

// ------------------------------------------------- per-device hostile state --

template <typename Traits>
struct Saved {
  std::unique_ptr<typename Traits::Rig> rig = Traits::make();
  Section dev;
  Saved() {
    Traits::bring_up(*rig);
    auto s = Traits::save(*rig);
    EXPECT_TRUE(s.ok()) << s.error().to_string();
    if (s.ok()) dev = *s;
  }
  Section now() {
    auto s = Traits::save(*rig);
    EXPECT_TRUE(s.ok()) << s.error().to_string();
    return s.ok() ? *s : Section();
  }
  // Refused with a message containing `needle`; the device unchanged.
  void refuse(const Section& bad, const std::string& needle) {
    Section before = now();
    auto r = Traits::restore(*rig, bad);
    ASSERT_FALSE(r.ok()) << "accepted; expected: " << needle;
    EXPECT_NE(r.error().to_string().find(needle), std::string::npos) << r.error().to_string();
    EXPECT_EQ(now(), before) << needle;
  }
  void accept(const Section& good) {
    auto r = Traits::restore(*rig, good);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(now(), good);
  }
  Section with(const std::function<void(Section&)>& fn) const {
    Section copy = dev;
    fn(copy);
    return copy;
  }
};

TEST(SerialState, OutOfDomainValuesAreRefused) {
  Saved<SerialTraits> s;
  s.refuse(s.with([](Section& x) {
    x.put_bytes("rx_fifo", std::vector<uint8_t>(Serial16550::kRxFifoSize + 1, 'a'));
  }), "RX FIFO holds 4097 bytes");
  s.refuse(s.with([](Section& x) { x.put_u8("ier", 0x10); }), "invalid IER");
  s.refuse(s.with([](Section& x) { x.put_u8("fcr", 0x02); }), "invalid FCR");
  s.refuse(s.with([](Section& x) { x.put_u8("mcr", 0x20); }), "invalid MCR");
  s.refuse(s.with([](Section& x) { x.put_u8("lsr", 0x60); }), "inconsistent with the FIFO");
  s.refuse(s.with([](Section& x) { x.put_bytes("rx_fifo", std::vector<uint8_t>{}); }),
           "inconsistent with the FIFO");
  s.refuse(s.with([](Section& x) { x.put_u8("msr", 0x00); }), "inconsistent with MCR");
  s.refuse(s.with([](Section& x) { x.put_bool("rx_fifo", true); }), "is a bool, expected bytes");
  // The full FIFO is fine, and the message names the section.
  s.accept(s.with([](Section& x) {
    x.put_bytes("rx_fifo", std::vector<uint8_t>(Serial16550::kRxFifoSize, 'a'));
  }));
  auto r = s.rig->dev.restore_section(s.with([](Section& x) { x.put_u8("ier", 0xff); }));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().to_string().rfind("dev0: ", 0), 0u) << r.error().to_string();
}

TEST(I8042State, OutOfDomainValuesAreRefused) {
  Saved<I8042Traits> s;
  s.refuse(s.with([](Section& x) { x.put_u8("status", 0x02); }), "invalid status");
  s.refuse(s.with([](Section& x) { x.put_u8("pending_command", 0x20); }), "invalid pending command");
  s.refuse(s.with([](Section& x) { x.put_u16("output", 1); }), "is a u16, expected u8");
}

TEST(AcpiPmState, OutOfDomainValuesAreRefused) {
  Saved<AcpiPmTraits> s;
  s.refuse(s.with([](Section& x) { x.put_u8("sleep_control", AcpiPm::kSlpEn); }),
           "invalid sleep control");
  s.refuse(s.with([](Section& x) { x.put_u8("sleep_control", 0x01); }), "invalid sleep control");
}

TEST(BootProbeState, EveryMarkIsValid) {
  Saved<BootProbeTraits> s;
  for (int m : {0, 1, 0x7f, 0xff}) s.accept(s.with([m](Section& x) { x.put_u8("last_mark", static_cast<uint8_t>(m)); }));
  s.refuse(s.with([](Section& x) { x.put_string("last_mark", "x"); }), "is a string");
}

// --- virtio-mmio transport (on the block device) ---

void queue_edit(Section& dev0, int i, const std::function<void(Section&)>& fn) {
  dev0 = with_child(dev0, "queue" + std::to_string(i), fn);
}

TEST(MmioTransportState, StatusBitsMustBeConsistent) {
  Saved<BlockTraits> s;
  using namespace virtio;
  s.refuse(s.with([](Section& x) { x.put_u32("status", kStatusAcknowledge | kStatusDriver |
                                                        kStatusDriverOk); }),
           "DRIVER_OK without FEATURES_OK");
  s.refuse(s.with([](Section& x) { x.put_u32("status", kStatusAcknowledge | kStatusFeaturesOk); }),
           "FEATURES_OK without DRIVER");
  s.refuse(s.with([](Section& x) { x.put_u32("status", kStatusDriver); }),
           "DRIVER without ACKNOWLEDGE");
  s.refuse(s.with([](Section& x) { x.put_u32("status", kAllOk | 0x20); }), "unknown bits");
  // Activated needs DRIVER_OK; DRIVER_OK without activation needs NEEDS_RESET.
  s.refuse(s.with([](Section& x) {
    x.put_u32("status", kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  }), "activated without DRIVER_OK");
  s.refuse(s.with([](Section& x) {
    x.put_bool("activated", false);
    for (int i : {0}) queue_edit(x, i, [](Section& q) {
      q.put_u16("next_avail", 0);
      q.put_u16("next_used", 0);
      q.put_u16("signalled_used", 0);
    });
  }), "DRIVER_OK without activation needs DEVICE_NEEDS_RESET");
  s.refuse(s.with([](Section& x) {
    x.put_bool("activated", false);
    x.put_u32("status", kAllOk | kStatusNeedsReset);
  }), "never ran");
}

TEST(MmioTransportState, FeaturesMustBeOfferedAndVersion1) {
  Saved<BlockTraits> s;
  using namespace virtio;
  s.refuse(s.with([](Section& x) {
    x.put_u64("driver_features", BlockPolicy::kFeatures | kNetFeatureGuestTso4);
  }), "does not offer");
  s.refuse(s.with([](Section& x) {
    x.put_u64("driver_features", BlockPolicy::kFeatures & ~kFeatureVersion1);
  }), "lack VIRTIO_F_VERSION_1");
  s.refuse(s.with([](Section& x) {
    x.put_u32("status", kStatusAcknowledge);
    x.put_bool("activated", false);
  }), "acked before DRIVER");
  // Without FEATURES_OK the driver may have written anything (not yet
  // checked, exactly as live): accepted, and the device is not activated.
  Section pre = s.with([](Section& x) {
    x.put_u32("status", kStatusAcknowledge | kStatusDriver);
    x.put_u64("driver_features", ~0ULL);
    x.put_bool("activated", false);
    x.put_u32("interrupt_status", 0);
    for (int i : {0}) queue_edit(x, i, [](Section& q) {
      q.put_u16("next_avail", 0);
      q.put_u16("next_used", 0);
      q.put_u16("signalled_used", 0);
      q.put_bool("event_idx", false);
    });
  });
  s.accept(pre);
  EXPECT_FALSE(s.rig->t->activated());
  EXPECT_FALSE(s.rig->irq->level());
  // ... and FEATURES_OK is then refused, as live.
  s.rig->w32(T::kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  EXPECT_EQ(s.rig->t->status(), kStatusAcknowledge | kStatusDriver);
}

TEST(MmioTransportState, SelectorsAndInterruptStatusInDomain) {
  Saved<BlockTraits> s;
  s.refuse(s.with([](Section& x) { x.put_u32("queue_sel", 0xffffffff); }), "queue selector");
  s.refuse(s.with([](Section& x) { x.put_u32("queue_sel", 2); }), "queue selector");
  s.refuse(s.with([](Section& x) { x.put_u32("device_features_sel", 3); }), "feature selectors");
  s.refuse(s.with([](Section& x) { x.put_u32("driver_features_sel", 1000); }), "feature selectors");
  s.refuse(s.with([](Section& x) { x.put_u32("interrupt_status", 0x4); }), "interrupt status");
  // One past the last queue is "no queue selected", as a guest can make it.
  s.accept(s.with([](Section& x) { x.put_u32("queue_sel", 1); }));
  EXPECT_EQ(s.rig->r32(T::kRegQueueNumMax), 0u);
  s.rig->w32(T::kRegQueueSel, 0xffffffff);  // stored canonically
  EXPECT_EQ(s.now().get_u32("queue_sel").value(), 1u);
}

TEST(MmioTransportState, QueuesAreCheckedAgainstMemoryAndTheDevice) {
  Saved<BlockTraits> s;
  auto q0 = [&](const std::function<void(Section&)>& fn) {
    return s.with([&](Section& x) { queue_edit(x, 0, fn); });
  };
  s.refuse(q0([](Section& q) { q.put_u64("desc_table", kMemBytes - 0x100); }),
           "not inside guest memory");
  s.refuse(q0([](Section& q) { q.put_u64("used_ring", ~0ULL - 3); }), "wraps around");
  s.refuse(q0([](Section& q) { q.put_u64("avail_ring", 0x50001); }), "not 2-byte aligned");
  s.refuse(q0([](Section& q) { q.put_u16("size", 48); }), "not a power of two");
  s.refuse(q0([](Section& q) { q.put_u16("size", 512); }), "not a power of two");
  s.refuse(q0([](Section& q) { q.put_u16("max_size", 128); }), "differs from the device's");
  s.refuse(q0([](Section& q) { q.put_bool("event_idx", false); }), "event idx");
  s.refuse(q0([](Section& q) { q.put_u16("next_used", 0xff00); }), "in flight");
  s.refuse(q0([](Section& q) { q.put_bool("ready", false); }), "never ran");
  s.refuse(s.with([&](Section& x) {
    Section extra = *x.find_section("queue0");
    x.put_section("queue1", extra);
  }), "2 saved queues, the device has 1");
  s.refuse(s.with([](Section& x) { x.put_section("queue7", Section()); }), "unknown entries: queue7");
  s.refuse(s.with([](Section& x) { x.put_section("queue01", Section()); }),
           "unknown entries: queue01");
  // More queue sections than any transport has.
  s.refuse(s.with([](Section& x) {
    Section q = *x.find_section("queue0");
    for (int i = 1; i <= 1024; ++i) x.put_section("queue" + std::to_string(i), q);
  }), "1025 queues, at most 1024 allowed");
}

TEST(MmioTransportState, UnactivatedQueuesAreRegisterValues) {
  // Before DRIVER_OK a ready queue may point anywhere (DRIVER_OK checks it):
  // such a state restores, and DRIVER_OK then fails exactly as live.
  Saved<BlockTraits> s;
  using namespace virtio;
  Section pre = s.with([](Section& x) {
    x.put_u32("status", kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    x.put_bool("activated", false);
    queue_edit(x, 0, [](Section& q) {
      q.put_u64("desc_table", 0x7fff0000);
      q.put_u16("next_avail", 0);
      q.put_u16("next_used", 0);
      q.put_u16("signalled_used", 0);
      q.put_bool("event_idx", false);
    });
  });
  s.accept(pre);
  EXPECT_FALSE(s.rig->t->activated());
  s.rig->w32(T::kRegStatus, kAllOk);
  EXPECT_FALSE(s.rig->t->activated());
  EXPECT_TRUE(s.rig->t->status() & kStatusNeedsReset);
  EXPECT_NE(s.rig->t->last_error().find("not inside guest memory"), std::string::npos);
  // That failed-activation state itself round-trips.
  Section failed = s.now();
  auto fresh = BlockTraits::make();
  ASSERT_TRUE(fresh->t->restore_section(failed).ok());
  auto again = BlockTraits::save(*fresh);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, failed);
}

TEST(MmioTransportState, DeviceTypeAndIdentityMustMatch) {
  Saved<BlockTraits> blk;
  auto rng = RngTraits::make();
  auto r = rng->t->restore_section(blk.dev);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("of type 2, this one of type 4"), std::string::npos)
      << r.error().to_string();

  // Read-only now, read-write then.
  auto ro = std::make_unique<VirtioRig>();
  BlockPolicy::create(*ro, shared_disk(), true);
  r = ro->t->restore_section(blk.dev);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("read-only"), std::string::npos) << r.error().to_string();

  blk.refuse(with_child(blk.dev, "device", [](Section& d) { d.put_bytes("id", std::vector<uint8_t>(20, 'z')); }),
             "serial (GET_ID) differs");
  blk.refuse(with_child(blk.dev, "device", [](Section& d) { d.put_bytes("id", std::vector<uint8_t>(3, 'z')); }),
             "is 3 bytes, expected 20");
  blk.refuse(with_child(blk.dev, "device", [](Section& d) { d.put_u8("extra", 1); }),
             "unknown entries: extra");

  // Another MAC.
  Saved<NetTraits> net;
  auto other = std::make_unique<VirtioRig>();
  NetPolicy::create(*other, {0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc});
  r = other->t->restore_section(net.dev);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("MAC is 52:54:00:12:34:56"), std::string::npos)
      << r.error().to_string();
  net.refuse(with_child(net.dev, "device", [](Section& d) { d.put_bytes("mac", std::vector<uint8_t>(7, 2)); }),
             "is 7 bytes, expected 6");
}

TEST(MmioTransportState, BlockCapacityMustMatchTheBackingFile) {
  std::string path = make_disk("resized", 1 << 20);
  auto rig = std::make_unique<VirtioRig>();
  BlockPolicy::create(*rig, path);
  BlockTraits::bring_up(*rig);
  auto snap = BlockTraits::save(*rig);
  ASSERT_TRUE(snap.ok());
  rig.reset();
  ASSERT_EQ(::truncate(path.c_str(), 3 << 20), 0);  // the file grew
  auto grown = std::make_unique<VirtioRig>();
  BlockPolicy::create(*grown, path);
  auto r = grown->t->restore_section(*snap);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("the disk has 6144 sectors, the snapshot 2048 (the "
                                       "backing file's size changed)"),
            std::string::npos)
      << r.error().to_string();
  EXPECT_FALSE(grown->t->activated());
  EXPECT_EQ(grown->t->status(), 0u);
  grown.reset();
  ::unlink(path.c_str());
}

TEST(MmioTransportState, SaveNeedsAPausedDevice) {
  auto rig = BlockTraits::make();
  BlockTraits::bring_up(*rig);
  Section s;
  auto r = rig->t->save_section(s);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("pause the device"), std::string::npos)
      << r.error().to_string();
  rig->dev->pause();
  EXPECT_TRUE(rig->t->save_section(s).ok());
  // Not activated: the transport's own queues, no pause needed.
  auto fresh = RngTraits::make();
  EXPECT_TRUE(fresh->t->save_section(s).ok());
}

TEST(MmioTransportState, RestoreOntoARunningOrResetDevice) {
  Saved<RngTraits> s;
  // Running: restore stops it, re-activates paused.
  s.rig->dev->resume();
  RngPolicy::exchange(*s.rig);
  ASSERT_TRUE(s.rig->t->restore_section(s.dev).ok());
  EXPECT_TRUE(s.rig->dev->paused());
  EXPECT_EQ(s.now(), s.dev);
  // Reset by the driver: restore activates again.
  s.rig->dev->resume();
  s.rig->w32(T::kRegStatus, 0);
  EXPECT_FALSE(s.rig->t->activated());
  ASSERT_TRUE(s.rig->t->restore_section(s.dev).ok());
  EXPECT_TRUE(s.rig->t->activated());
  EXPECT_EQ(s.now(), s.dev);
}

TEST(MmioTransportState, NeedsResetSurvivesRestoreAndTheDeviceStaysStopped) {
  Saved<RngTraits> s;
  Section broken = s.with([](Section& x) {
    x.put_u32("status", kAllOk | virtio::kStatusNeedsReset);
    x.put_u32("interrupt_status", virtio::kInterruptConfigChange);
  });
  s.accept(broken);
  EXPECT_TRUE(s.rig->irq->level());
  s.rig->dev->resume();
  EXPECT_TRUE(s.rig->dev->broken());
  uint16_t n = s.rig->add_chain(0, {{data_at(0, 50), 64, true}});
  s.rig->notify(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(s.rig->mocks[0].used_idx(), n) << "a NEEDS_RESET device served a request";
  // The driver resets; the device works again from scratch.
  s.rig->w32(T::kRegStatus, 0);
  EXPECT_EQ(s.rig->t->status(), 0u);
  EXPECT_FALSE(s.rig->irq->level());
}

TEST(MmioTransportState, ConfigGenerationAndInterruptsRestored) {
  Saved<NetTraits> s;
  Section x = s.with([](Section& d) {
    d.put_u32("config_generation", 77);
    d.put_u32("interrupt_status", 3);
  });
  auto fresh = NetTraits::make();
  ASSERT_TRUE(fresh->t->restore_section(x).ok());
  EXPECT_EQ(fresh->r32(T::kRegConfigGeneration), 77u);
  EXPECT_EQ(fresh->r32(T::kRegInterruptStatus), 3u);
  EXPECT_TRUE(fresh->irq->level());
  fresh->w32(T::kRegInterruptAck, 1);
  EXPECT_TRUE(fresh->irq->level());
  fresh->w32(T::kRegInterruptAck, 2);
  EXPECT_FALSE(fresh->irq->level());
}

}  // namespace
}  // namespace vmm
