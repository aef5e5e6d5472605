#!/usr/bin/env python3
"""KVM integration tests of the control socket (--api-socket) and vmmctl.
Usage: api_tests.py --vmm V --vmmctl C --guest G NAME"""
import argparse
import json
import re
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmmtest import Client, Guest, check, require_kvm  # noqa: E402

TESTS = {}


def test(fn):
    TESTS[fn.__name__] = fn
    return fn


def ticks(g):
    g._pump(0.05)
    return g.out.count(b"tick ")


def wait_ticks(g, more, timeout=20):
    start = ticks(g)
    deadline = time.monotonic() + timeout
    while ticks(g) < start + more:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {more} new ticks in {timeout}s\n{g.transcript()}")
        g._pump(0.1)


def pause_resume_cycle(g, c, what):
    check(c.call("pause")["ok"], f"{what}: pause", g)
    check(c.call("status")["state"] == "paused", f"{what}: state after pause", g)
    g._pump(0.3)  # output already in flight
    before = ticks(g)
    time.sleep(1.0)
    after = ticks(g)
    check(after == before, f"{what}: {after - before} ticks while paused", g)
    check(c.call("pause")["ok"], f"{what}: pause is idempotent", g)
    check(c.call("resume")["ok"], f"{what}: resume", g)
    check(c.call("status")["state"] == "running", f"{what}: state after resume", g)
    wait_ticks(g, 2)
    c.wait_event("paused")
    c.wait_event("resumed")


@test
def api_pause_resume(a):
    """A spinning guest stops printing while paused and continues after resume;
    events arrive; bad requests get errors and the connection stays usable."""
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "vm.sock")
        g = Guest(a.vmm, a.guest, ("--api-socket", sock))
        try:
            g.expect("TESTGUEST READY")
            c = Client(sock)
            st = c.call("status")
            check(st["ok"] and st["state"] == "running" and st["vcpus"] == 1, f"status {st}", g)
            g.send("spin")
            wait_ticks(g, 2)
            for i in range(3):
                pause_resume_cycle(g, c, f"cycle {i}")
            # Hostile requests: each gets an error, the connection survives.
            c.send_raw("this is not json")
            r = c.line()
            check(r["ok"] is False and "JSON" in r["error"], f"garbage: {r}", g)
            c.send_raw('{"id": 5}')
            r = c.line()
            check(r["ok"] is False and r["id"] == 5, f"no cmd: {r}", g)
            r = c.call("frobnicate")
            check(r["ok"] is False and "unknown command" in r["error"], f"unknown: {r}", g)
            c.send_raw("[1, 2, 3]")
            check(c.line()["ok"] is False, "array request", g)
            # A second client sees events too; shutdown ends the VMM with 0.
            c2 = Client(sock)
            check(c2.call("shutdown")["ok"], "shutdown", g)
            e = c.wait_event("guest-shutdown")
            check(e["exit_code"] == 0, f"guest-shutdown event {e}", g)
            rc = g.wait()
            check(rc == 0, f"exit code {rc} after shutdown", g)
            check(not os.path.exists(sock), "socket file left behind", g)
        finally:
            g.kill()


def kvmclock(g):
    """The guest's own kvmclock reading (ns) and the host's monotonic time."""
    t = time.monotonic()
    line = g.command("kvmclock", "KVMCLOCK ")
    check(line != "KVMCLOCK unsupported", "the guest has no kvmclock", g)
    return int(line.split()[1]), t


@test
def api_pause_freezes_clock(a):
    """Guest time (kvmclock, read by the guest) does not advance while the VM
    is paused; status reports the frozen value."""
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "vm.sock")
        g = Guest(a.vmm, a.guest, ("--api-socket", sock))
        try:
            g.expect("TESTGUEST READY")
            c = Client(sock)
            k1, t1 = kvmclock(g)
            check(c.call("pause")["ok"], "pause", g)
            s1 = c.call("status")["guest_clock_ns"]
            time.sleep(2.0)
            s2 = c.call("status")["guest_clock_ns"]
            check(s1 == s2, f"status guest_clock_ns moved while paused: {s1} -> {s2}", g)
            check(c.call("resume")["ok"], "resume", g)
            k2, t2 = kvmclock(g)
            wall, guest = t2 - t1, (k2 - k1) / 1e9
            print(f"wall {wall:.3f} s, guest {guest:.3f} s across a 2 s pause")
            check(0 < guest < wall - 1.5,
                  f"guest clock advanced {guest:.3f} s in {wall:.3f} s with 2 s paused", g)
            # And it keeps running afterwards.
            k3, _ = kvmclock(g)
            check(k3 > k2, f"kvmclock after resume {k2} -> {k3}", g)
        finally:
            g.kill()


@test
def api_pause_two_vcpus(a):
    """Pause parks every vCPU, including an AP brought up by the guest."""
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "vm.sock")
        g = Guest(a.vmm, a.guest, ("--api-socket", sock, "--cpus", "2"))
        try:
            g.expect("TESTGUEST READY")
            check(g.command("smp", "smp ", timeout=30) == "smp 2", "AP bring-up", g)
            c = Client(sock)
            g.send("spin")
            wait_ticks(g, 2)
            pause_resume_cycle(g, c, "2 vCPUs")
            check(c.call("shutdown")["ok"], "shutdown", g)
            check(g.wait() == 0, "exit code", g)
        finally:
            g.kill()


@test
def api_snapshot_create(a):
    """snapshot-create while the guest spins: DIR/state parses (snapshot-inspect)
    with every vCPU and device section, DIR/memory is the guest's size and
    sparse, the guest keeps running afterwards; a bad directory is an error."""
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "vm.sock")
        disk = os.path.join(d, "disk.raw")
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
        g = Guest(a.vmm, a.guest, ("--api-socket", sock, "--cpus", "2", "--mem", "128M",
                                   "--disk", disk, "--rng"))
        try:
            g.expect("TESTGUEST READY")
            check(g.command("smp", "smp ", timeout=30) == "smp 2", "AP bring-up", g)
            check(g.command("blkread 0 8", "BLKREAD ").startswith("BLKREAD ok"), "blk up", g)
            c = Client(sock)
            g.send("spin")
            wait_ticks(g, 2)
            snap = os.path.join(d, "snap")
            r = c.call("snapshot-create", dir=snap)
            check(r["ok"], f"snapshot-create: {r}", g)
            check(r["memory_bytes"] == 128 << 20, f"memory_bytes {r}", g)
            e = c.wait_event("snapshot-done")
            check(e["dir"] == snap, f"snapshot-done event {e}", g)
            check(c.call("status")["state"] == "running", "running after snapshot", g)
            wait_ticks(g, 2)
            st = os.stat(os.path.join(snap, "memory"))
            check(st.st_size == 128 << 20, f"memory file size {st.st_size}", g)
            check(st.st_blocks * 512 < st.st_size // 4, f"memory file not sparse: {st}", g)
            p = subprocess.run([a.inspect, snap], capture_output=True, text=True, timeout=30)
            check(p.returncode == 0, f"snapshot-inspect: {p.returncode} {p.stderr}", g)
            j = json.loads(p.stdout)
            want = {"vm", "vcpu0", "vcpu1", "serial0", "i8042", "boot_probe", "acpi_pm",
                    "virtio0", "virtio1"}
            check(want <= set(j["state"]), f"sections {sorted(j['state'])}", g)
            check(j["header"]["config"]["vcpus"] == "2", f"header {j['header']}", g)
            check(j["state"]["virtio0"]["activated"] is True, "virtio0 activated", g)
            bad = c.call("snapshot-create", dir="/proc/nonexistent/snap")
            check(bad["ok"] is False and "cannot create" in bad["error"], f"bad dir: {bad}", g)
            check(c.call("snapshot-create")["ok"] is False, "no dir", g)
            check(c.call("status")["state"] == "running", "running after a failed snapshot", g)
            check(c.call("shutdown")["ok"], "shutdown", g)
            check(g.wait() == 0, "exit code", g)
        finally:
            g.kill()


def tick_values(text):
    return [int(v) for v in re.findall(r"tick (\d+)\n", text)]


@test
def snapshot_restore_counting(a):
    """A guest counting in memory and printing ticks is paused, snapshotted and
    killed; the restored VM continues the same count: no gap, no repeat (the
    console output of both processes joins into one consecutive sequence)."""
    with tempfile.TemporaryDirectory() as d:
        sock, snap = os.path.join(d, "vm.sock"), os.path.join(d, "snap")
        g = Guest(a.vmm, a.guest, ("--api-socket", sock, "--mem", "128M"))
        try:
            g.expect("TESTGUEST READY")
            c = Client(sock)
            g.send("spin")
            wait_ticks(g, 3)
            check(c.call("pause")["ok"], "pause", g)
            g._pump(0.3)
            r = c.call("snapshot-create", dir=snap)
            check(r["ok"], f"snapshot-create {r}", g)
            before = g.out.decode(errors="replace")
        finally:
            g.kill()
        g2 = Guest(a.vmm, None, ("--restore", snap))
        try:
            wait_ticks(g2, 4)
            # Only complete lines count: the last tick may still be printing.
            after = g2.out.decode(errors="replace")
            after = after[:after.rindex("\n") + 1]
            joined = before + after
            seq = tick_values(joined[joined.index("tick "):])
            n_before = len(tick_values(before))
            check(len(seq) >= n_before + 2, f"ticks {seq} ({n_before} before the snapshot)", g2)
            step = seq[0]
            bad = [(x, y) for x, y in zip(seq, seq[1:]) if y != x + step]
            check(not bad, f"count not continuous across restore: {bad}\nbefore={before[-80:]!r}"
                  f"\nafter={after[:80]!r}", g2)
            check("restored from" in g2.err.decode(), "restore log line", g2)
        finally:
            g2.kill()


@test
def snapshot_restore_disk(a):
    """A guest with a disk and rng is snapshotted at its prompt after writing;
    the restored VM answers commands, reads back what it wrote (host file
    consistent), writes more, and its devices work. Corrupt or mismatched
    snapshots are refused with exit 2 and a reason."""
    with tempfile.TemporaryDirectory() as d:
        sock, snap, disk = (os.path.join(d, n) for n in ("vm.sock", "snap", "disk.raw"))
        with open(disk, "wb") as f:
            f.write(os.urandom(1 << 20))
        g = Guest(a.vmm, a.guest, ("--api-socket", sock, "--mem", "128M", "--disk", disk,
                                   "--rng"))
        try:
            g.expect("TESTGUEST READY")
            check(g.command("blkwrite 10 20 7", "BLKWRITE ") == "BLKWRITE ok", "blkwrite", g)
            want = g.command("blkread 0 64", "BLKREAD ")
            c = Client(sock)
            k1, t1 = kvmclock(g)
            check(c.call("snapshot-create", dir=snap)["ok"], "snapshot-create", g)
            t_snap = time.monotonic()
            check(g.command("echo still-here", "still-here") == "still-here", "source runs", g)
        finally:
            g.kill()
        time.sleep(1.0)
        t_restore = time.monotonic()
        g2 = Guest(a.vmm, None, ("--restore", snap))
        try:
            # Guest time continues from the snapshot: the time between
            # snapshot and restore (> 1 s here) is not in it.
            k2, t2 = kvmclock(g2)
            guest, wall, gap = (k2 - k1) / 1e9, t2 - t1, t_restore - t_snap
            print(f"guest {guest:.3f} s, wall {wall:.3f} s, {gap:.3f} s between snapshot and restore")
            check(0 < guest < wall - gap + 0.3,
                  f"guest clock advanced {guest:.3f} s in {wall:.3f} s with {gap:.3f} s stopped", g2)
            g2.send("echo restored-ok")
            g2.expect("restored-ok")
            check(g2.command("blkread 0 64", "BLKREAD ") == want, "blkread after restore", g2)
            check(g2.command("blkwrite 100 4 9", "BLKWRITE ") == "BLKWRITE ok", "write", g2)
            check(g2.command("blkflush", "BLKFLUSH ") == "BLKFLUSH status=0", "flush", g2)
            line = g2.command("rng 16", "RNG ")
            check(re.match(r"RNG [0-9a-f]{32}$", line) is not None, f"rng {line!r}", g2)
            g2.send("exit 0")
            check(g2.wait() == 0, "exit code", g2)
        finally:
            g2.kill()
        with open(disk, "rb") as f:
            f.seek(100 * 512)
            got = f.read(512)
        check(got == bytes((100 * 131 + j * 7 + 9) & 0xff for j in range(512)),
              "write after restore not in the host file")
        # Refusals: a flipped byte in the state, a truncated memory file.
        state = os.path.join(snap, "state")
        data = bytearray(open(state, "rb").read())
        data[len(data) // 2] ^= 0x40
        open(state, "wb").write(bytes(data))
        p = subprocess.run([a.vmm, "--restore", snap, "--serial", "none"], capture_output=True,
                           text=True, timeout=30)
        check(p.returncode == 2 and "checksum" in p.stderr.lower(), f"corrupt: {p.returncode} "
              f"{p.stderr}")
        data[len(data) // 2] ^= 0x40
        open(state, "wb").write(bytes(data))
        os.truncate(os.path.join(snap, "memory"), 4096)
        p = subprocess.run([a.vmm, "--restore", snap, "--serial", "none"], capture_output=True,
                           text=True, timeout=30)
        check(p.returncode == 2 and "memory file" in p.stderr, f"short memory: {p.returncode} "
              f"{p.stderr}")
        p = subprocess.run([a.vmm, "--restore", snap, "--kernel", a.guest], capture_output=True,
                           text=True, timeout=30)
        check(p.returncode == 2, f"--restore with --kernel: {p.returncode}")


@test
def snapshot_mid_io(a):
    """Snapshotted in the middle of a write benchmark (16384 requests,
    4 in flight): pause lets the device finish the request it is on and keeps
    the rest in the ring; the restored VM completes the benchmark exactly
    once, and every request's data is in the host file."""
    with tempfile.TemporaryDirectory() as d:
        sock, snap, disk = (os.path.join(d, n) for n in ("vm.sock", "snap", "disk.raw"))
        sectors, req = 131072, 8  # 64 MiB in 16384 requests of 4 KiB
        with open(disk, "wb") as f:
            f.truncate(sectors * 512)
        g = Guest(a.vmm, a.guest, ("--api-socket", sock, "--mem", "128M", "--disk", disk))
        try:
            g.expect("TESTGUEST READY")
            c = Client(sock)
            g.send(f"blkbench w {sectors} {req} seq 4")
            time.sleep(0.2)
            r = c.call("snapshot-create", dir=snap)
            check(r["ok"], f"snapshot-create {r}", g)
            g._pump(0.2)
            check(b"BLKBENCH" not in g.out,
                  "the benchmark finished before the snapshot: not a mid-I/O snapshot", g)
        finally:
            g.kill()
        g2 = Guest(a.vmm, None, ("--restore", snap))
        try:
            line = g2.expect("BLKBENCH", timeout=120)
            check(f"BLKBENCH ok reqs={sectors // req}" in line, f"restored bench: {line}", g2)
            check(g2.command("echo after", "after") == "after", "restored guest answers", g2)
            g2.send("exit 0")
            check(g2.wait() == 0, "exit code", g2)
            check(g2.out.count(b"BLKBENCH") == 1, "benchmark reported more than once", g2)
        finally:
            g2.kill()
        want = bytes((j * 7) & 0xff for j in range(req * 512))
        with open(disk, "rb") as f:
            data = f.read()
        bad = [i for i in range(0, len(data), len(want)) if data[i:i + len(want)] != want]
        check(not bad, f"{len(bad)} of {len(data) // len(want)} requests' data missing in the "
              f"host file (first at byte {bad[:1]})")


@test
def vmmctl_cli(a):
    """vmmctl: exit codes and output."""
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "vm.sock")
        missing = subprocess.run([a.vmmctl, "-s", os.path.join(d, "nope"), "status"],
                                 capture_output=True, text=True, timeout=10)
        check(missing.returncode == 3 and "cannot connect" in missing.stderr,
              f"no socket: rc={missing.returncode} {missing.stderr}")
        g = Guest(a.vmm, a.guest, ("--api-socket", sock))
        try:
            g.expect("TESTGUEST READY")
            Client(sock)  # waits for the socket
            run = lambda *args: subprocess.run([a.vmmctl, "-s", sock, *args],  # noqa: E731
                                               capture_output=True, text=True, timeout=10)
            st = run("status", "--compact")
            check(st.returncode == 0 and json.loads(st.stdout)["state"] == "running",
                  f"status: {st.returncode} {st.stdout} {st.stderr}", g)
            check(run("pause").returncode == 0, "pause", g)
            check(json.loads(run("status").stdout)["state"] == "paused", "paused", g)
            check(run("resume").returncode == 0, "resume", g)
            bad = run("raw", '{"cmd": "nonesuch"}')
            check(bad.returncode == 1 and "unknown command" in bad.stderr,
                  f"refused command: {bad.returncode} {bad.stderr}", g)
            check(run("frob").returncode == 2, "usage error", g)
            check(run("raw", "not json").returncode == 2, "bad raw request", g)
            snap = os.path.join(d, "snap")
            sc = run("snapshot", "create", snap, "--compact")
            check(sc.returncode == 0 and json.loads(sc.stdout)["dir"] == snap and
                  os.path.exists(os.path.join(snap, "state")),
                  f"snapshot create: {sc.returncode} {sc.stdout} {sc.stderr}", g)
            check(run("snapshot", "remove", snap).returncode == 2, "snapshot usage error", g)
            check(run("shutdown").returncode == 0, "shutdown", g)
            check(g.wait() == 0, "exit code", g)
        finally:
            g.kill()


@test
def api_socket_errors(a):
    """An --api-socket path that is a regular file is refused; the VMM exits 1
    with a reason (before running the guest)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "file")
        open(path, "w").close()
        p = subprocess.run([a.vmm, "--kernel", a.guest, "--serial", "none", "--api-socket", path],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode == 1 and "not a socket" in p.stderr, f"rc={p.returncode} {p.stderr}")
        check(os.path.exists(path), "the regular file was removed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--vmmctl", required=True)
    ap.add_argument("--guest", required=True)
    ap.add_argument("--inspect", default="snapshot-inspect")
    ap.add_argument("name", choices=sorted(TESTS))
    a = ap.parse_args()
    require_kvm()
    TESTS[a.name](a)
    print(f"PASS {a.name}")


if __name__ == "__main__":
    main()
