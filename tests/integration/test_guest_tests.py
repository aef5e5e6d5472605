#!/usr/bin/env python3
"""KVM integration tests: the freestanding test guest (guest-images/test-guest)
through the real vmm binary. Usage: test_guest_tests.py --vmm V --guest G NAME"""
import argparse
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmmtest import Guest, check, require_kvm  # noqa: E402

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
    """Boots, sends one command, and checks the vmm's exit code and logged reason."""
    g = boot(a)
    try:
        g.send(command)
        rc = g.wait()
        check(rc == want_rc, f"{command!r} gave exit code {rc}, want {want_rc}", g)
        check(want_reason in g.err.decode(), f"{command!r}: reason {want_reason!r} not logged", g)
    finally:
        g.kill()


@test
def reset(a):
    expect_exit(a, "reset", 0, "guest reset (i8042)")


@test
def triple_fault(a):
    expect_exit(a, "triple", 3, "triple fault")


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
            (["--bogus-flag"], "unknown flag"),
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
