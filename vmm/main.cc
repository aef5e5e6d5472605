// vmm: boot a Linux kernel (bzImage or ELF vmlinux) or a test guest under KVM.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "vmm/api/api_server.h"
#include "vmm/base/log.h"
#include "vmm/core/config.h"
#include "vmm/core/migration.h"
#include "vmm/migration/protocol.h"
#include "vmm/core/vm.h"

namespace {

constexpr const char* kDescription = R"(vmm - a small KVM virtual machine monitor

Boots a Linux kernel (bzImage, or ELF vmlinux via the 64-bit or PVH entry) with
an optional initrd on a 16550 serial console (COM1, ttyS0). On a terminal the
console is raw: type to the guest; Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A.

EXIT STATUS
  0   the guest powered off, rebooted, or the user quit (Ctrl-A x)
  1   the VMM failed (KVM error, I/O error)
  2   bad command line, or a missing/garbled kernel or initrd (no VM was made)
  3   the guest crashed: kernel panic, triple fault, or an instruction the
      host cannot emulate (the reason is printed on one line)
  N   the guest wrote N to the boot probe's exit register (port 0x4f4)
  128+S  the VMM was terminated by signal S

EXAMPLES
  vmm --kernel bzImage --initrd initrd.img --mem 512M
  vmm --kernel vmlinux --initrd initrd.cpio --cpus 2 --serial file:console.log
  vmm --kernel vmlinux --initrd initrd.cpio --disk path=rootfs.ext4 --net tap=tap0 --rng
)";

// Runs the VM, tears it down, logs how it ended, and returns the exit code.
int run_to_end(std::unique_ptr<vmm::Vm> vm) {
  vmm::ExitStatus st = vm->run();
  vm.reset();
  if (st.code == 0) spdlog::info("{}", st.reason);
  else spdlog::error("{} (exit code {})", st.reason, st.code);
  return st.code;
}

// --incoming: the control socket serves from the start (status with the
// migration's progress, migrate-cancel), then passes to the VM it built.
int run_incoming(const vmm::VmConfig& cfg, const vmm::IncomingOptions& opts) {
  std::unique_ptr<vmm::ApiServer> api;
  vmm::IncomingMigration incoming([&api](const std::string& event, nlohmann::json fields) {
    if (api) api->emit(event, std::move(fields));
  });
  if (!cfg.api_socket.empty()) {
    auto started = vmm::ApiServer::start(
        cfg.api_socket,
        [&incoming](const std::string& cmd, const nlohmann::json& req) {
          return incoming.handle_api(cmd, req);
        });
    if (!started.ok()) {
      spdlog::error("{}", started.error().to_string());
      return vmm::kExitVmmError;
    }
    api = std::move(*started);
    spdlog::info("control socket at {}", cfg.api_socket);
  }
  auto vm = incoming.run(cfg, opts);
  if (!vm.ok()) {
    spdlog::error("{}", vm.error().to_string());
    if (api) std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let clients read
    api.reset();  // its handler refers to `incoming`
    return vmm::kExitVmmError;
  }
  (*vm)->adopt_api(std::move(api));
  return run_to_end(std::move(*vm));
}

}  // namespace

int main(int argc, char** argv) {
  vmm::VmConfig cfg;
  std::string mem = "512M", serial = "stdio", mitigation = "auto";
  CLI::App app{kDescription, "vmm"};
  app.get_formatter()->column_width(34);
  auto* kernel_opt =
      app.add_option("-k,--kernel", cfg.kernel, "Kernel image: bzImage or ELF vmlinux");
  std::string restore_dir;
  bool restore_copy = false;
  auto* restore_opt = app.add_option(
      "--restore", restore_dir,
      "Resume the VM saved in this snapshot directory (snapshot-create) instead of booting; "
      "give its disks and TAPs again with --disk/--net (the snapshot names none)");
  app.add_flag("--restore-copy", restore_copy,
               "With --restore: copy the memory file instead of mapping it copy-on-write");
  kernel_opt->excludes(restore_opt);
  vmm::IncomingOptions incoming;
  auto* incoming_opt = app.add_option(
      "--incoming", incoming.uri,
      "Receive a live migration on tcp:HOST:PORT or unix:PATH instead of booting (give the "
      "same --mem/--cpus/--disk/--net/--rng as the source)");
  incoming_opt->excludes(kernel_opt)->excludes(restore_opt);
  app.add_option("--incoming-timeout", incoming.accept_timeout_s,
                 "With --incoming: give up (exit 1) if no source connects within N seconds "
                 "(default 0 = wait forever)");
  auto* initrd_opt = app.add_option("-i,--initrd", cfg.initrd, "Initial ramdisk (cpio, optionally compressed)");
  auto* cmdline_opt = app.add_option(
      "-c,--cmdline", cfg.cmdline,
      std::string("Kernel command line (default: \"") + vmm::kDefaultCmdline + "\")");
  auto* mem_opt = app.add_option("-m,--mem", mem, "Guest RAM, e.g. 512M or 2G (default 512M)");
  auto* cpus_opt = app.add_option("--cpus", cfg.cpus, "Number of vCPUs (default 1)");
  app.add_option("--serial", serial, "Serial console: stdio | file:PATH | none (default stdio)");
  auto* template_opt = app.add_option("--cpu-template", cfg.cpu_template,
                 "CPUID template: host (KVM's supported set) | minimal (no SSE4/AVX/XSAVE...)");
  app.add_option("--cpuid-mitigation", mitigation,
                 "auto | on | off: append 'noxsave clearcpuid=...' to the command line when "
                 "the host does not virtualize CPUID (auto probes it; default auto)");
  app.add_option("--boot-protocol", cfg.boot_protocol,
                 "auto | linux64 | pvh: how to enter an ELF kernel (default auto = linux64)");
  std::string acpi = "on";
  auto* acpi_opt = app.add_option("--acpi", acpi,
                 "on | off: ACPI tables (MADT, hardware-reduced FADT with power-off and "
                 "reset registers) besides the MP table (default on)")
      ->check(CLI::IsMember({"on", "off"}));
  std::string thp = "off";
  app.add_option("--thp", thp,
                 "on | off: advise transparent huge pages for anonymous guest RAM "
                 "(madvise MADV_HUGEPAGE, QEMU's and Cloud Hypervisor's default: fewer page "
                 "faults and KVM mappings, RSS grows in 2 MiB steps; see docs/cli.md; "
                 "default off)")
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--time-dilation", cfg.time_dilation,
                 "On hosts that interpret guest kernel code: make guest time run N times "
                 "slower than real time, so timer interrupts arrive N times less often "
                 "(default 1 = off; see docs/linux-boot.md)");
  std::vector<std::string> disks, nets;
  app.add_option("--disk", disks,
                 "virtio-blk disk: path=FILE[,readonly=on][,id=ID] (raw image or block "
                 "device; repeatable)");
  app.add_option("--net", nets,
                 "virtio-net over a TAP: tap=NAME[,mac=52:54:00:12:34:56] (repeatable)");
  auto* rng_opt = app.add_flag("--rng", cfg.rng, "virtio-rng fed from the host's /dev/urandom");
  app.add_option("--api-socket", cfg.api_socket,
                 "Control socket (Unix, line-delimited JSON; see docs/api.md and vmmctl)");
  app.add_option("--log-level", cfg.log_level,
                 "trace | debug | info | warn | error | off (default info)");
  app.add_option("--debug-sample-rip", cfg.sample_rip_ms,
                 "Sample every vCPU's rip every N ms; print a profile every 10 s and at exit");
  app.add_option("--system-map", cfg.system_map, "System.map to symbolize rip samples and errors");
  app.add_option("--kvm-device", cfg.kvm_device, "KVM device node (default /dev/kvm)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : vmm::kExitUsage;
  }
  cfg.cmdline_given = cmdline_opt->count() > 0;
  cfg.acpi = acpi == "on";
  cfg.thp = thp == "on";
  vmm::log::init(cfg.log_level);

  auto size = vmm::parse_size(mem);
  if (!size.ok()) {
    spdlog::error("--mem: {}", size.error().to_string());
    return vmm::kExitUsage;
  }
  cfg.mem_bytes = *size;
  if (auto r = vmm::parse_serial(serial, cfg); !r.ok()) {
    spdlog::error("{}", r.error().to_string());
    return vmm::kExitUsage;
  }
  for (const auto& d : disks) {
    auto r = vmm::parse_disk(d);
    if (!r.ok()) {
      spdlog::error("{}", r.error().to_string());
      return vmm::kExitUsage;
    }
    cfg.disks.push_back(std::move(r).value());
  }
  for (const auto& n : nets) {
    auto r = vmm::parse_net(n);
    if (!r.ok()) {
      spdlog::error("{}", r.error().to_string());
      return vmm::kExitUsage;
    }
    cfg.nets.push_back(std::move(r).value());
  }
  if (mitigation == "auto") cfg.cpuid_mitigation = vmm::CpuidMitigation::kAuto;
  else if (mitigation == "on") cfg.cpuid_mitigation = vmm::CpuidMitigation::kOn;
  else if (mitigation == "off") cfg.cpuid_mitigation = vmm::CpuidMitigation::kOff;
  else {
    spdlog::error("--cpuid-mitigation '{}': expected auto, on or off", mitigation);
    return vmm::kExitUsage;
  }

  if (!restore_dir.empty()) {
    // The snapshot fixes the guest's machine; the command line gives the
    // host resources behind it (--disk, --net) and nothing that would
    // change the machine.
    for (const auto* o : {mem_opt, cpus_opt, rng_opt, acpi_opt, template_opt, initrd_opt,
                          cmdline_opt}) {
      if (o->count() > 0) {
        spdlog::error("--restore takes {} from the snapshot: do not give it (give only the "
                      "host resources: --disk path=..., --net tap=...)",
                      o->get_name());
        return vmm::kExitUsage;
      }
    }
    auto vm = vmm::Vm::restore(cfg, restore_dir, restore_copy);
    if (!vm.ok()) {
      spdlog::error("--restore {}: {}", restore_dir, vm.error().to_string());
      return vmm::kExitUsage;
    }
    return run_to_end(std::move(*vm));
  }
  if (!incoming.uri.empty()) {
    if (cmdline_opt->count() > 0 || !cfg.initrd.empty()) {
      spdlog::error("--incoming receives a running guest: do not give --initrd or --cmdline");
      return vmm::kExitUsage;
    }
    if (auto u = vmm::migration::parse_uri(incoming.uri); !u.ok()) {
      spdlog::error("--incoming: {}", u.error().to_string());
      return vmm::kExitUsage;
    }
    if (auto v = vmm::validate_config(cfg); !v.ok()) {
      spdlog::error("{}", v.error().to_string());
      return vmm::kExitUsage;
    }
    return run_incoming(cfg, incoming);
  }
  if (cfg.kernel.empty()) {
    spdlog::error("--kernel is required (or --restore DIR, or --incoming URI)");
    return vmm::kExitUsage;
  }
  auto inputs = vmm::Vm::prepare(cfg);
  if (!inputs.ok()) {
    spdlog::error("{}", inputs.error().to_string());
    return vmm::kExitUsage;
  }
  auto vm = vmm::Vm::create(cfg, std::move(inputs).value());
  if (!vm.ok()) {
    spdlog::error("{}", vm.error().to_string());
    return vmm::kExitVmmError;
  }
  return run_to_end(std::move(*vm));
}
