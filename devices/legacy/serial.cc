#include "devices/legacy/serial.h"

#include <algorithm>
#include <utility>

namespace vmm {
namespace {

// Register offsets.
constexpr uint64_t kRegData = 0;  // RBR / THR; DLL when DLAB
constexpr uint64_t kRegIer = 1;   // DLM when DLAB
constexpr uint64_t kRegIir = 2;   // IIR (read) / FCR (write)
constexpr uint64_t kRegLcr = 3;
constexpr uint64_t kRegMcr = 4;
constexpr uint64_t kRegLsr = 5;
constexpr uint64_t kRegMsr = 6;
constexpr uint64_t kRegScr = 7;

constexpr uint8_t kIerRdi = 0x01;   // received data available
constexpr uint8_t kIerThri = 0x02;  // THR empty
constexpr uint8_t kIerRlsi = 0x04;  // receiver line status
constexpr uint8_t kIerMsi = 0x08;   // modem status
constexpr uint8_t kIerMask = 0x0f;

constexpr uint8_t kIirNoInt = 0x01;
constexpr uint8_t kIirMsi = 0x00;
constexpr uint8_t kIirThri = 0x02;
constexpr uint8_t kIirRdi = 0x04;
constexpr uint8_t kIirRlsi = 0x06;
constexpr uint8_t kIirFifoEnabled = 0xc0;

constexpr uint8_t kFcrEnable = 0x01;
constexpr uint8_t kFcrClearRx = 0x02;
constexpr uint8_t kFcrClearTx = 0x04;
constexpr uint8_t kFcrStoredMask = 0xc9;  // enable, DMA mode, trigger level

constexpr uint8_t kLcrDlab = 0x80;

constexpr uint8_t kMcrDtr = 0x01;
constexpr uint8_t kMcrRts = 0x02;
constexpr uint8_t kMcrOut1 = 0x04;
constexpr uint8_t kMcrOut2 = 0x08;
constexpr uint8_t kMcrLoop = 0x10;
constexpr uint8_t kMcrMask = 0x1f;

constexpr uint8_t kLsrDr = 0x01;
constexpr uint8_t kLsrOe = 0x02;
constexpr uint8_t kLsrThre = 0x20;
constexpr uint8_t kLsrTemt = 0x40;

constexpr uint8_t kMsrDcts = 0x01;
constexpr uint8_t kMsrDdsr = 0x02;
constexpr uint8_t kMsrTeri = 0x04;
constexpr uint8_t kMsrDdcd = 0x08;
constexpr uint8_t kMsrDeltaMask = 0x0f;
constexpr uint8_t kMsrCts = 0x10;
constexpr uint8_t kMsrDsr = 0x20;
constexpr uint8_t kMsrRi = 0x40;
constexpr uint8_t kMsrDcd = 0x80;

// MSR status bits (7:4) implied by MCR: the outputs looped back in loopback
// mode, else a permanently connected modem (DCD, DSR, CTS; no ring).
uint8_t msr_status_for(uint8_t mcr) {
  if (!(mcr & kMcrLoop)) return kMsrDcd | kMsrDsr | kMsrCts;
  uint8_t s = 0;
  if (mcr & kMcrDtr) s |= kMsrDsr;
  if (mcr & kMcrRts) s |= kMsrCts;
  if (mcr & kMcrOut1) s |= kMsrRi;
  if (mcr & kMcrOut2) s |= kMsrDcd;
  return s;
}

}  // namespace

Serial16550::Serial16550(std::shared_ptr<IrqLine> irq,
                         std::function<void(std::span<const uint8_t>)> out)
    : irq_(std::move(irq)), out_(std::move(out)) {}

void Serial16550::read(uint64_t /*base*/, uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < data.size(); ++i) {
    // offset + i cannot overflow once offset < kNumRegisters and i is bounded.
    if (offset >= kNumRegisters || i >= kNumRegisters - offset) {
      data[i] = 0;
    } else {
      data[i] = read_reg(offset + i);
    }
  }
  update_irq_locked();
}

void Serial16550::write(uint64_t /*base*/, uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < data.size(); ++i) {
    if (offset >= kNumRegisters || i >= kNumRegisters - offset) break;
    write_reg(offset + i, data[i]);
  }
  update_irq_locked();
}

uint8_t Serial16550::read_reg(uint64_t reg) {
  switch (reg) {
    case kRegData:
      if (lcr_ & kLcrDlab) return dll_;
      if (rx_count_ > 0) rbr_ = rx_pop();
      return rbr_;
    case kRegIer:
      if (lcr_ & kLcrDlab) return dlm_;
      return ier_;
    case kRegIir: {
      uint8_t iir = iir_locked();
      // Reading IIR while it reports THR empty acknowledges that interrupt.
      if ((iir & 0x0f) == kIirThri) thr_ipending_ = false;
      return iir;
    }
    case kRegLcr:
      return lcr_;
    case kRegMcr:
      return mcr_;
    case kRegLsr: {
      uint8_t lsr = lsr_locked();
      overrun_ = false;  // error bits clear on read
      return lsr;
    }
    case kRegMsr: {
      uint8_t msr = static_cast<uint8_t>(modem_status_bits() | msr_delta_);
      msr_delta_ = 0;  // delta bits clear on read
      return msr;
    }
    case kRegScr:
      return scr_;
    default:
      return 0;
  }
}

void Serial16550::write_reg(uint64_t reg, uint8_t value) {
  switch (reg) {
    case kRegData:
      if (lcr_ & kLcrDlab) {
        dll_ = value;
        return;
      }
      if (mcr_ & kMcrLoop) {
        if (!rx_push(value)) overrun_ = true;  // the byte is lost, as on hardware
      } else if (out_) {
        out_(std::span<const uint8_t>(&value, 1));
      }
      // Transmission is instant: THR is empty again at once.
      thr_ipending_ = true;
      return;
    case kRegIer: {
      if (lcr_ & kLcrDlab) {
        dlm_ = value;
        return;
      }
      uint8_t old = ier_;
      ier_ = value & kIerMask;
      // A rising edge of ETBEI raises the THR-empty interrupt because THR is
      // always empty (Linux's TX-enable probe and Windows rely on this).
      if ((old ^ ier_) & kIerThri) thr_ipending_ = (ier_ & kIerThri) != 0;
      return;
    }
    case kRegIir: {  // FCR
      // Toggling the FIFO enable bit clears both FIFOs (16550A datasheet).
      if ((value ^ fcr_) & kFcrEnable) value |= kFcrClearRx | kFcrClearTx;
      if (value & kFcrClearRx) rx_clear();
      fcr_ = value & kFcrStoredMask;
      return;
    }
    case kRegLcr:
      lcr_ = value;
      return;
    case kRegMcr: {
      uint8_t old_status = modem_status_bits();
      mcr_ = value & kMcrMask;
      uint8_t new_status = modem_status_bits();
      uint8_t changed = old_status ^ new_status;
      if (changed & kMsrCts) msr_delta_ |= kMsrDcts;
      if (changed & kMsrDsr) msr_delta_ |= kMsrDdsr;
      if (changed & kMsrDcd) msr_delta_ |= kMsrDdcd;
      if ((old_status & kMsrRi) && !(new_status & kMsrRi)) msr_delta_ |= kMsrTeri;
      return;
    }
    case kRegScr:
      scr_ = value;
      return;
    default:  // LSR and MSR are read-only (factory test writes ignored)
      return;
  }
}

uint8_t Serial16550::modem_status_bits() const { return msr_status_for(mcr_); }

uint8_t Serial16550::lsr_locked() const {
  uint8_t lsr = kLsrThre | kLsrTemt;
  if (rx_count_ > 0) lsr |= kLsrDr;
  if (overrun_) lsr |= kLsrOe;
  return lsr;
}

uint8_t Serial16550::iir_locked() const {
  uint8_t iir = kIirNoInt;
  if ((ier_ & kIerRlsi) && overrun_) {
    iir = kIirRlsi;
  } else if ((ier_ & kIerRdi) && rx_count_ > 0) {
    iir = kIirRdi;
  } else if ((ier_ & kIerThri) && thr_ipending_) {
    iir = kIirThri;
  } else if ((ier_ & kIerMsi) && (msr_delta_ & kMsrDeltaMask)) {
    iir = kIirMsi;
  }
  if (fcr_ & kFcrEnable) iir |= kIirFifoEnabled;
  return iir;
}

bool Serial16550::rx_push(uint8_t b) {
  if (rx_count_ >= kRxFifoSize) return false;
  rx_[(rx_head_ + rx_count_) % kRxFifoSize] = b;
  ++rx_count_;
  return true;
}

uint8_t Serial16550::rx_pop() {
  // Callers check rx_count_ > 0.
  uint8_t b = rx_[rx_head_];
  rx_head_ = (rx_head_ + 1) % kRxFifoSize;
  --rx_count_;
  return b;
}

void Serial16550::rx_clear() {
  rx_head_ = 0;
  rx_count_ = 0;
}

void Serial16550::update_irq_locked() {
  bool level = (iir_locked() & kIirNoInt) == 0;
  if (level == irq_level_) return;
  irq_level_ = level;
  if (irq_) irq_->set_level(level);
}

size_t Serial16550::enqueue_input(std::span<const uint8_t> data) {
  std::lock_guard lock(mu_);
  size_t n = std::min(data.size(), kRxFifoSize - rx_count_);
  for (size_t i = 0; i < n; ++i) rx_push(data[i]);
  update_irq_locked();
  return n;
}

size_t Serial16550::rx_space() const {
  std::lock_guard lock(mu_);
  return kRxFifoSize - rx_count_;
}

SerialState Serial16550::save() const {
  std::lock_guard lock(mu_);
  SerialState s;
  s.dll = dll_;
  s.dlm = dlm_;
  s.ier = ier_;
  s.fcr = fcr_;
  s.lcr = lcr_;
  s.mcr = mcr_;
  s.lsr = lsr_locked();
  s.msr = static_cast<uint8_t>(modem_status_bits() | msr_delta_);
  s.scr = scr_;
  s.rbr = rbr_;
  s.thr_ipending = thr_ipending_;
  s.rx_fifo.reserve(rx_count_);
  for (size_t i = 0; i < rx_count_; ++i) s.rx_fifo.push_back(rx_[(rx_head_ + i) % kRxFifoSize]);
  return s;
}

Result<void> Serial16550::restore(const SerialState& s) {
  if (s.rx_fifo.size() > kRxFifoSize)
    return make_error("serial: RX FIFO holds {} bytes, more than {}", s.rx_fifo.size(),
                      kRxFifoSize);
  if (s.ier & ~kIerMask) return make_error("serial: invalid IER {:#04x}", s.ier);
  if (s.fcr & ~kFcrStoredMask) return make_error("serial: invalid FCR {:#04x}", s.fcr);
  if (s.mcr & ~kMcrMask) return make_error("serial: invalid MCR {:#04x}", s.mcr);
  uint8_t want_lsr = kLsrThre | kLsrTemt | (s.rx_fifo.empty() ? 0 : kLsrDr);
  if ((s.lsr & ~kLsrOe) != want_lsr)
    return make_error("serial: LSR {:#04x} inconsistent with the FIFO (expected {:#04x})", s.lsr,
                      want_lsr);
  if ((s.msr & ~kMsrDeltaMask) != msr_status_for(s.mcr))
    return make_error("serial: MSR {:#04x} inconsistent with MCR {:#04x}", s.msr, s.mcr);

  std::lock_guard lock(mu_);
  dll_ = s.dll;
  dlm_ = s.dlm;
  ier_ = s.ier;
  fcr_ = s.fcr;
  lcr_ = s.lcr;
  mcr_ = s.mcr;
  overrun_ = (s.lsr & kLsrOe) != 0;
  msr_delta_ = s.msr & kMsrDeltaMask;
  scr_ = s.scr;
  rbr_ = s.rbr;
  thr_ipending_ = s.thr_ipending;
  rx_clear();
  std::copy(s.rx_fifo.begin(), s.rx_fifo.end(), rx_.begin());
  rx_count_ = s.rx_fifo.size();
  update_irq_locked();
  return ok();
}

void to_section(const SerialState& st, snapshot::Section& s) {
  s.put_u8("dll", st.dll);
  s.put_u8("dlm", st.dlm);
  s.put_u8("ier", st.ier);
  s.put_u8("fcr", st.fcr);
  s.put_u8("lcr", st.lcr);
  s.put_u8("mcr", st.mcr);
  s.put_u8("lsr", st.lsr);
  s.put_u8("msr", st.msr);
  s.put_u8("scr", st.scr);
  s.put_u8("rbr", st.rbr);
  s.put_bool("thr_ipending", st.thr_ipending);
  s.put_bytes("rx_fifo", st.rx_fifo);
}

Result<void> from_section(const snapshot::Section& s, SerialState& st) {
  VMM_CHECK(s.expect_only({"dll", "dlm", "ier", "fcr", "lcr", "mcr", "lsr", "msr", "scr", "rbr",
                           "thr_ipending", "rx_fifo"}));
  VMM_TRY(st.dll, s.get_u8("dll"));
  VMM_TRY(st.dlm, s.get_u8("dlm"));
  VMM_TRY(st.ier, s.get_u8("ier"));
  VMM_TRY(st.fcr, s.get_u8("fcr"));
  VMM_TRY(st.lcr, s.get_u8("lcr"));
  VMM_TRY(st.mcr, s.get_u8("mcr"));
  VMM_TRY(st.lsr, s.get_u8("lsr"));
  VMM_TRY(st.msr, s.get_u8("msr"));
  VMM_TRY(st.scr, s.get_u8("scr"));
  VMM_TRY(st.rbr, s.get_u8("rbr"));
  VMM_TRY(st.thr_ipending, s.get_bool("thr_ipending"));
  VMM_TRY(auto fifo, s.get_bytes("rx_fifo"));
  st.rx_fifo.assign(fifo.begin(), fifo.end());
  return ok();
}

void Serial16550::save_section(snapshot::Section& s) const { to_section(save(), s); }

Result<void> Serial16550::restore_section(const snapshot::Section& s) {
  SerialState st;
  VMM_CHECK(from_section(s, st));
  if (auto r = restore(st); !r.ok())
    return make_error("{}: {}", s.where(), r.error().to_string());
  return ok();
}

}  // namespace vmm
