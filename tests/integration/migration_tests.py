#!/usr/bin/env python3
"""KVM integration tests of live migration between two vmm processes
(docs/migration.md). The guest is the test guest's `dirty` workload: it
increments a byte in every page of a range, pass after pass, checking each
page holds the pass number first, so a page lost or sent stale by the
migration prints "DIRTY MISMATCH" on the destination.
Usage: migration_tests.py --vmm V --vmmctl C --guest G NAME"""
import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmmtest import SKIP, Client, Guest, check, incoming, require_kvm  # noqa: E402

TESTS = {}
MEM = "256M"
DIRTY_MIB = 32


def test(fn):
    TESTS[fn.__name__] = fn
    return fn


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pass_numbers(out):
    """The N of every complete "dirty pass N" line: a migration can pause the
    guest in the middle of printing one, and the rest of it then appears on
    the destination's console."""
    return [int(n) for n in re.findall(rb"dirty pass (\d+)\n", out)]


def passes(g):
    """The last complete pass line's N (0 before the first)."""
    m = pass_numbers(g.out)
    return m[-1] if m else 0


def wait_passes(g, more, timeout=30):
    start = passes(g)
    deadline = time.monotonic() + timeout
    while passes(g) < start + more:
        check(b"MISMATCH" not in g.out, "the guest saw a stale page", g)
        if time.monotonic() > deadline:
            raise AssertionError(f"no {more} new dirty passes in {timeout}s\n{g.transcript()}")
        g._pump(0.1)


def start_source(a, d, extra=()):
    sock = os.path.join(d, "src.sock")
    g = Guest(a.vmm, a.guest, ("--api-socket", sock, "--mem", MEM, *extra))
    g.expect("TESTGUEST READY")
    g.send(f"dirty {DIRTY_MIB} 8")
    g.expect("dirty pass", timeout=90)  # the first pass faults in every page: >20 s in L1
    return g, Client(sock, timeout=60)


def wait_migration(c, timeout=120):
    """Events until migration-done/failed; returns (final event, progress events)."""
    progress = []
    c.s.settimeout(timeout)
    while True:
        e = c.events.pop(0) if c.events else c.line()
        ev = e.get("event")
        if ev == "migration-progress":
            progress.append(e)
        elif ev in ("migration-done", "migration-failed"):
            return e, progress


def check_source_survived(g, c, what):
    """After a failed migration the source guest runs on: status running and
    its passes continue, consistent."""
    st = c.call("status")
    check(st["state"] == "running", f"{what}: source state {st['state']}", g)
    check(st["migration"]["state"] in ("failed", "cancelled"),
          f"{what}: migration status {st['migration']}", g)
    wait_passes(g, 2)
    check(b"MISMATCH" not in g.out, f"{what}: source guest saw a stale page", g)


@test
def migrate_tcp_dirtying(a):
    """A guest dirtying 32 MiB continuously moves over TCP loopback: the
    destination continues the passes with every page consistent, the source
    exits 0, the summary and progress events carry the numbers."""
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        dst = incoming(a.vmm, f"tcp:127.0.0.1:{port}", "--mem", MEM)
        src, c = start_source(a, d)
        try:
            before = passes(src)
            r = c.call("migrate", uri=f"tcp:127.0.0.1:{port}", downtime_ms=100, max_rounds=5)
            check(r["ok"] and r["started"], f"migrate reply {r}", src)
            done, progress = wait_migration(c)
            check(done["event"] == "migration-done", f"migration failed: {done}", src)
            print(f"migration: {json.dumps(done)}")
            check(len(progress) >= 1 and progress[0]["round"] == 0, f"progress {progress}", src)
            for key in ("total_ms", "downtime_ms", "rounds", "bytes", "pages", "zero_pages"):
                check(key in done, f"summary lacks {key}: {done}", src)
            check(done["bytes"] >= DIRTY_MIB << 20, f"only {done['bytes']} bytes sent", src)
            rc = src.wait(timeout=20)
            check(rc == 0, f"source exit {rc} after migrating", src)
            check("migrated to" in src.err.decode(), "source log says migrated", src)
            last_src = passes(src)
            check(last_src >= before, "source passes", src)
            # The destination continues where the source stopped: same
            # counters, every page checked by the guest on each pass.
            wait_passes(dst, 3)
            first_dst = pass_numbers(dst.out)[0]
            check(last_src < first_dst <= last_src + 8 * 2,
                  f"destination's first pass {first_dst} does not follow the source's last "
                  f"{last_src}", dst)
            # One console across both processes: the source's output followed
            # by the destination's (a line cut by the pause continues there)
            # counts every 8th pass exactly once, no gap and no repeat.
            seq = pass_numbers(src.out + dst.out)
            check(seq == list(range(seq[0], seq[0] + 8 * len(seq), 8)),
                  f"the passes printed across the move are not consecutive: {seq}", dst)
            check(b"MISMATCH" not in dst.out, "destination guest saw a stale page", dst)
            check("incoming migration complete" in dst.err.decode(), "destination log", dst)
        finally:
            src.kill()
            dst.kill()


@test
def migrate_unix_vmmctl(a):
    """Same-host move over a Unix socket driven by `vmmctl migrate` (progress
    lines, summary, exit 0); the moved guest answers a new command. The
    destination's disk is its own command line's (a copy at another path,
    no id=: the source's serial is taken over); it never opens the source's."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mig.sock")
        src_disk, dst_disk = os.path.join(d, "src.raw"), os.path.join(d, "dst.raw")
        for disk in (src_disk, dst_disk):
            with open(disk, "wb") as f:
                f.truncate(1 << 20)
        dst = incoming(a.vmm, f"unix:{path}", "--mem", MEM,
                       "--api-socket", os.path.join(d, "dst.sock"), "--disk", dst_disk)
        src, c = start_source(a, d, ("--disk", src_disk))
        # One control socket on the destination from the start to the end.
        dc = Client(os.path.join(d, "dst.sock"))
        check(dc.call("status")["state"] == "incoming", "destination status before", dst)
        try:
            p = subprocess.run([a.vmmctl, "--socket", os.path.join(d, "src.sock"), "migrate",
                                f"unix:{path}", "--downtime-ms", "200", "--max-rounds", "4"],
                               capture_output=True, text=True, timeout=120)
            print(p.stderr)
            check(p.returncode == 0, f"vmmctl migrate exit {p.returncode}: {p.stderr}", src)
            check(re.search(r"round 0 \| sent .* \| expected downtime", p.stderr),
                  f"no progress line: {p.stderr}", src)
            check("migrated: total" in p.stderr, f"no summary: {p.stderr}", src)
            summary = json.loads(p.stdout)
            check(summary["downtime_ms"] > 0, f"summary {summary}", src)
            check(src.wait(timeout=20) == 0, "source exit", src)
            wait_passes(dst, 2)
            check(b"MISMATCH" not in dst.out, "destination guest saw a stale page", dst)
            st = dc.call("status")
            check(st["state"] == "running", f"destination status {st}", dst)
            check(any(e["event"] == "migration-incoming-done" for e in dc.events),
                  f"no migration-incoming-done event: {dc.events}", dst)
            fds = {os.readlink(f"/proc/{dst.proc.pid}/fd/{n}")
                   for n in os.listdir(f"/proc/{dst.proc.pid}/fd")}
            check(dst_disk in fds and src_disk not in fds, f"destination's files {fds}", dst)
        finally:
            src.kill()
            dst.kill()


@test
def migrate_refused_config(a):
    """A destination with a different configuration refuses in the Hello:
    the source reports why and keeps running; the destination exits 1."""
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        dst = incoming(a.vmm, f"tcp:127.0.0.1:{port}", "--mem", "128M")
        src, c = start_source(a, d)
        try:
            r = c.call("migrate", uri=f"tcp:127.0.0.1:{port}")
            check(r["ok"], f"migrate reply {r}", src)
            done, _ = wait_migration(c)
            check(done["event"] == "migration-failed", f"expected failure: {done}", src)
            check("refused" in done["error"] and "memory bytes" in done["error"],
                  f"reason: {done['error']}", src)
            rc = dst.wait(timeout=20)
            check(rc == 1, f"destination exit {rc}", dst)
            check("refused the incoming migration" in dst.err.decode(), "destination log", dst)
            check_source_survived(src, c, "refused")
            # Nothing listening at all: fails fast, source fine.
            r = c.call("migrate", uri=f"tcp:127.0.0.1:{port}")
            done, _ = wait_migration(c)
            check(done["event"] == "migration-failed", f"no destination: {done}", src)
            check_source_survived(src, c, "no destination")
            # Bad requests are refused up front.
            r = c.call("migrate", uri="ftp:nowhere")
            check(not r["ok"], f"bad uri accepted: {r}", src)
            r = c.call("migrate", uri=f"tcp:127.0.0.1:{port}", on_timeout="maybe")
            check(not r["ok"], f"bad on_timeout accepted: {r}", src)
            r = c.call("migrate-cancel")
            check(not r["ok"] and "no migration" in r["error"], f"cancel with none: {r}", src)
        finally:
            src.kill()
            dst.kill()


@test
def migrate_cancel(a):
    """migrate-cancel during a slow (bandwidth-capped) migration: the source
    keeps running; the destination hears Cancel and exits 1 with no VM."""
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        dst = incoming(a.vmm, f"tcp:127.0.0.1:{port}", "--mem", MEM)
        src, c = start_source(a, d)
        try:
            r = c.call("migrate", uri=f"tcp:127.0.0.1:{port}", bandwidth_mibs=2)
            check(r["ok"], f"migrate {r}", src)
            time.sleep(1.0)
            st = c.call("status")["migration"]
            check(st["state"] == "active", f"migration status {st}", src)
            for cmd in ("pause", "resume", "snapshot-create"):
                r = c.call(cmd, dir=os.path.join(d, "snap"))
                check(not r["ok"] and "migration is running" in r["error"],
                      f"{cmd} during a migration: {r}", src)
            r = c.call("migrate", uri=f"tcp:127.0.0.1:{port}")
            check(not r["ok"] and "already running" in r["error"], f"second migrate: {r}", src)
            r = c.call("migrate-cancel")
            check(r["ok"], f"cancel {r}", src)
            done, _ = wait_migration(c)
            check(done["event"] == "migration-failed" and "cancel" in done["error"],
                  f"cancel result {done}", src)
            rc = dst.wait(timeout=20)
            check(rc == 1, f"destination exit {rc}", dst)
            check("cancel" in dst.err.decode(), f"destination log: {dst.err.decode()[-300:]}", dst)
            check_source_survived(src, c, "cancelled")
        finally:
            src.kill()
            dst.kill()


@test
def migrate_incoming_control(a):
    """The destination's control socket serves from the start of --incoming:
    status while it listens and, with progress, while it receives; events
    for the connection and each round; migrate-cancel on the destination ends
    it (exit 1) and the source keeps its guest. A destination cancelled while
    still listening exits 1 at once."""
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        dsock = os.path.join(d, "dst.sock")
        dst = incoming(a.vmm, f"tcp:127.0.0.1:{port}", "--mem", MEM, "--api-socket", dsock)
        src, c = start_source(a, d)
        try:
            dc = Client(dsock)
            st = dc.call("status")
            check(st["ok"] and st["state"] == "incoming" and
                  st["migration"]["state"] == "listening", f"listening status {st}", dst)
            r = dc.call("pause")
            check(not r["ok"] and "being received" in r["error"], f"pause while incoming: {r}", dst)
            r = c.call("migrate", uri=f"tcp:127.0.0.1:{port}", bandwidth_mibs=4)
            check(r["ok"], f"migrate {r}", src)
            dc.wait_event("migration-incoming-connected", timeout=10)
            deadline = time.monotonic() + 20
            while True:
                st = dc.call("status")["migration"]
                if st["state"] == "receiving" and st.get("pages", 0) > 0:
                    break
                check(time.monotonic() < deadline, f"no progress on the destination: {st}", dst)
                time.sleep(0.2)
            check(st["bytes"] > 0 and st["elapsed_ms"] > 0, f"receiving status {st}", dst)
            r = dc.call("migrate-cancel")
            check(r["ok"], f"destination cancel {r}", dst)
            e = dc.wait_event("migration-incoming-failed", timeout=10)
            check("cancelled" in e["error"], f"failed event {e}", dst)
            check(dst.wait(timeout=20) == 1, "destination exit code", dst)
            done, _ = wait_migration(c)
            check(done["event"] == "migration-failed", f"source result {done}", src)
            check_source_survived(src, c, "cancelled by the destination")
        finally:
            src.kill()
            dst.kill()
        # Cancelled before any source connects.
        dst = incoming(a.vmm, f"tcp:127.0.0.1:{free_port()}", "--mem", MEM, "--api-socket", dsock)
        try:
            check(Client(dsock).call("migrate-cancel")["ok"], "cancel while listening", dst)
            check(dst.wait(timeout=10) == 1, "exit code after a cancel while listening", dst)
            check("cancelled on the control socket" in dst.err.decode(), "destination log", dst)
        finally:
            dst.kill()


class CuttingProxy:
    """Forwards source -> destination and back, and closes both sides when
    more than `limit` bytes would go source -> destination (only the first
    `limit` get through), or more than `back_limit` the other way."""

    def __init__(self, dst_port, limit, back_limit=None):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        self.dst_port, self.limit, self.back_limit = dst_port, limit, back_limit
        self.forwarded = 0
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        a, _ = self.ls.accept()
        b = socket.create_connection(("127.0.0.1", self.dst_port))
        done = threading.Event()

        def pump(src, dst, limit, count):
            n = 0
            try:
                while not done.is_set():
                    data = src.recv(65536)
                    if not data:
                        break
                    if limit is not None and n + len(data) > limit:
                        dst.sendall(data[:max(0, limit - n)])
                        n = limit
                        break
                    dst.sendall(data)
                    n += len(data)
                    if count:
                        self.forwarded = n
            except OSError:
                pass
            if count:
                self.forwarded = n
            done.set()
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t1 = threading.Thread(target=pump, args=(a, b, self.limit, True))
        t2 = threading.Thread(target=pump, args=(b, a, self.back_limit, False))
        t1.start()
        t2.start()
        t1.join()
        t2.join()
        a.close()
        b.close()


@test
def migrate_connection_cut(a):
    """The connection is cut at random points of the stream (and once right
    before the destination's Ack): every time the source reports the failure
    and its guest keeps running with consistent memory; every destination
    exits non-zero."""
    rng = random.Random(int(os.environ.get("VMM_TEST_SEED", "0")) or None)
    seed = rng.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed {seed} (VMM_TEST_SEED reproduces)")
    with tempfile.TemporaryDirectory() as d:
        src, c = start_source(a, d)
        try:
            # Round 0 alone carries the 32 MiB the guest dirties: cut in the
            # Hello, early in round 0, and at random points within it.
            limits = [10, 100, 5000] + [rng.randrange(1 << 20, 30 << 20) for _ in range(3)]
            # 33 bytes back = the HelloReply: the connection drops when the
            # Ack comes, after the source paused and sent everything.
            cases = [(n, None) for n in limits] + [(None, 33)]
            for limit, back in cases:
                port = free_port()
                dst = incoming(a.vmm, f"tcp:127.0.0.1:{port}", "--mem", MEM)
                try:
                    proxy = CuttingProxy(port, limit, back)
                    r = c.call("migrate", uri=f"tcp:127.0.0.1:{proxy.port}", downtime_ms=50,
                               max_rounds=3)
                    check(r["ok"], f"migrate {r}", src)
                    done, _ = wait_migration(c)
                    what = f"cut after {limit} bytes forward / {back} back"
                    print(f"{what}: {done['event']}: {done.get('error')}")
                    check(done["event"] == "migration-failed", f"{what}: {done}", src)
                    check_source_survived(src, c, what)
                    if back is None:
                        rc = dst.wait(timeout=60)
                        check(rc != 0, f"{what}: destination exit {rc}", dst)
                    else:
                        # The lost-Ack case: the destination had resumed the
                        # guest; the source says so and resumes its copy too
                        # (docs/migration.md: never lose the guest).
                        check("may have resumed it too" in done["error"], f"{what}: {done}", src)
                finally:
                    dst.kill()
        finally:
            src.kill()


def run_ns(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@test
def migrate_netns_veth(a):
    """Two network namespaces joined by a veth pair (made here): the guest
    migrates from a VMM in one namespace to a VMM in the other over TCP, and
    keeps answering on serial. Needs root (skips otherwise)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("SKIP: needs root and iproute2 to make network namespaces")
        sys.exit(SKIP)
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b, va, vb = f"vmmA{tag}", f"vmmB{tag}", f"vma{tag}", f"vmb{tag}"
    try:
        run_ns("ip", "netns", "add", ns_a)
        run_ns("ip", "netns", "add", ns_b)
        run_ns("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        run_ns("ip", "link", "set", va, "netns", ns_a)
        run_ns("ip", "link", "set", vb, "netns", ns_b)
        run_ns("ip", "-n", ns_a, "addr", "add", "10.77.0.1/24", "dev", va)
        run_ns("ip", "-n", ns_b, "addr", "add", "10.77.0.2/24", "dev", vb)
        for ns, dev in ((ns_a, va), (ns_b, vb)):
            run_ns("ip", "-n", ns, "link", "set", dev, "up")
            run_ns("ip", "-n", ns, "link", "set", "lo", "up")
        with tempfile.TemporaryDirectory() as d:
            sock = os.path.join(d, "src.sock")
            dst = incoming(a.vmm, "tcp:10.77.0.2:7000", "--mem", MEM,
                           wrapper=("ip", "netns", "exec", ns_b))
            src = Guest(a.vmm, a.guest, ("--api-socket", sock, "--mem", MEM),
                        wrapper=("ip", "netns", "exec", ns_a))
            try:
                src.expect("TESTGUEST READY")
                check(src.command("echo before-move", "before-move") == "before-move", "src", src)
                c = Client(sock)
                # The source's namespace cannot reach the host's loopback: the
                # only way to the destination is the veth pair.
                r = c.call("migrate", uri="tcp:10.77.0.2:7000", downtime_ms=100)
                check(r["ok"], f"migrate {r}", src)
                done, _ = wait_migration(c)
                check(done["event"] == "migration-done", f"migration {done}", src)
                print(f"over veth: {json.dumps(done)}")
                check(src.wait(timeout=20) == 0, "source exit 0", src)
                check(dst.command("echo after-move", "after-move") == "after-move",
                      "the moved guest answers on the destination's serial", dst)
                check(dst.command("kvmclock", "KVMCLOCK ").startswith("KVMCLOCK "), "kvmclock",
                      dst)
            finally:
                src.kill()
                dst.kill()
    finally:
        subprocess.run(["ip", "netns", "del", ns_a], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns_b], capture_output=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vmm", required=True)
    p.add_argument("--vmmctl", required=True)
    p.add_argument("--guest", required=True)
    p.add_argument("test", choices=sorted(TESTS))
    a = p.parse_args()
    require_kvm()
    TESTS[a.test](a)
    print(f"PASS {a.test}")


if __name__ == "__main__":
    main()
