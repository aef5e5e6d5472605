#!/usr/bin/env python3
"""Snapshot benchmark: snapshot-create and restore-to-running, our VMM vs QEMU microvm.

Both VMMs run the freestanding test guest (guest-images/test-guest), 1 vCPU,
serial on stdio pipes, for each --sizes guest size (default 512M and 2G), with
the snapshot files on each --dirs directory (default /dev/shm, tmpfs, and /tmp;
the report names each one's filesystem from `stat -f`). The guest has
no command that fills memory, so its RAM is what the loader and the guest
touched at boot (~90 KiB non-zero): this measures the per-GiB cost of scanning
and mapping guest RAM and the fixed costs, not copying guest data.

Per repetition, per size, per directory (which VMM goes first alternates):

ours   source: vmm --kernel G --mem SIZE --serial stdio --log-level info --api-socket S
       snapshot: {"cmd": "snapshot-create", "dir": D} on S; client wall time from
         writing the request to reading the reply (pause + vCPU/device state +
         sparse memory file with all-zero pages as holes + fsync of both files +
         resume); the reply's pause_ms/state_ms/memory_ms/total_ms are kept.
       restore (mapped): vmm --restore D --serial stdio --log-level debug
         (DIR/memory mapped MAP_PRIVATE; pages read when the guest touches them)
       restore (copy):   the same plus --restore-copy (memory file read into
         anonymous memory up front); both from the same snapshot, order alternates.
QEMU   source: qemu-system-x86_64 -M microvm -accel kvm -cpu host,-arch-capabilities
         -m SIZE -nodefaults -no-user-config -nographic -serial stdio -kernel G
         -device isa-debug-exit,iobase=0xf4,iosize=4
         -global migration.store-global-state=off -qmp unix:Q,server=on,wait=off
       snapshot (--qemu-mode stopped, default): QMP `stop`, `migrate` to the file,
         wait for the MIGRATION event "completed", `cont`: the same pause ->
         write -> resume cycle as ours. Client wall time is stop -> cont reply;
         migrate -> completed and QEMU's own query-migrate total-time are kept
         too. Transport (--qemu-transport): `fd` (default: the script opens the
         file and passes it with `getfd`; QEMU writes the stream straight into
         it) or `exec` (`exec:cat > FILE`, a shell and cat in between). QEMU
         7.2 has no `file:` URI. max-bandwidth is raised to 1 TiB/s (the
         default, 32 MiB/s, throttles the pre-copy loop). QEMU does not fsync
         the stream: the script fsyncs the file afterwards and reports that
         time separately ("QEMU + fsync").
         --qemu-mode live: `migrate` while the guest runs (QEMU stops it for
         the last pass), then `cont`; wall time migrate -> cont reply.
       restore: the same command line without -qmp plus `-incoming fd:N` (the
         script opens the file and passes it) or `-incoming "exec:cat FILE"`;
         QEMU starts the guest when the stream is loaded. With stopped mode
         store-global-state=off is what makes it autostart: otherwise the
         destination keeps the source's "paused" run state.

Restore-to-running: wall time from just before fork/exec (Python Popen) to
reading the guest's answer to a serial command. The script writes
`echo sbN` lines (N = 1, 2, ...) every --ping-interval-ms (2 ms; 25 ms after
the first second) until a line `sbN` comes back. Our VMM starts reading stdin
only after the VM is restored, so its first line is never lost and is
answered first. QEMU's chardev feeds up to a FIFO's worth of bytes (16) into
the UART while the incoming migration is still loading; the loaded UART state
then replaces them, so the guest first sees the rest of a cut line (it answers
`ERR unknown command`, ~20 bytes) and then the next whole `echo sbN`, which
was already waiting in the pipe. Which N answered is recorded.

Our VMM's restore log (--log-level debug) gives a breakdown: "restored from D
in R ms" (Vm::restore: state file, memory map or copy, KVM VM + memory slot,
vCPUs, device state), "starting vCPUs at S ms since VMM start", "vCPU 0
entering the guest at E ms" (since VMM start = its first static initializer).
The process start (fork/exec, dynamic linking) is the log line's wall-clock
timestamp (ms resolution) minus E minus the spawn time.

--strace adds, per size and directory, one more mapped restore of ours under
`strace -f -tt -T` (not counted in the medians; strace slows every system
call) and reports its timeline: exec -> main, state file, memory mmap, KVM VM
creation (KVM_CREATE_IRQCHIP, KVM_SET_USER_MEMORY_REGION), vCPU + device state,
run() set-up and thread start, first KVM_RUN -> answer written. The traces are
kept (their path is in the progress output and the JSON).

One VM runs at a time (an idle test guest spins polling its UART, a whole host
CPU). The vmm binary and the guest are copied to a private directory first
(--no-copy-binaries to run them in place), so a rebuild during the run cannot
swap them. Snapshot files are deleted after each repetition; the page cache is
not dropped (restores read warm page cache on both filesystems).

Output: markdown on stdout (medians, min-max, ours/QEMU ratios of medians);
--json FILE writes everything, including every run. Stdlib only. Examples:
  tools/bench/snapshot_bench.py --reps 5 --json /tmp/snap.json
  tools/bench/snapshot_bench.py --sizes 512M --dirs /dev/shm --reps 3 --no-restore-copy
"""
import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    QEMU_UNLIMITED_BW, QMP, BenchError, JsonLines, PipedProcess, add_vm_args,
    stat, ratio, host_info, parse_size, loadavg, proc_status, sha256_file)

READY = b"TESTGUEST READY"

RESTORED_RE = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\.(\d{3})\] \[info\] restored from .* in "
                         r"([0-9.]+) ms \((\d+) MiB (mapped|copied)")
STARTING_RE = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\.(\d{3})\] \[debug\] starting vCPUs at "
                         r"([0-9.]+) ms since VMM start")
ENTERING_RE = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\.(\d{3})\] \[debug\] vCPU 0 entering the "
                         r"guest at ([0-9.]+) ms")


# ----------------------------------------------------------------- helpers --

def fs_type(path):
    try:
        out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        return out or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def file_sizes(path):
    """(apparent bytes, allocated bytes) of a file."""
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def faults(pid):
    """(minor, major) page faults of a process so far (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[7]), int(fields[9])
    except (OSError, IndexError, ValueError):
        return None, None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks_ms(pid):
    """utime + stime of the whole process, threads that exited included
    (/proc/PID/stat), in ms; resolution 1/CLK_TCK s (10 ms)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def sched(pid):
    """(ms on a CPU, ms waiting on a run queue) summed over the process's
    current threads (/proc/PID/task/*/schedstat)."""
    run = wait = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None, None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                r, w = f.read().split()[:2]
            run += int(r)
            wait += int(w)
        except (OSError, ValueError):
            pass
    return run / 1e6, wait / 1e6


def log_wall(m, ref_wall):
    """Unix time of a '[HH:MM:SS.mmm]' log timestamp (local time), taken on the
    day of ref_wall (the nearest such instant to ref_wall). The timestamp is
    truncated to the millisecond: +0.5 ms is added."""
    h, mi, s, ms_ = (int(m.group(i)) for i in range(1, 5))
    ref = datetime.datetime.fromtimestamp(ref_wall)
    t = ref.replace(hour=h, minute=mi, second=s, microsecond=ms_ * 1000).timestamp() + 0.0005
    # around midnight
    for d in (-86400, 86400):
        if abs(t + d - ref_wall) < abs(t - ref_wall):
            t += d
    return t


# A failed step (caught per run in main); the control-socket clients raise it too.
RunError = BenchError


class Child(PipedProcess):
    """A VMM process (benchlib's PipedProcess) whose serial input is written
    without blocking and whose stdout is read as lines. who names it in errors;
    t0_wall is the wall-clock time taken just before t0."""

    def __init__(self, who, cmd, pass_fds=()):
        self.who = who
        self.t0_wall = time.time()
        super().__init__(cmd, pass_fds=pass_fds)
        os.set_blocking(self.p.stdin.fileno(), False)
        self.scan = 0  # stdout offset up to which complete lines were consumed

    def lines(self):
        """New complete stdout lines (consumed)."""
        out = []
        while True:
            i = self.out.find(b"\n", self.scan)
            if i < 0:
                return out
            out.append(bytes(self.out[self.scan:i]).decode(errors="replace").strip("\r"))
            self.scan = i + 1

    def stderr_tail(self, n=1500):
        return bytes(self.err[-n:]).decode(errors="replace").strip()

    def write(self, data):
        """Non-blocking write to the serial input; False if the pipe is full."""
        try:
            n = os.write(self.p.stdin.fileno(), data)
            return n == len(data)
        except BlockingIOError:
            return False
        except BrokenPipeError:
            return False

    def wait_ready(self, timeout):
        """Waits for READY on stdout; the complete lines from READY's on are
        consumed."""
        if not self.wait_until(lambda: READY in self.out, timeout):
            why = "exited before READY" if self.gone else f"no READY within {timeout} s"
            raise RunError(f"{self.who}: {why}: {self.stderr_tail()}")
        self.scan = self.out.find(READY)
        self.lines()

    def command(self, line, answer, timeout):
        """Writes line, returns the time of reading the line == answer."""
        self.write(line.encode() + b"\n")
        if self.wait_until(lambda: answer in self.lines(), timeout):
            return time.monotonic()
        if self.gone:
            raise RunError(f"{self.who}: exited: {self.stderr_tail()}")
        raise RunError(f"{self.who}: no answer {answer!r} within {timeout} s")

    def ping_until_answer(self, interval, timeout):
        """Restore-to-running: pings `echo sbN` until a line sbN comes back.
        Returns (t_answer, answered N, pings sent, send time of N)."""
        sent = {}
        n = 0
        next_send = self.t0
        deadline = self.t0 + timeout
        while True:
            now = time.monotonic()
            if now >= next_send:
                msg = b"echo sb%d\n" % (n + 1)
                if self.write(msg):
                    n += 1
                    sent[n] = now
                step = interval if now - self.t0 < 1.0 else max(interval, 0.025)
                next_send = now + step
            for l in self.lines():
                m = re.fullmatch(r"sb(\d+)", l)
                if m and int(m.group(1)) in sent:
                    k = int(m.group(1))
                    return time.monotonic(), k, n, sent[k]
            if self.gone:
                raise RunError(f"{self.who}: exited before answering: {self.stderr_tail()}")
            if now >= deadline:
                raise RunError(f"{self.who}: no answer within {timeout} s "
                               f"(stdout {bytes(self.out[-200:])!r}): {self.stderr_tail()}")
            self.poll(max(0.0, min(next_send - time.monotonic(), deadline - now)))

    def finish(self, timeout=15):
        """'exit 0' (after any queued input), wait; SIGKILL if it does not go;
        then what is left on the pipes (up to 2 s) and close. The exit status."""
        if self.t_exit is None and self.p.poll() is None:
            self.write(b"\nexit 0\n")
            self.wait_until(lambda: self.t_exit is not None, timeout)
        return self.kill(drain=2)


def ms(a, b):
    return (b - a) * 1000.0


# ------------------------------------------------------------------ ours --

def ours_source_cmd(a, size, sock):
    return [a.vmm, "--kernel", a.guest, "--mem", size, "--serial", "stdio",
            "--log-level", "info", "--api-socket", sock]


def ours_restore_cmd(a, snapdir, copy):
    return [a.vmm, "--restore", snapdir, "--serial", "stdio", "--log-level", "debug"] + \
        (["--restore-copy"] if copy else [])


def ours_snapshot(a, size, snapdir, sock):
    r = {"vmm": "ours", "size": size, "load": loadavg()}
    c = Child("ours", ours_source_cmd(a, size, sock))
    try:
        c.wait_ready(a.timeout)
        c.command("echo warm", "warm", a.timeout)
        api = JsonLines(sock)
        f0, s0, c0 = faults(c.p.pid), sched(c.p.pid), cpu_ticks_ms(c.p.pid)
        t0 = time.monotonic()
        m = api.request({"id": 1, "cmd": "snapshot-create", "dir": snapdir}, a.timeout)
        t1 = time.monotonic()
        f1, s1, c1 = faults(c.p.pid), sched(c.p.pid), cpu_ticks_ms(c.p.pid)
        if None not in (c0, c1):
            r["cpu_ticks_ms"] = c1 - c0
        if None not in f0 + f1:
            r["minflt"], r["majflt"] = f1[0] - f0[0], f1[1] - f0[1]
        if None not in s0 + s1:
            r["cpu_ms"], r["runq_wait_ms"] = s1[0] - s0[0], s1[1] - s0[1]
        api.close()
        if not m.get("ok"):
            raise RunError(f"ours: snapshot-create failed: {m}")
        r["wall_ms"] = ms(t0, t1)
        for k in ("pause_ms", "state_ms", "memory_ms", "total_ms", "memory_bytes",
                  "memory_data_bytes"):
            r[k] = m.get(k)
        # the guest still answers after the snapshot
        c.command("echo after", "after", a.timeout)
    finally:
        r["exit"] = c.finish()
    mem_app, mem_du = file_sizes(os.path.join(snapdir, "memory"))
    st_app, st_du = file_sizes(os.path.join(snapdir, "state"))
    r.update(memory_apparent=mem_app, memory_du=mem_du, state_bytes=st_app, state_du=st_du)
    return r


def ours_breakdown(c, t_answer):
    """Our VMM's restore timeline from its debug log (ms since spawn)."""
    text = bytes(c.err).decode(errors="replace")
    b = {}
    mr = ms_ = me = None
    for line in text.splitlines():
        mr = mr or RESTORED_RE.match(line)
        ms_ = ms_ or STARTING_RE.match(line)
        me = me or ENTERING_RE.match(line)
    if not (mr and ms_ and me):
        return None
    R = float(mr.group(5))
    S = float(ms_.group(5))
    E = float(me.group(5))
    # process start (kProcessStart) on the wall clock, from the entering line
    start_wall = log_wall(me, c.t0_wall) - E / 1000.0
    restored_at = (log_wall(mr, c.t0_wall) - start_wall) * 1000.0  # since VMM start, +-1 ms
    b["process_start_ms"] = (start_wall - c.t0_wall) * 1000.0
    b["pre_restore_ms"] = max(0.0, restored_at - R)
    b["restore_ms"] = R
    b["post_restore_ms"] = max(0.0, S - restored_at)
    b["thread_start_ms"] = E - S
    b["vcpu_entry_since_vmm_start_ms"] = E
    b["answer_after_entry_ms"] = ms(c.t0, t_answer) - b["process_start_ms"] - E
    return b


def measure_restore(a, c, r):
    """Pings the restored VM `c` until it answers, records restore_ms and the
    process's memory, faults and CPU into r, and ends it (r["exit"]).
    Returns the time of the answer."""
    try:
        t_ans, k, n, t_sent = c.ping_until_answer(a.ping_interval_ms / 1000.0, a.timeout)
        r["restore_ms"] = ms(c.t0, t_ans)
        r["answered_ping"], r["pings_sent"] = k, n
        r["ping_rtt_ms"] = ms(t_sent, t_ans)
        r["status_kib"] = proc_status(c.p.pid, ("VmRSS", "RssAnon", "RssFile", "RssShmem"))
        r["minflt"], r["majflt"] = faults(c.p.pid)
        r["cpu_ms"], r["runq_wait_ms"] = sched(c.p.pid)
    finally:
        r["exit"] = c.finish()
    return t_ans


def ours_restore(a, size, snapdir, copy):
    r = {"vmm": "ours_copy" if copy else "ours", "size": size, "load": loadavg()}
    c = Child(r["vmm"], ours_restore_cmd(a, snapdir, copy))
    t_ans = measure_restore(a, c, r)
    r["breakdown"] = ours_breakdown(c, t_ans)
    r["log"] = [l for l in bytes(c.err).decode(errors="replace").splitlines()
                if "restored" in l or "vCPU" in l][:5]
    return r


# ------------------------------------------------------------------ QEMU --

def qemu_base(a, size):
    cmd = [a.qemu, "-M", "microvm", "-accel", "kvm", "-cpu", a.qemu_cpu, "-m", size,
           "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-kernel", a.guest, "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    if a.qemu_mode == "stopped":
        cmd += ["-global", "migration.store-global-state=off"]
    return cmd


def qemu_snapshot(a, size, path, qsock):
    r = {"vmm": "qemu", "size": size, "load": loadavg(), "mode": a.qemu_mode,
         "transport": a.qemu_transport}
    c = Child("qemu", qemu_base(a, size) + ["-qmp", f"unix:{qsock},server=on,wait=off"])
    fd = -1
    try:
        c.wait_ready(a.timeout)
        c.command("echo warm", "warm", a.timeout)
        q = QMP(qsock)
        for cmd, args in (("migrate-set-capabilities",
                           {"capabilities": [{"capability": "events", "state": True}]}),
                          ("migrate-set-parameters", {"max-bandwidth": QEMU_UNLIMITED_BW})):
            res = q.execute(cmd, **args)
            if "return" not in res:
                raise RunError(f"qemu: {cmd}: {res}")
        if a.qemu_transport == "fd":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            res = q.execute("getfd", fds=[fd], fdname="snap")
            if "return" not in res:
                raise RunError(f"qemu: getfd: {res}")
            uri = "fd:snap"
        else:
            uri = f"exec:cat > {shlex.quote(path)}"
        f0, s0, c0 = faults(c.p.pid), sched(c.p.pid), cpu_ticks_ms(c.p.pid)
        t0 = time.monotonic()
        if a.qemu_mode == "stopped":
            res = q.execute("stop")
            if "return" not in res:
                raise RunError(f"qemu: stop: {res}")
        t1 = time.monotonic()
        res = q.execute("migrate", uri=uri)
        if "return" not in res:
            raise RunError(f"qemu: migrate: {res}")
        t2, ev = q.wait_event(lambda m: m.get("event") == "MIGRATION" and
                              m["data"]["status"] in ("completed", "failed", "cancelled"),
                              a.timeout)
        if ev["data"]["status"] != "completed":
            raise RunError(f"qemu: migration {ev['data']['status']}")
        # `cont` is refused ("Migration is not finalized yet") until the
        # migration's cleanup has run in the main loop: retry.
        tries = 0
        while True:
            res = q.execute("cont")
            tries += 1
            if "return" in res:
                break
            if time.monotonic() - t2 > 10:
                raise RunError(f"qemu: cont: {res}")
            time.sleep(0.0005)
        t3 = time.monotonic()
        f1, s1, c1 = faults(c.p.pid), sched(c.p.pid), cpu_ticks_ms(c.p.pid)
        if None not in (c0, c1):
            r["cpu_ticks_ms"] = c1 - c0
        if None not in f0 + f1:
            r["minflt"], r["majflt"] = f1[0] - f0[0], f1[1] - f0[1]
        if None not in s0 + s1:
            r["cpu_ms"], r["runq_wait_ms"] = s1[0] - s0[0], s1[1] - s0[1]
        r["wall_ms"] = ms(t0, t3)
        r["stop_ms"] = ms(t0, t1)
        r["migrate_ms"] = ms(t1, t2)
        r["cont_ms"] = ms(t2, t3)
        r["cont_tries"] = tries
        info = q.execute("query-migrate").get("return", {})
        ram = info.get("ram", {})
        r.update(total_time_ms=info.get("total-time"), downtime_ms=info.get("downtime"),
                 setup_time_ms=info.get("setup-time"), transferred=ram.get("transferred"),
                 zero_pages=ram.get("duplicate"), normal_pages=ram.get("normal"))
        # fsync of the stream (ours fsyncs its files inside snapshot-create)
        t4 = time.monotonic()
        ffd = fd if fd >= 0 else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        os.fsync(ffd)
        if ffd != fd:
            os.close(ffd)
        r["fsync_ms"] = ms(t4, time.monotonic())
        c.command("echo after", "after", a.timeout)
        q.close()
    finally:
        if fd >= 0:
            os.close(fd)
        r["exit"] = c.finish()
    r["file_apparent"], r["file_du"] = file_sizes(path)
    return r


def qemu_restore(a, size, path):
    r = {"vmm": "qemu", "size": size, "load": loadavg()}
    fd = -1
    if a.qemu_transport == "fd":
        fd = os.open(path, os.O_RDONLY)
        cmd = qemu_base(a, size) + ["-incoming", f"fd:{fd}"]
    else:
        cmd = qemu_base(a, size) + ["-incoming", f"exec:cat {shlex.quote(path)}"]
    try:
        c = Child("qemu", cmd, pass_fds=(fd,) if fd >= 0 else ())
    finally:
        if fd >= 0:
            os.close(fd)
    r["command"] = cmd
    measure_restore(a, c, r)
    return r


# ---------------------------------------------------------------- strace --

STRACE_LINE = re.compile(r"^(\d+) +(\d\d):(\d\d):(\d\d\.\d+) (.*?)(?: <([0-9.]+)>)?$")


def strace_restore(a, snapdir, out_path):
    """One mapped restore of ours under strace -f -tt -T; its timeline (ms)."""
    cmd = ["strace", "-f", "-tt", "-T", "-o", out_path] + ours_restore_cmd(a, snapdir, False)
    c = Child("ours(strace)", cmd)
    try:
        t_ans, *_ = c.ping_until_answer(a.ping_interval_ms / 1000.0, a.timeout)
        total = ms(c.t0, t_ans)
    finally:
        c.finish()
    ev = []
    with open(out_path) as f:
        for line in f:
            m = STRACE_LINE.match(line.rstrip("\n"))
            if not m:
                continue
            t = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
            dur = float(m.group(6)) if m.group(6) else 0.0
            ev.append((t, dur, m.group(5)))
    if not ev:
        return {"error": "no strace output"}

    def first(pred, after=0.0):
        for t, d, s in ev:
            if t >= after and pred(s):
                return t, d
        return None, None

    t_exec, _ = first(lambda s: s.startswith("execve("))
    t_state, _ = first(lambda s: "openat(" in s and snapdir + "/state" in s)
    t_mem, _ = first(lambda s: "openat(" in s and snapdir + "/memory" in s)
    t_kvm, _ = first(lambda s: "openat(" in s and '"/dev/kvm"' in s)
    t_cvm, d_cvm = first(lambda s: "KVM_CREATE_VM" in s)
    t_irq, d_irq = first(lambda s: "KVM_CREATE_IRQCHIP" in s)
    t_pit, d_pit = first(lambda s: "KVM_CREATE_PIT2" in s)
    slots = [(t, d) for t, d, s in ev if "KVM_SET_USER_MEMORY_REGION" in s]
    t_vcpu, _ = first(lambda s: "KVM_CREATE_VCPU" in s)
    t_restored, _ = first(lambda s: s.startswith("write(2,") and "restored" in s)
    t_run, _ = first(lambda s: "KVM_RUN" in s)
    # the serial output is written a byte at a time: the answer is "sbN\n"
    t_out, _ = first(lambda s: s.startswith("write(1,"), after=t_run or 0.0)
    t_reply, _ = first(lambda s: s.startswith('write(1, "\\n"'), after=t_run or 0.0)
    out = {"spawn_to_answer_ms": total, "trace": out_path}
    if None in (t_exec, t_state, t_mem, t_kvm, t_vcpu, t_restored, t_run, t_reply) or not slots:
        out["error"] = "trace incomplete"
        return out
    slot_end = max(t + d for t, d in slots)
    # The VM's set-up ends with whichever of the memory slots, the IRQ chip
    # and the PIT comes last (the VMM's order changed once).
    vm_end = max([slot_end] + [t + d for t, d in ((t_irq, d_irq), (t_pit, d_pit)) if t])
    out.update({
        "exec_to_main_ms": (t_state - t_exec) * 1e3,   # ld.so, static init, CLI parse
        "state_file_ms": (t_mem - t_state) * 1e3,
        "memory_map_ms": (t_kvm - t_mem) * 1e3,        # open + mmap (or read, with copy)
        "kvm_vm_ms": (vm_end - t_kvm) * 1e3,            # /dev/kvm .. slots, irqchip, PIT
        "create_vm_ioctl_ms": d_cvm * 1e3,
        "create_irqchip_ioctl_ms": d_irq * 1e3,
        "set_memory_region_ioctl_ms": sum(d for _, d in slots) * 1e3,
        "vcpus_devices_ms": (t_restored - vm_end) * 1e3,  # vCPU create + state, devices
        "run_setup_ms": (t_run - t_restored) * 1e3,     # threads, first KVM_RUN
        "first_run_to_output_ms": (t_out - t_run) * 1e3,  # guest reads the ping
        "first_run_to_answer_ms": (t_reply - t_run) * 1e3,
        "exec_to_answer_ms": (t_reply - t_exec) * 1e3,
    })
    return out


# ------------------------------------------------------------- reporting --

def fmt(st, digits=1):
    if not st:
        return "-"
    f = f"{{:,.{digits}f}}"
    if st["n"] == 1 or st["min"] == st["max"]:
        return f.format(st["median"])
    return f"{f.format(st['median'])} ({f.format(st['min'])}-{f.format(st['max'])})"


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def human(n):
    if n is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n} B"


def summarize(runs):
    """runs: {(dir, size): {'snap': {who: [..]}, 'restore': {who: [..]}}}."""
    s = {}
    for key, cell in runs.items():
        d = {"snap": {}, "restore": {}, "breakdown": {}}
        for who, rs in cell["snap"].items():
            fields = ("wall_ms", "total_ms", "pause_ms", "state_ms", "memory_ms", "stop_ms",
                      "migrate_ms", "cont_ms", "total_time_ms", "fsync_ms")
            d["snap"][who] = {f: stat([r.get(f) for r in rs]) for f in fields}
            for f in ("minflt", "cpu_ms", "runq_wait_ms", "cpu_ticks_ms"):
                d["snap"][who][f] = stat([r.get(f) for r in rs])
            d["snap"][who]["wall_plus_fsync_ms"] = stat(
                [r["wall_ms"] + r["fsync_ms"] for r in rs if "fsync_ms" in r])
        for who, rs in cell["restore"].items():
            d["restore"][who] = {
                "restore_ms": stat([r.get("restore_ms") for r in rs]),
                "vmrss_kib": stat([r.get("status_kib", {}).get("VmRSS") for r in rs]),
                "answered_ping": stat([r.get("answered_ping") for r in rs]),
                "minflt": stat([r.get("minflt") for r in rs]),
                "cpu_ms": stat([r.get("cpu_ms") for r in rs]),
                "runq_wait_ms": stat([r.get("runq_wait_ms") for r in rs]),
            }
            bs = [r["breakdown"] for r in rs if r.get("breakdown")]
            if bs:
                d["breakdown"][who] = {k: stat([b[k] for b in bs]) for k in bs[0]}
        s[key] = d
    return s


def report(a, info, runs, summary, straces, failures):
    out = ["# Snapshot benchmark: our VMM vs QEMU microvm\n"]
    out.append(f"Host: {info.get('cpu', '?')}, nproc {info['nproc']}, kernel {info['kernel']}, "
               f"nested PVM: {info['nested_pvm']}; {info.get('qemu_version', '?')}; "
               f"loadavg at start {info['load_start']}, at end {info.get('load_end')}; "
               f"{a.reps} repetitions (VMM order alternating), started {info['started']}. "
               f"vmm sha256 {info['vmm_sha256'][:12]}, guest sha256 "
               f"{info['guest_sha256'][:12]}. QEMU: --qemu-mode {a.qemu_mode}, "
               f"--qemu-transport {a.qemu_transport}.\n")
    out.append("Directories: " + ", ".join(f"`{d}` ({info['fs'][d]})" for d in a.dir_list) + "\n")

    out.append("## Snapshot create (ms; median (min-max))\n")
    out.append("ours: client wall = snapshot-create request -> reply (pause, state, sparse memory "
               "file, fsync of both, resume); total = the reply's total_ms (before resume). "
               f"QEMU: client wall = {'stop -> migrate -> completed -> cont reply' if a.qemu_mode == 'stopped' else 'migrate -> completed -> cont reply'}; "
               "migrate = migrate command -> MIGRATION completed event; QEMU total = "
               "query-migrate total-time; + fsync = the script's fsync of the stream file "
               "afterwards.\n")
    rows = []
    for (d, size), cs in summary.items():
        o, q = cs["snap"].get("ours", {}), cs["snap"].get("qemu", {})
        rows.append([f"`{d}`", size, fmt(o.get("wall_ms")), fmt(o.get("total_ms")),
                     fmt(o.get("memory_ms")), fmt(q.get("wall_ms")), fmt(q.get("migrate_ms")),
                     fmt(q.get("total_time_ms"), 0), fmt(q.get("wall_plus_fsync_ms")),
                     ratio(o.get("wall_ms"), q.get("wall_ms")),
                     ratio(o.get("wall_ms"), q.get("wall_plus_fsync_ms"))])
    out += md_table(["dir", "guest", "ours wall", "ours total_ms", "ours memory_ms",
                     "QEMU wall", "QEMU migrate", "QEMU total-time", "QEMU wall + fsync",
                     "ours/QEMU wall", "ours/(QEMU + fsync)"], rows)
    out.append("")

    out.append("## Restore to running (ms from spawn to the guest's answer; median (min-max))\n")
    rows = []
    for (d, size), cs in summary.items():
        rs = cs["restore"]
        o, oc, q = (rs.get(k, {}).get("restore_ms") for k in ("ours", "ours_copy", "qemu"))
        rows.append([f"`{d}`", size, fmt(o), fmt(oc), fmt(q), ratio(o, q), ratio(oc, q)])
    out += md_table(["dir", "guest", "ours (mapped)", "ours --restore-copy", "QEMU -incoming",
                     "ours mapped/QEMU", "ours copy/QEMU"], rows)
    out.append("")

    out.append("## Files written and memory after restore\n")
    rows = []
    for (d, size), cell in runs.items():
        o = cell["snap"].get("ours", [])
        q = cell["snap"].get("qemu", [])
        rs = summary[(d, size)]["restore"]

        def med(rs_, k):
            st = stat([r.get(k) for r in rs_])
            return None if not st else int(st["median"])
        rows.append([f"`{d}`", size, human(med(o, "memory_apparent")), human(med(o, "memory_du")),
                     human(med(o, "memory_data_bytes")), human(med(o, "state_bytes")),
                     human(med(q, "file_apparent")), human(med(q, "file_du")),
                     fmt(stat([r.get("zero_pages") for r in q]), 0),
                     fmt(stat([r.get("normal_pages") for r in q]), 0)] +
                    [fmt(rs.get(k, {}).get("vmrss_kib"), 0) for k in ("ours", "ours_copy", "qemu")])
    out += md_table(["dir", "guest", "ours memory (apparent)", "ours memory (du)",
                     "ours non-zero data", "ours state", "QEMU stream", "QEMU stream (du)",
                     "QEMU zero pages", "QEMU normal pages", "VmRSS KiB ours mapped",
                     "VmRSS KiB ours copy", "VmRSS KiB QEMU"], rows)
    out.append("")

    out.append("## Minor page faults (median): during the snapshot (ours: the request; QEMU: stop "
               "-> cont), and of the restored process from exec to the guest's answer\n")
    rows = []
    for (d, size), cs in summary.items():
        rows.append([f"`{d}`", size] +
                    [fmt(cs["snap"].get(k, {}).get("minflt"), 0) for k in ("ours", "qemu")] +
                    [fmt(cs["restore"].get(k, {}).get("minflt"), 0)
                     for k in ("ours", "ours_copy", "qemu")])
    out += md_table(["dir", "guest", "snapshot ours", "snapshot QEMU", "restore ours mapped",
                     "restore ours copy", "restore QEMU"], rows)
    out.append("")

    out.append("## CPU time and run-queue wait (ms, median)\n")
    out.append("Snapshot: CPU = utime + stime of the whole VMM process over the snapshot window "
               "(/proc/PID/stat, threads that exited included, 10 ms ticks); wait = run-queue "
               "wait of the threads alive at both ends (/proc/PID/task/*/schedstat; QEMU's "
               "migration thread exits before the end, so its wait is missing). Restore: "
               "CPU / wait of the restored process's threads from exec to the guest's answer "
               "(schedstat, ns resolution). Wait = time a runnable VMM thread did not get one "
               "of the 2 CPUs.\n")
    rows = []
    for (d, size), cs in summary.items():
        row = [f"`{d}`", size]
        for k in ("ours", "qemu"):
            x = cs["snap"].get(k, {})
            row.append(f"{fmt(x.get('cpu_ticks_ms'), 0)} / {fmt(x.get('runq_wait_ms'))}")
        for k in ("ours", "ours_copy", "qemu"):
            x = cs["restore"].get(k, {})
            row.append(f"{fmt(x.get('cpu_ms'))} / {fmt(x.get('runq_wait_ms'))}")
        rows.append(row)
    out += md_table(["dir", "guest", "snapshot ours CPU / wait", "snapshot QEMU CPU / wait",
                     "restore ours mapped CPU / wait", "restore ours copy CPU / wait",
                     "restore QEMU CPU / wait"], rows)
    out.append("")

    out.append("## Where our restore time goes (from --log-level debug; ms, median)\n")
    out.append("process start = spawn -> the VMM's first static initializer (fork/exec, dynamic "
               "linking), from the log's wall-clock ms timestamps (+-1 ms); before = CLI parsing "
               "and logger set-up (+-1 ms); restore() = the VMM's \"restored from ... in R ms\" "
               "(state file, memory map/copy, KVM VM and memory slot, vCPUs, device state); "
               "after = run() set-up up to \"starting vCPUs\" (+-1 ms); thread = vCPU thread "
               "start to \"entering the guest\"; answer = vCPU entry -> the answer read by "
               "the script (the guest reads the ping through the UART, one exit per byte, "
               "and prints the answer, one exit per byte, plus the pipes). Each column is its "
               "own median: they need not add up to the median total.\n")
    rows = []
    for (d, size), cs in summary.items():
        for who in ("ours", "ours_copy"):
            b = cs["breakdown"].get(who)
            if not b:
                continue
            tot = cs["restore"][who]["restore_ms"]
            rows.append([f"`{d}`", size, "mapped" if who == "ours" else "copy"] +
                        [fmt(b[k]) for k in ("process_start_ms", "pre_restore_ms", "restore_ms",
                                             "post_restore_ms", "thread_start_ms",
                                             "answer_after_entry_ms")] + [fmt(tot)])
    out += md_table(["dir", "guest", "restore", "process start", "before", "restore()",
                     "after", "thread", "answer", "total"], rows)
    out.append("")

    if straces:
        out.append("## strace timeline of one mapped restore (ms; strace slows every system "
                   "call, so these are larger than the medians above)\n")
        keys = ["exec_to_main_ms", "state_file_ms", "memory_map_ms", "kvm_vm_ms",
                "create_irqchip_ioctl_ms", "set_memory_region_ioctl_ms", "vcpus_devices_ms",
                "run_setup_ms", "first_run_to_output_ms", "first_run_to_answer_ms",
                "exec_to_answer_ms",
                "spawn_to_answer_ms"]
        rows = []
        for (d, size), t in straces.items():
            rows.append([f"`{d}`", size] + [("-" if t.get(k) is None else f"{t[k]:.1f}")
                                            for k in keys])
        out += md_table(["dir", "guest", "execve -> main", "state file", "memory mmap",
                         "KVM VM (open .. memory slots, IRQ chip, PIT)", "...CREATE_IRQCHIP",
                         "...SET_USER_MEMORY_REGION", "vCPUs + devices", "run set-up",
                         "first KVM_RUN -> 1st output byte", "first KVM_RUN -> answer",
                         "execve -> answer", "spawn -> answer"],
                        rows)
        out.append("")

    out.append("Commands (shown for 512M; DIR, FILE, N: per run):\n")
    for who, cmd in info["commands"].items():
        out.append(f"- {who}: `{shlex.join(cmd)}`")
    out.append("")
    out.append("Fairness notes: ours writes only non-zero pages (holes elsewhere) and fsyncs "
               "the memory and state files inside the timed request; QEMU streams every page "
               "(an all-zero page as a ~9-byte record, detected by scanning it) and does not "
               "fsync (the `+ fsync` column adds the script's fsync). Both scan all of guest "
               "RAM. Our mapped restore maps the memory file MAP_PRIVATE and reads pages only "
               "when the guest touches them; --restore-copy and QEMU read/fill all of guest "
               "RAM before the guest runs (QEMU: zero pages are only checked, not written, on "
               "a fresh destination). Restores read the files from a warm page cache. The "
               "guest's RAM is almost all zero: real guests write more.\n")
    if failures:
        out.append("FAILED runs (not counted):\n")
        out += [f"- {f}" for f in failures]
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------ main --

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    add_vm_args(ap)
    ap.add_argument("--qemu-mode", choices=("stopped", "live"), default="stopped",
                    help="stopped: stop, migrate, cont (default); live: migrate a running guest")
    ap.add_argument("--qemu-transport", choices=("fd", "exec"), default="fd",
                    help="fd: the file passed with getfd / -incoming fd:N (default); "
                         "exec: exec:cat > FILE / -incoming exec:cat FILE")
    ap.add_argument("--sizes", default="512M,2G", help="guest sizes (default 512M,2G)")
    ap.add_argument("--dirs", default="/dev/shm,/tmp",
                    help="where snapshots are written, comma-separated (default /dev/shm,/tmp)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--no-restore-copy", action="store_true",
                    help="skip ours --restore-copy (slow: it fills all guest RAM)")
    ap.add_argument("--ping-interval-ms", type=float, default=2.0,
                    help="serial ping interval while waiting for a restored guest (default 2)")
    ap.add_argument("--timeout", type=float, default=120, help="per-step timeout, s")
    ap.add_argument("--strace", action="store_true",
                    help="one extra strace'd mapped restore of ours per size and directory")
    ap.add_argument("--no-copy-binaries", action="store_true",
                    help="run --vmm and --guest in place (default: copy them first)")
    ap.add_argument("--json", metavar="OUT", help="write everything as JSON to OUT")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = ap.parse_args()

    for what, path in (("vmm", a.vmm), ("guest", a.guest)):
        if not os.path.isfile(path):
            ap.error(f"{what} not found at {path}")
    if shutil.which(a.qemu) is None:
        ap.error(f"{a.qemu} not found")
    if a.strace and shutil.which("strace") is None:
        ap.error("--strace: strace not found")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        ap.error("/dev/kvm is not accessible")
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    a.size_list = [s.strip() for s in a.sizes.split(",") if s.strip()]
    a.dir_list = [d.strip() for d in a.dirs.split(",") if d.strip()]
    for s in a.size_list:
        parse_size(s)
    for d in a.dir_list:
        if not os.path.isdir(d):
            ap.error(f"--dirs: {d} is not a directory")

    info = host_info(a.qemu, load_start=loadavg(), started=time.strftime("%Y-%m-%d %H:%M:%S"),
                     fs={d: fs_type(d) for d in a.dir_list})

    bindir = tempfile.mkdtemp(prefix="snapbench-bin-")
    work = {d: tempfile.mkdtemp(prefix="snapbench-", dir=d) for d in a.dir_list}
    info["vmm_source"], info["guest_source"] = os.path.abspath(a.vmm), os.path.abspath(a.guest)
    if not a.no_copy_binaries:
        for attr in ("vmm", "guest"):
            dst = os.path.join(bindir, os.path.basename(getattr(a, attr)))
            shutil.copy2(getattr(a, attr), dst)
            setattr(a, attr, dst)
    info["vmm_sha256"], info["guest_sha256"] = sha256_file(a.vmm), sha256_file(a.guest)
    try:  # e.g. a binary copied while the linker was writing it
        subprocess.run([a.vmm, "--help"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(bindir, ignore_errors=True)
        for d in work.values():
            shutil.rmtree(d, ignore_errors=True)
        ap.error(f"{a.vmm} --help failed: {e}")
    sock = os.path.join(bindir, "api.sock")
    qsock = os.path.join(bindir, "qmp.sock")
    info["commands"] = {
        "ours source": ours_source_cmd(a, "512M", sock),
        "ours restore": ours_restore_cmd(a, "DIR", False),
        "ours restore copy": ours_restore_cmd(a, "DIR", True),
        "QEMU source": qemu_base(a, "512M") + ["-qmp", f"unix:{qsock},server=on,wait=off"],
        "QEMU restore": qemu_base(a, "512M") + (["-incoming", "fd:N"] if a.qemu_transport == "fd"
                                               else ["-incoming", "exec:cat FILE"]),
    }

    def progress(msg):
        if not a.quiet:
            print(msg, file=sys.stderr, flush=True)

    runs = {(d, s): {"snap": {}, "restore": {}} for s in a.size_list for d in a.dir_list}
    failures = []
    straces = {}
    k = 0
    try:
        for rep in range(a.reps):
            for size in a.size_list:
                for d in a.dir_list:
                    cell = runs[(d, size)]
                    order = ("ours", "qemu") if k % 2 == 0 else ("qemu", "ours")
                    k += 1
                    for who in order:
                        tag = f"[{rep + 1}/{a.reps}] {size} {d} {who}"
                        try:
                            if who == "ours":
                                snapdir = os.path.join(work[d], f"ours-{size}-{rep}")
                                r = ours_snapshot(a, size, snapdir, sock)
                                r["rep"] = rep
                                cell["snap"].setdefault("ours", []).append(r)
                                progress(f"{tag}: snapshot {r['wall_ms']:.1f} ms "
                                         f"(total_ms {r['total_ms']:.1f}, memory_ms "
                                         f"{r['memory_ms']:.1f}) load {r['load']}")
                                variants = [False] + ([] if a.no_restore_copy else [True])
                                if rep % 2:
                                    variants.reverse()
                                for copy in variants:
                                    rr = ours_restore(a, size, snapdir, copy)
                                    rr["rep"] = rep
                                    cell["restore"].setdefault(rr["vmm"], []).append(rr)
                                    b = rr.get("breakdown") or {}
                                    progress(f"{tag}: restore{' copy' if copy else ''} "
                                             f"{rr['restore_ms']:.1f} ms (restore() "
                                             f"{b.get('restore_ms', float('nan')):.1f}, "
                                             f"ping {rr['answered_ping']})")
                                if a.strace and rep == a.reps - 1:
                                    straces[(d, size)] = strace_restore(
                                        a, snapdir, os.path.join(bindir, f"strace-{size}-"
                                                                 f"{os.path.basename(work[d])}.txt"))
                                    progress(f"{tag}: strace {straces[(d, size)]}")
                                shutil.rmtree(snapdir, ignore_errors=True)
                            else:
                                path = os.path.join(work[d], f"qemu-{size}-{rep}.mig")
                                r = qemu_snapshot(a, size, path, qsock)
                                r["rep"] = rep
                                cell["snap"].setdefault("qemu", []).append(r)
                                progress(f"{tag}: snapshot {r['wall_ms']:.1f} ms (migrate "
                                         f"{r['migrate_ms']:.1f}, fsync {r['fsync_ms']:.1f}) "
                                         f"load {r['load']}")
                                rr = qemu_restore(a, size, path)
                                rr["rep"] = rep
                                cell["restore"].setdefault("qemu", []).append(rr)
                                progress(f"{tag}: restore {rr['restore_ms']:.1f} ms "
                                         f"(ping {rr['answered_ping']})")
                                os.unlink(path)
                        except (RunError, OSError) as e:
                            failures.append(f"{tag}: {e}")
                            progress(f"{tag}: FAILED: {e}")
    finally:
        for d in work.values():
            shutil.rmtree(d, ignore_errors=True)
        if not a.strace:
            shutil.rmtree(bindir, ignore_errors=True)
        else:  # keep only the traces
            for name in os.listdir(bindir):
                if not name.startswith("strace-"):
                    try:
                        os.unlink(os.path.join(bindir, name))
                    except OSError:
                        pass

    info["load_end"] = loadavg()
    summary = summarize(runs)
    text = report(a, info, runs, summary, straces, failures)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "host": info,
                       "summary": {f"{d} {s}": v for (d, s), v in summary.items()},
                       "runs": {f"{d} {s}": v for (d, s), v in runs.items()},
                       "strace": {f"{d} {s}": v for (d, s), v in straces.items()},
                       "failures": failures, "report_markdown": text}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
