#!/usr/bin/env python3
"""Linux E2E tests: a real kernel + our busybox initramfs through the vmm.
Every assertion reads the guest's own console output."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from vmmtest import SKIP, Guest, check, require_kvm  # noqa: E402

CACHE = os.environ.get("VMM_CACHE", os.path.expanduser("~/.cache/vmm"))
MARKER = "VMM-GUEST-READY"
# Minutes each stage may take on a nested-KVM host (docs/linux-boot.md has the
# measured numbers); override with VMM_E2E_BOOT_TIMEOUT (seconds).
BOOT_TIMEOUT = int(os.environ.get("VMM_E2E_BOOT_TIMEOUT", "0")) or None


def image(*parts):
    p = os.path.join(CACHE, *parts)
    if not os.path.exists(p):
        print(f"SKIP: guest image {p} is missing (run guest-images/*.sh or tools/test.sh)")
        sys.exit(SKIP)
    return p


def stamp(t0, what):
    print(f"[{time.monotonic() - t0:7.1f} s] {what}", flush=True)


def shell_session(g, t0, boot_timeout):
    g.expect(MARKER, timeout=boot_timeout)
    stamp(t0, "marker: /init reached the shell")
    # Typed into the serial console; the shell's answer is computed in the guest.
    g.send("echo answer=$((6*7))")
    g.expect("answer=42", timeout=600)
    stamp(t0, "shell answered a command")
    g.send("cat /proc/cmdline")
    g.expect("console=ttyS0", timeout=600)
    g.send("poweroff")
    rc = g.wait(timeout=900)
    stamp(t0, f"vmm exited with {rc}")
    check(rc == 0, f"poweroff should end the vmm with 0, got {rc}", g)


MINIMAL_CMDLINE = "console=ttyS0 reboot=k nowatchdog"
DEBIAN_CMDLINE = ("console=ttyS0 reboot=k nowatchdog i8042.noaux i8042.nomux i8042.nopnp "
                  "i8042.dumbkbd ipv6.disable=1 mitigations=off lsm=capability dis_ucode_ldr")


def minimal_images():
    return (image("kernel", "minimal", "vmlinux"),
            image("initramfs", "initramfs-minimal.cpio"))


def minimal_to_init(a):
    """The default kernel boots through every initcall to the point where it
    starts /init from the initramfs (measured stages printed). What happens
    after that is up to the host: see docs/linux-boot.md."""
    kernel, initrd = minimal_images()
    t0 = time.monotonic()
    g = Guest(a.vmm, kernel, ["--initrd", initrd, "--mem", "256M", "--cmdline", MINIMAL_CMDLINE])
    try:
        g.expect("Linux version 6.1", timeout=600)
        stamp(t0, "kernel banner")
        g.expect("tsc: Detected", timeout=600)
        stamp(t0, "TSC rate taken from the VMM (tsc_early_khz)")
        g.expect("Unpacking initramfs", timeout=1200)
        stamp(t0, "initramfs unpack started")
        g.expect("serial8250: ttyS0 at I/O 0x3f8", timeout=1800)
        stamp(t0, "serial driver bound")
        g.expect("Run /init as init process", timeout=2400)
        stamp(t0, "kernel started /init")
        err = g.err.decode(errors="replace")
        check("cannot emulate" not in err, "an emulation failure stopped the guest", g)
    finally:
        g.kill()
        sys.stdout.write(g.err.decode(errors="replace")[-2000:])


def minimal_shell(a):
    kernel, initrd = minimal_images()
    t0 = time.monotonic()
    g = Guest(a.vmm, kernel, ["--initrd", initrd, "--mem", "256M", "--cmdline", MINIMAL_CMDLINE])
    try:
        g.expect("Linux version", timeout=600)
        stamp(t0, "kernel banner")
        shell_session(g, t0, BOOT_TIMEOUT or 2400)
    finally:
        g.kill()
        sys.stdout.write(g.err.decode(errors="replace")[-3000:])


def debian_early_boot(a):
    """The part of a stock-kernel boot that fits CI: banner, CPU feature clearing,
    memory setup, on to the console driver. Fails on any emulation failure or
    panic meanwhile."""
    kernel = image("kernel", "debian", "vmlinux")
    initrd = image("initramfs", "initramfs-debian.cpio")
    t0 = time.monotonic()
    g = Guest(a.vmm, kernel, ["--initrd", initrd, "--mem", "512M", "--cmdline",
                              DEBIAN_CMDLINE + " earlyprintk=serial,ttyS0"])
    try:
        g.expect("Linux version 6.1", timeout=600)
        stamp(t0, "kernel banner")
        g.expect("Clearing CPUID bits", timeout=600)
        stamp(t0, "CPU features cleared from the command line")
        g.expect("Memory:", timeout=900)
        stamp(t0, "memory initialised")
        g.expect("printk: console [ttyS0] enabled", timeout=1200)
        stamp(t0, "serial console enabled")
        check(g.proc.poll() is None, "vmm exited early", g)
    finally:
        g.kill()
        sys.stdout.write(g.err.decode(errors="replace")[-3000:])


def debian_shell(a):
    if os.path.exists("/sys/module/kvm_pvm"):
        # A PVM host leaves a stock kernel's user-mode SYSCALL half done, and
        # Debian's binary kernel cannot carry our fix (docs/linux-boot.md).
        print("SKIP: this host's KVM is PVM (/sys/module/kvm_pvm): a stock kernel "
              "cannot run user space here")
        sys.exit(SKIP)
    kernel = image("kernel", "debian", "vmlinux")
    initrd = image("initramfs", "initramfs-debian.cpio")
    t0 = time.monotonic()
    g = Guest(a.vmm, kernel, ["--initrd", initrd, "--mem", "512M", "--cmdline", DEBIAN_CMDLINE])
    try:
        shell_session(g, t0, BOOT_TIMEOUT or 4800)
    finally:
        g.kill()
        sys.stdout.write(g.err.decode(errors="replace")[-3000:])


TESTS = {f.__name__: f for f in (minimal_to_init, minimal_shell, debian_early_boot,
                                      debian_shell)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("name", choices=sorted(TESTS))
    a = ap.parse_args()
    require_kvm()
    TESTS[a.name](a)
    print(f"PASS {a.name}")


if __name__ == "__main__":
    main()
