// Serial16550: a 16550A UART (COM1 for the guest console).
//
// Transmission is instantaneous: a THR write hands the byte to the output sink
// at once, so THRE and TEMT are always set. Received bytes sit in an RX FIFO
// bounded at kRxFifoSize bytes that the host fills with enqueue_input(); input
// beyond the bound is refused (the caller keeps it and retries when rx_space()
// grows). The FIFO is this large in both 16450 and 16550 modes so host input is
// never lost; the FCR trigger level is stored but not used.
//
// Interrupts, highest priority first (IIR bits 3:0):
//   0x6 receiver line status (IER bit2): an overrun (loopback into a full FIFO)
//   0x4 received data available (IER bit0): RX FIFO not empty
//   0x2 THR empty (IER bit1): set by every THR write and by a 0->1 edge of
//       IER bit1 (THR is always empty); cleared by an IIR read reporting it
//   0x0 modem status (IER bit3): a delta bit set in MSR; cleared by an MSR read
//   0x1 no interrupt
// The IRQ line is high exactly while IIR reports an interrupt. As in QEMU,
// MCR OUT2 does not gate the line.
//
// Accesses wider than one byte act on consecutive registers, byte by byte, as
// an ISA bus would split them; bytes at offsets >= 8 are ignored / read 0.
// All methods are thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "devices/bus.h"
#include "vmm/base/result.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm {

// The guest-visible state of a Serial16550, for snapshots. Register values are
// as the guest would read them without side effects.
struct SerialState {
  uint8_t dll = 0x0c;  // divisor latch low (0x0c: 9600 baud)
  uint8_t dlm = 0;     // divisor latch high
  uint8_t ier = 0;     // bits 3:0 only
  uint8_t fcr = 0;     // stored bits: 0 (FIFO enable), 3 (DMA mode), 7:6 (trigger)
  uint8_t lcr = 0;
  uint8_t mcr = 0;     // bits 4:0 only
  uint8_t lsr = 0x60;  // THRE|TEMT, DR iff rx_fifo non-empty, optionally OE
  uint8_t msr = 0xb0;  // status bits 7:4 follow from mcr; delta bits 3:0
  uint8_t scr = 0;
  uint8_t rbr = 0;               // last byte read from the RX FIFO (returned when empty)
  bool thr_ipending = false;     // THR-empty interrupt armed
  std::vector<uint8_t> rx_fifo;  // oldest first, at most Serial16550::kRxFifoSize

  bool operator==(const SerialState&) const = default;
};

// SerialState <-> a state-tree section (fields named as the struct's:
// u8 dll dlm ier fcr lcr mcr lsr msr scr rbr, bool thr_ipending, bytes rx_fifo).
// from_section() checks presence, kinds and that nothing else is there (an
// unknown entry is refused: format changes bump the file version); the values
// are checked by Serial16550::restore().
void to_section(const SerialState& st, snapshot::Section& s);
Result<void> from_section(const snapshot::Section& s, SerialState& st);

class Serial16550 : public BusDevice {
 public:
  static constexpr size_t kRxFifoSize = 4096;
  static constexpr uint64_t kNumRegisters = 8;

  // irq may be null (no interrupt line); out may be empty (output discarded).
  Serial16550(std::shared_ptr<IrqLine> irq, std::function<void(std::span<const uint8_t>)> out);

  void read(uint64_t base, uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t base, uint64_t offset, std::span<const uint8_t> data) override;

  // Appends host input to the RX FIFO; returns how many leading bytes of
  // `data` were accepted (the rest did not fit and were not consumed).
  size_t enqueue_input(std::span<const uint8_t> data);
  // Free space in the RX FIFO.
  size_t rx_space() const;

  SerialState save() const;
  // Validates `state` and, if it is consistent, installs it and drives the IRQ
  // line to the level it implies. On error nothing changes.
  Result<void> restore(const SerialState& state);
  // save() / restore() through the state tree (the one serialization path of
  // snapshots and migration). On error nothing changes.
  void save_section(snapshot::Section& s) const;
  Result<void> restore_section(const snapshot::Section& s);

 private:
  uint8_t read_reg(uint64_t reg);
  void write_reg(uint64_t reg, uint8_t value);
  uint8_t iir_locked() const;
  uint8_t modem_status_bits() const;
  uint8_t lsr_locked() const;
  bool rx_push(uint8_t b);
  uint8_t rx_pop();
  void rx_clear();
  void update_irq_locked();

  const std::shared_ptr<IrqLine> irq_;
  const std::function<void(std::span<const uint8_t>)> out_;

  mutable std::mutex mu_;
  uint8_t dll_ = 0x0c;
  uint8_t dlm_ = 0;
  uint8_t ier_ = 0;
  uint8_t fcr_ = 0;
  uint8_t lcr_ = 0;
  uint8_t mcr_ = 0;
  uint8_t msr_delta_ = 0;
  uint8_t scr_ = 0;
  uint8_t rbr_ = 0;
  bool overrun_ = false;
  bool thr_ipending_ = false;
  bool irq_level_ = false;  // last level driven onto irq_
  std::array<uint8_t, kRxFifoSize> rx_{};
  size_t rx_head_ = 0;   // index of the oldest byte
  size_t rx_count_ = 0;  // bytes queued
};

}  // namespace vmm
