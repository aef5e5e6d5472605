#include "vmm/core/vm.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "boot/x86_64/acpi.h"
#include "boot/x86_64/boot_params.h"
#include "boot/x86_64/cpu_setup.h"
#include "boot/x86_64/cpuid.h"
#include "boot/x86_64/e820.h"
#include "boot/x86_64/kernel_loader.h"
#include "boot/x86_64/layout.h"
#include "boot/x86_64/mptable.h"
#include "boot/x86_64/zero_page.h"
#include "devices/legacy/acpi_pm.h"
#include "devices/legacy/boot_probe.h"
#include "devices/legacy/i8042.h"
#include "devices/legacy/serial.h"
#include "devices/virtio/block.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "vmm/api/api_server.h"
#include "vmm/base/event_loop.h"
#include "vmm/base/log.h"
#include "vmm/core/cpuid_probe.h"
#include "vmm/core/migration.h"
#include "vmm/core/vm_state.h"
#include "vmm/snapshot/snapshot_dir.h"
#include "vmm/snapshot/state_file.h"
#include "vmm/core/emulation_fallback.h"
#include "vmm/core/exit_report.h"

namespace vmm {

namespace {

const auto kProcessStart = std::chrono::steady_clock::now();

constexpr uint64_t kMaxKernelSize = 512ull << 20;
constexpr uint64_t kMaxInitrdSize = 2ull << 30;

// The vCPU thread's kvm_run, so the kick signal handler can set immediate_exit
// and close the race between a kick and the next KVM_RUN.
thread_local kvm_run* tls_run = nullptr;

void kick_handler(int) {
  if (tls_run) tls_run->immediate_exit = 1;
}

constexpr int kKickSignal = SIGUSR1;

class KvmIrqLine : public IrqLine {
 public:
  KvmIrqLine(VmFd& vm, uint32_t irq) : vm_(vm), irq_(irq) {}
  void set_level(bool high) override {
    auto r = vm_.irq_line(irq_, high);
    if (!r.ok()) spdlog::warn("irq {}: {}", irq_, r.error().to_string());
  }

 private:
  VmFd& vm_;
  uint32_t irq_;
};

// An edge-triggered line through KVM_IRQFD: a rising level writes the eventfd
// (KVM asserts and deasserts the GSI without a trip through user space).
// Falls back to KVM_IRQ_LINE pulses if the host has no irqfd.
class IrqfdLine : public IrqLine {
 public:
  static std::shared_ptr<IrqfdLine> create(VmFd& vm, uint32_t gsi) {
    auto line = std::shared_ptr<IrqfdLine>(new IrqfdLine(vm, gsi));
    if (auto fd = make_eventfd(); fd.ok()) {
      if (auto r = vm.irqfd(fd->get(), gsi); r.ok())
        line->fd_ = std::move(*fd);
      else
        spdlog::warn("irq {}: {}; using KVM_IRQ_LINE", gsi, r.error().to_string());
    }
    return line;
  }
  void set_level(bool high) override {
    if (!high) return;  // an edge: nothing to lower
    if (fd_.valid()) {
      signal_eventfd(fd_.get());
    } else {
      (void)vm_.irq_line(gsi_, true);
      (void)vm_.irq_line(gsi_, false);
    }
  }

 private:
  IrqfdLine(VmFd& vm, uint32_t gsi) : vm_(vm), gsi_(gsi) {}
  VmFd& vm_;
  uint32_t gsi_;
  UniqueFd fd_;
};

kvm_segment to_kvm(const boot::Segment& s) {
  kvm_segment k{};
  k.base = s.base;
  k.limit = s.limit;
  k.selector = s.selector;
  k.type = s.type;
  k.present = s.present;
  k.dpl = s.dpl;
  k.db = s.db;
  k.s = s.s;
  k.l = s.l;
  k.g = s.g;
  k.avl = s.avl;
  k.unusable = s.present ? 0 : 1;
  return k;
}

std::vector<boot::CpuidEntry> from_kvm(const CpuidTable& t) {
  std::vector<boot::CpuidEntry> out;
  for (const auto& e : t.entries())
    out.push_back({e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
  return out;
}

CpuidTable to_kvm(const std::vector<boot::CpuidEntry>& entries) {
  std::vector<kvm_cpuid_entry2> out;
  for (const auto& e : entries) {
    kvm_cpuid_entry2 k{};
    k.function = e.function;
    k.index = e.index;
    k.flags = e.flags;
    k.eax = e.eax;
    k.ebx = e.ebx;
    k.ecx = e.ecx;
    k.edx = e.edx;
    out.push_back(k);
  }
  return CpuidTable(std::move(out));
}

}  // namespace

std::chrono::steady_clock::time_point process_start_time() { return kProcessStart; }

struct Vm::BootEntry {
  boot::BootCpuState state;
};

Vm::Vm(const VmConfig& cfg, KvmSystem kvm, VmFd vm, GuestMemory mem)
    : cfg_(cfg), kvm_(std::move(kvm)), vm_(std::move(vm)), mem_(std::move(mem)) {}

static Result<std::vector<std::shared_ptr<virtio::WorkerDevice>>> make_virtio_devices(const VmConfig& cfg) {
  // Only what the command line names (validate_config has bounded it).
  std::vector<std::shared_ptr<virtio::WorkerDevice>> out;
  for (const auto& d : cfg.disks) {
    VMM_TRY(auto dev, virtio::BlockDevice::create(d));
    out.push_back(std::move(dev));
  }
  for (const auto& n : cfg.nets) {
    VMM_TRY(auto dev, virtio::NetDevice::create(n));
    out.push_back(std::move(dev));
  }
  if (cfg.rng) {
    VMM_TRY(auto dev, virtio::RngDevice::create());
    out.push_back(std::move(dev));
  }
  return out;
}

Vm::~Vm() {
  migration_.reset();  // joins a migration thread (it reads guest memory)
  if (console_in_) console_in_->stop();
  // Device workers write guest memory: stop them before it goes away.
  for (auto& slot : virtio_) slot.device->reset();
}

double Vm::ms_since_start() const {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                   kProcessStart)
      .count();
}

Result<VmInputs> Vm::prepare(const VmConfig& cfg) {
  // Everything that can be wrong with the user's input is checked before any
  // KVM object exists.
  if (cfg.kernel.empty()) return make_error("no kernel given (--kernel)");
  VMM_CHECK(validate_config(cfg));
  VMM_TRY(auto kernel, boot::read_file(cfg.kernel, kMaxKernelSize));
  std::vector<uint8_t> initrd;
  if (!cfg.initrd.empty()) {
    VMM_TRY(auto data, boot::read_file(cfg.initrd, std::min(kMaxInitrdSize, cfg.mem_bytes)));
    initrd = std::move(data);
  }
  // A garbled kernel is refused here too: it is loaded now, into the guest
  // memory the VM will map, so it is parsed and copied once.
  VMM_TRY(auto mem,
          GuestMemory::create_anonymous(boot::guest_ram_ranges(cfg.mem_bytes), cfg.thp));
  auto info = boot::load_kernel(mem, kernel);
  if (!info.ok()) return make_error("kernel '{}': {}", cfg.kernel, info.error().to_string());
  if (cfg.boot_protocol == "pvh" && !info->has_pvh)
    return make_error("--boot-protocol pvh: kernel '{}' has no PVH entry note", cfg.kernel);
  if (cfg.boot_protocol == "linux64" && !info->has_entry64)
    return make_error("--boot-protocol linux64: kernel '{}' is a 32-bit ELF and has only a PVH "
                      "entry",
                      cfg.kernel);
  VmInputs in{std::move(mem), std::move(info).value(), std::move(initrd), std::nullopt, {}};
  if (!cfg.system_map.empty()) {
    VMM_TRY(auto m, SymbolMap::load(cfg.system_map));
    in.symbols = std::move(m);
  }
  VMM_TRY(in.virtio_devices, make_virtio_devices(cfg));
  return in;
}

Result<std::unique_ptr<Vm>> Vm::build(const VmConfig& cfg, GuestMemory mem,
                                      std::vector<std::shared_ptr<virtio::WorkerDevice>> devices) {
  VMM_TRY(auto kvm, KvmSystem::open(cfg.kvm_device.c_str()));
  for (long cap : {KVM_CAP_IRQCHIP, KVM_CAP_PIT2, KVM_CAP_SET_TSS_ADDR, KVM_CAP_USER_MEMORY}) {
    if (!kvm.check_extension(cap)) return make_error("KVM lacks a required capability ({})", cap);
  }
  int max_vcpus = kvm.check_extension(KVM_CAP_MAX_VCPUS);
  if (max_vcpus <= 0) max_vcpus = kvm.check_extension(KVM_CAP_NR_VCPUS);
  if (max_vcpus > 0 && cfg.cpus > max_vcpus)
    return make_error("--cpus {}: this host's KVM allows at most {}", cfg.cpus, max_vcpus);

  VMM_TRY(auto vmfd, kvm.create_vm());
  // Memory slots first: each KVM_SET_USER_MEMORY_REGION waits for an SRCU
  // grace period, which on this project's host took 4-10 ms once the
  // irqchip existed and 0.2-1 ms before it (a first slot on a bare VM);
  // the order is free otherwise (the irqchip only has to precede the vCPUs).
  uint32_t slot = 0;
  for (const auto& r : mem.regions())
    VMM_CHECK(vmfd.set_user_memory_region(slot++, r.start, r.size(), r.host()));
  VMM_CHECK(vmfd.set_tss_addr(layout::kKvmTssAddr));
  VMM_CHECK(vmfd.set_identity_map_addr(layout::kKvmIdentityMapAddr));
  VMM_CHECK(vmfd.create_irqchip());
  VMM_CHECK(vmfd.create_pit2());

  std::unique_ptr<Vm> vm(new Vm(cfg, std::move(kvm), std::move(vmfd), std::move(mem)));
  VMM_CHECK(vm->setup_devices());
  VMM_CHECK(vm->setup_virtio(std::move(devices)));
  return vm;
}

Result<std::unique_ptr<Vm>> Vm::create(const VmConfig& cfg, VmInputs in) {
  VMM_TRY(auto vm, build(cfg, std::move(in.mem), std::move(in.virtio_devices)));
  vm->symbols_ = std::move(in.symbols);
  VMM_CHECK(vm->load_guest(in.kernel, in.initrd));
  for (int i = 0; i < cfg.cpus; ++i) {
    VMM_TRY(auto fd, vm->vm_.create_vcpu(i));
    vm->vcpus_.push_back(std::make_unique<Vcpu>(i, std::move(fd)));
    VMM_CHECK(vm->setup_vcpu(*vm->vcpus_.back(), i == 0));
  }
  return vm;
}

Result<std::unique_ptr<Vm>> Vm::restore(const VmConfig& user_cfg, const std::string& dir,
                                        bool copy_memory) {
  auto t0 = std::chrono::steady_clock::now();
  VMM_TRY(auto file, snapshot::read_state_file(dir + "/" + snapshot::kStateFileName));
  // The snapshot only describes the guest's machine; every host resource
  // (disk file, TAP) comes from the command line and is compared with it.
  auto saved = parse_machine_spec(file.header.config);
  if (!saved.ok()) return make_error("snapshot header: {}", saved.error().to_string());
  VmConfig cfg = user_cfg;
  cfg.cpu_template = file.header.cpu_template;
  take_machine_shape(*saved, cfg);
  VMM_TRY(auto devices, open_devices_like(*saved, cfg, "snapshot"));
  VMM_TRY(auto mem, map_memory_file(dir + "/" + snapshot::kMemoryFileName, cfg.mem_bytes,
                                    copy_memory, cfg.thp));
  VMM_TRY(auto vm, prepare_restore(cfg, std::move(mem), std::move(devices)));
  VMM_CHECK(vm->apply_state(file));
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("restored from {} in {:.2f} ms ({} MiB {}, {} vCPU(s), {} virtio device(s))", dir, ms,
               cfg.mem_bytes >> 20, copy_memory ? "copied" : "mapped", cfg.cpus, vm->virtio_.size());
  return vm;
}

Result<std::unique_ptr<Vm>> Vm::prepare_restore(
    const VmConfig& cfg, GuestMemory mem,
    std::vector<std::shared_ptr<virtio::WorkerDevice>> devices) {
  if (mem.total_size() != cfg.mem_bytes)
    return make_error("guest memory is {} bytes; the saved VM has {}", mem.total_size(),
                      cfg.mem_bytes);
  VMM_TRY(auto vm, build(cfg, std::move(mem), std::move(devices)));
  for (int i = 0; i < cfg.cpus; ++i) {
    VMM_TRY(auto fd, vm->vm_.create_vcpu(i));
    vm->vcpus_.push_back(std::make_unique<Vcpu>(i, std::move(fd)));
    VMM_CHECK(vm->setup_vcpu(*vm->vcpus_.back(), false));  // CPUID and defaults
  }
  vm->cmdline_ = "(restored)";
  return vm;
}

Result<std::vector<std::shared_ptr<virtio::WorkerDevice>>> Vm::open_devices_like(
    const MachineSpec& saved, VmConfig& cfg, const char* saved_by) {
  VMM_CHECK(adopt_machine_spec(saved, cfg, saved_by));
  VMM_CHECK(validate_config(cfg));
  VMM_TRY(auto devices, make_virtio_devices(cfg));
  VMM_CHECK(compare_machine_specs(saved, machine_spec_of(cfg, devices), saved_by));
  return devices;
}

MachineSpec Vm::machine_spec() const {
  std::vector<std::shared_ptr<virtio::WorkerDevice>> devices;
  for (const auto& slot : virtio_) devices.push_back(slot.device);
  return machine_spec_of(cfg_, devices);
}

Result<void> Vm::apply_state(const snapshot::StateFile& file) {
  // The saved VM must be this one: what prepare_restore built from cfg_.
  snapshot::StateHeader mine;
  mine.cpu_template = cfg_.cpu_template;
  mine.config = encode_machine_spec(machine_spec());
  VMM_CHECK(snapshot::check_compatible(file.header, mine));
  const snapshot::Section& tree = file.tree;
  // Every section must belong to a part of this VM: state for a device this
  // VM does not have means the header and the state disagree.
  std::set<std::string> expected = {"vm", "serial0", "i8042", "boot_probe"};
  if (acpi_pm_) expected.insert("acpi_pm");
  for (const auto& v : vcpus_) expected.insert(fmt::format("vcpu{}", v->index));
  for (size_t i = 0; i < virtio_.size(); ++i) expected.insert(fmt::format("virtio{}", i));
  for (const auto& sec : tree.sections())
    if (!expected.contains(sec.name()))
      return make_error("state has a section '{}' for no part of this VM",
                        snapshot::printable(sec.name()));
  for (auto& v : vcpus_) {
    VMM_TRY(const auto* sec, tree.section(fmt::format("vcpu{}", v->index)));
    VMM_TRY(auto saved_cpuid, sec->get_pod_array<kvm_cpuid_entry2>("cpuid", 4096));
    auto cr = check_cpuid(saved_cpuid, v->cpuid);
    if (!cr.ok()) return make_error("vcpu{}: {}", v->index, cr.error().to_string());
    auto r = restore_vcpu_state(v->fd, *sec);
    if (!r.ok()) return make_error("restoring vcpu{}: {}", v->index, r.error().to_string());
    if (v->index == 0) check_tsc_restored(*sec);
  }
  VMM_TRY(const auto* vmsec, tree.section("vm"));
  VMM_CHECK(restore_vm_state(vm_, *vmsec));
  VMM_TRY(const auto* ser, tree.section("serial0"));
  VMM_CHECK(serial_->restore_section(*ser));
  VMM_TRY(const auto* kbd, tree.section("i8042"));
  VMM_CHECK(i8042_->restore_section(*kbd));
  VMM_TRY(const auto* probe, tree.section("boot_probe"));
  VMM_CHECK(probe_->restore_section(*probe));
  if (acpi_pm_) {
    VMM_TRY(const auto* pm, tree.section("acpi_pm"));
    VMM_CHECK(acpi_pm_->restore_section(*pm));
  }
  for (size_t i = 0; i < virtio_.size(); ++i) {
    VMM_TRY(const auto* vs, tree.section(fmt::format("virtio{}", i)));
    auto r = virtio_[i].transport->restore_section(*vs);
    if (!r.ok()) return make_error("restoring virtio{}: {}", i, r.error().to_string());
    virtio_[i].device->resume();  // restored devices come up paused
  }
  return ok();
}

Result<void> Vm::setup_devices() {
  int out_fd = -1;
  bool owned = false;
  if (cfg_.serial == SerialMode::kStdio) {
    out_fd = STDOUT_FILENO;
  } else if (cfg_.serial == SerialMode::kFile) {
    out_fd = ::open(cfg_.serial_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0) return errno_error("cannot open serial output file '{}'", cfg_.serial_path);
    owned = true;
  }
  serial_out_ = std::make_unique<SerialOutput>(
      out_fd, owned, [this](PanicDetector::Event ev, const std::string& reason) {
        if (ev == PanicDetector::Event::kPanic) {
          std::lock_guard lk(stop_mu_);
          panic_reason_ = reason;
          // Let the kernel finish printing its trace, then stop.
          panic_deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(5);
          stop_cv_.notify_all();
        } else if (ev == PanicDetector::Event::kPanicEnd) {
          std::string r;
          {
            std::lock_guard lk(stop_mu_);
            r = panic_reason_;
          }
          if (!r.empty()) request_stop({kExitGuestCrash, "guest kernel panic: " + r});
        }
      });
  auto irq4 = std::make_shared<KvmIrqLine>(vm_, layout::kSerialIrq);
  serial_ = std::make_shared<Serial16550>(
      irq4, [this](std::span<const uint8_t> bytes) { serial_out_->write(bytes); });
  VMM_CHECK(pio_.insert(layout::kSerialPort, 8, serial_, "serial0"));

  i8042_ = std::make_shared<I8042>([this] { request_stop({kExitOk, "guest reset (i8042)"}); });
  VMM_CHECK(pio_.insert(layout::kI8042DataPort, 1, i8042_, "i8042-data"));
  VMM_CHECK(pio_.insert(layout::kI8042CommandPort, 1, i8042_, "i8042-cmd"));

  probe_ = std::make_shared<BootProbe>(
      [this](uint8_t mark) {
        spdlog::info("boot probe: mark {} at {:.1f} ms since VMM start", mark, ms_since_start());
      },
      [this](uint32_t code) {
        request_stop({static_cast<int>(code & 0xff),
                      fmt::format("guest requested exit with code {}", code)});
      });
  VMM_CHECK(pio_.insert(layout::kBootProbePort, layout::kBootProbePortLen, probe_, "boot-probe"));
  VMM_CHECK(mmio_.insert(layout::kBootProbeMmioAddr, 8, probe_, "boot-probe-mmio"));

  if (cfg_.acpi) {
    acpi_pm_ = std::make_shared<AcpiPm>(
        [this] { request_stop({kExitOk, "guest powered off (ACPI)"}); },
        [this] { request_stop({kExitOk, "guest reset (ACPI)"}); });
    VMM_CHECK(pio_.insert(layout::kAcpiPmPort, layout::kAcpiPmPortLen, acpi_pm_, "acpi-pm"));
  }
  return ok();
}

Result<void> Vm::setup_virtio(std::vector<std::shared_ptr<virtio::WorkerDevice>> devices) {
  for (size_t n = 0; n < devices.size(); ++n) {
    auto dev = devices[n];
    uint64_t base = layout::kVirtioMmioBase + n * layout::kVirtioMmioSize;
    uint32_t irq = layout::kVirtioIrqs[n];
    auto line = IrqfdLine::create(vm_, irq);
    std::weak_ptr<virtio::WorkerDevice> weak = dev;
    VMM_TRY(auto transport, virtio::MmioTransport::create(mem_, dev, line, [weak](uint32_t q) {
              if (auto d = weak.lock()) d->notify_queue(q);
            }));
    // Queue notifications straight from KVM to the device's worker.
    size_t with_ioeventfd = 0;
    for (size_t q = 0; q < dev->num_queues(); ++q) {
      auto r = vm_.ioeventfd_mmio(base + virtio::MmioTransport::kRegQueueNotify, 4,
                                  dev->queue_eventfd(q), q);
      if (r.ok()) ++with_ioeventfd;
      else spdlog::warn("{}: {}; queue {} notifications exit to the VMM", dev->name(),
                        r.error().to_string(), q);
    }
    std::string name = fmt::format("virtio{}", n);
    VMM_CHECK(mmio_.insert(base, layout::kVirtioMmioSize, transport, name));
    virtio_cmdline_ += fmt::format(" virtio_mmio.device=4K@{:#x}:{}", base, irq);
    spdlog::info("{}: {} at {:#x} irq {} ({} of {} queues with ioeventfd)", name, dev->name(),
                 base, irq, with_ioeventfd, dev->num_queues());
    virtio_.push_back(VirtioSlot{dev, std::move(transport), base, irq});
  }
  return ok();
}

Result<void> Vm::load_guest(const boot::KernelInfo& info, const std::vector<uint8_t>& initrd) {

  // prepare() checked that the kernel has the entry asked for; a 32-bit ELF
  // has only its PVH entry.
  bool pvh = cfg_.boot_protocol == "pvh" || !info.has_entry64;

  // Command line: the user's (or the default), then host workarounds.
  cmdline_ = cfg_.cmdline_given ? cfg_.cmdline : std::string(kDefaultCmdline);
  bool mitigate = cfg_.cpuid_mitigation == CpuidMitigation::kOn;
  uint32_t tsc_khz = 0;
  KvmFlavor flavor = detect_kvm_flavor();
  bool hardware = flavor == KvmFlavor::kVmx || flavor == KvmFlavor::kSvm;
  if (cfg_.cpuid_mitigation == CpuidMitigation::kAuto && hardware) {
    spdlog::info("host KVM is {} (hardware virtualization): CPUID is virtualized, no probe "
                 "and no workaround",
                 kvm_flavor_name(flavor));
  } else if (cfg_.cpuid_mitigation != CpuidMitigation::kOff) {
    auto probe = probe_cpuid_virtualization(kvm_);
    if (!probe.ok()) {
      spdlog::warn("CPUID probe failed ({}); assuming CPUID is virtualized",
                   probe.error().to_string());
    } else {
      tsc_khz = probe->tsc_khz;
      if (!probe->virtualized && cfg_.cpuid_mitigation == CpuidMitigation::kAuto) {
        mitigate = true;
        spdlog::info(
            "this host's KVM does not virtualize CPUID (set leaf 1 ECX {:#010x}, guest saw "
            "{:#010x}): clearing CPU features on the guest command line "
            "(--cpuid-mitigation off to disable)",
            probe->set_ecx, probe->seen_ecx);
      }
    }
  }
  if (mitigate) {
    cmdline_ += " " + boot::cpuid_mitigation_cmdline();
    // The same hosts (nested PVM) leave a guest's user-mode SYSCALL half done
    // (docs/linux-boot.md); our default guest kernel completes it when told so.
    // Other kernels ignore the parameter.
    cmdline_ += " vmm.syscall_fixup";
    // Such hosts interpret guest kernel code (~1 MIPS): a guest without kvmclock
    // cannot calibrate its TSC against the PIT there and falls back to jiffies.
    // The VMM knows the rate; tell the kernel, and keep its clocksource watchdog
    // from declaring the TSC unstable because of the interpreter's jitter.
    if (tsc_khz) {
      uint64_t khz = uint64_t{tsc_khz} * cfg_.time_dilation;
      cmdline_ += fmt::format(" tsc_early_khz={} tsc=reliable", khz);
      if (cfg_.time_dilation > 1) {
        // The guest believes its TSC is N times faster than it is, so its clock,
        // and every timer it programs in TSC units, runs N times slower. kvmclock
        // would bypass that, so it is turned off.
        cmdline_ += " no-kvmclock";
        spdlog::info("time dilation {}: guest time runs {}x slower than the host's",
                     cfg_.time_dilation, cfg_.time_dilation);
      }
    }
  }

  cmdline_ += virtio_cmdline_;
  VMM_CHECK(boot::write_cmdline(mem_, cmdline_, boot::max_cmdline_len(info)));

  std::optional<boot::InitrdPlacement> initrd_at;
  if (!initrd.empty()) {
    VMM_TRY(auto placed,
            boot::load_initrd(mem_, initrd, info.load_end, boot::initrd_addr_max(info)));
    initrd_at = placed;
  }
  auto e820 = boot::build_e820(cfg_.mem_bytes);
  // Both CPU descriptions: the MP table for kernels without ACPI (our minimal
  // kernel), ACPI (MADT, FADT with power-off) for the rest, e.g. Debian's.
  VMM_CHECK(boot::write_mptable(mem_, cfg_.cpus));
  uint64_t rsdp = 0;
  if (cfg_.acpi) {
    std::vector<boot::AcpiMmioDevice> acpi_virtio;
    for (const auto& slot : virtio_)
      acpi_virtio.push_back({slot.base, static_cast<uint32_t>(layout::kVirtioMmioSize), slot.irq});
    VMM_TRY(auto addr, boot::write_acpi_tables(mem_, cfg_.cpus, acpi_virtio));
    rsdp = addr;
  }
  VMM_CHECK(boot::write_identity_page_tables(mem_));
  VMM_CHECK(boot::write_boot_gdt(mem_));

  entry_ = std::make_unique<BootEntry>();
  if (pvh) {
    VMM_CHECK(boot::write_pvh_start_info(mem_, layout::kCmdlineAddr, initrd_at, e820));
    if (rsdp) VMM_CHECK(boot::set_pvh_rsdp(mem_, rsdp));
    entry_->state = boot::pvh_entry_state(info.pvh_entry, layout::kPvhStartInfoAddr);
  } else {
    VMM_CHECK(boot::write_zero_page(mem_, info, cmdline_.size() + 1, initrd_at, e820));
    if (rsdp) VMM_CHECK(boot::set_zero_page_rsdp(mem_, rsdp));
    entry_->state = boot::long_mode_entry_state(info.entry, layout::kZeroPageAddr);
  }
  spdlog::info("kernel {} ({}, {} entry at {:#x}), {} MiB, {} vCPU(s){}", cfg_.kernel,
               info.kind == boot::KernelInfo::Kind::BzImage ? "bzImage" : "ELF",
               pvh ? "PVH" : "64-bit", pvh ? info.pvh_entry : info.entry, cfg_.mem_bytes >> 20,
               cfg_.cpus,
               initrd_at ? fmt::format(", initrd {} KiB at {:#x}", initrd_at->size >> 10,
                                       initrd_at->addr)
                         : std::string());
  spdlog::info("command line: {}", cmdline_);
  return ok();
}

Result<void> Vm::setup_vcpu(Vcpu& v, bool boot_cpu) {
  if (!supported_cpuid_) {  // one ioctl per VM, not per vCPU (~0.5 ms each here)
    VMM_TRY(auto t, kvm_.supported_cpuid());
    supported_cpuid_ = std::move(t);
  }
  const CpuidTable& supported = *supported_cpuid_;
  VMM_TRY(auto entries, boot::apply_cpu_template(from_kvm(supported), cfg_.cpu_template,
                                                 static_cast<uint32_t>(v.index),
                                                 static_cast<uint32_t>(cfg_.cpus)));
  auto table = to_kvm(entries);
  VMM_CHECK(v.fd.set_cpuid2(table));
  v.cpuid = table.entries();

  // Fast strings on; MTRRs enabled with write-back default type.
  const kvm_msr_entry msrs[] = {
      {0x1a0 /*IA32_MISC_ENABLE*/, 0, 1},
      {0x2ff /*MTRRdefType*/, 0, (1u << 11) | 6},
  };
  auto mr = v.fd.set_msrs(msrs);
  if (!mr.ok()) spdlog::debug("vCPU {}: {}", v.index, mr.error().to_string());

  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  VMM_CHECK(v.fd.set_fpu(fpu));

  // LAPIC: LINT0 = ExtINT (the PIC), LINT1 = NMI, as firmware leaves them.
  VMM_TRY(auto lapic, v.fd.get_lapic());
  auto set_lvt = [&lapic](size_t off, uint32_t mode) {
    uint32_t val;
    std::memcpy(&val, lapic.regs + off, 4);
    val = (val & ~0x700u & ~0x10000u) | (mode << 8);
    std::memcpy(lapic.regs + off, &val, 4);
  };
  set_lvt(0x350, 7);
  set_lvt(0x360, 4);
  VMM_CHECK(v.fd.set_lapic(lapic));

  if (!boot_cpu) return ok();  // APs wait for INIT/SIPI in the in-kernel LAPIC

  const auto& s = entry_->state;
  VMM_TRY(auto sregs, v.fd.get_sregs());
  sregs.cs = to_kvm(s.cs);
  sregs.ds = to_kvm(s.ds);
  sregs.es = to_kvm(s.es);
  sregs.fs = to_kvm(s.fs);
  sregs.gs = to_kvm(s.gs);
  sregs.ss = to_kvm(s.ss);
  sregs.tr = to_kvm(s.tr);
  sregs.ldt = to_kvm(s.ldt);
  sregs.gdt.base = s.gdt_base;
  sregs.gdt.limit = s.gdt_limit;
  sregs.idt.base = s.idt_base;
  sregs.idt.limit = s.idt_limit;
  sregs.cr0 = s.cr0;
  sregs.cr3 = s.cr3;
  sregs.cr4 = s.cr4;
  sregs.efer = s.efer;
  VMM_CHECK(v.fd.set_sregs(sregs));

  kvm_regs regs{};
  regs.rip = s.rip;
  regs.rsp = s.rsp;
  regs.rbp = s.rsp;
  regs.rsi = s.rsi;
  regs.rbx = s.rbx;
  regs.rflags = s.rflags;
  VMM_CHECK(v.fd.set_regs(regs));
  return ok();
}

void Vm::request_stop(ExitStatus status) {
  {
    std::lock_guard lk(stop_mu_);
    if (stop_) return;
    stop_ = std::move(status);
  }
  stopping_ = true;
  stop_cv_.notify_all();
  {
    std::lock_guard lk(pause_mu_);
    pause_cv_.notify_all();
  }
}

const char* Vm::state_name(RunState s) {
  switch (s) {
    case RunState::kCreated: return "created";
    case RunState::kRunning: return "running";
    case RunState::kPaused: return "paused";
    case RunState::kStopped: return "stopped";
  }
  return "?";
}

Vm::RunState Vm::state() const {
  std::lock_guard lk(pause_mu_);
  return run_state_;
}

Result<void> Vm::pause() {
  std::unique_lock lk(pause_mu_);
  if (run_state_ == RunState::kPaused) return ok();
  if (run_state_ != RunState::kRunning || stopping_)
    return make_error("the VM is {}", state_name(run_state_));
  auto t0 = std::chrono::steady_clock::now();
  pause_requested_ = true;
  auto running = [this] {
    int n = 0;
    for (auto& v : vcpus_) n += v->started && !v->exited;
    return n;
  };
  while (parked_ < running()) {
    lk.unlock();
    kick_all();
    lk.lock();
    pause_cv_.wait_for(lk, std::chrono::milliseconds(1));
    if (stopping_) return make_error("the VM stopped while pausing");
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(5)) {
      pause_requested_ = false;
      pause_cv_.notify_all();
      return make_error("vCPUs did not stop within 5 s; the VM keeps running");
    }
  }
  input_paused_ = true;
  for (auto& slot : virtio_) slot.device->pause();
  // Guest time stops with the guest (as QEMU does on stop/cont).
  auto clock = vm_.get_clock();
  if (clock.ok()) {
    paused_clock_ = *clock;
  } else {
    paused_clock_.reset();
    spdlog::warn("pause: KVM_GET_CLOCK: {}; guest time will include the pause",
                 clock.error().to_string());
  }
  run_state_ = RunState::kPaused;
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("paused ({:.2f} ms)", ms);
  return ok();
}

Result<void> Vm::resume() {
  std::unique_lock lk(pause_mu_);
  if (run_state_ == RunState::kRunning) return ok();
  if (run_state_ != RunState::kPaused) return make_error("the VM is {}", state_name(run_state_));
  if (paused_clock_) {
    kvm_clock_data c{};
    c.clock = paused_clock_->clock;  // flags 0: the value as it was, no realtime catch-up
    auto r = vm_.set_clock(c);
    if (!r.ok()) spdlog::warn("resume: KVM_SET_CLOCK: {}", r.error().to_string());
    paused_clock_.reset();
  }
  for (auto& slot : virtio_) slot.device->resume();
  input_paused_ = false;
  pause_requested_ = false;
  run_state_ = RunState::kRunning;
  pause_cv_.notify_all();
  spdlog::info("resumed");
  return ok();
}

void Vm::park(Vcpu& v) {
  // KVM completes a pending PIO/MMIO instruction at the start of the next
  // KVM_RUN, before it looks at immediate_exit: this run finishes it and
  // returns at once, so the parked vCPU sits on an instruction boundary.
  v.fd.run()->immediate_exit = 1;
  (void)v.fd.run_once();
  v.fd.run()->immediate_exit = 0;
  std::unique_lock lk(pause_mu_);
  ++parked_;
  pause_cv_.notify_all();
  pause_cv_.wait(lk, [this] { return !pause_requested_ || stopping_; });
  --parked_;
}

Result<nlohmann::json> Vm::handle_api(const std::string& cmd, const nlohmann::json& req) {
  if (cmd == "status") {
    nlohmann::json devs = nlohmann::json::array();
    for (size_t i = 0; i < virtio_.size(); ++i) {
      const auto& s = virtio_[i];
      devs.push_back({{"slot", i},
                      {"name", s.device->name()},
                      {"mmio_base", s.base},
                      {"irq", s.irq},
                      {"active", s.device->active()},
                      {"needs_reset", s.device->broken()}});
    }
    // kvmclock as the guest sees it (frozen while paused).
    nlohmann::json guest_clock = nullptr;
    {
      std::lock_guard lk(pause_mu_);
      if (paused_clock_) guest_clock = paused_clock_->clock;
    }
    if (guest_clock.is_null())
      if (auto c = vm_.get_clock(); c.ok()) guest_clock = c->clock;
    return nlohmann::json{{"state", state_name(state())},
                          {"uptime_ms", ms_since_start()},
                          {"guest_clock_ns", guest_clock},
                          {"tsc_restored", tsc_restored_ ? nlohmann::json(*tsc_restored_)
                                                         : nlohmann::json(nullptr)},
                          {"vcpus", cfg_.cpus},
                          {"mem_bytes", cfg_.mem_bytes},
                          {"kernel", cfg_.kernel},
                          {"cmdline", cmdline_},
                          {"virtio", devs},
                          {"migration", migration_ ? migration_->status()
                                                   : nlohmann::json{{"state", "none"}}}};
  }
  // The migration thread pauses and resumes the VM itself; a user's
  // pause/resume/snapshot in the middle would break its final phase.
  if ((cmd == "pause" || cmd == "resume" || cmd == "snapshot-create") && migration_ &&
      migration_->active())
    return make_error("a migration is running (migrate-cancel stops it)");
  if (cmd == "pause") {
    VMM_CHECK(pause());
    if (api_) api_->emit("paused");
    return nlohmann::json::object();
  }
  if (cmd == "resume") {
    VMM_CHECK(resume());
    if (api_) api_->emit("resumed");
    return nlohmann::json::object();
  }
  if (cmd == "snapshot-create") {
    if (!req.contains("dir") || !req["dir"].is_string())
      return make_error("snapshot-create needs \"dir\": a directory path");
    VMM_TRY(auto summary, snapshot_create(req["dir"].get<std::string>()));
    if (api_) api_->emit("snapshot-done", summary);
    return summary;
  }
  if (cmd == "migrate") {
    VMM_TRY(auto opts, parse_migrate_request(req));
    if (!migration_) migration_ = std::make_unique<MigrationSource>(*this);
    VMM_CHECK(migration_->start(opts));
    return nlohmann::json{{"started", true}, {"uri", opts.uri}};
  }
  if (cmd == "migrate-cancel") {
    if (!migration_ || !migration_->cancel()) return make_error("no migration is running");
    return nlohmann::json::object();
  }
  if (cmd == "shutdown") {
    request_stop({kExitOk, "shutdown requested on the control socket"});
    return nlohmann::json::object();
  }
  return make_error(
      "unknown command '{}' (status, pause, resume, snapshot-create, migrate, migrate-cancel, "
      "shutdown)",
      cmd);
}

snapshot::StateHeader Vm::state_header() const {
  snapshot::StateHeader header;
  header.vmm_version = "vmm 0.1";
  header.cpu_template = cfg_.cpu_template;
  header.created_unix = static_cast<uint64_t>(::time(nullptr));
  header.config = encode_machine_spec(machine_spec());
  return header;
}

Result<snapshot::Section> Vm::save_state_tree() {
  if (state() != RunState::kPaused) return make_error("saving state needs a paused VM");
  snapshot::Section tree;
  VMM_CHECK(save_vm_state(vm_, tree.add_section("vm")));
  VMM_TRY(auto msr_list, kvm_.msr_index_list());
  for (auto& v : vcpus_) {
    auto& sec = tree.add_section(fmt::format("vcpu{}", v->index));
    VMM_CHECK(save_vcpu_state(v->fd, msr_list, sec));
    sec.put_pod_array("cpuid", std::span<const kvm_cpuid_entry2>(v->cpuid));
  }
  serial_->save_section(tree.add_section("serial0"));
  i8042_->save_section(tree.add_section("i8042"));
  probe_->save_section(tree.add_section("boot_probe"));
  if (acpi_pm_) acpi_pm_->save_section(tree.add_section("acpi_pm"));
  for (size_t i = 0; i < virtio_.size(); ++i)
    VMM_CHECK(virtio_[i].transport->save_section(tree.add_section(fmt::format("virtio{}", i))));
  return tree;
}

Result<bool> Vm::start_dirty_log() {
  if (!manual_dirty_log_) {
    VMM_TRY(bool m, vm_.enable_manual_dirty_log_protect());
    manual_dirty_log_ = m;
  }
  bool manual = *manual_dirty_log_;
  mem_.set_dirty_tracking(true);
  uint32_t slot = 0;
  for (const auto& r : mem_.regions())
    VMM_CHECK(vm_.set_user_memory_region(slot++, r.start, r.size(), r.host(),
                                         KVM_MEM_LOG_DIRTY_PAGES));
  return manual;
}

void Vm::stop_dirty_log() {
  uint32_t slot = 0;
  for (const auto& r : mem_.regions()) {
    auto res = vm_.set_user_memory_region(slot++, r.start, r.size(), r.host());
    if (!res.ok()) spdlog::warn("dirty log off: {}", res.error().to_string());
  }
  mem_.set_dirty_tracking(false);
}

Result<void> Vm::harvest_dirty(std::vector<std::vector<uint64_t>>& out) {
  bool manual = manual_dirty_log_.value_or(false);
  const auto& regions = mem_.regions();
  out.resize(regions.size());
  std::vector<uint64_t> kvm_bits;
  for (size_t i = 0; i < regions.size(); ++i) {
    uint64_t pages = regions[i].pages();
    size_t words = (pages + 63) / 64;
    out[i].resize(words, 0);
    kvm_bits.assign(words, 0);
    VMM_CHECK(vm_.get_dirty_log(static_cast<uint32_t>(i), kvm_bits));
    if (manual) {
      // Re-protect what we are about to send, before sending it: a write
      // after this point is logged again.
      for (size_t w = 0; w < words; w += 64 * 1024) {  // 4M pages per call
        size_t n = std::min<size_t>(words - w, 64 * 1024);
        bool any = false;
        for (size_t k = w; k < w + n && !any; ++k) any = kvm_bits[k] != 0;
        if (!any) continue;
        uint32_t np = static_cast<uint32_t>(std::min<uint64_t>(pages - w * 64, n * 64));
        VMM_CHECK(vm_.clear_dirty_log(static_cast<uint32_t>(i), w * 64, np,
                                      std::span<uint64_t>(kvm_bits).subspan(w, n)));
      }
    }
    for (size_t w = 0; w < words; ++w) out[i][w] |= kvm_bits[w];
    mem_.take_dirty(i, out[i]);
  }
  return ok();
}

void Vm::check_tsc_restored(const snapshot::Section& vcpu0) {
  // Some hosts (this project's nested PVM one) keep the guest TSC equal to
  // the host's whatever KVM_SET_MSRS says: a guest whose clocksource is the
  // TSC then sees the time between snapshot and restore (kvmclock does not).
  auto saved = vcpu0.get_pod_array<kvm_msr_entry>("msrs", 4096);
  if (!saved.ok()) return;
  uint64_t want = 0;
  for (const auto& e : *saved)
    if (e.index == 0x10) want = e.data;
  const uint32_t idx[] = {0x10};
  auto now = vcpus_[0]->fd.get_msrs(idx);
  auto khz = vcpus_[0]->fd.get_tsc_khz();
  if (!want || !now.ok() || now->empty() || !khz.ok() || *khz == 0) return;
  double ahead_s = (static_cast<double>((*now)[0].data) - static_cast<double>(want)) /
                   (static_cast<double>(*khz) * 1000.0);
  tsc_restored_ = ahead_s > -1.0 && ahead_s < 1.0;
  if (!tsc_restored_)
    spdlog::warn("this host did not take the saved TSC (the guest's TSC is {:.1f} s ahead of it): "
                 "a guest keeping time with the TSC sees the time since the snapshot; kvmclock "
                 "time does not",
                 ahead_s);
}

Result<nlohmann::json> Vm::snapshot_create(const std::string& dir_path) {
  VMM_TRY(auto dir, snapshot::SnapshotDir::create(dir_path));
  bool was_running = state() == RunState::kRunning;
  auto t0 = std::chrono::steady_clock::now();
  if (auto p = pause(); !p.ok()) {
    dir.remove_created();
    return p.error();
  }
  auto since = [&] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
        .count();
  };
  double paused_ms = since();
  auto result = [&]() -> Result<nlohmann::json> {
    VMM_TRY(auto tree, save_state_tree());
    snapshot::StateHeader header = state_header();
    double state_ms = since();
    std::string mem_path = dir_path + "/" + snapshot::kMemoryFileName;
    VMM_TRY(auto mem_fd, dir.create_file(snapshot::kMemoryFileName));
    VMM_TRY(uint64_t mem_written, write_memory_file(mem_, mem_fd.get(), mem_path));
    double mem_ms = since();
    VMM_CHECK(snapshot::write_state_file_at(dir.fd(), snapshot::kStateFileName, header, tree,
                                            dir_path + "/" + snapshot::kStateFileName));
    dir.note_created(snapshot::kStateFileName);
    return nlohmann::json{{"dir", dir_path},
                          {"memory_bytes", mem_.total_size()},
                          {"memory_data_bytes", mem_written},
                          {"pause_ms", paused_ms},
                          {"state_ms", state_ms - paused_ms},
                          {"memory_ms", mem_ms - state_ms},
                          {"total_ms", since()}};
  }();
  if (!result.ok()) dir.remove_created();  // no half snapshot left behind
  if (was_running) {
    auto r = resume();
    if (!r.ok()) spdlog::error("snapshot: resume failed: {}", r.error().to_string());
  }
  if (result.ok()) spdlog::info("snapshot written to {} ({:.1f} ms)", dir_path, since());
  return result;
}

void Vm::adopt_api(std::unique_ptr<ApiServer> api) {
  if (!api) return;
  api_ = std::move(api);
  api_->set_handler(
      [this](const std::string& cmd, const nlohmann::json& req) { return handle_api(cmd, req); });
}

void Vm::kick_all() {
  for (auto& v : vcpus_)
    if (v->started) pthread_kill(v->tid, kKickSignal);
}

ExitStatus Vm::run() {
  struct sigaction sa {};
  sa.sa_handler = kick_handler;
  sigemptyset(&sa.sa_mask);
  ::sigaction(kKickSignal, &sa, nullptr);

  // SIGINT/SIGTERM/SIGHUP end the VM cleanly; they are handled by one thread.
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGINT);
  sigaddset(&term, SIGTERM);
  sigaddset(&term, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);
  std::thread signal_thread([this, term] {
    int sig = 0;
    if (sigwait(&term, &sig) == 0)
      request_stop({128 + sig, fmt::format("terminated by signal {}", sig)});
  });

  if (cfg_.serial == SerialMode::kStdio) {
    console_in_ = std::make_unique<ConsoleInput>(
        STDIN_FILENO,
        [this](std::span<const uint8_t> b) -> size_t {
          return input_paused_ ? 0 : serial_->enqueue_input(b);
        },
        [this] { request_stop({kExitOk, "quit from the console (Ctrl-A x)"}); });
    auto r = console_in_->start();
    if (!r.ok()) spdlog::warn("console input: {}", r.error().to_string());
  }

  if (!cfg_.api_socket.empty() && !api_) {
    auto api = ApiServer::start(cfg_.api_socket, [this](const std::string& cmd,
                                                        const nlohmann::json& req) {
      return handle_api(cmd, req);
    });
    if (!api.ok()) {
      request_stop({kExitVmmError, api.error().to_string()});
    } else {
      api_ = std::move(*api);
      spdlog::info("control socket at {}", cfg_.api_socket);
    }
  }

  spdlog::debug("starting vCPUs at {:.1f} ms since VMM start", ms_since_start());
  {
    std::lock_guard lk(pause_mu_);
    run_state_ = RunState::kRunning;
  }
  for (auto& v : vcpus_) {
    Vcpu* vp = v.get();
    v->thread = std::thread([this, vp] { vcpu_loop(*vp); });
  }

  const auto sample_period = std::chrono::milliseconds(cfg_.sample_rip_ms);
  auto next_sample = std::chrono::steady_clock::now() + sample_period;
  auto next_report = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  {
    std::unique_lock lk(stop_mu_);
    while (!stop_) {
      // Sleep until a stop request, or the next sample or panic deadline.
      auto wake = std::chrono::steady_clock::time_point::max();
      if (cfg_.sample_rip_ms) wake = std::min(wake, next_sample);
      if (panic_deadline_) wake = std::min(wake, *panic_deadline_);
      if (wake == std::chrono::steady_clock::time_point::max())
        stop_cv_.wait(lk);
      else
        stop_cv_.wait_until(lk, wake);
      if (stop_) break;
      auto now = std::chrono::steady_clock::now();
      if (panic_deadline_ && now >= *panic_deadline_) {
        lk.unlock();
        request_stop({kExitGuestCrash, "guest kernel panic: " + panic_reason_});
        lk.lock();
        break;
      }
      if (cfg_.sample_rip_ms && now >= next_sample) {
        next_sample = now + sample_period;
        lk.unlock();
        for (auto& v : vcpus_) {
          if (!v->started) continue;
          v->sample_requested = true;
          pthread_kill(v->tid, kKickSignal);
        }
        if (now >= next_report) {
          report_samples(false);
          next_report = now + std::chrono::seconds(10);
        }
        lk.lock();
      }
    }
  }

  // A migration still running (the guest stopped under it) ends first: it
  // pauses/resumes vCPUs and reads guest memory.
  stopping_ = true;
  if (migration_) {
    migration_->abort();
    migration_->join();
  }
  // Stop every vCPU: kick until each has left KVM_RUN (a kick that lands just
  // before KVM_RUN is caught by immediate_exit; repeat anyway, it is cheap).
  {
    std::lock_guard lk(pause_mu_);
    run_state_ = RunState::kStopped;
    pause_cv_.notify_all();
  }
  for (auto& v : vcpus_) {
    while (!v->exited) {
      if (v->started) pthread_kill(v->tid, kKickSignal);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    v->thread.join();
  }
  if (console_in_) console_in_->stop();
  // Wake the signal thread; the stop status is already set, so this changes nothing.
  pthread_kill(signal_thread.native_handle(), SIGHUP);
  signal_thread.join();

  uint64_t int3 = 0, fwait = 0;
  for (auto& v : vcpus_) {
    int3 += v->fallbacks_int3;
    fwait += v->fallbacks_fwait;
  }
  if (int3 || fwait)
    spdlog::info("emulation fallbacks: int3 {} fwait {}", int3, fwait);
  if (cfg_.sample_rip_ms) report_samples(true);
  ExitStatus result;
  {
    std::lock_guard lk(stop_mu_);
    result = *stop_;
  }
  if (api_) {
    api_->emit("guest-shutdown", {{"exit_code", result.code}, {"reason", result.reason}});
    // Give connected clients a moment to read the event before the socket goes.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    api_.reset();
  }
  return result;
}

void Vm::vcpu_loop(Vcpu& v) {
  tls_run = v.fd.run();
  v.tid = pthread_self();
  v.started = true;
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, kKickSignal);
  pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);

  if (v.index == 0) spdlog::debug("vCPU 0 entering the guest at {:.1f} ms", ms_since_start());
  while (!stopping_) {
    if (pause_requested_.load()) {
      park(v);
      continue;
    }
    int err = v.fd.run_once();
    if (err == EINTR || err == EAGAIN) {
      v.fd.run()->immediate_exit = 0;
      if (v.sample_requested.exchange(false)) sample_rip(v);
      continue;
    }
    if (err) {
      request_stop({kExitVmmError, fmt::format("vCPU {}: KVM_RUN failed: {}", v.index,
                                               std::strerror(err))});
      break;
    }
    if (!handle_exit(v)) break;
  }
  tls_run = nullptr;
  v.exited = true;
}

bool Vm::handle_exit(Vcpu& v) {
  kvm_run* run = v.fd.run();
  switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      auto* base = reinterpret_cast<uint8_t*>(run);
      uint8_t size = run->io.size;
      for (uint32_t i = 0; i < run->io.count; ++i) {
        std::span<uint8_t> data(base + run->io.data_offset + uint64_t{i} * size, size);
        if (run->io.direction == KVM_EXIT_IO_OUT) {
          pio_.write(run->io.port, data);
        } else if (!pio_.read(run->io.port, data)) {
          std::fill(data.begin(), data.end(), 0xff);  // nothing there: floating bus
        }
      }
      return true;
    }
    case KVM_EXIT_MMIO: {
      std::span<uint8_t> data(run->mmio.data, std::min<uint32_t>(run->mmio.len, 8));
      if (run->mmio.is_write) {
        mmio_.write(run->mmio.phys_addr, data);
      } else if (!mmio_.read(run->mmio.phys_addr, data)) {
        std::fill(data.begin(), data.end(), 0);
      }
      return true;
    }
    case KVM_EXIT_INTERNAL_ERROR:
      if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION) return handle_emulation_failure(v);
      request_stop({kExitGuestCrash, fmt::format("vCPU {}: KVM internal error, suberror {}",
                                                 v.index, run->internal.suberror)});
      return false;
    case KVM_EXIT_SHUTDOWN: {
      auto regs = v.fd.get_regs();
      auto sregs = v.fd.get_sregs();
      request_stop({kExitGuestCrash, triple_fault_reason(v.index, regs.ok() ? &*regs : nullptr,
                                                         sregs.ok() ? &*sregs : nullptr)});
      return false;
    }
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
          request_stop({kExitOk, "guest shut down"});
          break;
        case KVM_SYSTEM_EVENT_RESET:
          request_stop({kExitOk, "guest reset"});
          break;
        default:
          request_stop({kExitGuestCrash,
                        fmt::format("guest system event {}", run->system_event.type)});
      }
      return false;
    case KVM_EXIT_HLT:
      request_stop({kExitOk, "guest halted"});
      return false;
    case KVM_EXIT_FAIL_ENTRY:
      request_stop({kExitVmmError,
                    fmt::format("vCPU {}: entry failed, hardware reason {:#x}", v.index,
                                run->fail_entry.hardware_entry_failure_reason)});
      return false;
    case KVM_EXIT_INTR:
      return true;
    default:
      request_stop({kExitVmmError,
                    fmt::format("vCPU {}: unexpected KVM exit reason {}", v.index,
                                run->exit_reason)});
      return false;
  }
}

bool Vm::handle_emulation_failure(Vcpu& v) {
  auto regs = v.fd.get_regs();
  auto sregs = v.fd.get_sregs();
  if (!regs.ok() || !sregs.ok()) {
    request_stop({kExitVmmError, "emulation failure, and the vCPU state is unreadable"});
    return false;
  }
  // Instruction bytes at rip, page by page through the guest's own page tables.
  bool long_mode = sregs->efer & (1u << 10);
  uint64_t linear = long_mode ? regs->rip : sregs->cs.base + regs->rip;
  uint8_t bytes[15];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    uint64_t va = linear + got;
    auto pa = v.fd.translate(va);
    if (!pa.ok()) break;
    size_t chunk = std::min<uint64_t>(sizeof(bytes) - got, 0x1000 - (va & 0xfff));
    if (!mem_.read(*pa, std::span(bytes + got, chunk)).ok()) break;
    got += chunk;
  }
  std::span<const uint8_t> insn(bytes, got);
  auto d = decide_emulation_fallback(insn);
  if (d.action == FallbackAction::kFatal) {
    std::string where = symbols_ ? " (" + symbols_->symbolize(regs->rip) + ")" : "";
    request_stop({kExitGuestCrash,
                  fmt::format("vCPU {}: the host cannot emulate the instruction at rip {:#x}{}: "
                              "bytes [{}]",
                              v.index, regs->rip, where, format_insn_bytes(insn))});
    return false;
  }
  kvm_regs r = *regs;
  r.rip += d.length;
  if (!v.fd.set_regs(r).ok()) {
    request_stop({kExitVmmError, "emulation fallback: KVM_SET_REGS failed"});
    return false;
  }
  if (d.action == FallbackAction::kInjectBreakpoint) {
    auto ev = v.fd.get_vcpu_events();
    if (!ev.ok()) {
      request_stop({kExitVmmError, "emulation fallback: KVM_GET_VCPU_EVENTS failed"});
      return false;
    }
    kvm_vcpu_events e = *ev;
    e.exception.injected = 1;
    e.exception.nr = 3;  // #BP
    e.exception.has_error_code = 0;
    e.exception.error_code = 0;
    e.flags = 0;
    if (!v.fd.set_vcpu_events(e).ok()) {
      request_stop({kExitVmmError, "emulation fallback: KVM_SET_VCPU_EVENTS failed"});
      return false;
    }
    ++v.fallbacks_int3;
  } else {
    ++v.fallbacks_fwait;
  }
  spdlog::trace("vCPU {}: emulated {} at {:#x}", v.index, d.mnemonic, regs->rip);
  return true;
}

void Vm::sample_rip(Vcpu& v) {
  auto regs = v.fd.get_regs();
  if (!regs.ok()) return;
  std::string fn = symbols_ ? symbols_->function(regs->rip) : fmt::format("{:#x}", regs->rip);
  std::lock_guard lk(sample_mu_);
  ++samples_total_[fn];
  ++samples_window_[fn];
  ++sample_count_;
}

void Vm::report_samples(bool final_report) {
  std::lock_guard lk(sample_mu_);
  auto& m = final_report ? samples_total_ : samples_window_;
  std::vector<std::pair<uint64_t, std::string>> top;
  uint64_t total = 0;
  for (auto& [k, n] : m) {
    top.emplace_back(n, k);
    total += n;
  }
  std::sort(top.rbegin(), top.rend());
  std::string line;
  for (size_t i = 0; i < top.size() && i < (final_report ? 25u : 6u); ++i)
    line += fmt::format("{}{} {:.0f}%", i ? ", " : "", top[i].second,
                        100.0 * static_cast<double>(top[i].first) / static_cast<double>(total));
  if (total)
    spdlog::info("rip samples ({}{} samples): {}", final_report ? "whole run, " : "last 10 s, ",
                 total, line);
  if (!final_report) samples_window_.clear();
}

}  // namespace vmm
