// libFuzzer target: the legacy devices (Serial16550, I8042, BootProbe) driven
// through IoBus exactly as vCPU exits drive them, plus host-side serial input.
//
// Input: a sequence of 7-byte records (a trailing partial record is ignored):
//   byte 0    op     op % 6: 0 read, 1 write, 2 enqueue_input (serial),
//                    3 save/restore round trip, 4 read-modify-write, 5 restore
//                    of a mutated snapshot
//   byte 1    target target % 8 picks a window (below), target / 8 (0..31)
//                    is added to window base - 4, so accesses start before,
//                    inside, straddle and run past every device range
//   byte 2    size   size % 9: access width 0..8 bytes
//   bytes 3-6 value  little-endian u32: written bytes (repeated for width > 4);
//                    for enqueue_input, value & 0x1fff bytes of (value >> 16)
//                    & 0xff, incrementing
//
// Invariants (abort() on violation): the serial IRQ line level always equals
// "IIR reports an interrupt" computed from the saved state; LSR.DR iff the RX
// FIFO is non-empty; rx_space() + FIFO size == 4096; enqueue_input accepts
// exactly min(len, rx_space()); restore(save()) reproduces the state on a fresh
// device; I8042 state stays in its documented domain; BootProbe reads return
// the last mark and the signature; IoBus refuses exactly the accesses that no
// single range covers, and leaves their buffers untouched.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "tests/fuzz/fuzz_check.h"
#include "boot/x86_64/layout.h"
#include "devices/bus.h"
#include "devices/legacy/boot_probe.h"
#include "devices/legacy/i8042.h"
#include "devices/legacy/serial.h"

namespace {

using namespace vmm;

class FakeIrq : public IrqLine {
 public:
  void set_level(bool high) override {
    // The device only drives the line on a change.
    FUZZ_CHECK(high != level);
    level = high;
    ++changes;
  }
  bool level = false;
  uint64_t changes = 0;
};

// IIR's "interrupt pending" as the header documents it, from saved state.
bool serial_irq_expected(const SerialState& s) {
  bool overrun = s.lsr & 0x02;
  bool msr_delta = s.msr & 0x0f;
  return ((s.ier & 0x04) && overrun) || ((s.ier & 0x01) && !s.rx_fifo.empty()) ||
         ((s.ier & 0x02) && s.thr_ipending) || ((s.ier & 0x08) && msr_delta);
}

struct Window {
  bool mmio;
  uint64_t base;
};

constexpr Window kWindows[8] = {
    {false, layout::kSerialPort},
    {false, layout::kSerialPort + 4},
    {false, layout::kI8042DataPort},
    {false, layout::kI8042CommandPort},
    {false, layout::kBootProbePort},
    {true, layout::kBootProbeMmioAddr},
    {true, layout::kBootProbeMmioAddr + 4},
    {false, 0x2f8},  // COM2: nothing there
};

struct Machine {
  std::shared_ptr<FakeIrq> irq = std::make_shared<FakeIrq>();
  std::shared_ptr<Serial16550> serial;
  std::shared_ptr<I8042> i8042;
  std::shared_ptr<BootProbe> probe;
  IoBus pio, mmio;
  uint64_t out_bytes = 0;
  uint64_t resets = 0;
  uint64_t exits = 0;
  int marks_seen = 0;
  uint8_t last_mark = 0;

  Machine() {
    serial = std::make_shared<Serial16550>(irq, [this](std::span<const uint8_t> b) {
      FUZZ_CHECK(b.size() == 1);
      out_bytes += b.size();
    });
    i8042 = std::make_shared<I8042>([this] { ++resets; });
    probe = std::make_shared<BootProbe>(
        [this](uint8_t m) {
          last_mark = m;
          ++marks_seen;
        },
        [this](uint32_t) { ++exits; });
    FUZZ_CHECK(pio.insert(layout::kSerialPort, Serial16550::kNumRegisters, serial, "com1").ok());
    FUZZ_CHECK(pio.insert(layout::kI8042DataPort, 1, i8042, "i8042-data").ok());
    FUZZ_CHECK(pio.insert(layout::kI8042CommandPort, 1, i8042, "i8042-cmd").ok());
    FUZZ_CHECK(pio.insert(layout::kBootProbePort, layout::kBootProbePortLen, probe, "probe").ok());
    FUZZ_CHECK(
        mmio.insert(layout::kBootProbeMmioAddr, BootProbe::kWindowSize, probe, "probe-mmio").ok());
  }
};

void check_serial(Machine& m) {
  SerialState s = m.serial->save();
  size_t space = m.serial->rx_space();
  FUZZ_CHECK(space <= Serial16550::kRxFifoSize);
  FUZZ_CHECK(s.rx_fifo.size() + space == Serial16550::kRxFifoSize);
  FUZZ_CHECK(((s.lsr & 0x01) != 0) == !s.rx_fifo.empty());
  FUZZ_CHECK((s.lsr & 0x60) == 0x60);  // THRE | TEMT always
  FUZZ_CHECK((s.ier & ~0x0f) == 0 && (s.mcr & ~0x1f) == 0);
  FUZZ_CHECK(m.irq->level == serial_irq_expected(s));
}

void check_i8042(Machine& m) {
  I8042State s = m.i8042->save();
  FUZZ_CHECK((s.status & ~I8042::kStatusObf) == 0);
  FUZZ_CHECK(s.pending_command == 0 || s.pending_command == I8042::kCmdWriteCommandByte ||
             s.pending_command == I8042::kCmdWriteOutputPort);
}

// restore(save()) on fresh devices reproduces the state and the IRQ level.
void check_round_trip(Machine& m) {
  SerialState s = m.serial->save();
  auto irq2 = std::make_shared<FakeIrq>();
  Serial16550 copy(irq2, nullptr);
  FUZZ_CHECK(copy.restore(s).ok());
  FUZZ_CHECK(copy.save() == s);
  FUZZ_CHECK(irq2->level == m.irq->level);
  FUZZ_CHECK(copy.rx_space() == m.serial->rx_space());

  I8042 kbd(nullptr);
  FUZZ_CHECK(kbd.restore(m.i8042->save()).ok());
  FUZZ_CHECK(kbd.save() == m.i8042->save());

  BootProbe probe2(nullptr, nullptr);
  FUZZ_CHECK(probe2.restore(m.probe->save()).ok());
  FUZZ_CHECK(probe2.save() == m.probe->save());
}

// Restores a mutated snapshot: either refused with nothing changed, or
// installed exactly.
void mutated_restore(Machine& m, uint8_t which, uint32_t value) {
  SerialState before = m.serial->save();
  SerialState s = before;
  uint8_t v = static_cast<uint8_t>(value);
  switch (which % 12) {
    case 0: s.dll = v; break;
    case 1: s.dlm = v; break;
    case 2: s.ier = v; break;
    case 3: s.fcr = v; break;
    case 4: s.lcr = v; break;
    case 5: s.mcr = v; break;
    case 6: s.lsr = v; break;
    case 7: s.msr = v; break;
    case 8: s.rbr = v; break;
    case 9: s.thr_ipending = v & 1; break;
    case 10: s.rx_fifo.resize((value >> 8) & 0x1fff, v); break;
    case 11: s.scr = v; break;
  }
  auto r = m.serial->restore(s);
  if (r.ok()) {
    FUZZ_CHECK(m.serial->save() == s);
  } else {
    FUZZ_CHECK(m.serial->save() == before);
  }

  I8042State k = m.i8042->save();
  I8042State kb = k;
  switch ((which >> 4) % 4) {
    case 0: k.status = v; break;
    case 1: k.output = v; break;
    case 2: k.command_byte = v; break;
    case 3: k.pending_command = v; break;
  }
  if (m.i8042->restore(k).ok()) {
    FUZZ_CHECK(m.i8042->save() == k);
  } else {
    FUZZ_CHECK(m.i8042->save() == kb);
  }
}

void fill(std::span<uint8_t> buf, uint32_t value) {
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(value >> (8 * (i % 4)));
}

// Does a single bus range cover [addr, addr+len)? (The IoBus contract.)
bool covered(const Window& w, uint64_t addr, uint64_t len) {
  struct R {
    bool mmio;
    uint64_t base, len;
  };
  static constexpr R kRanges[] = {
      {false, layout::kSerialPort, Serial16550::kNumRegisters},
      {false, layout::kI8042DataPort, 1},
      {false, layout::kI8042CommandPort, 1},
      {false, layout::kBootProbePort, layout::kBootProbePortLen},
      {true, layout::kBootProbeMmioAddr, BootProbe::kWindowSize},
  };
  for (const R& r : kRanges) {
    if (r.mmio != w.mmio) continue;
    if (addr >= r.base && addr - r.base < r.len && len <= r.len - (addr - r.base)) return true;
  }
  return false;
}

void access(Machine& m, uint8_t op, uint8_t target, uint8_t size, uint32_t value) {
  const Window& w = kWindows[target % 8];
  uint64_t addr = w.base - 4 + (target / 8);
  size_t len = size % 9;
  IoBus& bus = w.mmio ? m.mmio : m.pio;
  bool hit = covered(w, addr, len);
  FUZZ_CHECK((bus.find(addr, len) != nullptr) == hit);

  uint8_t buf[8];
  std::span<uint8_t> data(buf, len);
  switch (op % 6) {
    case 0: {  // read
      std::memset(buf, 0xa5, sizeof buf);
      FUZZ_CHECK(bus.read(addr, data) == hit);
      if (!hit) {
        for (uint8_t b : data) FUZZ_CHECK(b == 0xa5);
      } else if (w.base == layout::kBootProbePort || w.base == layout::kBootProbeMmioAddr ||
                 w.base == layout::kBootProbeMmioAddr + 4) {
        uint64_t off = addr - (w.mmio ? layout::kBootProbeMmioAddr : layout::kBootProbePort);
        if (off == BootProbe::kMarkOffset && len == 1) FUZZ_CHECK(buf[0] == m.last_mark);
        if (off == BootProbe::kExitOffset && (len == 1 || len == 2 || len == 4)) {
          uint32_t sig = 0;
          std::memcpy(&sig, buf, len);
          uint32_t mask = len == 4 ? 0xffffffffu : (1u << (8 * len)) - 1;
          FUZZ_CHECK(sig == (BootProbe::kSignature & mask));
        }
      }
      break;
    }
    case 1: {  // write
      fill(data, value);
      uint64_t resets = m.resets;
      FUZZ_CHECK(bus.write(addr, data) == hit);
      if (!hit) FUZZ_CHECK(m.resets == resets);
      break;
    }
    case 2: {  // host input to the serial port
      size_t n = value & 0x1fff;
      std::vector<uint8_t> in(n);
      for (size_t i = 0; i < n; ++i) in[i] = static_cast<uint8_t>((value >> 16) + i);
      size_t space = m.serial->rx_space();
      size_t took = m.serial->enqueue_input(in);
      FUZZ_CHECK(took == std::min(n, space));
      FUZZ_CHECK(m.serial->rx_space() == space - took);
      break;
    }
    case 3:
      check_round_trip(m);
      break;
    case 4: {  // read-modify-write, as a guest driver would
      std::memset(buf, 0, sizeof buf);
      bool r = bus.read(addr, data);
      for (size_t i = 0; i < len; ++i) buf[i] ^= static_cast<uint8_t>(value >> (8 * (i % 4)));
      bool wr = bus.write(addr, data);
      FUZZ_CHECK(r == hit && wr == hit);
      break;
    }
    case 5:
      mutated_restore(m, target, value);
      break;
  }
  check_serial(m);
  check_i8042(m);
  // The probe's mark is tracked by the on_mark callback.
  FUZZ_CHECK(m.probe->save().last_mark == m.last_mark);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return -1;
  Machine m;
  check_serial(m);
  for (size_t pos = 0; pos + 7 <= size; pos += 7) {
    uint32_t value;
    std::memcpy(&value, data + pos + 3, 4);
    access(m, data[pos], data[pos + 1], data[pos + 2], value);
  }
  check_round_trip(m);
  return 0;
}
