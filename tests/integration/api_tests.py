#!/usr/bin/env python3
"""KVM integration tests of the control socket (--api-socket) and vmmctl.
Usage: api_tests.py --vmm V --vmmctl C --guest G NAME"""
import argparse
import json
import re
import os
import shutil
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
            again = c.call("snapshot-create", dir=snap)
            check(again["ok"] is False and "not empty" in again["error"], f"same dir: {again}", g)
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
        # The snapshot names no host resource: restore gets the disk again from
        # its command line, and refuses one that does not give the saved machine.
        for args, why in (((), "the snapshot has 1 disk(s), the command line gives 0 --disk"),
                          (("--disk", f"path={disk},readonly=on"),
                           "disk0 readonly: off in the snapshot, on here"),
                          (("--disk", disk, "--mem", "128M"), "--restore takes --mem"),
                          (("--disk", disk, "--rng"), "--restore takes --rng")):
            p = subprocess.run([a.vmm, "--restore", snap, "--serial", "none", *args],
                               capture_output=True, text=True, timeout=30)
            check(p.returncode == 2 and why in p.stderr, f"restore {args}: {p.returncode} "
                  f"{p.stderr}")
        t_restore = time.monotonic()
        g2 = Guest(a.vmm, None, ("--restore", snap, "--disk", disk))
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
        p = subprocess.run([a.vmm, "--restore", snap, "--serial", "none", "--disk", disk],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode == 2 and "checksum" in p.stderr.lower(), f"corrupt: {p.returncode} "
              f"{p.stderr}")
        data[len(data) // 2] ^= 0x40
        open(state, "wb").write(bytes(data))
        os.truncate(os.path.join(snap, "memory"), 4096)
        p = subprocess.run([a.vmm, "--restore", snap, "--serial", "none", "--disk", disk],
                           capture_output=True, text=True, timeout=30)
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
        g2 = Guest(a.vmm, None, ("--restore", snap, "--disk", disk))
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
def snapshot_create_refuses_links(a):
    """snapshot-create writes only into a new or empty directory, never through
    a link: a directory holding a planted symlink named `memory`, and a
    directory path that is itself a symlink, are refused, and the link's
    target stays untouched; an empty directory works."""
    with tempfile.TemporaryDirectory() as d:
        sock, victim = os.path.join(d, "vm.sock"), os.path.join(d, "victim")
        with open(victim, "w") as f:
            f.write("precious")
        planted = os.path.join(d, "planted")
        os.mkdir(planted)
        os.symlink(victim, os.path.join(planted, "memory"))
        real = os.path.join(d, "real")
        os.mkdir(real)
        os.symlink(real, os.path.join(d, "dirlink"))
        empty = os.path.join(d, "empty")
        os.mkdir(empty)
        g = Guest(a.vmm, a.guest, ("--api-socket", sock, "--mem", "64M"))
        try:
            g.expect("TESTGUEST READY")
            c = Client(sock)
            r = c.call("snapshot-create", dir=planted)
            check(r["ok"] is False and "not empty" in r["error"], f"planted link: {r}", g)
            r = c.call("snapshot-create", dir=os.path.join(d, "dirlink"))
            check(r["ok"] is False and "not a directory" in r["error"], f"dir link: {r}", g)
            check(os.listdir(real) == [], f"wrote through the directory link: {os.listdir(real)}")
            r = c.call("snapshot-create", dir=empty)
            check(r["ok"] is True, f"empty directory: {r}", g)
            check(sorted(os.listdir(empty)) == ["memory", "state"], f"files {os.listdir(empty)}")
            check(c.call("status")["state"] == "running", "running after the refusals", g)
            check(c.call("shutdown")["ok"], "shutdown", g)
            check(g.wait() == 0, "exit code", g)
        finally:
            g.kill()
        with open(victim) as f:
            check(f.read() == "precious", "the symlink's target was written")
        check(os.path.islink(os.path.join(planted, "memory")), "the planted link was replaced")


# ---------------------------------------------- restore: hostile headers ----
DISK_BYTES = 1 << 20
DISK_ID = "disk-a"


def snapshot_with_disk(a, d):
    """A snapshot of the test guest with one disk (id=DISK_ID) at its prompt;
    returns (snapshot dir, disk path)."""
    sock, snap, disk = (os.path.join(d, n) for n in ("vm.sock", "snap", "disk-a.raw"))
    with open(disk, "wb") as f:
        f.write(b"A" * DISK_BYTES)
    g = Guest(a.vmm, a.guest, ("--api-socket", sock, "--mem", "128M", "--disk",
                               f"path={disk},id={DISK_ID}"))
    try:
        g.expect("TESTGUEST READY")
        check(Client(sock).call("snapshot-create", dir=snap)["ok"], "snapshot-create", g)
    finally:
        g.kill()
    return snap, disk


def edited_copy(a, snap, dest, *ops):
    """A copy of snapshot `snap` at `dest` whose header had `ops` applied
    (snapshot-edit: set KEY VALUE | del KEY | template NAME; CRC recomputed)."""
    os.mkdir(dest)
    shutil.copy(os.path.join(snap, "state"), os.path.join(dest, "state"))
    os.link(os.path.join(snap, "memory"), os.path.join(dest, "memory"))
    p = subprocess.run([a.edit, os.path.join(dest, "state"), *ops], capture_output=True, text=True)
    check(p.returncode == 0, f"snapshot-edit {ops}: {p.stderr}")
    return dest


def opened_paths(pid):
    """Every path the process has open or mapped (fds and /proc/PID/maps)."""
    paths = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            paths.add(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            pass
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6:
                paths.add(parts[5].strip())
    return paths


def restore_outcome(a, snap, disk, workdir):
    """Runs `vmm --restore snap --disk disk`. Returns ("refused", rc, stderr)
    if it exits within 10 s, else ("running", opened paths, stderr) once its
    control socket answers (then shuts it down)."""
    sock = os.path.join(workdir, "r.sock")
    p = subprocess.Popen([a.vmm, "--restore", snap, "--disk", disk, "--serial", "none",
                          "--api-socket", sock], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            if p.poll() is not None:
                return "refused", p.returncode, p.stderr.read()
            if os.path.exists(sock):
                try:
                    c = Client(sock, timeout=5)
                except OSError:
                    time.sleep(0.05)
                    continue
                paths = opened_paths(p.pid)
                c.call("shutdown")
                p.wait(timeout=20)
                return "running", paths, p.stderr.read()
            time.sleep(0.02)
        raise AssertionError(f"restore neither ran nor exited in 10 s: {snap}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@test
def restore_hostile_header(a):
    """The attack found in review: a snapshot whose header names another host
    file of the same size (CRC recomputed, serial matching) is refused with
    exit 2 and that file is never opened; a header adding a TAP creates no
    interface; vcpus=0 and an oversized mem_bytes (with a sparse memory file
    of that size) are refused by the header check, before any allocation."""
    with tempfile.TemporaryDirectory() as d:
        snap, disk = snapshot_with_disk(a, d)
        other = os.path.join(d, "other-host-file")
        with open(other, "wb") as f:
            f.write(b"SECRET" * (DISK_BYTES // 6) + b"S" * (DISK_BYTES % 6))
        attack = edited_copy(a, snap, os.path.join(d, "attack"), "set", "disk0",
                             f"path={other},readonly=off,id={DISK_ID}")
        kind, rc, err = restore_outcome(a, attack, disk, d)
        check(kind == "refused" and rc == 2 and "snapshot header: disk0" in err,
              f"old-style path in the header: {kind} {rc} {err}")
        # The same header, and a restore that did run, never hold `other`.
        ok_snap = edited_copy(a, snap, os.path.join(d, "plain"), "set", "vmm_note", "x",
                              "del", "vmm_note")
        kind, paths, err = restore_outcome(a, ok_snap, disk, d)
        check(kind == "running", f"an unmodified snapshot did not restore: {err}")
        check(disk in paths and other not in paths, f"open files {sorted(paths)}")
        tap = edited_copy(a, snap, os.path.join(d, "tap"), "set", "net0", "mac=52:54:00:00:00:01")
        kind, rc, err = restore_outcome(a, tap, disk, d)
        check(kind == "refused" and rc == 2 and "gives 0 --net" in err, f"tap: {kind} {rc} {err}")
        check(not os.path.exists("/sys/class/net/evil0"), "an interface appeared")
        for key, value, why in (("vcpus", "0", "vcpus=0 is out of range"),
                                ("mem_bytes", str(2 << 40), "exceeds the maximum")):
            bad = edited_copy(a, snap, os.path.join(d, f"bad-{key}"), "set", key, value)
            os.unlink(os.path.join(bad, "memory"))
            with open(os.path.join(bad, "memory"), "wb") as f:
                f.truncate(int(value) if key == "mem_bytes" else 128 << 20)
            kind, rc, err = restore_outcome(a, bad, disk, d)
            check(kind == "refused" and rc == 2 and "snapshot header" in err and why in err,
                  f"{key}={value}: {kind} {rc} {err}")


@test
def restore_header_mutations(a):
    """Every config field of a real snapshot's header rewritten to hostile
    values (CRC recomputed, so only the meaning is wrong): each restore either
    exits 2 with a reason or runs holding exactly the command line's disk;
    the other host file and the named TAP are never opened or created."""
    with tempfile.TemporaryDirectory() as d:
        snap, disk = snapshot_with_disk(a, d)
        other = os.path.join(d, "other-host-file")
        with open(other, "wb") as f:
            f.write(b"B" * DISK_BYTES)
        sectors = DISK_BYTES // 512
        mutations = [
            ("set", "disk0", f"path={other},readonly=off,id={DISK_ID}"),
            ("set", "disk0", f"sectors={sectors},readonly=off,id={DISK_ID},path={other}"),
            ("set", "disk0", f"sectors={sectors},readonly=off,id={other}"),
            ("set", "disk0", f"sectors={sectors * 2},readonly=off,id={DISK_ID}"),
            ("set", "disk0", f"sectors={sectors},readonly=on,id={DISK_ID}"),
            ("set", "disk0", f"sectors={sectors},readonly=off,id=other-id"),
            ("set", "disk0", f"sectors=-1,readonly=off,id={DISK_ID}"),
            ("set", "disk1", f"sectors={sectors},readonly=off,id=x"),
            ("set", "disk1", f"path={other}"),
            ("set", "net0", "tap=evil0"),
            ("set", "net0", "mac=52:54:00:00:00:01"),
            ("del", "disk0"),
            ("set", "vcpus", "0"), ("set", "vcpus", "255"), ("set", "vcpus", "-1"),
            ("set", "vcpus", "2"), ("set", "vcpus", "1x"), ("set", "vcpus", "99999999999999999999"),
            ("set", "mem_bytes", "0"), ("set", "mem_bytes", "128M"),
            ("set", "mem_bytes", str(256 << 20)), ("set", "mem_bytes", str(1 << 41)),
            ("set", "mem_bytes", str((128 << 20) + 1)), ("del", "mem_bytes"),
            ("set", "acpi", "off"), ("set", "acpi", "maybe"),
            ("set", "rng", "on"), ("set", "rng", "off"), ("set", "rng", "1"),
            ("set", "path", other), ("set", "tap", "evil0"),
            ("template", "minimal"), ("template", "../../etc/passwd"), ("template", ""),
        ]
        tally = {"refused": 0, "running": 0}
        for i, op in enumerate(mutations):
            copy = edited_copy(a, snap, os.path.join(d, f"m{i}"), *op)
            kind, detail, err = restore_outcome(a, copy, disk, d)
            tally[kind] += 1
            if kind == "refused":
                check(detail == 2 and "--restore" in err, f"{op}: exit {detail}: {err}")
            else:
                check(disk in detail and other not in detail, f"{op}: open files {sorted(detail)}")
            shutil.rmtree(copy)
        check(not os.path.exists("/sys/class/net/evil0"), "a TAP named by a header appeared")
        print(f"{len(mutations)} mutations: {tally['refused']} refused (exit 2), "
              f"{tally['running']} ran with the command line's disk only")


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
    ap.add_argument("--edit", default="snapshot-edit")
    ap.add_argument("name", choices=sorted(TESTS))
    a = ap.parse_args()
    require_kvm()
    TESTS[a.name](a)
    print(f"PASS {a.name}")


if __name__ == "__main__":
    main()
