#!/usr/bin/env python3
"""Snapshot/restore and live migration of a stock Debian kernel: ours vs QEMU microvm.

Runs on a KVM host with hardware virtualization (VMX/SVM: a real one, or the
emulated AMD-SVM host of tests/svm-host/run_l1.py). On a nested PVM host (our
build machines) a stock kernel cannot run user space (docs/linux-boot.md):
every boot would time out.

Guest: Debian's stock kernel and our busybox initramfs, as in
stock_kernel_bench.py (--kernel cloud, default: $CACHE/kernel/debian/vmlinuz +
$CACHE/initramfs/initramfs-debian.cpio; generic: the -generic pair; CACHE is
$VMM_CACHE or ~/.cache/vmm), --mem 256M, --cpus 1 by default. QEMU gets the
kernel command line our VMM logs as 'command line:' for the same kernel and
--cpus (one short start of ours, killed once it printed it). The shell is
driven by lines typed on the serial console (stdin/stdout pipes); every
answer is computed in the guest, and the typed line's own echo never matches
what is waited for.

Per iteration (-n), each test runs with both VMMs, which one first alternating
(the --vmms order, default ours first, in even iterations; reversed in odd
ones); one VM (or migration pair) at a time. Every test boots a
fresh source to 'VMM-GUEST-READY' and starts a counting loop in the guest:
  (i=0; while :; do i=$((i+1)); echo $i >>/tmp/count; sleep 0.1; done) &
(appended, so that `tail -n 1` never reads a file the loop is rewriting;
--loop-sleep sets the sleep), then reads its value with
  until [ -s /tmp/count ]; do sleep 0.1; done; echo c0=$(tail -n 1 /tmp/count)
right before the snapshot or the migration ('count before').

snapshot test:
  ours  source   vmm --kernel K --initrd I --mem 256M --cpus C --serial stdio
                     --api-socket S
        snapshot on S: {"cmd": "pause"}, then {"cmd": "snapshot-create",
                 "dir": D} (D a new directory); timed request -> reply each;
                 the reply's total/state/memory ms are kept. SIGKILL.
        restore  vmm --restore D --serial stdio   (memory file mapped
                 copy-on-write; --restore takes no --mem/--cpus, docs/cli.md)
                 The answer command (below) is typed right at the start: our
                 VMM reads stdin only once the VM runs, so nothing is lost.
  QEMU  source   qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256M
                     -smp C -nodefaults -no-user-config -nographic
                     -serial stdio -no-reboot -kernel K -initrd I
                     -append CMDLINE -global migration.store-global-state=off
                     -qmp unix:Q,server=on,wait=off
        snapshot on Q (as snapshot_bench.py): migrate-set-capabilities
                 events=on, max-bandwidth 1 TiB/s, the file passed with
                 getfd; `stop` (timed), `migrate` uri fd:NAME, timed to the
                 MIGRATION event 'completed'; QEMU does not fsync the stream:
                 the script fsyncs the file and reports it apart. SIGKILL.
        restore  the source command line (with a new QMP socket Q2) plus
                 -incoming fd:N (the script opens the file, QEMU inherits
                 it). store-global-state=off makes QEMU start the guest when
                 the stream is loaded (the stream would otherwise carry the
                 source's 'paused' state); should query-status still say
                 'paused', the script sends `cont` and records it. The answer
                 command is typed once query-status on Q2 says 'running':
                 QEMU's UART takes console bytes while the stream loads and
                 the loaded UART state then drops them (snapshot_bench.py).
  restore_ms  process start (just before fork/exec) -> the guest's answer to
              echo r=$((6*7)) c=$(tail -n 1 /tmp/count)
              (r=42, count >= count before); QEMU's includes a QMP round trip
              after 'running' (running_ms is kept too); ours' log line
              'restored from D in R ms' is kept as vmm_restore_ms.
  vmrss_kib   VmRSS of the restored process when the answer is read.

migration test (TCP loopback, same downtime target for both, --downtime-ms,
default 100 as migration_bench.py):
  ours  source       as above, with --api-socket S
        destination  vmm --incoming tcp:127.0.0.1:PORT --mem 256M --cpus C
                         --serial stdio   (docs/migration.md: same --mem and
                         --cpus as the source)
        on S: {"cmd": "migrate", "uri": "tcp:127.0.0.1:PORT", "downtime_ms": D}
              (reply at once), then the event migration-done (or -failed):
              its total_ms, downtime_ms (pause -> destination's Ack), rounds,
              bytes. The source must then exit 0.
  QEMU  both         the QEMU command line above (without the -global) plus
                         -qmp unix:Q,server=on,wait=off; the destination also
                         -incoming tcp:127.0.0.1:PORT
        on the source's QMP (as migration_bench.py): migrate-set-capabilities
              events=on; migrate-set-parameters downtime-limit=D
              max-bandwidth=1 TiB/s; migrate; the MIGRATION event
              'completed', then query-migrate (polled until total-time is
              filled in): total-time, downtime (stop -> last byte sent),
              ram.dirty-sync-count, ram.transferred. Afterwards the source's
              query-status must say 'postmigrate'.
  The destination is started once the source's loop runs and must listen
  (LISTEN in /proc/net/tcp, or ours' 'waiting for a migration on' log line)
  before the migration starts; nothing ever connects to it but the source.
  answer_ms   completion event on the source -> the destination's answer to
              the typed command above (count >= count before). Ours' command
              is typed at the event; QEMU's once the destination's
              query-status says 'running' (dst_running_ms).
  vmrss_kib   VmRSS of the destination at its answer.

After each answer the script types a line that waits (up to 10 s of guest
time, in 0.5 s sleeps) for the count to pass the answered one and prints it
as k=N: it must have grown (the loop survived, not just its file). Then every
process of the test is killed (SIGKILL) and its files removed. Snapshots,
sockets and a copy of --vmm (one binary snapshots and restores) live in a new
directory under /tmp (or --work-dir), removed at the end, also on Ctrl-C or
SIGTERM (the report then covers the tests that ended).

Outcome of a test: ok, or the first failure, e.g. boot_timeout, panic,
kvm_error, triple_fault, source_exit/restored_exit/destination_exit (a VMM
exited; its reason kept), loop_failed, pause_failed, snapshot_failed,
snapshot_timeout, restore_timeout, wrong_answer, count_lost, loop_stopped,
dst_not_listening, migrate_refused, migrate_failed, migrate_timeout (the
migration is cancelled), dst_not_running, no_answer, source_state,
control_error (control socket / QMP), script_error. A failed test keeps its
consoles' last lines and never stops the script; kernel-log trouble
(tests/e2e/linux_tests.py kernel_trouble(); the emulated host's XSAVE
artifact allowed with --emulated-host or when $SVM_WORK says run_l1.py runs
us) is recorded, not a failure.

Report: per test, median (min-max) of each metric over the runs that passed,
the ratio ours/QEMU of the medians and the min-max of the per-iteration
ratios (iterations where both passed); outcomes; failed runs with their
consoles' tails; the commands. --json prints JSON instead; --jsonl FILE
appends a header and then each test's record as it ends (fsynced);
--from-json FILE... reports earlier --json/--jsonl outputs (one session each).
--self-test checks the report, the regular expressions, the console helpers
and the control-socket clients on synthetic data (no VM). Stdlib only.
Examples:
  tools/bench/stock_lifecycle_bench.py -n 3
  tests/svm-host/run_l1.py --timeout 3000 -c "python3 tools/bench/stock_lifecycle_bench.py \\
      --vmm build/vmm/vmm -n 3 --jsonl \\$SVM_WORK/life.jsonl"
  tools/bench/stock_lifecycle_bench.py --from-json life.jsonl
"""
import argparse
import json
import os
import re
import select
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import (QEMU_UNLIMITED_BW, QMP, VMMS, BenchError, JsonLines,  # noqa: E402
                      add_stock_vm_args, choice_list, emit_result, failure_kinds, free_port,
                      host_info, host_kvm_module,
                      loadavg, proc_status, ratio, sha256_file, stat, tcp_listening)
from stock_kernel_bench import (CACHE_DEFAULT, KERNELS, KVM_ERROR, MILESTONES,  # noqa: E402
                                PANIC, Console, crash_kind, kernel_images, last_line,
                                load_results, ours_cmd, paired_ratios, probe_cmdline,
                                qemu_cmd, trouble_in, vmm_reason)

STARTED = []   # every Console a Stage started: killed at exit, whatever happened
VMM_LABEL = {"ours": "ours", "qemu": "QEMU microvm"}
TESTS = ("snapshot", "migration")
MIB = 1 << 20

NEEDLES = list(MILESTONES) + [(PANIC, "panic")]
LOOP_CMD = "(i=0; while :; do i=$((i+1)); echo $i >>/tmp/count; sleep {sleep}; done) &"
COUNT_CMD = "until [ -s /tmp/count ]; do sleep 0.1; done; echo c0=$(tail -n 1 /tmp/count)"
COUNT_RE = re.compile(rb"c0=(\d+)\r?\n")
ANSWER_CMD = "echo r=$((6*7)) c=$(tail -n 1 /tmp/count)"
ANSWER_RE = re.compile(rb"r=(\d+) c=(\d*)\r?\n")
# Waits (up to 20 x 0.5 s of guest time) for the count to pass {c}, then prints it.
LATER_CMD = ("n=0; while [ $(tail -n 1 /tmp/count) -le {c} ] && [ $n -lt 20 ]; do sleep 0.5; "
             "n=$((n+1)); done; echo k=$(tail -n 1 /tmp/count)")
LATER_RE = re.compile(rb"k=(\d*)\r?\n")
RESTORED_RE = re.compile(rb"restored from .* in ([0-9.]+) ms")
LISTEN_LOG = b"waiting for a migration on"
OURS_SNAPSHOT_FIELDS = ("total_ms", "pause_ms", "state_ms", "memory_ms", "memory_bytes",
                        "memory_data_bytes")
OURS_MIGRATION_FIELDS = ("total_ms", "downtime_ms", "rounds", "bytes", "pages", "zero_pages",
                         "final_pages", "converged")


def ms(t0, t1):
    return (t1 - t0) * 1000.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Fail(Exception):
    """A test's failure: its kind (the outcome) and one line of detail."""

    def __init__(self, kind, detail):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


# ------------------------------------------------------------ one test's VMs --

class Stage:
    """What one test started: its VMM processes (by role: source, restored,
    destination), control sockets and files. close() kills and removes all."""

    def __init__(self, a, env, r, tag):
        self.a, self.env, self.r, self.tag = a, env, r, tag
        self.who = r["vmm"]
        self.cons, self.ended = {}, {}   # role -> Console (running / ended)
        self.socks, self.paths = [], []
        self.commands = {}
        self.may_exit = set()            # roles whose exit is no failure

    def start(self, role, cmd, pass_fds=()):
        self.commands[role] = list(cmd)
        self.cons[role] = Console(cmd, NEEDLES, pass_fds)
        STARTED.append(self.cons[role])
        return self.cons[role]

    def sock(self, s):
        self.socks.append(s)
        return s

    def file(self, name):
        """A path in the work directory for this test, removed by close()."""
        p = os.path.join(self.env.work, f"{self.tag}-{name}")
        self.paths.append(p)
        return p

    def end(self, role):
        """SIGKILL (this child only), read what is left on its pipes, close."""
        c = self.cons.pop(role, None)
        if c is None:
            return
        c.kill(drain=2)
        self.ended[role] = c

    def close(self):
        for s in self.socks:
            s.close()
        for role in list(self.cons):
            self.end(role)
        for p in self.paths:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)

    def consoles(self):
        return {**self.ended, **self.cons}


def pump(st, timeout):
    """One select over every pipe, pidfd and control socket of the stage."""
    fds = {}
    for c in st.cons.values():
        fds.update((fd, c) for fd in c.fds())
    fds.update((s.fileno(), s) for s in st.socks if not s.closed)
    if not fds:
        time.sleep(max(timeout, 0))
        return
    ready, _, _ = select.select(list(fds), [], [], max(timeout, 0))
    now = time.monotonic()
    for obj in dict.fromkeys(fds[fd] for fd in ready):
        if isinstance(obj, Console):
            obj.poll(0)
        else:
            obj.feed(now)


def exit_fail(who, role, c):
    """The Fail for a VMM process that exited (or crashed) on its own."""
    rc = c.p.poll()
    err = bytes(c.err).decode(errors="replace")
    reason = vmm_reason(err) if who == "ours" else " ".join(err.split())[-300:]
    kind = crash_kind(reason) if who == "ours" and rc == 3 else f"{role}_exit"
    return Fail(kind, f"{role} exited with status {rc}: {reason}")


def check_alive(st):
    """Fail if a VMM of the stage panicked, hit a KVM error or exited."""
    for role, c in st.cons.items():
        if "panic" in c.seen:
            line = next((x for x in bytes(c.out).decode(errors="replace").splitlines()
                         if "Kernel panic" in x), "Kernel panic")
            raise Fail("panic", f"{role}: {line.strip()}")
        if KVM_ERROR in c.err:
            i = c.err.find(KVM_ERROR)
            raise Fail("kvm_error", f"{role}: " + " ".join(
                bytes(c.err[i:i + 300]).decode(errors="replace").split()))
        if c.t_exit is not None and role not in st.may_exit:
            c.drain(2)
            raise exit_fail(st.who, role, c)


def wait(st, done, timeout, kind, what, c=None, tick=0.2):
    """Pumps the stage until done() returns something true (returned);
    Fail(kind) after timeout s, or check_alive's Fail first. done() is
    checked after every read and at least every tick s."""
    deadline = time.monotonic() + timeout
    while True:
        got = done()
        if got:
            return got
        try:
            check_alive(st)
        except Fail:
            pump(st, 0)   # what the VMM wrote just before exiting
            got = done()
            if got:
                return got
            raise
        left = deadline - time.monotonic()
        if left <= 0:
            seen = f" (last console line: {last_line(bytes(c.out).decode(errors='replace'))})" \
                if c is not None else ""
            raise Fail(kind, f"no {what} within {timeout:g} s{seen}")
        pump(st, min(left, tick))


def typed(st, c, cmd, rx, timeout, kind, what, send=True):
    """Types cmd (unless already typed) and waits for rx in the console output
    that follows: (time read, match)."""
    off = 0 if not send else len(c.out)
    if send:
        c.send(cmd)
    m = wait(st, lambda: rx.search(c.out, off), timeout, kind, what, c)
    return time.monotonic(), m


# ------------------------------------------------------------ guest steps --

def boot_source(st, cmd):
    """The source VM to its shell, with the counting loop started."""
    a = st.a
    c = st.start("source", cmd)
    wait(st, lambda: "marker" in c.seen, a.boot_timeout, "boot_timeout", "'VMM-GUEST-READY'", c)
    st.r["marker_ms"] = ms(c.t0, c.seen["marker"])
    c.send(LOOP_CMD.format(sleep=a.loop_sleep))
    return c


def read_count(st, c):
    """The loop's count, read right before the snapshot or migration."""
    _, m = typed(st, c, COUNT_CMD, COUNT_RE, st.a.answer_timeout, "loop_failed",
                 "count from the guest's loop")
    st.r["count_before"] = int(m.group(1))
    return st.r["count_before"]


def answer(st, c, timeout, kind, send=True):
    """The answer to ANSWER_CMD: its time; the VMM's memory is read at once,
    then the answer and the count are checked."""
    t, m = typed(st, c, ANSWER_CMD, ANSWER_RE, timeout, kind, "answer", send)
    st.r["status_kib"] = proc_status(c.p.pid)
    st.r["vmrss_kib"] = st.r["status_kib"].get("VmRSS")
    got, count = int(m.group(1)), m.group(2).decode()
    st.r["count_after"] = int(count) if count else None
    if got != 42:
        raise Fail("wrong_answer", f"r={got}, expected 42")
    if not count or int(count) < st.r["count_before"]:
        raise Fail("count_lost", f"count {count or '(empty)'} after, "
                                 f"{st.r['count_before']} before")
    return t, int(count)


def loop_check(st, c, count):
    """The loop still counts (within 10 s of guest time)."""
    _, m = typed(st, c, LATER_CMD.format(c=count), LATER_RE, st.a.answer_timeout, "no_answer",
                 "answer to the count check")
    later = int(m.group(1)) if m.group(1) else None
    st.r["count_later"] = later
    if later is None or later <= count:
        raise Fail("loop_stopped", f"count still {later} 10 s (guest time) after {count}: the "
                                   "guest's loop does not run any more")


def ok_reply(rep, kind):
    if not rep.get("ok"):
        raise Fail(kind, f"control socket: {rep}")
    return rep


def allocated_mib(path):
    """Allocated size of a file or of the files in a directory, MiB."""
    files = [os.path.join(path, n) for n in os.listdir(path)] if os.path.isdir(path) else [path]
    return sum(os.stat(f).st_blocks * 512 for f in files) / MIB


# ------------------------------------------------------------ QEMU helpers --

def qmp_arg(path):
    return ["-qmp", f"unix:{path},server=on,wait=off"]


def qemu_base(st):
    return qemu_cmd(st.a, st.env.kernel, st.env.initrd, st.env.cmdline)


def qmp_connect(st, c, path, timeout):
    """QMP of a QEMU the stage started, once its socket exists (looked for
    every 2 ms: a restore's clock is running)."""
    wait(st, lambda: os.path.exists(path), timeout, "control_error", f"QMP socket {path}", c,
         tick=0.002)
    return st.sock(QMP(path, timeout=10, reply_timeout=timeout))


def qmp_wait_running(st, q, timeout, kind):
    """Polls query-status until 'running' (sends `cont` once on 'paused', a
    loaded stream that kept the source's paused state): (time, cont sent)."""
    deadline, conted = time.monotonic() + timeout, False
    while True:
        try:
            status = q.cmd("query-status").get("status")
        except BenchError as e:
            check_alive(st)
            raise Fail(kind, f"query-status: {e}") from e
        if status == "running":
            return time.monotonic(), conted
        if status == "paused" and not conted:
            q.cmd("cont")
            conted = True
            continue
        check_alive(st)
        if time.monotonic() > deadline:
            raise Fail(kind, f"QEMU status '{status}' {timeout:g} s on")
        pump(st, 0.005)


def qemu_migration_setup(q, **params):
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
    q.cmd("migrate-set-parameters", **{"max-bandwidth": QEMU_UNLIMITED_BW, **params})


def qemu_migration_end(m):
    return m.get("event") == "MIGRATION" and \
        m.get("data", {}).get("status") in ("completed", "failed", "cancelled")


def wait_event(st, sock, pred, timeout, kind, what, cancel=None):
    """The first event on sock matching pred: (arrival time, event). On a
    timeout, cancel() (best effort) before failing."""
    def found():
        return next(((t, m) for t, m in sock.events if pred(m)), None)
    try:
        return wait(st, found, timeout, kind, what)
    except Fail as e:
        if cancel is not None and e.kind == kind:
            try:
                cancel()
            except (BenchError, OSError):
                pass
        raise


def query_migrate_final(st, q):
    """query-migrate after completion: QEMU 7.2 reports 'completed' before it
    fills in total-time and downtime, so it is polled (up to 5 s)."""
    t0 = time.monotonic()
    while True:
        info = q.cmd("query-migrate")
        if info.get("status") != "completed" or info.get("total-time") or \
                time.monotonic() - t0 > 5:
            return info
        pump(st, 0.02)


def wait_listening(st, c, port):
    """The migration destination listens (never probed by connecting: it
    accepts one connection only)."""
    wait(st, lambda: tcp_listening(port) or (st.who == "ours" and LISTEN_LOG in c.err),
         st.a.step_timeout, "dst_not_listening", f"listening socket on port {port}", c)
    st.r["dst_listen_ms"] = ms(c.t0, time.monotonic())


# ------------------------------------------------------------ snapshot test --

def snapshot_ours(st):
    a, r = st.a, st.r
    sock, snap = st.file("api.sock"), st.file("snapshot")
    src = boot_source(st, ours_cmd(a, st.env.kernel, st.env.initrd) + ["--api-socket", sock])
    api = st.sock(JsonLines(sock, reply_timeout=a.step_timeout))
    read_count(st, src)
    t0 = time.monotonic()
    ok_reply(api.request({"id": 1, "cmd": "pause"}), "pause_failed")
    t1 = time.monotonic()
    rep = ok_reply(api.request({"id": 2, "cmd": "snapshot-create", "dir": snap},
                               a.snapshot_timeout), "snapshot_failed")
    t2 = time.monotonic()
    r.update(pause_ms=ms(t0, t1), snapshot_ms=ms(t1, t2), fsync_ms=0.0,
             snapshot_fsync_ms=ms(t1, t2), snapshot_mib=allocated_mib(snap),
             snapshot_reply={k: rep.get(k) for k in OURS_SNAPSHOT_FIELDS})
    st.end("source")
    restore_ours(st, snap)


def restore_ours(st, snap):
    a, r = st.a, st.r
    c = st.start("restored", [a.vmm, "--restore", snap, "--serial", "stdio"])
    c.send(ANSWER_CMD)   # read by the VMM once the VM runs
    t, count = answer(st, c, a.restore_timeout, "restore_timeout", send=False)
    r["restore_ms"] = ms(c.t0, t)
    m = RESTORED_RE.search(c.err)
    r["vmm_restore_ms"] = float(m.group(1)) if m else None
    loop_check(st, c, count)


def qemu_stop_and_save(st, q, fd):
    """stop, migrate to the file (fd), fsync it; the times into the record."""
    r = st.r
    q.cmd("getfd", fds=[fd], fdname="snap")
    read_count(st, st.cons["source"])
    t0 = time.monotonic()
    q.cmd("stop")
    t1 = time.monotonic()
    q.cmd("migrate", uri="fd:snap")
    t2, ev = wait_event(st, q, qemu_migration_end, st.a.snapshot_timeout, "snapshot_timeout",
                        "MIGRATION event 'completed'")
    info = query_migrate_final(st, q)
    r["qemu_query_migrate"] = info
    if ev["data"]["status"] != "completed":
        raise Fail("snapshot_failed", f"MIGRATION {ev['data']['status']}: "
                                      f"{info.get('error-desc', '')}")
    t3 = time.monotonic()
    os.fsync(fd)
    t4 = time.monotonic()
    r.update(pause_ms=ms(t0, t1), snapshot_ms=ms(t1, t2), fsync_ms=ms(t3, t4),
             snapshot_fsync_ms=ms(t1, t2) + ms(t3, t4))


def snapshot_qemu(st):
    a = st.a
    qsock, path = st.file("src.qmp"), st.file("snapshot.mig")
    base = qemu_base(st) + ["-global", "migration.store-global-state=off"]
    src = boot_source(st, base + qmp_arg(qsock))
    q = qmp_connect(st, src, qsock, a.step_timeout)
    qemu_migration_setup(q)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        qemu_stop_and_save(st, q, fd)
    finally:
        os.close(fd)
    st.r["snapshot_mib"] = allocated_mib(path)
    st.end("source")
    restore_qemu(st, base, path)


def restore_qemu(st, base, path):
    a, r = st.a, st.r
    qsock = st.file("restore.qmp")
    fd = os.open(path, os.O_RDONLY)
    try:
        c = st.start("restored", base + qmp_arg(qsock) + ["-incoming", f"fd:{fd}"],
                     pass_fds=(fd,))
    finally:
        os.close(fd)
    q = qmp_connect(st, c, qsock, a.restore_timeout)
    t_run, conted = qmp_wait_running(st, q, a.restore_timeout, "restore_timeout")
    r.update(running_ms=ms(c.t0, t_run), cont_sent=conted)
    t, count = answer(st, c, a.restore_timeout, "restore_timeout")
    r["restore_ms"] = ms(c.t0, t)
    loop_check(st, c, count)


# ------------------------------------------------------------ migration test --

def migrate_ours(st):
    a, r = st.a, st.r
    sock, port = st.file("api.sock"), free_port()
    uri = f"tcp:127.0.0.1:{port}"
    src = boot_source(st, ours_cmd(a, st.env.kernel, st.env.initrd) + ["--api-socket", sock])
    api = st.sock(JsonLines(sock, reply_timeout=a.step_timeout))
    dst = st.start("destination", [a.vmm, "--incoming", uri, "--mem", a.mem,
                                   "--cpus", str(a.cpus), "--serial", "stdio"])
    wait_listening(st, dst, port)
    read_count(st, src)
    t0 = time.monotonic()
    ok_reply(api.request({"id": 1, "cmd": "migrate", "uri": uri,
                          "downtime_ms": a.downtime_ms}), "migrate_refused")
    st.may_exit.add("source")   # it exits 0 once the destination has the guest
    t_done, ev = wait_event(
        st, api, lambda m: m.get("event") in ("migration-done", "migration-failed"),
        a.migrate_timeout, "migrate_timeout", "migration-done event",
        cancel=lambda: api.request({"id": 2, "cmd": "migrate-cancel"}))
    if ev["event"] != "migration-done":
        raise Fail("migrate_failed", ev.get("error", str(ev)))
    r.update(host_wall_ms=ms(t0, t_done), migration={k: ev.get(k) for k in OURS_MIGRATION_FIELDS},
             total_ms=ev.get("total_ms"), downtime_ms=ev.get("downtime_ms"),
             rounds=ev.get("rounds"), sent_mib=(ev.get("bytes") or 0) / MIB)
    t, count = answer(st, dst, a.answer_timeout, "no_answer")
    r["answer_ms"] = ms(t_done, t)
    source_exit(st, src)
    loop_check(st, dst, count)


def source_exit(st, src):
    """Ours' source ends with 0 after handing the guest over."""
    wait(st, lambda: src.t_exit is not None, st.a.step_timeout, "source_exit",
         "exit of the source after the migration", src)
    rc = src.p.wait()
    st.r["source_rc"] = rc
    if rc != 0:
        raise exit_fail(st.who, "source", src)


def qemu_migrate(st, q, uri):
    """migrate on the source's QMP and its outcome: (completion time, info)."""
    a, r = st.a, st.r
    read_count(st, st.cons["source"])
    t0 = time.monotonic()
    q.cmd("migrate", uri=uri)
    t_done, ev = wait_event(st, q, qemu_migration_end, a.migrate_timeout, "migrate_timeout",
                            "MIGRATION event 'completed'", cancel=lambda: q.cmd("migrate_cancel"))
    info = query_migrate_final(st, q)
    r["qemu_query_migrate"] = info
    if ev["data"]["status"] != "completed":
        raise Fail("migrate_failed", f"MIGRATION {ev['data']['status']}: "
                                     f"{info.get('error-desc', '')}")
    ram = info.get("ram") or {}
    r.update(host_wall_ms=ms(t0, t_done), total_ms=info.get("total-time"),
             downtime_ms=info.get("downtime"), rounds=ram.get("dirty-sync-count"),
             sent_mib=(ram.get("transferred") or 0) / MIB)
    return t_done


def migrate_qemu(st):
    a, r = st.a, st.r
    sq, dq, port = st.file("src.qmp"), st.file("dst.qmp"), free_port()
    uri = f"tcp:127.0.0.1:{port}"
    src = boot_source(st, qemu_base(st) + qmp_arg(sq))
    dst = st.start("destination", qemu_base(st) + qmp_arg(dq) + ["-incoming", uri])
    wait_listening(st, dst, port)
    q = qmp_connect(st, src, sq, a.step_timeout)
    dq_ = qmp_connect(st, dst, dq, a.step_timeout)
    qemu_migration_setup(q, **{"downtime-limit": a.downtime_ms})
    t_done = qemu_migrate(st, q, uri)
    t_run, conted = qmp_wait_running(st, dq_, a.answer_timeout, "dst_not_running")
    r.update(dst_running_ms=ms(t_done, t_run), cont_sent=conted)
    t, count = answer(st, dst, a.answer_timeout, "no_answer")
    r["answer_ms"] = ms(t_done, t)
    r["source_status"] = q.cmd("query-status").get("status")
    if r["source_status"] != "postmigrate":
        raise Fail("source_state", f"source status '{r['source_status']}' after the "
                                   "migration, expected 'postmigrate'")
    loop_check(st, dst, count)


RUNNERS = {("snapshot", "ours"): snapshot_ours, ("snapshot", "qemu"): snapshot_qemu,
           ("migration", "ours"): migrate_ours, ("migration", "qemu"): migrate_qemu}


# ------------------------------------------------------------ one record --

def failure_of(st, kind, err):
    """(kind, detail) of an error outside a Fail: a VMM that died explains it
    better than the control socket it closed."""
    for role, c in st.cons.items():
        if c.p.poll() is not None and role not in st.may_exit:
            c.drain(2)
            f = exit_fail(st.who, role, c)
            return f.kind, f"{f.detail} ({type(err).__name__}: {err})"
    return kind, f"{type(err).__name__}: {err}"


def finish_record(st, r, tail_lines):
    """Consoles' tails and kernel-log trouble into the record."""
    n = tail_lines if r["outcome"] != "ok" else 8
    r["commands"], r["consoles"], r["trouble"] = st.commands, {}, {}
    for role, c in st.consoles().items():
        out = bytes(c.out).decode(errors="replace")
        err = bytes(c.err).decode(errors="replace")
        r["consoles"][role] = {"serial_tail": out.replace("\r", "").splitlines()[-n:],
                               "stderr_tail": err.replace("\r", "").splitlines()[-n:]}
        blocks = trouble_in(out)
        if blocks:
            r["trouble"][role] = [b[0][:200] for b in blocks[:3]]


def run_test(a, env, test, who, i, order):
    r = {"test": test, "vmm": who, "iteration": i, "order": order.index(who),
         "loadavg": loadavg(), "time": time.time()}
    if who == "qemu" and not env.cmdline:
        r.update(outcome="not_run", detail="no 'command line:' from our VMM for QEMU's -append")
        return r
    st = Stage(a, env, r, f"{test}-{who}-{i}")
    t0 = time.monotonic()
    try:
        RUNNERS[(test, who)](st)
        r["outcome"], r["detail"] = "ok", ""
    except Fail as e:
        r["outcome"], r["detail"] = e.kind, e.detail
    except BenchError as e:
        r["outcome"], r["detail"] = failure_of(st, "control_error", e)
    except OSError as e:
        r["outcome"], r["detail"] = failure_of(st, "os_error", e)
    except Exception as e:  # noqa: BLE001 - recorded; the script goes on
        r["outcome"] = "script_error"
        r["detail"] = f"{type(e).__name__}: {e} at " + " <- ".join(
            f"{f.name}:{f.lineno}" for f in reversed(traceback.extract_tb(e.__traceback__)))
    finally:   # also on Ctrl-C / SIGTERM: nothing of the test survives it
        st.close()
        r.setdefault("outcome", "interrupted")
        r["wall_s"] = time.monotonic() - t0
        finish_record(st, r, a.tail_lines)
    return r


def one_line(r):
    if r["outcome"] != "ok":
        return f"FAILED {r['outcome']}: {r.get('detail', '')[:300]}"
    if r["test"] == "snapshot":
        return (f"ok, marker {r['marker_ms'] / 1000:.1f} s, snapshot {r['snapshot_ms']:.1f} ms, "
                f"restore {r['restore_ms']:.1f} ms, VmRSS {r.get('vmrss_kib')} KiB, count "
                f"{r['count_before']} -> {r['count_after']} -> {r['count_later']}")
    return (f"ok, marker {r['marker_ms'] / 1000:.1f} s, total {r['total_ms']} ms, downtime "
            f"{r['downtime_ms']} ms, answer {r['answer_ms']:.1f} ms after, count "
            f"{r['count_before']} -> {r['count_after']} -> {r['count_later']}")


def run_bench(a, env, emit):
    """Every iteration, test and VMM; (records, interrupted)."""
    runs = []
    try:
        for i in range(a.iterations):
            order = list(a.vmms) if i % 2 == 0 else list(reversed(a.vmms))
            for test in a.tests:
                for who in order:
                    r = run_test(a, env, test, who, i, order)
                    runs.append(r)
                    emit(r)
                    log(f"[{i + 1}/{a.iterations}] {test} / {who}: {one_line(r)}")
    except KeyboardInterrupt:
        log("interrupted: the report covers the tests that ended")
        return runs, True
    return runs, False


# ------------------------------------------------------------------ report --

SECTIONS = [  # test, title, [(key, label, digits)]
    ("snapshot", "Snapshot and restore", [
        ("marker_ms", "source boot: process start -> 'VMM-GUEST-READY' (ms)", 0),
        ("pause_ms", "pause: ours 'pause' / QEMU 'stop', request -> reply (ms)", 1),
        ("snapshot_ms", "snapshot: ours 'snapshot-create' request -> reply / QEMU 'migrate' "
                        "to a file -> 'completed' (ms)", 1),
        ("snapshot_fsync_ms", "snapshot incl. fsync (ours fsyncs inside; QEMU + the "
                              "script's fsync, ms)", 1),
        ("snapshot_mib", "snapshot size, allocated (MiB)", 1),
        ("restore_ms", "restore: process start -> the guest's answer (ms)", 1),
        ("running_ms", "  QEMU: process start -> query-status 'running' (ms)", 1),
        ("vmm_restore_ms", "  ours: 'restored from ... in R ms' (ms)", 1),
        ("vmrss_kib", "VmRSS of the restored VMM at the answer (KiB)", 0),
    ]),
    ("migration", "Live migration (TCP loopback)", [
        ("marker_ms", "source boot: process start -> 'VMM-GUEST-READY' (ms)", 0),
        ("total_ms", "total, VMM-reported (ms)", 1),
        ("host_wall_ms", "total, host clock: migrate request -> completion event (ms)", 1),
        ("downtime_ms", "downtime, VMM-reported (ours: pause -> Ack; QEMU: stop -> last "
                        "byte sent, ms)", 1),
        ("rounds", "rounds (ours) / dirty syncs (QEMU)", 0),
        ("sent_mib", "sent (MiB)", 1),
        ("dst_running_ms", "  QEMU: completion event -> destination 'running' (ms)", 1),
        ("answer_ms", "completion event -> the destination's answer (ms)", 1),
        ("vmrss_kib", "VmRSS of the destination at its answer (KiB)", 0),
    ]),
]


def fmt(st, digits):
    if st is None:
        return "-"
    f = f"{{:,.{digits}f}}"
    return (f"{f.format(st['median'])} ({f.format(st['min'])}-{f.format(st['max'])}), "
            f"n={st['n']}")


def metric_table(runs, metrics):
    """| metric | ours | QEMU | ratio of medians | per-iteration ratios | (passed runs)."""
    ok = {w: [r for r in runs if r["vmm"] == w and r["outcome"] == "ok"] for w in VMMS}
    out = ["| metric | ours | QEMU microvm | ours/QEMU (medians) | per-iteration ratios min-max |",
           "|---|---|---|---|---|"]
    for key, label, digits in metrics:
        so, sq = (stat([r.get(key) for r in ok[w]]) for w in VMMS)
        if so is None and sq is None:
            continue
        pr = paired_ratios(runs, lambda r, k=key: r.get(k))
        spread = f"{min(pr):.2f}-{max(pr):.2f} (n={len(pr)})" if pr else "-"
        out.append(f"| {label} | {fmt(so, digits)} | {fmt(sq, digits)} | {ratio(so, sq)} | "
                   f"{spread} |")
    return out


def outcome_table(runs):
    out = ["| test | VMM | runs | ok | failures by kind | kernel-log trouble (runs) |",
           "|---|---|---|---|---|---|"]
    for test in TESTS:
        for w in VMMS:
            rs = [r for r in runs if r.get("test") == test and r["vmm"] == w]
            if not rs:
                continue
            fails = failure_kinds(rs)
            ok = sum(r["outcome"] == "ok" for r in rs)
            trouble = sum(bool(r.get("trouble")) for r in rs)
            out.append(f"| {test} | {VMM_LABEL[w]} | {len(rs)} | {ok} | {fails} | {trouble} |")
    return out


def failed_runs(runs):
    out = []
    for r in (r for r in runs if r["outcome"] != "ok"):
        out.append(f"### {r['test']} / {VMM_LABEL[r['vmm']]}, session {r.get('session', 0) + 1}, "
                   f"iteration {r['iteration'] + 1}: {r['outcome']}\n")
        out.append(f"{r.get('detail', '')}\n")
        for role, con in (r.get("consoles") or {}).items():
            out.append(f"{role} console, last lines:\n\n```\n" +
                       "\n".join(con.get("serial_tail", [])) + "\n```\n")
            if con.get("stderr_tail"):
                out.append(f"{role} stderr, last lines:\n\n```\n" +
                           "\n".join(con["stderr_tail"][-8:]) + "\n```\n")
    return out


def trouble_lines(runs):
    out = []
    for r in (r for r in runs if r.get("trouble")):
        for role, lines in r["trouble"].items():
            out.append(f"- {r['test']} / {r['vmm']}, iteration {r['iteration'] + 1}, {role}: "
                       + "; ".join(f"`{x}`" for x in lines))
    return out


def commands_lines(runs):
    out, seen = [], set()
    for r in runs:
        for role, cmd in (r.get("commands") or {}).items():
            if (r["test"], r["vmm"], role) not in seen:
                seen.add((r["test"], r["vmm"], role))
                out.append(f"- {r['test']} / {r['vmm']} / {role}: `{shlex.join(cmd)}`")
    return out


def header_lines(result):
    args = result["args"]
    out = []
    for h in result.get("hosts") or [result["host"]]:
        out.append(f"Host: kernel {h.get('kernel')}, nproc {h.get('nproc')}, CPU "
                   f"{h.get('cpu', '?')}, KVM {h.get('kvm_module')}, emulated host: "
                   f"{h.get('emulated_host')}, load avg at start {h.get('loadavg')}; "
                   f"{h.get('qemu_version', '')}")
    out.append(f"\n{result.get('sessions', 1)} session(s); {args['kernel']} kernel, guest "
               f"{args['mem']}, --cpus {args['cpus']}; {args['iterations']} iteration(s), VMM "
               f"order alternating; downtime target {args['downtime_ms']} ms (both); guest "
               f"loop sleep {args['loop_sleep']} s. Metrics: median (min-max), n over the runs "
               "that passed every check; per-iteration ratios pair ours and QEMU of the same "
               "iteration where both passed.\n")
    if result.get("guest_cmdline"):
        out.append(f"Guest command line (ours, given to QEMU as -append): "
                   f"`{result['guest_cmdline']}`\n")
    if result.get("interrupted"):
        out.append("**Interrupted**: only the tests that ended are reported.\n")
    return out


def report_markdown(result):
    runs = result["runs"]
    out = ["# Stock-kernel snapshot/restore and live migration: ours vs QEMU microvm\n"]
    out += header_lines(result)
    for test, title, metrics in SECTIONS:
        trs = [r for r in runs if r.get("test") == test]
        if trs:
            out += [f"## {title}\n", *metric_table(trs, metrics), ""]
    out += ["## Outcomes\n", *outcome_table(runs), ""]
    if any(r.get("trouble") for r in runs):
        out += ["Kernel-log trouble (first line of each report; not a failure):\n",
                *trouble_lines(runs), ""]
    if any(r["outcome"] != "ok" for r in runs):
        out += ["## Failed runs\n", *failed_runs(runs)]
    out += ["## Commands\n", *commands_lines(runs)]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------- self-test --

def synthetic_result():
    """Two iterations of both tests; QEMU's first migration failed."""
    def rec(test, who, i, **kw):
        return {"test": test, "vmm": who, "iteration": i, "order": 0, "outcome": "ok",
                "detail": "", "commands": {"source": [who, "--x"]}, "consoles": {}, **kw}
    runs = [rec("snapshot", "ours", 0, snapshot_ms=10.0, restore_ms=100.0, vmrss_kib=1000),
            rec("snapshot", "qemu", 0, snapshot_ms=40.0, restore_ms=400.0, vmrss_kib=3000),
            rec("snapshot", "ours", 1, snapshot_ms=30.0, restore_ms=300.0, vmrss_kib=1000),
            rec("snapshot", "qemu", 1, snapshot_ms=50.0, restore_ms=200.0, vmrss_kib=2000),
            rec("migration", "ours", 0, total_ms=100.0, downtime_ms=10.0),
            rec("migration", "qemu", 0, outcome="migrate_timeout", detail="no event",
                consoles={"source": {"serial_tail": ["tail-line-xyz"], "stderr_tail": []}}),
            rec("migration", "ours", 1, total_ms=300.0, downtime_ms=20.0,
                trouble={"destination": ["WARNING: something"]}),
            rec("migration", "qemu", 1, total_ms=200.0, downtime_ms=40.0)]
    args = {"kernel": "cloud", "mem": "256M", "cpus": 1, "iterations": 2, "downtime_ms": 100,
            "loop_sleep": 0.1}
    return {"host": {"kernel": "k", "nproc": 1}, "args": args, "runs": runs}


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def self_test_report():
    result = synthetic_result()
    text = report_markdown(result)
    rows = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ")}
    snap = rows[SECTIONS[0][2][2][1]]
    expect("| 20.0 (10.0-30.0), n=2 | 45.0 (40.0-50.0), n=2 | 0.44 | 0.25-0.60 (n=2) |" in snap,
           f"snapshot row: {snap}")
    rest = rows[SECTIONS[0][2][5][1]]
    expect("| 200.0 (100.0-300.0), n=2 | 300.0 (200.0-400.0), n=2 | 0.67 | 0.25-1.50 (n=2) |"
           in rest, f"restore row: {rest}")
    mig = rows[SECTIONS[1][2][1][1]]   # only iteration 2 pairs: QEMU's first failed
    expect("| 200.0 (100.0-300.0), n=2 | 200.0 (200.0-200.0), n=1 | 1.00 | 1.50-1.50 (n=1) |"
           in mig, f"migration row: {mig}")
    expect("| migration | QEMU microvm | 2 | 1 | 1 migrate_timeout | 0 |" in text, "outcomes")
    expect("tail-line-xyz" in text and "migrate_timeout" in text, "failed run section")
    expect("`WARNING: something`" in text, "trouble list")
    return result, text


def self_test_files(result, text):
    """--jsonl-style and --json files read back by --from-json."""
    with tempfile.TemporaryDirectory(prefix="lifebench-selftest-") as d:
        p = os.path.join(d, "x.jsonl")
        with open(p, "w") as f:
            f.write(json.dumps({"type": "header", "host": result["host"],
                                "args": result["args"]}) + "\n")
            for r in result["runs"]:
                f.write(json.dumps(r) + "\n")
        j = os.path.join(d, "x.json")
        with open(j, "w") as f:
            json.dump(result, f)
        merged = load_results([p, j])
    expect(len(merged["runs"]) == 16 and merged["sessions"] == 2, "merged sessions")
    again = report_markdown(merged)
    expect("| 20.0 (10.0-30.0), n=4 | 45.0 (40.0-50.0), n=4 | 0.44 | 0.25-0.60 (n=4) |" in again,
           "medians and ratios over two sessions read back from --jsonl and --json files")


def self_test_regexes():
    typed_echo = (b"# echo r=$((6*7)) c=$(tail -n 1 /tmp/count)\r\n"
                  b"# until [ -s /tmp/count ]; do sleep 0.1; done; echo c0=$(tail -n 1 "
                  b"/tmp/count)\r\n# " + LATER_CMD.format(c=12).encode() + b"\r\n")
    for rx in (ANSWER_RE, COUNT_RE, LATER_RE):
        expect(rx.search(typed_echo) is None, f"{rx.pattern} matches a typed line's echo")
    m = ANSWER_RE.search(typed_echo + b"r=42 c=1234\r\n")
    expect(m and m.group(1) == b"42" and m.group(2) == b"1234", "answer")
    m = ANSWER_RE.search(b"r=42 c=\r\n")
    expect(m and m.group(2) == b"", "empty count")
    expect(COUNT_RE.search(b"c0=17\r\n").group(1) == b"17", "count")
    expect(LATER_RE.search(b"k=18\n").group(1) == b"18", "later count")
    expect(RESTORED_RE.search(b"[12:00:00.000] [info] restored from /tmp/x in 2.75 ms (256 "
                              b"MiB mapped").group(1) == b"2.75", "restored log line")


def self_test_console():
    """typed()/wait()/exit_fail() on harmless local processes (no VM)."""
    a = argparse.Namespace(answer_timeout=10, step_timeout=10)
    env = argparse.Namespace(work=tempfile.gettempdir())
    st = Stage(a, env, {"vmm": "ours"}, "selftest")
    try:
        c = st.start("source", ["cat"])
        _, m = typed(st, c, "r=42 c=7", ANSWER_RE, 10, "no_answer", "echo from cat")
        expect(m.group(2) == b"7", "cat echo")
        st.start("destination", ["sh", "-c", "echo 'Kernel panic - not syncing: x' >&2; exit 3"])
        try:
            wait(st, lambda: False, 10, "timeout", "nothing")
            expect(False, "a dead process must fail the wait")
        except Fail as e:
            expect(e.kind == "panic" and "destination exited with status 3" in e.detail,
                   f"exit_fail: {e}")
        st.end("destination")
        try:
            wait(st, lambda: False, 0.3, "the_kind", "x")
            expect(False, "a wait must time out")
        except Fail as e:
            expect(e.kind == "the_kind", f"timeout kind {e.kind}")
    finally:
        st.close()
    expect(not st.cons and all(c.p.poll() is not None for c in st.ended.values()), "cleanup")


def fake_qmp_server(path, ready):
    """Answers a QMP greeting, qmp_capabilities, one event + reply, one error."""
    import socket
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    ready.set()
    conn, _ = srv.accept()
    f = conn.makefile("rwb")
    f.write(b'{"QMP": {"version": {}}}\n')
    f.flush()
    for reply in (b'{"return": {}}\n',
                  b'{"event": "MIGRATION", "data": {"status": "completed"}}\n'
                  b'{"return": {"status": "running"}}\n',
                  b'{"error": {"class": "GenericError", "desc": "nope"}}\n'):
        f.readline()
        f.write(reply)
        f.flush()
    f.readline()
    conn.close()
    srv.close()


def self_test_qmp():
    import threading
    with tempfile.TemporaryDirectory(prefix="lifebench-selftest-") as d:
        path = os.path.join(d, "q.sock")
        ready = threading.Event()
        th = threading.Thread(target=fake_qmp_server, args=(path, ready), daemon=True)
        th.start()
        ready.wait(5)
        q = QMP(path, timeout=5, reply_timeout=5)
        expect(q.cmd("query-status") == {"status": "running"}, "QMP reply")
        t, ev = q.wait_event(qemu_migration_end, 5)
        expect(ev["data"]["status"] == "completed" and not q.events, "QMP event")
        try:
            q.cmd("cont")
            expect(False, "a QMP error must raise")
        except BenchError as e:
            expect("nope" in str(e), f"QMP error text {e}")
        q.close()
        th.join(5)
    try:
        JsonLines(os.path.join(tempfile.gettempdir(), "lifebench-no-such.sock"), timeout=0.05)
        expect(False, "connecting to nothing must raise")
    except BenchError:
        pass


def self_test():
    result, text = self_test_report()
    self_test_files(result, text)
    self_test_regexes()
    self_test_console()
    self_test_qmp()
    print("self-test ok: report and ratios, --from-json, regular expressions, console "
          "helpers, QMP/control-socket clients")
    return 0


# -------------------------------------------------------------------- main --

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    add_stock_vm_args(ap)
    ap.add_argument("--vmm-arg", action="append", default=[],
                    help="extra argument for our booting source vmm (repeatable)")
    ap.add_argument("--kernel", choices=tuple(KERNELS), default="cloud",
                    help="Debian kernel flavour (default cloud)")
    ap.add_argument("--tests", type=choice_list(TESTS), default=list(TESTS),
                    help="comma-separated subset of snapshot,migration (default both)")
    ap.add_argument("--cpus", type=int, default=1, help="guest vCPUs (default 1)")
    ap.add_argument("--mem", default="256M", help="guest RAM (default 256M)")
    ap.add_argument("-n", "--iterations", type=int, default=3,
                    help="iterations (default 3)")
    ap.add_argument("--downtime-ms", type=int, default=100,
                    help="live migration downtime target, both VMMs (default 100)")
    ap.add_argument("--loop-sleep", default="0.1",
                    help="sleep of the guest's counting loop, s (default 0.1)")
    for name, default, what in (
            ("boot", 300, "process start -> 'VMM-GUEST-READY'"),
            ("answer", 120, "a typed command -> its answer (count, destination answer, "
                            "loop check; QEMU destination 'running')"),
            ("step", 120, "a control-socket/QMP reply; destination listening; ours' source "
                          "exit after migrating"),
            ("snapshot", 300, "snapshot-create / QEMU migrate to a file -> done"),
            ("restore", 300, "restore process start -> the guest's answer"),
            ("migrate", 300, "migrate request -> completion event (then cancelled)")):
        ap.add_argument(f"--{name}-timeout", type=float, default=default,
                        help=f"{what}, s (default {default})")
    ap.add_argument("--emulated-host", action="store_true",
                    help="allow the emulated SVM host's XSAVE artifact in the kernel-log "
                         "trouble record (automatic when $SVM_WORK is set: run_l1.py)")
    ap.add_argument("--cache-dir", default=CACHE_DEFAULT,
                    help=f"guest image cache (default $VMM_CACHE or ~/.cache/vmm: {CACHE_DEFAULT})")
    ap.add_argument("--work-dir", help="make the temporary directory (snapshots, sockets, the "
                                       "vmm copy) in here (default /tmp)")
    ap.add_argument("--no-copy-vmm", action="store_true",
                    help="run --vmm in place (default: a copy, so that one binary snapshots "
                         "and restores even if the build is replaced meanwhile)")
    ap.add_argument("--tail-lines", type=int, default=40,
                    help="console lines kept per failed test and process (default 40)")
    ap.add_argument("--json", action="store_true", help="JSON on stdout instead of markdown")
    ap.add_argument("--jsonl", metavar="FILE",
                    help="append a header line and then each test's record, as it ends")
    ap.add_argument("--from-json", nargs="+", metavar="FILE",
                    help="run nothing: report these --json/--jsonl outputs (one session each)")
    ap.add_argument("--self-test", action="store_true",
                    help="check the report, parsing and socket code on synthetic data; no VM")
    return ap, ap.parse_args()


def check_setup(ap, a, env):
    """Refuses to start without what the runs need; sets env.kernel/initrd."""
    if not os.path.isfile(a.vmm):
        ap.error(f"vmm not found at {a.vmm} (--vmm; QEMU's runs need it too)")
    if "qemu" in a.vmms and shutil.which(a.qemu) is None:
        ap.error(f"{a.qemu} not found (--qemu)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        ap.error("/dev/kvm is not accessible")
    env.kernel, env.initrd = kernel_images(a, a.kernel)
    missing = [p for p in (env.kernel, env.initrd) if not os.path.isfile(p)]
    if missing:
        ap.error(f"missing {', '.join(missing)} (guest-images/fetch-debian-kernel.sh, "
                 "build-initramfs.sh)")
    if a.iterations < 1 or a.cpus < 1:
        ap.error("-n and --cpus must be >= 1")
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", a.loop_sleep):
        ap.error(f"--loop-sleep {a.loop_sleep!r}: seconds, e.g. 0.1")


def make_work(ap, a, env):
    env.work = tempfile.mkdtemp(prefix="lifebench-", dir=a.work_dir or "/tmp")
    if len(os.path.join(env.work, "migration-qemu-999-restore.qmp")) > 100:
        shutil.rmtree(env.work, ignore_errors=True)
        ap.error(f"--work-dir {a.work_dir}: too long for unix socket paths")
    if not a.no_copy_vmm:
        copy = os.path.join(env.work, "vmm")
        shutil.copy2(a.vmm, copy)
        a.vmm = copy


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_session(ap, a):
    """Checks, runs every test (cleaning up even on Ctrl-C/SIGTERM), returns
    the result."""
    env = argparse.Namespace(cmdline=None)
    check_setup(ap, a, env)
    emulated = a.emulated_host or "SVM_WORK" in os.environ
    if emulated:   # read by kernel_trouble() when it runs
        os.environ["VMM_E2E_EMULATED_HOST"] = "qemu-tcg-svm"
    else:
        os.environ.pop("VMM_E2E_EMULATED_HOST", None)
    kvm = host_kvm_module()
    if kvm == "kvm_pvm":
        log("warning: this host's KVM is PVM: a stock kernel cannot run user space here "
            "(docs/linux-boot.md); expect boot timeouts")
    args = {k: v for k, v in vars(a).items() if k not in ("from_json", "self_test")}
    host = host_info(a.qemu if "qemu" in a.vmms else None, kvm_module=kvm,
                     emulated_host=emulated, loadavg=loadavg(), vmm_source=os.path.abspath(a.vmm),
                     vmm_sha256=sha256_file(a.vmm))
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    make_work(ap, a, env)
    try:
        return run_in(a, env, host, args)
    finally:
        kill_started()
        shutil.rmtree(env.work, ignore_errors=True)


def kill_started():
    """Any VMM still running (a signal can land in the middle of a cleanup):
    SIGKILL, by its pid, our children only."""
    for c in STARTED:
        c.stop()


def run_in(a, env, host, args):
    if "qemu" in a.vmms:
        env.cmdline = probe_cmdline(a, env.kernel, env.initrd)
        log(f"guest command line (QEMU -append): {env.cmdline}")
    jsonl = open(a.jsonl, "a") if a.jsonl else None

    def emit(r):
        if jsonl:
            jsonl.write(json.dumps(r) + "\n")
            jsonl.flush()
            os.fsync(jsonl.fileno())
    try:
        emit({"type": "header", "host": host, "args": args, "guest_cmdline": env.cmdline})
        runs, interrupted = run_bench(a, env, emit)
    finally:
        if jsonl:
            jsonl.close()
    host["loadavg_end"] = loadavg()
    return {"host": host, "args": args, "runs": runs, "guest_cmdline": env.cmdline,
            "interrupted": interrupted}


def main():
    ap, a = parse_args()
    if a.self_test:
        return self_test()
    if a.from_json:
        result = load_results(a.from_json)
    else:
        result = run_session(ap, a)
    emit_result(result, None, a.json, lambda: report_markdown(result))
    if result.get("interrupted"):
        return 130
    return 0 if all(r["outcome"] == "ok" for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
