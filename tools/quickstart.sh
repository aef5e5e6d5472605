#!/usr/bin/env bash
# One command from a fresh Debian machine to a shell in the default guest:
# installs packages, builds the VMM, builds the default guest (minimal kernel +
# busybox initramfs, cached in ${VMM_CACHE:-~/.cache/vmm}), and boots it with the
# serial console on this terminal. Extra arguments go to vmm (e.g. --cpus 2).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh build
kernel=$(guest-images/build-kernel.sh | tail -n 20 | grep -m1 '/vmlinux$' || true)
initrd=$(guest-images/build-initramfs.sh --kernel minimal | tail -n 5 | grep -m1 '\.cpio$' || true)
cache="${VMM_CACHE:-$HOME/.cache/vmm}"
kernel="${kernel:-$cache/kernel/minimal/vmlinux}"
initrd="${initrd:-$cache/initramfs/initramfs-minimal.cpio}"
echo "Booting $kernel with $initrd. Ctrl-A x quits; 'poweroff' in the guest ends the VM."
exec build/vmm/vmm --kernel "$kernel" --initrd "$initrd" --mem 512M "$@"
