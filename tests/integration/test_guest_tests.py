#!/usr/bin/env python3
"""KVM integration tests: the freestanding test guest (guest-images/test-guest)
through the real vmm binary. Usage: test_guest_tests.py --vmm V --guest G NAME"""
import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmmtest import SKIP, Guest, check, require_kvm  # noqa: E402

TESTS = {}


def test(fn):
    TESTS[fn.__name__] = fn
    return fn


def boot(a, *args, **kw):
    g = Guest(a.vmm, a.guest, args, **kw)
    g.expect("TESTGUEST READY")
    return g


@test
def serial_console(a):
    g = boot(a)
    try:
        check(g.command("echo hello from the host", "hello from the host") ==
              "hello from the host", "echo mismatch", g)
        # A long line: the guest reads and answers every byte through the UART.
        text = "x" * 100
        check(g.command("echo " + text, text) == text, "long echo mismatch", g)
        g.command("nonsense", "ERR unknown command")
        g.send("exit 0")
        check(g.wait() == 0, "exit 0 expected", g)
    finally:
        g.kill()


@test
def cmdline_and_memory(a):
    g = boot(a, "--mem", "96M", "--cmdline", "console=ttyS0 hello=world",
             "--cpuid-mitigation", "off")
    try:
        line = g.command("cmdline", "cmdline ")
        check(line == "cmdline console=ttyS0 hello=world", f"cmdline was {line!r}", g)
        line = g.command("mem", "mem ")
        m = re.match(r"mem (\d+) e820 (\d+)", line)
        check(m is not None, f"bad mem line {line!r}", g)
        total = int(m.group(1))
        # All RAM but the EBDA..1 MiB reserved hole is usable.
        check(96 * 2**20 - 0x60400 == total, f"e820 RAM {total} for a 96 MiB guest", g)
        g.send("exit 0")
        check(g.wait() == 0, "exit 0 expected", g)
    finally:
        g.kill()


def anon_huge_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        m = re.search(r"^AnonHugePages:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


@test
def guest_ram_thp(a):
    """Guest RAM is advised transparent huge pages with --thp on and not with
    --thp off (the default): the process's AnonHugePages once the guest has
    written (store first, no load: `fill`) a byte in every page of 8 MiB (at
    32 MiB: four 2 MiB-aligned huge pages). Holds on any host setting: with
    THP `never` nothing is expected, with `always` --thp off is not checked,
    and a write-first guest never maps the host's huge zero page
    (use_zero_page), which a load-then-store pass would and then split."""
    thp_dir = "/sys/kernel/mm/transparent_hugepage"
    with open(f"{thp_dir}/enabled") as f:
        mode = re.search(r"\[(\w+)\]", f.read()).group(1)
    settings = {}
    for name in ("defrag", "use_zero_page"):
        try:
            with open(f"{thp_dir}/{name}") as f:
                settings[name] = f.read().strip()
        except OSError:
            settings[name] = "?"
    for thp in ("on", "off"):
        g = boot(a, "--thp", thp)
        try:
            g.send("fill 8")
            g.expect("FILL done")
            kib = anon_huge_kib(g.proc.pid)
            print(f"--thp {thp}: AnonHugePages {kib} kB (host THP mode {mode}, {settings})")
            if thp == "on" and mode != "never":
                check(kib >= 8 * 1024, f"--thp on: only {kib} kB of huge pages", g)
            if thp == "off" and mode == "madvise":
                check(kib == 0, f"--thp off: {kib} kB of huge pages", g)
        finally:
            g.kill()


@test
def pvh_entry_elf32(a):
    """A 32-bit ELF (the test guest through `objcopy -O elf32-i386`, PVH note
    kept) boots through its PVH entry with the default --boot-protocol, as in
    QEMU; asking for the 64-bit entry it lacks is a usage error."""
    with tempfile.TemporaryDirectory() as d:
        elf32 = os.path.join(d, "guest32.elf")
        subprocess.run(["objcopy", "-O", "elf32-i386", a.guest, elf32], check=True)
        with open(elf32, "rb") as f:
            check(f.read(5)[4] == 1, "objcopy did not make an ELFCLASS32 file")
        g = Guest(a.vmm, elf32, ("--mem", "96M"))
        try:
            g.expect("TESTGUEST READY")
            line = g.command("entry", "entry ")
            check(line == "entry pvh magic 336ec578", f"entry was {line!r}", g)
            g.send("exit 0")
            check(g.wait() == 0, "exit 0 expected", g)
        finally:
            g.kill()
        p = subprocess.run([a.vmm, "--kernel", elf32, "--boot-protocol", "linux64",
                            "--serial", "none"], capture_output=True, text=True, timeout=30)
        check(p.returncode == 2 and "has only a PVH entry" in p.stderr,
              f"linux64 on a 32-bit ELF: {p.returncode} {p.stderr}")


@test
def pvh_entry(a):
    """The same guest entered through its Xen PVH note (32-bit entry, own page
    tables, hvm_start_info instead of the zero page)."""
    g = boot(a, "--boot-protocol", "pvh", "--mem", "96M",
             "--cmdline", "console=ttyS0 hello=pvh", "--cpuid-mitigation", "off")
    try:
        line = g.command("entry", "entry ")
        check(line == "entry pvh magic 336ec578", f"entry was {line!r}", g)
        line = g.command("cmdline", "cmdline ")
        check(line == "cmdline console=ttyS0 hello=pvh", f"cmdline was {line!r}", g)
        line = g.command("mem", "mem ")
        m = re.match(r"mem (\d+) e820 (\d+)", line)
        check(m is not None, f"bad mem line {line!r}", g)
        total = int(m.group(1))
        # Same memory map as the zero page's e820 (cmdline_and_memory).
        check(96 * 2**20 - 0x60400 == total, f"PVH memmap RAM {total} for a 96 MiB guest", g)
        check(int(m.group(2)) > 0, f"no memmap entries: {line!r}", g)
        check(g.command("echo hello over pvh", "hello over pvh") == "hello over pvh",
              "echo mismatch", g)
        g.send("exit 0")
        check(g.wait() == 0, "exit 0 expected", g)
        err = g.err.decode()
        check("PVH entry at" in err, "vmm did not log a PVH entry", g)
        check("guest requested exit with code 0" in err, "exit reason not logged", g)
    finally:
        g.kill()
    # The default (64-bit) entry of the same image still reports itself as such.
    g = boot(a)
    try:
        check(g.command("entry", "entry ") == "entry linux64", "64-bit entry not reported", g)
        g.send("exit 0")
        check(g.wait() == 0, "exit 0 expected", g)
    finally:
        g.kill()


@test
def pio_mmio_roundtrip(a):
    g = boot(a)
    try:
        for v in (0, 7, 255):
            check(g.command(f"probe {v}", "probe ") == f"probe {v}", f"pio round trip {v}", g)
            line = g.command(f"mmio {v}", "mmio ")
            check(line == f"mmio {v} sig 504d4d56", f"mmio round trip: {line!r}", g)
        g.send("exit 0")
        check(g.wait() == 0, "exit 0 expected", g)
    finally:
        g.kill()


@test
def exit_codes(a):
    for code in (0, 1, 42, 200):
        expect_exit(a, f"exit {code}", code, f"guest requested exit with code {code}")


def expect_exit(a, command, want_rc, want_reason):
    """Boots, sends one command, and checks the vmm's exit code and logged
    reason; returns the (ended) Guest."""
    g = boot(a)
    try:
        g.send(command)
        rc = g.wait()
        check(rc == want_rc, f"{command!r} gave exit code {rc}, want {want_rc}", g)
        check(want_reason in g.err.decode(), f"{command!r}: reason {want_reason!r} not logged", g)
    finally:
        g.kill()
    return g


@test
def reset(a):
    expect_exit(a, "reset", 0, "guest reset (i8042)")


@test
def triple_fault(a):
    """Exit 3 naming the triple fault; never the reset vector as its address
    (AMD hosts reset the vCPU before KVM_EXIT_SHUTDOWN: the VMM must say the
    address is unknown there, not 'near rip 0xfff0')."""
    g = expect_exit(a, "triple", 3, "triple fault")
    check("near rip 0xfff0" not in g.err.decode(), "the reset vector reported as the address", g)


@test
def two_vcpus(a):
    g = boot(a, "--cpus", "2")
    try:
        check(g.command("cpus", "cpus ") == "cpus 2", "MP table should list 2 CPUs", g)
        line = g.command("smp", "smp ", timeout=30)
        check(line == "smp 2", f"AP bring-up: {line!r}", g)
        g.send("exit 0")
        check(g.wait() == 0, "exit 0 expected", g)
    finally:
        g.kill()
    g = boot(a)
    try:
        check(g.command("cpus", "cpus ") == "cpus 1", "MP table should list 1 CPU", g)
        g.send("exit 0")
        g.wait()
    finally:
        g.kill()


@test
def emulation_fallback(a):
    g = boot(a)
    try:
        g.send("int3")
        g.expect("bp handled")
        g.expect("int3 ok")
        g.command("fwait", "fwait ok")
        # Still alive and answering after both.
        g.command("echo alive", "alive")
        g.send("exit 0")
        check(g.wait() == 0, "exit 0 expected", g)
    finally:
        g.kill()


@test
def bad_inputs(a):
    import subprocess
    with tempfile.TemporaryDirectory() as d:
        garbage = os.path.join(d, "garbage")
        with open(garbage, "wb") as f:
            f.write(os.urandom(8192))
        empty = os.path.join(d, "empty")
        open(empty, "wb").close()
        truncated = os.path.join(d, "truncated.elf")
        with open(a.guest, "rb") as f:
            data = f.read()
        with open(truncated, "wb") as f:
            f.write(data[: len(data) // 3])
        cases = [
            (["--kernel", os.path.join(d, "missing")], "missing kernel"),
            (["--kernel", garbage], "garbage kernel"),
            (["--kernel", empty], "empty kernel"),
            (["--kernel", truncated], "truncated kernel"),
            (["--kernel", a.guest, "--initrd", os.path.join(d, "missing")], "missing initrd"),
            (["--kernel", a.guest, "--mem", "1M"], "too little memory"),
            (["--kernel", a.guest, "--mem", "lots"], "unparsable memory"),
            (["--kernel", a.guest, "--cpus", "0"], "zero cpus"),
            (["--kernel", a.guest, "--serial", "tcp:1"], "bad serial"),
            (["--kernel", a.guest, "--cpu-template", "nonesuch"], "bad cpu template"),
            (["--kernel", a.guest, "--thp", "maybe"], "bad --thp value"),
            (["--bogus-flag"], "unknown flag"),
            (["--kernel", a.guest, "--disk", f"path={os.path.join(d, 'missing')}"], "missing disk"),
            (["--kernel", a.guest, "--disk", d], "disk is a directory"),
            (["--kernel", a.guest, "--disk", f"path={garbage},cache=none"], "bad disk option"),
            (["--kernel", a.guest, "--net", "tap=t,mac=01:02:03:04:05:06"], "multicast MAC"),
            (["--kernel", a.guest, "--net", "tap=" + "x" * 20], "TAP name too long"),
            (["--kernel", a.guest, "--rng"] + ["--disk", garbage] * 8, "too many virtio devices"),
        ]
        for args, what in cases:
            p = subprocess.run([a.vmm, *args], stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=30)
            err = p.stderr.decode(errors="replace")
            check(p.returncode in (1, 2), f"{what}: exit code {p.returncode}\n{err}")
            check(len(err.strip()) > 0, f"{what}: no error message")
            check("Sanitizer" not in err, f"{what}: sanitizer report\n{err}")
            # A clear one-line reason, not a crash.
            print(f"ok: {what}: rc={p.returncode}: {err.strip().splitlines()[-1]}")


@test
def boot_probe_log(a):
    g = boot(a)
    try:
        g.command("probe 5", "probe 5")
        g.send("exit 0")
        g.wait()
        check(re.search(r"boot probe: mark 5 at [0-9.]+ ms since VMM start", g.err.decode()),
              "boot probe mark not logged with a time", g)
    finally:
        g.kill()


@test
def cpuid_probe(a):
    g = boot(a)
    try:
        line = g.command("cmdline", "cmdline ")
        err = g.err.decode()
        # Which KVM this is decides what the VMM must have found.
        mods = [m for m in ("kvm_pvm", "kvm_intel", "kvm_amd") if os.path.isdir(f"/sys/module/{m}")]
        if mods and mods[0] == "kvm_pvm":
            check("does not virtualize CPUID" in err, "PVM host, but no mitigation", g)
        elif mods:
            check(f"host KVM is {mods[0]} (hardware virtualization): CPUID is virtualized, no probe"
                  in err, f"{mods[0]} host: the VMM did not say it skipped the probe", g)
        if "does not virtualize CPUID" in err:
            check("clearcpuid=" in line and "noxsave" in line,
                  "mitigation detected but not on the command line", g)
            check("vmm.syscall_fixup" in line, "syscall fixup not requested", g)
            check(re.search(r"tsc_early_khz=\d+ tsc=reliable", line),
                  "TSC rate not passed to the guest", g)
        else:
            check("clearcpuid=" not in line, "mitigation added on a host that needs none", g)
        g.send("exit 0")
        g.wait()
    finally:
        g.kill()
    g = boot(a, "--cpuid-mitigation", "on")
    try:
        check("clearcpuid=" in g.command("cmdline", "cmdline "), "--cpuid-mitigation on", g)
        g.send("exit 0")
        g.wait()
    finally:
        g.kill()
    g = boot(a, "--cpuid-mitigation", "off")
    try:
        check("clearcpuid=" not in g.command("cmdline", "cmdline "), "--cpuid-mitigation off", g)
        g.send("exit 0")
        g.wait()
    finally:
        g.kill()


@test
def console_escape(a):
    """On a terminal the console is raw, Ctrl-A x quits with status 0, typed
    bytes reach the guest, and the terminal settings are restored on exit."""
    import pty
    import select
    import subprocess
    import termios
    import time
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    p = subprocess.Popen([a.vmm, "--kernel", a.guest, "--serial", "stdio"], stdin=slave,
                         stdout=slave, stderr=subprocess.PIPE)
    out = b""

    def read_until(text, timeout=20):
        nonlocal out
        deadline = time.monotonic() + timeout
        while text.encode() not in out:
            left = deadline - time.monotonic()
            check(left > 0, f"timed out waiting for {text!r}: {out!r}")
            r, _, _ = select.select([master], [], [], min(left, 0.2))
            if r:
                out += os.read(master, 4096)

    try:
        read_until("TESTGUEST READY")
        check(termios.tcgetattr(slave)[3] & termios.ICANON == 0, "terminal not in raw mode")
        # Raw mode: the guest gets '\r' for Enter (it ignores it) and the bytes as typed.
        os.write(master, b"echo typed on a terminal\r\n")
        read_until("typed on a terminal\r\n")
        os.write(master, b"\x01x")  # Ctrl-A x
        rc = p.wait(timeout=20)
        err = p.stderr.read().decode(errors="replace")
        check(rc == 0, f"Ctrl-A x gave exit code {rc}: {err}")
        check("Ctrl-A x" in err, f"quit reason not logged: {err}")
        check(termios.tcgetattr(slave) == before, "terminal settings were not restored")
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
        os.close(slave)


@test
def guest_panic(a):
    """A kernel panic on the guest console ends the VMM with status 3 and the
    panic line as the reason (here the test guest prints the lines Linux would)."""
    g = boot(a)
    try:
        g.command("echo Kernel panic - not syncing: VFS: Unable to mount root fs",
                  "Kernel panic")
        g.send("echo ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---")
        rc = g.wait()
        check(rc == 3, f"panic gave exit code {rc}", g)
        check("guest kernel panic: Kernel panic - not syncing: VFS: Unable to mount root fs"
              in g.err.decode(), "panic reason not logged", g)
    finally:
        g.kill()


# --- virtio devices (--disk, --net, --rng) through the guest's polling drivers ---
# Device IDs and the guest's commands: guest-images/test-guest/README.md.
VIRTIO_NET, VIRTIO_BLK, VIRTIO_RNG = 1, 2, 4
SECTOR = 512


def make_disk(d, name, sectors):
    """A raw image of random content; returns (path, content)."""
    path = os.path.join(d, name)
    data = os.urandom(sectors * SECTOR)
    with open(path, "wb") as f:
        f.write(data)
    return path, data


def blk_pattern(sector, count, seed):
    """What `blkwrite sector count seed` writes: byte j of sector s is (s*131 + j*7 + seed)."""
    return b"".join(bytes((s * 131 + j * 7 + seed) & 0xff for j in range(SECTOR))
                    for s in range(sector, sector + count))


def vdevs(g):
    """The guest's `vdevs` listing as [(slot, id, version)] in slot order."""
    g.send("vdevs")
    devs = []
    while True:
        line = g.expect("VDEV")
        m = re.match(r"VDEVS n=(\d+)$", line)
        if m:
            check(int(m.group(1)) == len(devs), f"VDEVS count mismatch: {line!r}", g)
            return devs
        m = re.match(r"VDEV slot=(\d+) base=0x([0-9a-f]+) id=(\d+) version=(\d+)$", line)
        check(m is not None, f"bad VDEV line {line!r}", g)
        slot = int(m.group(1))
        check(int(m.group(2), 16) == 0xd0001000 + slot * 0x1000, f"slot/base mismatch: {line!r}", g)
        devs.append((slot, int(m.group(3)), int(m.group(4))))


def check_vdevs(g, ids):
    """Our VMM puts the devices in consecutive slots from 0, all modern (version 2)."""
    got = vdevs(g)
    want = [(i, dev_id, 2) for i, dev_id in enumerate(ids)]
    check(got == want, f"vdevs {got}, want {want}", g)


def blkread(g, sector, count, dev=None, timeout=30):
    cmd = f"blkread {sector} {count}" + ("" if dev is None else f" {dev}")
    return g.command(cmd, "BLKREAD ", timeout)


def sha_line(data):
    return f"BLKREAD ok sha256={hashlib.sha256(data).hexdigest()}"


def finish(g):
    """The VMM is still alive and answering; the guest ends it with status 0."""
    check(g.proc.poll() is None, "vmm exited early", g)
    check(g.command("echo still here", "still here") == "still here", "guest not answering", g)
    g.send("exit 0")
    check(g.wait() == 0, "exit 0 expected", g)


@test
def virtio_absent(a):
    """Without virtio flags the guest finds no devices (and no stray windows)."""
    g = boot(a)
    try:
        check(vdevs(g) == [], "devices found on a VM without any", g)
        for cmd in ("blkinfo", "blkread 0 1", "rng 8", "netinfo", "vbad 0 index", "vreset 0"):
            check(g.command(cmd, "ERR ") == "ERR no device", f"{cmd!r} without a device", g)
        finish(g)
    finally:
        g.kill()


@test
def virtio_blk_read(a):
    with tempfile.TemporaryDirectory() as d:
        path, data = make_disk(d, "disk.raw", 8192)  # 4 MiB
        g = boot(a, "--disk", f"path={path}")
        try:
            check_vdevs(g, [VIRTIO_BLK])
            line = g.command("blkinfo", "BLK ")
            m = re.match(r"BLK capacity=(\d+) ro=([01]) features=0x([0-9a-f]+)$", line)
            check(m is not None, f"bad blkinfo {line!r}", g)
            check(int(m.group(1)) == 8192, f"capacity: {line!r}", g)
            check(m.group(2) == "0", f"writable disk reported read-only: {line!r}", g)
            check(int(m.group(3), 16) & (1 << 32), f"VIRTIO_F_VERSION_1 not offered: {line!r}", g)
            # One sector, a range of 3 requests (64 + 64 + 22 KiB) at an odd
            # sector, the largest read (8 requests), the last sector.
            for sector, count in ((0, 1), (37, 300), (1000, 1024), (8191, 1)):
                want = sha_line(data[sector * SECTOR:(sector + count) * SECTOR])
                line = blkread(g, sector, count)
                check(line == want, f"blkread {sector} {count}: {line!r}, want {want!r}", g)
            # Past the end: VIRTIO_BLK_S_IOERR, and the device keeps working.
            line = blkread(g, 8191, 2)
            check(line == "BLKREAD status=1", f"read past the end: {line!r}", g)
            check(blkread(g, 5, 3) == sha_line(data[5 * SECTOR:8 * SECTOR]),
                  "read after an error", g)
            finish(g)
        finally:
            g.kill()


@test
def virtio_blk_write(a):
    with tempfile.TemporaryDirectory() as d:
        path, data = make_disk(d, "disk.raw", 4096)  # 2 MiB
        g = boot(a, "--disk", f"path={path}")
        want = bytearray(data)
        try:
            for sector, count, seed in ((10, 200, 9), (4095, 1, 250), (0, 1, 0)):
                line = g.command(f"blkwrite {sector} {count} {seed}", "BLKWRITE ")
                check(line == "BLKWRITE ok", f"blkwrite {sector} {count} {seed}: {line!r}", g)
                want[sector * SECTOR:(sector + count) * SECTOR] = blk_pattern(sector, count, seed)
            line = g.command("blkwrite 4095 2 1", "BLKWRITE ")
            check(line == "BLKWRITE status=1", f"write past the end: {line!r}", g)
            line = g.command("blkflush", "BLKFLUSH ")
            check(line == "BLKFLUSH status=0", f"flush: {line!r}", g)
            # The guest reads back what it wrote.
            check(blkread(g, 0, 300) == sha_line(bytes(want[:300 * SECTOR])), "read back", g)
            finish(g)
        finally:
            g.kill()
        with open(path, "rb") as f:
            got = f.read()
        check(len(got) == len(want), f"disk size changed: {len(got)}")
        for s in range(len(want) // SECTOR):
            check(got[s * SECTOR:(s + 1) * SECTOR] == want[s * SECTOR:(s + 1) * SECTOR],
                  f"sector {s} of the host file is not what the guest wrote/left")


@test
def virtio_blk_readonly(a):
    with tempfile.TemporaryDirectory() as d:
        path, data = make_disk(d, "disk.raw", 2048)
        g = boot(a, "--disk", f"path={path},readonly=on")
        try:
            line = g.command("blkinfo", "BLK ")
            check(re.match(r"BLK capacity=2048 ro=1 features=0x[0-9a-f]+$", line) is not None,
                  f"read-only disk: {line!r}", g)
            for cmd in ("blkwrite 0 1 1", "blkwrite 100 300 7"):
                line = g.command(cmd, "BLKWRITE ")
                check(line == "BLKWRITE status=1", f"{cmd!r} on a read-only disk: {line!r}", g)
            check(blkread(g, 0, 256) == sha_line(data[:256 * SECTOR]), "read-only disk read", g)
            finish(g)
        finally:
            g.kill()
        with open(path, "rb") as f:
            check(f.read() == data, "read-only disk was modified")


@test
def virtio_blk_id_flush(a):
    with tempfile.TemporaryDirectory() as d:
        path, _ = make_disk(d, "disk.raw", 64)
        g = boot(a, "--disk", f"path={path},id=tg-disk-42")
        try:
            check(g.command("blkid", "BLKID") == "BLKID tg-disk-42", "blkid", g)
            for _ in range(2):
                check(g.command("blkflush", "BLKFLUSH ") == "BLKFLUSH status=0", "flush", g)
            check(g.command("blkwrite 3 2 77", "BLKWRITE ") == "BLKWRITE ok", "write", g)
            check(g.command("blkflush", "BLKFLUSH ") == "BLKFLUSH status=0", "flush", g)
            finish(g)
        finally:
            g.kill()


@test
def virtio_two_disks(a):
    with tempfile.TemporaryDirectory() as d:
        p0, d0 = make_disk(d, "a.raw", 1024)
        p1, d1 = make_disk(d, "b.raw", 3000)
        g = boot(a, "--disk", f"path={p0},id=first", "--disk", f"path={p1},readonly=on,id=second")
        try:
            check_vdevs(g, [VIRTIO_BLK, VIRTIO_BLK])
            check(g.command("blkinfo 0", "BLK ").startswith("BLK capacity=1024 ro=0 "), "disk 0", g)
            check(g.command("blkinfo 1", "BLK ").startswith("BLK capacity=3000 ro=1 "), "disk 1", g)
            check(g.command("blkid 0", "BLKID") == "BLKID first", "blkid 0", g)
            check(g.command("blkid 1", "BLKID") == "BLKID second", "blkid 1", g)
            check(blkread(g, 0, 200, 0) == sha_line(d0[:200 * SECTOR]), "disk 0 read", g)
            check(blkread(g, 0, 200, 1) == sha_line(d1[:200 * SECTOR]), "disk 1 read", g)
            check(blkread(g, 2000, 1000, 1) == sha_line(d1[2000 * SECTOR:]), "disk 1 tail", g)
            check(g.command("blkwrite 7 9 3 0", "BLKWRITE ") == "BLKWRITE ok", "disk 0 write", g)
            check(g.command("blkwrite 7 9 3 1", "BLKWRITE ") == "BLKWRITE status=1",
                  "disk 1 is read-only", g)
            check(g.command("blkinfo 2", "ERR ") == "ERR no device", "no third disk", g)
            finish(g)
        finally:
            g.kill()
        with open(p0, "rb") as f:
            got0 = f.read()
        with open(p1, "rb") as f:
            got1 = f.read()
        check(got0 == d0[:7 * SECTOR] + blk_pattern(7, 9, 3) + d0[16 * SECTOR:],
              "disk 0 does not hold the write")
        check(got1 == d1, "disk 1 was modified")


@test
def virtio_rng(a):
    with tempfile.TemporaryDirectory() as d:
        path, _ = make_disk(d, "disk.raw", 8)
        # Device order is fixed by kind, not by flag order: disks, nets, then rng.
        g = boot(a, "--rng", "--disk", f"path={path}")
        try:
            check_vdevs(g, [VIRTIO_BLK, VIRTIO_RNG])
            seen = set()
            for n in (32, 32, 64, 1):
                line = g.command(f"rng {n}", "RNG ")
                m = re.match(r"RNG ([0-9a-f]+)$", line)
                check(m is not None and len(m.group(1)) == 2 * n, f"rng {n}: {line!r}", g)
                if n >= 32:
                    check(int(m.group(1), 16) != 0, f"rng {n} returned zeros: {line!r}", g)
                    check(m.group(1) not in seen, f"rng repeated itself: {line!r}", g)
                    seen.add(m.group(1))
            finish(g)
        finally:
            g.kill()


def need_tap():
    """Root and /dev/net/tun, else SKIP (77)."""
    if os.geteuid() != 0:
        print("SKIP: TAP tests need root")
        sys.exit(SKIP)
    if not os.path.exists("/dev/net/tun") or shutil.which("ip") is None:
        print("SKIP: no /dev/net/tun or no ip(8)")
        sys.exit(SKIP)


class Tap:
    """A TAP interface made for one test (IPv6 off so the host sends nothing
    by itself), with an AF_PACKET socket on it for the test ethertype."""

    def __init__(self):
        self.name = f"tgt{os.getpid() % 1000000}"
        self.sock = None
        self._ip("link", "del", self.name)  # a leftover of a killed run with our pid
        subprocess.run(["ip", "tuntap", "add", self.name, "mode", "tap"], check=True)
        try:
            try:  # before "up": no router solicitations or MLD reports on it
                with open(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6", "w") as f:
                    f.write("1")
            except OSError:
                pass  # no IPv6 on this host: nothing to silence
            subprocess.run(["ip", "link", "set", self.name, "up"], check=True)
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TEST))
            self.sock.bind((self.name, ETH_TEST))
        except BaseException:
            self.close()
            raise

    def recv(self, timeout=10):
        """The next frame the guest sent (skips our own outgoing ones)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            check(left > 0, f"no frame from the guest on {self.name} within {timeout}s")
            self.sock.settimeout(left)
            try:
                frame, addr = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            if addr[2] != socket.PACKET_OUTGOING:
                return frame

    @staticmethod
    def _ip(*args):
        subprocess.run(["ip", *args], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def close(self):
        if self.sock:
            self.sock.close()
        self._ip("link", "del", self.name)


ETH_TEST = 0x88B5
GUEST_MAC = "52:54:00:5e:a1:07"


@test
def virtio_net(a):
    need_tap()
    tap = Tap()
    try:
        g = boot(a, "--net", f"tap={tap.name},mac={GUEST_MAC}")
        try:
            check_vdevs(g, [VIRTIO_NET])
            check(g.command("netinfo", "NET ") == f"NET mac={GUEST_MAC}", "netinfo", g)
            mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
            # Guest -> host: exact frames (smallest, largest).
            for length, seed in ((60, 5), (1514, 200)):
                check(g.command(f"netsend {length} {seed}", "NETSEND ") == "NETSEND ok",
                      f"netsend {length}", g)
                want = (b"\xff" * 6 + mac + ETH_TEST.to_bytes(2, "big") +
                        bytes((k + seed) & 0xff for k in range(length - 14)))
                got = tap.recv()
                check(got == want, f"netsend {length} {seed}: host got {got[:32].hex()}... "
                      f"({len(got)} bytes)", g)
            # Host -> guest -> host: the guest reports each frame and sends it back.
            peer = bytes.fromhex("02aabbccddee")
            frames = [b"\xff" * 6 + peer + ETH_TEST.to_bytes(2, "big") + os.urandom(n - 14)
                      for n in (60, 777, 1514)]
            g.send(f"netecho {len(frames)} 20000")
            for f in frames:
                tap.sock.send(f)
            for f in frames:
                got = tap.recv()
                check(got == peer + mac + f[12:],
                      f"echo of a {len(f)}-byte frame: {got[:32].hex()}", g)
            for f in frames:
                line = g.expect("NETRECV ")
                want = f"NETRECV len={len(f)} sha256={hashlib.sha256(f).hexdigest()}"
                check(line == want, f"{line!r}, want {want!r}", g)
            check(g.expect("NETECHO ") == f"NETECHO done n={len(frames)}", "netecho done", g)
            line = g.command("netecho 1 200", "NETECHO ")
            check(line == "NETECHO timeout n=0", f"netecho with no traffic: {line!r}", g)
            finish(g)
        finally:
            g.kill()
    finally:
        tap.close()


@test
def virtio_vbad(a):
    """A hostile driver: each malformed ring sets DEVICE_NEEDS_RESET (0x40) and
    nothing else; after a reset the device works again and the VMM keeps running."""
    with tempfile.TemporaryDirectory() as d:
        path, data = make_disk(d, "disk.raw", 512)
        g = boot(a, "--disk", f"path={path}", "--rng")
        try:
            check_vdevs(g, [VIRTIO_BLK, VIRTIO_RNG])
            good = sha_line(data[:16 * SECTOR])
            check(blkread(g, 0, 16) == good, "blkread before", g)
            for kind in ("index", "loop", "addr", "availjump"):
                for slot, after in ((0, "blkread 0 16"), (1, "rng 16")):
                    line = g.command(f"vbad {slot} {kind}", "VBAD ")
                    m = re.match(r"VBAD status=0x([0-9a-f]+)$", line)
                    check(m is not None, f"vbad {slot} {kind}: {line!r}", g)
                    status = int(m.group(1), 16)
                    check(status & 0x40, f"vbad {slot} {kind}: no DEVICE_NEEDS_RESET: {line!r}", g)
                    check(not status & 0x80, f"vbad {slot} {kind}: FAILED set: {line!r}", g)
                    check(g.command(after, "ERR ") == "ERR device needs vreset",
                          "guest driver state after vbad", g)
                    check(g.command(f"vreset {slot}", "VRESET ") == "VRESET ok",
                          f"vreset {slot} after {kind}", g)
                    if slot == 0:
                        check(blkread(g, 0, 16) == good, f"blkread after {kind} + vreset", g)
                    else:
                        line = g.command(after, "RNG ")
                        check(re.match(r"RNG [0-9a-f]{32}$", line) is not None,
                              f"rng after {kind} + vreset: {line!r}", g)
            finish(g)
        finally:
            g.kill()
        with open(path, "rb") as f:
            check(f.read() == data, "a hostile request changed the disk")


BENCH_RE = r" cycles=\d+ kicks=\d+ isr=\d+$"


@test
def virtio_blk_bench(a):
    """The benchmark commands (blkbench, benchirq, mmiobench, tsc): right
    request counts, a write lands where and as documented, bad arguments are
    refused, and the plain commands still work afterwards."""
    with tempfile.TemporaryDirectory() as d:
        path, data = make_disk(d, "disk.raw", 4096)
        g = boot(a, "--disk", f"path={path}")
        try:
            t0 = int(g.command("tsc", "TSC ").split()[1])
            for cmd, reqs in (("blkbench r 2048 128 seq", 16), ("blkbench r 4096 8 rand 4", 512),
                              ("blkbench r 8192 256 seq 5 0", 32)):
                line = g.command(cmd, "BLKBENCH ")
                check(re.match(rf"BLKBENCH ok reqs={reqs}{BENCH_RE}", line) is not None,
                      f"{cmd}: {line!r}", g)
            check(g.command("benchirq off", "BENCHIRQ ") == "BENCHIRQ off", "benchirq off", g)
            line = g.command("blkbench r 2048 8 rand 5", "BLKBENCH ")
            check(re.match(r"BLKBENCH ok reqs=256 cycles=\d+ kicks=\d+ isr=0$", line) is not None,
                  f"polling blkbench: {line!r}", g)
            check(g.command("benchirq ack", "BENCHIRQ ") == "BENCHIRQ ack", "benchirq ack", g)
            # 4 requests of 128 KiB from sector 0: each carries byte j = (j*7) & 0xff.
            line = g.command("blkbench w 1024 256 seq 2", "BLKBENCH ")
            check(re.match(rf"BLKBENCH ok reqs=4{BENCH_RE}", line) is not None,
                  f"blkbench w: {line!r}", g)
            for cmd in ("blkbench r 100 8 seq", "blkbench x 8 8 seq", "blkbench r 8 8 up",
                        "blkbench r 8 8 seq 6", "blkbench r 512 512 seq", "blkbench r 0 8 seq",
                        "blkbench r 8 8 seq 1 1", "blkbench r 8 8", "netbench tx 1 10",
                        "netbench tx 1 60", "netbench rx 1", "benchirq maybe", "mmiobench 0"):
                # A well-formed command for a device that is not there: no device.
                want = "ERR no device" if cmd in ("blkbench r 8 8 seq 1 1", "netbench tx 1 60") \
                    else "ERR bad argument"
                check(g.command(cmd, "ERR ") == want, f"{cmd!r}", g)
            line = g.command("mmiobench 100", "MMIOBENCH ")
            check(re.match(r"MMIOBENCH reads=100 cycles=\d+ bad=0$", line) is not None,
                  f"mmiobench: {line!r}", g)
            t1 = int(g.command("tsc", "TSC ").split()[1])
            check(t1 > t0, f"TSC went from {t0} to {t1}", g)
            pattern = bytes((j * 7) & 0xff for j in range(128 * 1024)) * 4
            want = pattern + data[len(pattern):]
            check(blkread(g, 1000, 48) == sha_line(want[1000 * SECTOR:1048 * SECTOR]),
                  "blkread after blkbench", g)
            finish(g)
        finally:
            g.kill()
        with open(path, "rb") as f:
            check(f.read() == want, "blkbench w wrote something else")


@test
def virtio_net_bench(a):
    """netbench tx: every frame reaches the TAP, as documented; netbench rx
    counts frames the host sends."""
    need_tap()
    tap = Tap()
    try:
        tap.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        g = boot(a, "--net", f"tap={tap.name},mac={GUEST_MAC}")
        try:
            line = g.command("netbench tx 300 60", "NETBENCH ")
            check(re.match(rf"NETBENCH tx ok frames=300{BENCH_RE}", line) is not None,
                  f"netbench tx: {line!r}", g)
            mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
            want = b"\xff" * 6 + mac + ETH_TEST.to_bytes(2, "big") + bytes(range(46))
            for i in range(300):
                got = tap.recv()
                check(got == want, f"frame {i}: {got[:32].hex()}... ({len(got)} bytes)", g)
            peer = bytes.fromhex("02aabbccddee")
            frame = b"\xff" * 6 + peer + ETH_TEST.to_bytes(2, "big") + bytes(586)
            g.send("netbench rx 40 20000")
            for _ in range(40):
                tap.sock.send(frame)
            line = g.expect("NETBENCH ")
            check(re.match(rf"NETBENCH rx ok frames=40 bytes={40 * 600}{BENCH_RE}", line)
                  is not None, f"netbench rx: {line!r}", g)
            line = g.command("netbench rx 1 100", "NETBENCH ")
            check(re.match(rf"NETBENCH rx timeout frames=0 bytes=0{BENCH_RE}", line) is not None,
                  f"netbench rx without traffic: {line!r}", g)
            check(g.command("netsend 60 5", "NETSEND ") == "NETSEND ok", "netsend after", g)
            finish(g)
        finally:
            g.kill()
    finally:
        tap.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--guest", required=True)
    ap.add_argument("name", choices=sorted(TESTS))
    a = ap.parse_args()
    require_kvm()
    TESTS[a.name](a)
    print(f"PASS {a.name}")


if __name__ == "__main__":
    main()
