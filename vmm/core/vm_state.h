// Capturing KVM state into the snapshot state tree (docs/snapshot-format.md):
// per-vCPU registers and VM-wide interrupt controller/timer/clock state, and
// the guest memory file. Only valid while the VM is paused (vCPUs parked on
// an instruction boundary).
#pragma once

#include <span>
#include <string>

#include "vmm/kvm/kvm.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm {

// Section "vcpuN": regs, sregs, fpu, xsave, xcrs, debugregs, events,
// mp_state, lapic, msrs (kvm_msr_entry[] of every index in `msr_indices`
// KVM could read; refused ones are left out and listed in "msrs_refused").
Result<void> save_vcpu_state(const VcpuFd& vcpu, std::span<const uint32_t> msr_indices,
                             snapshot::Section& out);

// Section "vm": clock, pic_master, pic_slave, ioapic, pit2.
Result<void> save_vm_state(const VmFd& vm, snapshot::Section& out);

// The inverse of save_vcpu_state, in the order KVM needs (regs, xsave,
// xcrs, sregs, lapic, msrs with IA32_TSC_DEADLINE last, events, mp_state,
// debugregs).
Result<void> restore_vcpu_state(VcpuFd& vcpu, const snapshot::Section& in);
Result<void> restore_vm_state(VmFd& vm, const snapshot::Section& in);

// Restoring onto a host/template whose CPUID differs from the one the guest
// saw is refused: `saved` (section "cpuid" of a vCPU) against `current` (what
// this VMM would give that vCPU now), compared by (function, index) on
// eax..edx. The error lists up to 4 differences.
Result<void> check_cpuid(std::span<const kvm_cpuid_entry2> saved,
                         std::span<const kvm_cpuid_entry2> current);

// Guest memory backed by a snapshot's memory file: each RAM range of
// boot::guest_ram_ranges(mem_bytes) mapped MAP_PRIVATE (lazy, copy-on-write)
// from its offset in the file, or copied into anonymous memory when `copy`
// (advised transparent huge pages when `huge_pages`).
Result<GuestMemory> map_memory_file(const std::string& path, uint64_t mem_bytes, bool copy,
                                    bool huge_pages = false);

// Writes every guest memory region back to back into the new, empty file
// open as `fd` (SnapshotDir::create_file; `path` names it in messages), and
// fsyncs it, leaving 4 KiB pages that are all zero as holes (a sparse file).
// Returns the number of bytes of data actually written.
Result<uint64_t> write_memory_file(const GuestMemory& mem, int fd, const std::string& path);

}  // namespace vmm
