// Vm: one guest. Builds everything from a VmConfig (files are checked before
// any KVM object exists), runs one thread per vCPU, dispatches exits to the
// buses, and ends with an exit status that scripts can rely on (docs/cli.md).
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "boot/x86_64/kernel_loader.h"
#include <nlohmann/json.hpp>

#include "devices/bus.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/worker_device.h"
#include "vmm/core/config.h"
#include "vmm/core/console.h"
#include "vmm/core/machine_spec.h"
#include "vmm/core/symbols.h"
#include "vmm/kvm/kvm.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/snapshot/state_file.h"

namespace vmm {

class Serial16550;
class I8042;
class BootProbe;
class AcpiPm;
class ApiServer;

// Process exit codes (documented in docs/cli.md).
enum ExitCode : int {
  kExitOk = 0,          // guest powered off / reset / Ctrl-A x
  kExitVmmError = 1,    // VMM failure (setup, KVM, I/O)
  kExitUsage = 2,       // bad command line or input files
  kExitGuestCrash = 3,  // guest panic, triple fault, unhandled emulation failure
};

struct ExitStatus {
  int code;
  std::string reason;
};

// The user's files, read and checked before any VM exists. The kernel is
// already loaded into the guest memory the VM will map.
struct VmInputs {
  GuestMemory mem;
  boot::KernelInfo kernel;
  std::vector<uint8_t> initrd;
  std::optional<SymbolMap> symbols;
  // virtio devices in slot order (backends already open: disks, TAPs).
  std::vector<std::shared_ptr<virtio::WorkerDevice>> virtio_devices;
};

class Vm {
 public:
  // Input validation only: an error here is a usage error (exit code 2).
  static Result<VmInputs> prepare(const VmConfig& cfg);
  // Builds the VM: an error here is a VMM/KVM failure (exit code 1).
  static Result<std::unique_ptr<Vm>> create(const VmConfig& cfg, VmInputs inputs);
  // Builds the VM from a snapshot directory (snapshot_create): its memory
  // file mapped MAP_PRIVATE (or copied), every vCPU, VM-wide and device
  // state restored. The guest's machine (memory, vCPUs, ACPI, rng, CPU
  // template, disk sizes/serials/read-only flags, MACs) comes from the
  // snapshot; every host resource (disk files, TAPs) from user_cfg's
  // --disk/--net, checked against it (open_devices_like), with the rest
  // (serial, socket, logs). Errors are exit code 2.
  static Result<std::unique_ptr<Vm>> restore(const VmConfig& user_cfg, const std::string& dir,
                                             bool copy_memory);
  ~Vm();

  // Runs the guest to its end; returns the process exit status.
  ExitStatus run();

  // First request wins. Safe from any thread.
  void request_stop(ExitStatus status);

  // Pause: every vCPU leaves KVM_RUN at an instruction boundary (a pending
  // PIO/MMIO read is completed first) and parks; virtio workers finish the
  // request in progress and stop; serial input waits. Blocks until all of
  // that is true (or fails after 5 s and leaves the VM running). Resume
  // undoes it. Both are idempotent and safe from any thread while run() runs.
  Result<void> pause();
  Result<void> resume();
  // Writes DIR/state (vCPUs, VM-wide KVM state, devices; docs/snapshot-format.md)
  // and DIR/memory (guest RAM, sparse) into a new or empty directory DIR
  // (snapshot::SnapshotDir: no planted link is followed). Pauses the VM for the duration if it
  // is running and resumes it afterwards. Returns a summary for the API.
  Result<nlohmann::json> snapshot_create(const std::string& dir);
  // ---- Shared by snapshot and migration (one serializer).
  // Every vCPU, VM-wide KVM state and device model; the VM must be paused.
  Result<snapshot::Section> save_state_tree();
  snapshot::StateHeader state_header() const;
  // Builds a VM from a decoded state file and guest memory that already
  // holds (or will hold) the guest's RAM, in two steps, so that a migration
  // destination can build the VM (KVM VM, memory slots, devices, vCPUs with
  // their CPUID) while pages arrive and apply the state at the end; restore()
  // does both at once. cfg is the VM's own configuration (the saved one must
  // match it: apply_state checks). `devices` come from open_devices_like.
  static Result<std::unique_ptr<Vm>> prepare_restore(
      const VmConfig& cfg, GuestMemory mem,
      std::vector<std::shared_ptr<virtio::WorkerDevice>> devices);
  // Restore and incoming: cfg takes the saved machine's shape, opens the
  // command line's disks/TAPs (and nothing else), and refuses them unless
  // they give the machine `saved` describes (adopt/compare_machine_specs).
  static Result<std::vector<std::shared_ptr<virtio::WorkerDevice>>> open_devices_like(
      const MachineSpec& saved, VmConfig& cfg, const char* saved_by);
  // What the guest sees of this VM: the snapshot header's and migration
  // Hello's configuration fingerprint.
  MachineSpec machine_spec() const;
  Result<void> apply_state(const snapshot::StateFile& file);

  // ---- Dirty page tracking for live migration (vmm/core/migration.cc).
  // Turns on KVM dirty logging on every memory slot (with manual protect
  // when the host has it; returned) and GuestMemory's tracking of the
  // VMM's own writes.
  Result<bool> start_dirty_log();
  void stop_dirty_log();
  // ORs the pages dirtied since the last harvest (or since start) into
  // out[region] (one bit per page, sized to each region) and re-protects them.
  Result<void> harvest_dirty(std::vector<std::vector<uint64_t>>& out);
  const GuestMemory& memory() const { return mem_; }
  const VmConfig& config() const { return cfg_; }
  ApiServer* api() const { return api_.get(); }
  // Takes over a control socket that is already serving (--incoming starts
  // it before the VM exists): from now on this VM answers it.
  void adopt_api(std::unique_ptr<ApiServer> api);

  enum class RunState { kCreated, kRunning, kPaused, kStopped };
  RunState state() const;
  static const char* state_name(RunState s);

  const std::string& effective_cmdline() const { return cmdline_; }

 private:
  struct Vcpu {
    int index;
    VcpuFd fd;
    std::thread thread;
    pthread_t tid{};
    std::atomic<bool> started{false};
    std::atomic<bool> exited{false};
    std::atomic<bool> sample_requested{false};
    uint64_t fallbacks_int3 = 0, fallbacks_fwait = 0;
    std::vector<kvm_cpuid_entry2> cpuid;  // as given to KVM by setup_vcpu
    Vcpu(int i, VcpuFd f) : index(i), fd(std::move(f)) {}
  };

  Vm(const VmConfig& cfg, KvmSystem kvm, VmFd vm, GuestMemory mem);
  // What create() and restore() share: KVM VM with irqchip/PIT, memory slots,
  // legacy devices and the virtio slots; no vCPUs yet.
  static Result<std::unique_ptr<Vm>> build(
      const VmConfig& cfg, GuestMemory mem,
      std::vector<std::shared_ptr<virtio::WorkerDevice>> devices);
  Result<void> setup_devices();
  Result<void> setup_virtio(std::vector<std::shared_ptr<virtio::WorkerDevice>> devices);
  // Everything after the kernel image: command line, initrd, firmware tables,
  // boot parameters and the boot CPU's entry state.
  Result<void> load_guest(const boot::KernelInfo& kernel, const std::vector<uint8_t>& initrd);
  Result<void> setup_vcpu(Vcpu& v, bool boot_cpu);
  void vcpu_loop(Vcpu& v);
  // Returns false when the vCPU must stop.
  bool handle_exit(Vcpu& v);
  bool handle_emulation_failure(Vcpu& v);
  void sample_rip(Vcpu& v);
  void kick_all();
  void park(Vcpu& v);
  Result<nlohmann::json> handle_api(const std::string& cmd, const nlohmann::json& req);
  double ms_since_start() const;
  void report_samples(bool final_report);

  VmConfig cfg_;
  KvmSystem kvm_;
  VmFd vm_;
  GuestMemory mem_;
  IoBus pio_, mmio_;
  std::shared_ptr<Serial16550> serial_;
  std::shared_ptr<I8042> i8042_;
  std::shared_ptr<BootProbe> probe_;
  std::shared_ptr<AcpiPm> acpi_pm_;
  std::unique_ptr<SerialOutput> serial_out_;
  std::unique_ptr<ConsoleInput> console_in_;
  struct VirtioSlot {
    std::shared_ptr<virtio::WorkerDevice> device;
    std::shared_ptr<virtio::MmioTransport> transport;
    uint64_t base = 0;
    uint32_t irq = 0;
  };
  std::vector<VirtioSlot> virtio_;
  std::string virtio_cmdline_;  // " virtio_mmio.device=..." for each slot
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::string cmdline_;
  // boot entry state is computed in load_guest and applied to vCPU 0
  struct BootEntry;
  std::unique_ptr<BootEntry> entry_;

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::optional<ExitStatus> stop_;
  std::atomic<bool> stopping_{false};
  std::optional<std::chrono::steady_clock::time_point> panic_deadline_;
  std::string panic_reason_;

  // Pause machinery (see pause()).
  mutable std::mutex pause_mu_;
  std::condition_variable pause_cv_;
  std::atomic<bool> pause_requested_{false};
  std::atomic<bool> input_paused_{false};
  int parked_ = 0;  // vCPUs parked, pause_mu_
  RunState run_state_ = RunState::kCreated;  // pause_mu_
  // kvmclock when the VM paused, set back on resume so guest time does not
  // include the pause (pause_mu_).
  std::optional<kvm_clock_data> paused_clock_;
  std::optional<bool> manual_dirty_log_;
  std::optional<CpuidTable> supported_cpuid_;
  // After a restore: whether KVM kept the saved guest TSC (null otherwise).
  std::optional<bool> tsc_restored_;
  void check_tsc_restored(const snapshot::Section& vcpu0);  // KVM_GET_SUPPORTED_CPUID, asked once  // checked/enabled once by start_dirty_log
  std::unique_ptr<class MigrationSource> migration_;
  std::unique_ptr<ApiServer> api_;

  std::mutex sample_mu_;
  std::map<std::string, uint64_t> samples_total_, samples_window_;
  uint64_t sample_count_ = 0;
  std::optional<SymbolMap> symbols_;
};

// Time origin for "since process start" logs.
std::chrono::steady_clock::time_point process_start_time();

}  // namespace vmm
