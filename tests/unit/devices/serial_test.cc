#include "devices/legacy/serial.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "boot/x86_64/layout.h"
#include "tests/unit/devices/fake_irq.h"

namespace vmm {
namespace {

constexpr uint64_t kBase = layout::kSerialPort;
constexpr uint64_t RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4,
                   LSR = 5, MSR = 6, SCR = 7;

class SerialTest : public ::testing::Test {
 protected:
  SerialTest()
      : irq_(std::make_shared<testing::FakeIrqLine>()),
        uart_(irq_,
              [this](std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }) {
  }

  uint8_t in(uint64_t reg) {
    uint8_t v = 0xee;
    uart_.read(kBase, reg, std::span<uint8_t>(&v, 1));
    return v;
  }
  void out(uint64_t reg, uint8_t v) { uart_.write(kBase, reg, std::span<const uint8_t>(&v, 1)); }
  size_t enqueue(std::vector<uint8_t> bytes) { return uart_.enqueue_input(bytes); }

  std::shared_ptr<testing::FakeIrqLine> irq_;
  std::vector<uint8_t> out_;
  Serial16550 uart_;
};

TEST_F(SerialTest, ResetValues) {
  EXPECT_EQ(in(IER), 0);
  EXPECT_EQ(in(IIR), 0x01);
  EXPECT_EQ(in(LCR), 0);
  EXPECT_EQ(in(MCR), 0);
  EXPECT_EQ(in(LSR), 0x60);
  EXPECT_EQ(in(MSR), 0xb0);
  EXPECT_EQ(in(SCR), 0);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(irq_->calls(), 0);
  EXPECT_EQ(uart_.rx_space(), Serial16550::kRxFifoSize);
}

TEST_F(SerialTest, DlabSelectsDivisorLatch) {
  out(IER, 0x05);
  out(LCR, 0x80 | 0x03);
  out(DLL, 0x01);
  out(DLM, 0x02);
  EXPECT_EQ(in(DLL), 0x01);
  EXPECT_EQ(in(DLM), 0x02);
  EXPECT_TRUE(out_.empty());  // DLL write is not a transmit
  out(LCR, 0x03);
  EXPECT_EQ(in(IER), 0x05);  // IER untouched by the DLM write
  EXPECT_EQ(in(LCR), 0x03);
  out(LCR, 0x83);
  EXPECT_EQ(in(DLL), 0x01);
  EXPECT_EQ(in(DLM), 0x02);
  // A DLL read with data queued does not pop the FIFO.
  EXPECT_EQ(enqueue({'x'}), 1u);
  EXPECT_EQ(in(DLL), 0x01);
  out(LCR, 0x03);
  EXPECT_EQ(in(RBR), 'x');
}

TEST_F(SerialTest, TransmitGoesToSink) {
  for (char c : std::string("hello")) out(THR, static_cast<uint8_t>(c));
  EXPECT_EQ(std::string(out_.begin(), out_.end()), "hello");
  EXPECT_EQ(in(LSR)&0x60, 0x60);  // THRE and TEMT stay set
  EXPECT_FALSE(irq_->level());    // no interrupt without IER
}

TEST_F(SerialTest, NullSinkAndIrqAreTolerated) {
  Serial16550 uart(nullptr, nullptr);
  uint8_t v = 'a';
  uart.write(kBase, IER, std::span<const uint8_t>(&v, 1));  // IER = 0x61 & 0x0f
  uart.write(kBase, THR, std::span<const uint8_t>(&v, 1));
  EXPECT_EQ(uart.enqueue_input(std::vector<uint8_t>{1, 2}), 2u);
  uint8_t r = 0;
  uart.read(kBase, IIR, std::span<uint8_t>(&r, 1));
  EXPECT_EQ(r, 0x04);
}

TEST_F(SerialTest, LsrDataReady) {
  EXPECT_EQ(in(LSR)&0x01, 0);
  EXPECT_EQ(enqueue({'a', 'b'}), 2u);
  EXPECT_EQ(in(LSR), 0x61);
  EXPECT_EQ(in(RBR), 'a');
  EXPECT_EQ(in(LSR), 0x61);
  EXPECT_EQ(in(RBR), 'b');
  EXPECT_EQ(in(LSR), 0x60);
  EXPECT_EQ(in(RBR), 'b');  // empty: the last byte is read again, nothing pops
  EXPECT_EQ(uart_.rx_space(), Serial16550::kRxFifoSize);
}

TEST_F(SerialTest, ThreInterruptOnEnableClearedByIirRead) {
  out(IER, 0x02);
  EXPECT_TRUE(irq_->level());
  EXPECT_EQ(irq_->calls(), 1);
  EXPECT_EQ(in(IIR), 0x02);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(in(IIR), 0x01);
  // Re-writing IER with ETBEI still set is not a rising edge.
  out(IER, 0x02);
  EXPECT_FALSE(irq_->level());
  // Toggling ETBEI re-arms (Linux's TX-enable test relies on it).
  out(IER, 0x00);
  out(IER, 0x02);
  EXPECT_TRUE(irq_->level());
  EXPECT_EQ(in(IIR), 0x02);
  // Every transmit re-arms the THR-empty interrupt.
  out(THR, 'x');
  EXPECT_TRUE(irq_->level());
  EXPECT_EQ(in(IIR), 0x02);
  EXPECT_FALSE(irq_->level());
  // Disabling ETBEI drops a pending THRE interrupt.
  out(THR, 'y');
  EXPECT_TRUE(irq_->level());
  out(IER, 0x00);
  EXPECT_FALSE(irq_->level());
  out(IER, 0x00);
  EXPECT_EQ(in(IIR), 0x01);
}

TEST_F(SerialTest, ReceiveInterruptUntilDrained) {
  out(IER, 0x01);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(enqueue({'1', '2', '3'}), 3u);
  EXPECT_TRUE(irq_->level());
  EXPECT_EQ(in(IIR), 0x04);
  EXPECT_EQ(in(IIR), 0x04);  // reading IIR does not acknowledge RX data
  EXPECT_EQ(in(RBR), '1');
  EXPECT_EQ(in(RBR), '2');
  EXPECT_TRUE(irq_->level());
  EXPECT_EQ(in(RBR), '3');
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(in(IIR), 0x01);
  EXPECT_EQ(irq_->changes(), 2);
  EXPECT_EQ(irq_->calls(), 2);  // set_level only on changes
}

TEST_F(SerialTest, ReceiveOutranksThre) {
  out(IER, 0x03);
  EXPECT_EQ(enqueue({'z'}), 1u);
  EXPECT_EQ(in(IIR), 0x04);  // RX first; the THRE interrupt stays pending
  EXPECT_EQ(in(RBR), 'z');
  EXPECT_TRUE(irq_->level());
  EXPECT_EQ(in(IIR), 0x02);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(in(IIR), 0x01);
}

TEST_F(SerialTest, RxInterruptMaskedByIer) {
  EXPECT_EQ(enqueue({'q'}), 1u);
  EXPECT_FALSE(irq_->level());
  out(IER, 0x01);
  EXPECT_TRUE(irq_->level());
  out(IER, 0x00);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(in(IER), 0);
  out(IER, 0xff);
  EXPECT_EQ(in(IER), 0x0f);  // reserved bits read 0
}

TEST_F(SerialTest, Out2DoesNotGateInterrupt) {
  out(MCR, 0x00);
  out(IER, 0x01);
  EXPECT_EQ(enqueue({'q'}), 1u);
  EXPECT_TRUE(irq_->level());
  out(MCR, 0x08);
  EXPECT_TRUE(irq_->level());
}

TEST_F(SerialTest, FcrEnablesFifoBitsAndClears) {
  out(FCR, 0x01);
  EXPECT_EQ(in(IIR), 0xc1);
  EXPECT_EQ(enqueue({'a', 'b', 'c'}), 3u);
  out(IER, 0x01);
  EXPECT_EQ(in(IIR), 0xc4);
  out(FCR, 0x01 | 0x02);  // clear RX FIFO, FIFO stays enabled
  EXPECT_EQ(in(LSR)&0x01, 0);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(in(IIR), 0xc1);
  EXPECT_EQ(uart_.rx_space(), Serial16550::kRxFifoSize);
  // FCR writes without the clear bit keep the data.
  EXPECT_EQ(enqueue({'d'}), 1u);
  out(FCR, 0xc1);
  EXPECT_EQ(in(LSR)&0x01, 1);
  // Disabling the FIFOs clears them too and drops the IIR FIFO bits.
  out(FCR, 0x00);
  EXPECT_EQ(in(LSR)&0x01, 0);
  EXPECT_EQ(in(IIR), 0x01);
}

TEST_F(SerialTest, LoopbackRoutesTxToRx) {
  out(MCR, 0x10);
  EXPECT_EQ(in(MSR)&0xf0, 0x00);
  out(THR, 'L');
  EXPECT_TRUE(out_.empty());
  EXPECT_EQ(in(LSR)&0x01, 1);
  EXPECT_EQ(in(RBR), 'L');
  // MCR outputs appear on MSR inputs: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
  out(MCR, 0x10 | 0x01);
  EXPECT_EQ(in(MSR)&0xf0, 0x20);
  out(MCR, 0x10 | 0x02);
  EXPECT_EQ(in(MSR)&0xf0, 0x10);
  out(MCR, 0x10 | 0x04);
  EXPECT_EQ(in(MSR)&0xf0, 0x40);
  out(MCR, 0x10 | 0x08);
  EXPECT_EQ(in(MSR)&0xf0, 0x80);
  // What Linux's 8250 autoconfig checks.
  out(MCR, 0x10 | 0x0a);
  EXPECT_EQ(in(MSR)&0xf0, 0x90);
  out(MCR, 0x00);
  EXPECT_EQ(in(MSR)&0xf0, 0xb0);
  out(THR, 'T');
  EXPECT_EQ(out_, std::vector<uint8_t>{'T'});
  EXPECT_EQ(in(LSR)&0x01, 0);
}

TEST_F(SerialTest, ModemStatusDeltasAndInterrupt) {
  out(MCR, 0x10);  // loopback: CTS/DSR/DCD drop -> deltas
  EXPECT_EQ(in(MSR), 0x0b);
  EXPECT_EQ(in(MSR), 0x00);  // deltas clear on read
  out(MCR, 0x14);            // RI rises: no TERI yet
  EXPECT_EQ(in(MSR), 0x40);
  out(IER, 0x08);
  out(MCR, 0x10);  // RI falls: TERI
  EXPECT_TRUE(irq_->level());
  EXPECT_EQ(in(IIR), 0x00);
  EXPECT_EQ(in(MSR), 0x04);
  EXPECT_FALSE(irq_->level());
  EXPECT_EQ(in(IIR), 0x01);
}

TEST_F(SerialTest, LoopbackOverrunSetsLineStatus) {
  out(MCR, 0x10);
  std::vector<uint8_t> fill(Serial16550::kRxFifoSize, 0x55);
  EXPECT_EQ(uart_.enqueue_input(fill), Serial16550::kRxFifoSize);
  out(IER, 0x05);
  EXPECT_EQ(in(IIR), 0x04);
  out(THR, 0xaa);  // no room: lost, overrun
  EXPECT_EQ(in(IIR), 0x06);
  EXPECT_EQ(in(LSR), 0x63);
  EXPECT_EQ(in(LSR), 0x61);  // OE clears on read
  EXPECT_EQ(in(IIR), 0x04);
  for (size_t i = 0; i < Serial16550::kRxFifoSize; ++i) ASSERT_EQ(in(RBR), 0x55);
  EXPECT_EQ(in(LSR), 0x60);
  EXPECT_FALSE(irq_->level());
}

TEST_F(SerialTest, RxFifoIsBounded) {
  std::vector<uint8_t> big(5000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(uart_.enqueue_input(big), 4096u);
  EXPECT_EQ(uart_.rx_space(), 0u);
  EXPECT_EQ(uart_.enqueue_input(big), 0u);
  EXPECT_EQ(in(RBR), 0);
  EXPECT_EQ(in(RBR), 1);
  EXPECT_EQ(uart_.rx_space(), 2u);
  // The caller resubmits what was refused; order is preserved.
  EXPECT_EQ(uart_.enqueue_input(std::span<const uint8_t>(big).subspan(4096)), 2u);
  for (size_t i = 2; i < 4098; ++i) ASSERT_EQ(in(RBR), static_cast<uint8_t>(i)) << i;
  EXPECT_EQ(in(LSR)&0x01, 0);
  EXPECT_EQ(uart_.enqueue_input({}), 0u);
}

TEST_F(SerialTest, ScratchRegister) {
  out(SCR, 0x5a);
  EXPECT_EQ(in(SCR), 0x5a);
}

TEST_F(SerialTest, WritesToReadOnlyRegistersIgnored) {
  out(LSR, 0x00);
  out(MSR, 0x00);
  EXPECT_EQ(in(LSR), 0x60);
  EXPECT_EQ(in(MSR), 0xb0);
}

TEST_F(SerialTest, OutOfRangeOffsets) {
  out(SCR, 0x77);
  for (uint64_t off : {8ull, 9ull, 0x100ull, 0x7fffffffffffffffull, ~0ull, ~0ull - 3}) {
    std::array<uint8_t, 4> buf;
    buf.fill(0xcc);
    uart_.read(kBase, off, buf);
    EXPECT_EQ(buf, (std::array<uint8_t, 4>{0, 0, 0, 0})) << off;
    std::array<uint8_t, 4> w{'a', 'b', 'c', 'd'};
    uart_.write(kBase, off, w);
  }
  EXPECT_TRUE(out_.empty());
  EXPECT_EQ(in(SCR), 0x77);
  EXPECT_EQ(in(LCR), 0);
}

TEST_F(SerialTest, MultiByteAccessesActPerByte) {
  // A 2-byte write at offset 6 touches MSR (ignored) and SCR.
  std::array<uint8_t, 2> w{0x00, 0x42};
  uart_.write(kBase, MSR, w);
  EXPECT_EQ(in(SCR), 0x42);
  // A 4-byte write at offset 7 touches SCR only; the rest falls off the end.
  std::array<uint8_t, 4> w4{0x99, 1, 2, 3};
  uart_.write(kBase, SCR, w4);
  EXPECT_EQ(in(SCR), 0x99);
  // A 4-byte read at offset 5: LSR, MSR, SCR, then 0 past the end.
  std::array<uint8_t, 4> r4;
  r4.fill(0xcc);
  uart_.read(kBase, LSR, r4);
  EXPECT_EQ(r4, (std::array<uint8_t, 4>{0x60, 0xb0, 0x99, 0x00}));
  // A 2-byte write at offset 0 transmits the low byte and sets IER.
  std::array<uint8_t, 2> w2{'k', 0x02};
  uart_.write(kBase, THR, w2);
  EXPECT_EQ(out_, std::vector<uint8_t>{'k'});
  EXPECT_EQ(in(IER), 0x02);
  // Huge and empty accesses.
  std::vector<uint8_t> huge(100000, 0);
  uart_.read(kBase, 0, huge);
  EXPECT_EQ(huge[7], 0x99);
  EXPECT_EQ(huge[8], 0);
  std::fill(huge.begin(), huge.end(), uint8_t{0});
  uart_.write(kBase, 0, huge);  // THR = 0 (transmitted), IER..SCR = 0
  EXPECT_EQ(in(IER), 0);
  EXPECT_EQ(in(SCR), 0);
  uart_.read(kBase, 0, std::span<uint8_t>());
  uart_.write(kBase, 0, std::span<const uint8_t>());
  EXPECT_EQ(out_.size(), 2u);  // 'k' plus the huge write's THR byte
}

TEST_F(SerialTest, SaveRestoreRoundTrip) {
  out(LCR, 0x83);
  out(DLL, 0x01);
  out(DLM, 0x00);
  out(LCR, 0x03);
  out(FCR, 0xc7);
  out(MCR, 0x0b);
  out(SCR, 0x12);
  out(IER, 0x03);
  EXPECT_EQ(enqueue({'a', 'b', 'c'}), 3u);
  EXPECT_EQ(in(RBR), 'a');
  SerialState saved = uart_.save();
  EXPECT_EQ(saved.rx_fifo, (std::vector<uint8_t>{'b', 'c'}));
  EXPECT_EQ(saved.fcr, 0xc1);
  EXPECT_EQ(saved.lsr, 0x61);
  EXPECT_EQ(saved.rbr, 'a');
  EXPECT_TRUE(saved.thr_ipending);

  // Mutate everything, then restore.
  out(LCR, 0x80);
  out(DLL, 0x99);
  out(LCR, 0x00);
  out(FCR, 0x06);
  out(MCR, 0x1f);
  out(SCR, 0);
  out(IER, 0);
  EXPECT_EQ(enqueue({'x', 'y'}), 2u);
  EXPECT_NE(uart_.save(), saved);

  ASSERT_TRUE(uart_.restore(saved).ok());
  EXPECT_EQ(uart_.save(), saved);
  EXPECT_TRUE(irq_->level());
  EXPECT_EQ(in(IIR), 0xc4);
  EXPECT_EQ(in(RBR), 'b');
  EXPECT_EQ(in(RBR), 'c');
  EXPECT_EQ(in(IIR), 0xc2);
  EXPECT_EQ(in(IIR), 0xc1);
  EXPECT_FALSE(irq_->level());

  // Restoring into a fresh device drives its line to the saved level.
  auto irq2 = std::make_shared<testing::FakeIrqLine>();
  Serial16550 fresh(irq2, nullptr);
  ASSERT_TRUE(fresh.restore(saved).ok());
  EXPECT_TRUE(irq2->level());
  EXPECT_EQ(fresh.save(), saved);
}

TEST_F(SerialTest, RestoreFullFifoAfterWrap) {
  // Advance the ring head so a save walks around the end of the buffer.
  std::vector<uint8_t> data(Serial16550::kRxFifoSize);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  EXPECT_EQ(enqueue({1, 2, 3}), 3u);
  for (int i = 0; i < 3; ++i) in(RBR);
  EXPECT_EQ(uart_.enqueue_input(data), data.size());
  SerialState s = uart_.save();
  EXPECT_EQ(s.rx_fifo, data);
  Serial16550 other(nullptr, nullptr);
  ASSERT_TRUE(other.restore(s).ok());
  EXPECT_EQ(other.rx_space(), 0u);
  EXPECT_EQ(other.save(), s);
}

TEST_F(SerialTest, RestoreRefusesBadState) {
  out(SCR, 0x33);
  const SerialState before = uart_.save();
  auto refused = [&](auto mutate) {
    SerialState s = before;
    mutate(s);
    EXPECT_FALSE(uart_.restore(s).ok());
    EXPECT_EQ(uart_.save(), before);  // nothing changed
  };
  refused([](SerialState& s) {
    s.rx_fifo.assign(Serial16550::kRxFifoSize + 1, 0);
    s.lsr = 0x61;
  });
  refused([](SerialState& s) { s.ier = 0x10; });
  refused([](SerialState& s) { s.fcr = 0x02; });
  refused([](SerialState& s) { s.mcr = 0x20; });
  refused([](SerialState& s) { s.lsr = 0x61; });  // DR without data
  refused([](SerialState& s) { s.lsr = 0x00; });  // THRE/TEMT missing
  refused([](SerialState& s) { s.lsr = 0x80; });
  refused([](SerialState& s) { s.rx_fifo = {1}; });  // data without DR
  refused([](SerialState& s) { s.msr = 0x00; });     // status does not match MCR
  refused([](SerialState& s) {
    s.mcr = 0x10;
    s.msr = 0xb0;
  });
  // Valid edge cases are accepted.
  SerialState ok = before;
  ok.rx_fifo.assign(Serial16550::kRxFifoSize, 9);
  ok.lsr = 0x63;
  ok.msr = 0xbf;
  EXPECT_TRUE(uart_.restore(ok).ok());
  EXPECT_EQ(uart_.save(), ok);
}

TEST_F(SerialTest, ConcurrentInputAndGuestReads) {
  out(IER, 0x01);
  constexpr size_t kTotal = 20000;
  std::thread producer([&] {
    size_t sent = 0;
    while (sent < kTotal) {
      uint8_t b = static_cast<uint8_t>(sent);
      sent += uart_.enqueue_input(std::span<const uint8_t>(&b, 1));
      if (sent < kTotal && uart_.rx_space() == 0) std::this_thread::yield();
    }
  });
  size_t got = 0;
  size_t mismatches = 0;
  while (got < kTotal) {
    if (in(LSR)&0x01) {
      if (in(RBR) != static_cast<uint8_t>(got)) ++mismatches;
      ++got;
    } else {
      std::this_thread::yield();
    }
  }
  producer.join();
  EXPECT_EQ(mismatches, 0u);
  EXPECT_FALSE(irq_->level());
}

}  // namespace
}  // namespace vmm
