#!/usr/bin/env python3
"""Linux E2E tests: a real kernel + our busybox initramfs through the vmm.
Every assertion reads the guest's own console output."""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from vmmtest import SKIP, Guest, check, require_kvm  # noqa: E402

CACHE = os.environ.get("VMM_CACHE", os.path.expanduser("~/.cache/vmm"))
REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MAKE_DISK_IMAGE = os.path.join(REPO, "guest-images", "make-disk-image.sh")
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


# ------------------------------------------------ virtio devices (issue 3) --
# Each test boots the default guest once with its device(s) attached and drives
# the busybox shell; every result is computed in the guest and compared with
# what the host knows.

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PRINTK = re.compile(r"^\[\s*\d+\.\d+\] ")  # kernel messages share the console


def guest_sh(g, cmd, timeout=600):
    """Runs one command line in the guest shell; returns (exit status, output lines
    without kernel messages). The markers are typed split by "" so the console's
    echo of the typed line never matches them."""
    g.send(f'echo @@vmm""-begin; {cmd}; echo @@vmm""-end=$?')
    g.expect("@@vmm-begin", timeout=timeout)
    start = g.pos
    line = g.expect("@@vmm-end=", timeout=timeout)
    body = g.out[start:g.pos - len("@@vmm-end=")].decode(errors="replace")
    m = re.search(r"@@vmm-end=(\d+)", line)
    status = int(m.group(1)) if m else -1
    lines = [ln.strip() for ln in ANSI.sub("", body).replace("\r", "").split("\n")]
    return status, [ln for ln in lines if ln and not PRINTK.match(ln)]


def guest_ok(g, cmd, timeout=600):
    """guest_sh that must succeed; returns the output lines."""
    status, out = guest_sh(g, cmd, timeout)
    check(status == 0, f"guest command failed ({status}): {cmd}\n" + "\n".join(out), g)
    return out


def sha256_of(lines, name):
    """The hash sha256sum printed for file NAME."""
    for ln in lines:
        m = re.fullmatch(r"([0-9a-f]{64})\s+" + re.escape(name), ln)
        if m:
            return m.group(1)
    raise AssertionError(f"no sha256sum line for {name} in {lines}")


def boot_minimal(a, t0, extra, wrapper=()):
    """Starts the default guest with extra vmm arguments and waits for its shell."""
    kernel, initrd = minimal_images()
    g = Guest(a.vmm, kernel, ["--initrd", initrd, "--mem", "256M", "--cmdline", MINIMAL_CMDLINE,
                              *extra], wrapper=wrapper)
    try:
        g.expect(MARKER, timeout=BOOT_TIMEOUT or 2400)
    except BaseException:
        g.kill()
        sys.stdout.write(g.err.decode(errors="replace")[-3000:])
        raise
    stamp(t0, "marker: shell up")
    return g


def poweroff(g, t0):
    g.send("poweroff")
    rc = g.wait(timeout=900)
    stamp(t0, f"vmm exited with {rc}")
    check(rc == 0, f"poweroff should end the vmm with 0, got {rc}", g)


def make_disk(path, *args):
    """guest-images/make-disk-image.sh PATH ARGS; returns data.bin's sha256."""
    r = subprocess.run([MAKE_DISK_IMAGE, path, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"make-disk-image.sh failed ({r.returncode}):\n{r.stderr}")
    m = re.search(r"^([0-9a-f]{64})  data\.bin$", r.stdout, re.M)
    check(m is not None, f"make-disk-image.sh printed no data.bin hash:\n{r.stdout}")
    return m.group(1)


def debugfs_cat(img, path):
    """A file's bytes read from an ext4 image without mounting it."""
    r = subprocess.run(["debugfs", "-R", f"cat {path}", img], capture_output=True)
    check(r.returncode == 0, f"debugfs cat {path} failed: {r.stderr.decode(errors='replace')}")
    return r.stdout


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def virtio_disk(a):
    """Two disks: vda read-write (mount, check data.bin's hash, write two files,
    umount), vdb readonly=on (mount -o ro, check its hash, a raw write must fail).
    After poweroff the host reads the new files out of the image with debugfs,
    e2fsck finds it clean, and the read-only image is byte-for-byte unchanged."""
    tmp = tempfile.mkdtemp(prefix="vmm-e2e-disk-")
    g = None
    try:
        t0 = time.monotonic()
        rw, ro = os.path.join(tmp, "rw.img"), os.path.join(tmp, "ro.img")
        rw_sum = make_disk(rw, "--size", "64M", "--data-size", "4M")
        ro_sum = make_disk(ro, "--size", "16M", "--data-size", "1M", "--seed", "vmm-ro")
        ro_image_before = file_sha256(ro)
        stamp(t0, "disk images made")
        g = boot_minimal(a, t0, ["--disk", f"path={rw}", "--disk", f"path={ro},readonly=on,id=ro0"])

        out = guest_ok(g, "cat /sys/block/vda/size /sys/block/vda/ro /sys/block/vdb/size "
                          "/sys/block/vdb/ro")
        check(out == [str(64 << 11), "0", str(16 << 11), "1"],
              f"guest sees vda/vdb as (sectors, ro) {out}, expected 131072 0 32768 1", g)
        stamp(t0, "vda (64 MiB, rw) and vdb (16 MiB, ro) present, in --disk order")

        guest_ok(g, "mount -t ext4 /dev/vda /mnt")
        stamp(t0, "vda mounted")
        got = sha256_of(guest_ok(g, "sha256sum /mnt/data.bin"), "/mnt/data.bin")
        check(got == rw_sum, f"data.bin read by the guest has sha256 {got}, expected {rw_sum}", g)
        stamp(t0, "4 MiB data.bin read back with the right sha256")
        guest_ok(g, 'echo "written by the guest: $((6*7))" >/mnt/newfile && '
                    "dd if=/mnt/data.bin of=/mnt/copy.bin bs=64k count=16 2>/dev/null")
        guest_ok(g, "sync && umount /mnt")
        stamp(t0, "newfile + 1 MiB copy.bin written, synced, unmounted")

        guest_ok(g, "mkdir -p /tmp/ro && mount -t ext4 -o ro /dev/vdb /tmp/ro")
        got = sha256_of(guest_ok(g, "sha256sum /tmp/ro/data.bin"), "/tmp/ro/data.bin")
        check(got == ro_sum, f"vdb data.bin has sha256 {got}, expected {ro_sum}", g)
        guest_ok(g, "umount /tmp/ro")
        status, out = guest_sh(g, "dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync")
        check(status != 0, "a raw write to the readonly=on disk succeeded:\n" + "\n".join(out), g)
        why = next((ln for ln in out if ln.startswith("dd:")), f"status {status}")
        stamp(t0, f"vdb read ok, raw write refused ({why})")

        poweroff(g, t0)

        new = debugfs_cat(rw, "/newfile")
        check(new == b"written by the guest: 42\n", f"/newfile in the image holds {new!r}")
        data = debugfs_cat(rw, "/data.bin")
        check(hashlib.sha256(data).hexdigest() == rw_sum, "data.bin changed in the image")
        copy = debugfs_cat(rw, "/copy.bin")
        check(copy == data[:1 << 20], f"/copy.bin in the image ({len(copy)} bytes) is not "
                                      "the first MiB of data.bin")
        fsck = subprocess.run(["e2fsck", "-fn", rw], capture_output=True, text=True)
        check(fsck.returncode == 0, f"e2fsck -fn on the written image: {fsck.returncode}\n"
                                    f"{fsck.stdout}{fsck.stderr}")
        check(file_sha256(ro) == ro_image_before, "the readonly=on image was modified")
        stamp(t0, "host: debugfs finds newfile and copy.bin, e2fsck clean, ro image unchanged")
    finally:
        if g is not None:
            g.kill()
            sys.stdout.write(g.err.decode(errors="replace")[-3000:])
        shutil.rmtree(tmp, ignore_errors=True)


# Runs inside the test's network namespace: one TCP connection on 10.0.2.1:PORT.
# "recv": hash everything the peer sends until it closes; "send": send SIZE random
# bytes, then close. Prints "listening", then "MODE BYTES SHA256 PEER".
HOST_PEER = r"""
import hashlib, os, socket, sys
mode, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("10.0.2.1", port))
srv.listen(1)
srv.settimeout(1200)
print("listening", flush=True)
conn, peer = srv.accept()
conn.settimeout(1200)
h, n = hashlib.sha256(), 0
if mode == "send":
    data = os.urandom(size)
    h.update(data)
    n = len(data)
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass
else:
    while True:
        b = conn.recv(65536)
        if not b:
            break
        h.update(b)
        n += len(b)
conn.close()
print(mode, n, h.hexdigest(), peer[0], flush=True)
"""


class HostPeer:
    """HOST_PEER running in network namespace NS."""

    def __init__(self, ns, mode, port, size=0):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HOST_PEER,
                                      mode, str(port), str(size)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "listening":
            self.proc.kill()
            raise AssertionError(f"host peer did not start: {line!r} {self.proc.stderr.read()}")

    def result(self, timeout=120):
        """(bytes, sha256) once the connection is done."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        check(self.proc.returncode == 0, f"host peer failed ({self.proc.returncode}): {err}")
        _, n, digest, peer = out.split()
        check(peer == "10.0.2.2", f"host peer talked to {peer}, not the guest")
        return int(n), digest

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_host(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


def virtio_net(a):
    """A TAP in a private network namespace (host 10.0.2.1/24), the vmm started in
    that namespace with --net tap=...,mac=...; the guest configures eth0 as
    10.0.2.2/24, pings the host, sends it ~2 MB over TCP (busybox nc) and receives
    3 MB of random bytes from it; both sides' sha256 must agree. The namespace (and with it the TAP)
    is deleted in all cases."""
    if os.geteuid() != 0:
        print("SKIP: virtio_net needs root (network namespace + TAP device)")
        sys.exit(SKIP)
    if shutil.which("ip") is None or not os.path.exists("/dev/net/tun"):
        print("SKIP: virtio_net needs iproute2 ('ip') and /dev/net/tun")
        sys.exit(SKIP)
    ns, tap, mac = f"vmm-e2e-{os.getpid()}", "vmmtap0", "52:54:00:12:34:56"
    g = None
    peers = []
    t0 = time.monotonic()
    run_host("ip", "netns", "add", ns)
    try:
        nsx = ("ip", "netns", "exec", ns)
        run_host(*nsx, "ip", "link", "set", "lo", "up")
        run_host(*nsx, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
        run_host(*nsx, "ip", "addr", "add", "10.0.2.1/24", "dev", tap)
        run_host(*nsx, "ip", "link", "set", tap, "up")
        g = boot_minimal(a, t0, ["--net", f"tap={tap},mac={mac}"], wrapper=nsx)

        out = guest_ok(g, "cat /sys/class/net/eth0/address")
        check(out == [mac], f"guest eth0 has MAC {out}, expected {mac}", g)
        guest_ok(g, "ifconfig eth0 10.0.2.2 netmask 255.255.255.0 up")
        guest_ok(g, "ping -c 1 -W 60 10.0.2.1")
        stamp(t0, "eth0 up with the given MAC, host answers ping")

        # Guest -> host: the guest's own /bin/busybox (~2 MB of binary data already
        # in RAM; 2 MiB from /dev/urandom took 2 minutes of interpreted ChaCha20).
        out = guest_ok(g, "wc -c </bin/busybox; sha256sum /bin/busybox")
        size, sent = int(out[0]), sha256_of(out, "/bin/busybox")
        peers.append(HostPeer(ns, "recv", 5001))
        guest_ok(g, "nc 10.0.2.1 5001 </bin/busybox")
        n, got = peers[-1].result()
        check((n, got) == (size, sent), f"host received {n} bytes with sha256 {got}; "
                                        f"guest sent {size} with {sent}", g)
        stamp(t0, f"guest -> host: {size} bytes, sha256 matches")

        size = 3000000
        peers.append(HostPeer(ns, "send", 5002, size))
        guest_ok(g, "nc 10.0.2.1 5002 </dev/null >/tmp/y")
        n, sent = peers[-1].result()
        check(n == size, f"host peer sent {n} bytes, expected {size}")
        out = guest_ok(g, "wc -c </tmp/y; sha256sum /tmp/y")
        got = sha256_of(out, "/tmp/y")
        check(out[0] == str(size) and got == sent,
              f"guest received {out[0]} bytes with sha256 {got}; host sent {size} with {sent}", g)
        stamp(t0, "host -> guest: 3 MB, sha256 matches")

        poweroff(g, t0)
    finally:
        for p in peers:
            p.kill()
        if g is not None:
            g.kill()
            sys.stdout.write(g.err.decode(errors="replace")[-3000:])
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def virtio_rng(a):
    """--rng: the hwrng core picks virtio_rng and /dev/hwrng delivers bytes."""
    t0 = time.monotonic()
    g = boot_minimal(a, t0, ["--rng"])
    try:
        out = guest_ok(g, "cat /sys/class/misc/hw_random/rng_current")
        check(len(out) == 1 and out[0].startswith("virtio_rng"),
              f"rng_current is {out}, expected virtio_rng.N", g)
        words = []
        for _ in range(2):
            out = guest_ok(g, "dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -x")
            words.append(" ".join(out).split())
            check(len(words[-1]) == 8 and all(re.fullmatch(r"[0-9a-f]{4}", w) for w in words[-1]),
                  f"od -x of 16 bytes from /dev/hwrng printed {out}", g)
        check(words[0] != words[1], f"two reads of /dev/hwrng gave the same bytes {words[0]}", g)
        stamp(t0, f"rng_current virtio_rng, 2x16 bytes from /dev/hwrng: {' '.join(words[0])}")
        poweroff(g, t0)
    finally:
        g.kill()
        sys.stdout.write(g.err.decode(errors="replace")[-3000:])


TESTS = {f.__name__: f for f in (minimal_to_init, minimal_shell, debian_early_boot,
                                      debian_shell, virtio_disk, virtio_net, virtio_rng)}


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
