#!/usr/bin/env bash
# One command from a fresh Debian machine to a shell in the default guest:
# installs packages, builds the VMM, gets the default guest for this host
# (cached in ${VMM_CACHE:-~/.cache/vmm}), and boots it with the serial console
# on this terminal. Extra arguments go to vmm (e.g. --cpus 2).
#
# The default guest follows the host's KVM (/sys/module):
#   kvm_intel / kvm_amd (a normal VMX/SVM host): Debian's stock cloud kernel
#     (bzImage, downloaded and extracted, not installed) with the busybox
#     initramfs carrying its virtio modules: a shell in seconds, no build.
#   kvm_pvm (a nested PVM host, like this project's build machines): the
#     patched minimal kernel built from linux-source-6.1 (about 10 minutes,
#     once), because a stock kernel cannot run user space there
#     (docs/linux-boot.md).
# VMM_GUEST=stock|minimal overrides the choice.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh build
cache="${VMM_CACHE:-$HOME/.cache/vmm}"

guest=${VMM_GUEST:-}
if [[ -z $guest ]]; then
  if [[ -d /sys/module/kvm_pvm ]]; then
    guest=minimal
    why="this host's /dev/kvm is a nested PVM hypervisor (kvm_pvm): only the patched minimal kernel runs user space here"
  elif [[ -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ]]; then
    guest=stock
    why="this host has hardware KVM ($(ls -d /sys/module/kvm_intel /sys/module/kvm_amd 2>/dev/null | xargs -n1 basename | tr '\n' ' ')): Debian's stock kernel boots as is"
  else
    guest=minimal
    why="no kvm_intel, kvm_amd or kvm_pvm module found: the minimal kernel is the safe default"
  fi
else
  why="VMM_GUEST=$guest"
fi
[[ $guest == stock || $guest == minimal ]] || { echo "VMM_GUEST must be stock or minimal" >&2; exit 2; }

if [[ $guest == stock ]]; then
  guest-images/fetch-debian-kernel.sh --no-symbols >/dev/null
  guest-images/build-initramfs.sh --kernel debian >/dev/null
  kernel=$cache/kernel/debian/vmlinuz
  initrd=$cache/initramfs/initramfs-debian.cpio
else
  guest-images/build-kernel.sh >/dev/null
  guest-images/build-initramfs.sh --kernel minimal >/dev/null
  kernel=$cache/kernel/minimal/vmlinux
  initrd=$cache/initramfs/initramfs-minimal.cpio
fi
echo "Guest: $guest kernel ($why)."
echo "Booting $kernel with $initrd. Ctrl-A x quits; 'poweroff' in the guest ends the VM."
exec build/vmm/vmm --kernel "$kernel" --initrd "$initrd" --mem 512M "$@"
