#!/usr/bin/env python3
"""Live migration benchmark: our VMM vs QEMU microvm, same guest, one run.

Both VMMs run the freestanding test guest (guest-images/test-guest) and its
`dirty MIB EVERY` workload: in ring 3 it increments a byte in every page of
[32 MiB, 32 MiB + MIB), pass after pass, checking first that each page holds
the pass number (mod 256), and prints "dirty pass N" every EVERY passes; a
page a migration lost or sent stale prints "DIRTY MISMATCH ..." and stops.
The guest is migrated over TCP loopback from a source to a destination
process of the same VMM with the same configuration:

  ours:  destination  vmm --incoming tcp:127.0.0.1:PORT --mem M --serial stdio
                          --log-level info
         source       vmm --kernel G --mem M --serial stdio --log-level info
                          --api-socket S
         then on S:   {"cmd":"migrate","uri":"tcp:127.0.0.1:PORT","downtime_ms":D}
                      (everything else the VMM's defaults: no bandwidth cap,
                      max_rounds 30, then stop-and-copy)
  QEMU:  both         qemu-system-x86_64 -name debug-threads=on -M microvm -accel kvm
                          -cpu host,-arch-capabilities -m M -nodefaults
                          -no-user-config -nographic -serial stdio -kernel G
                          -qmp unix:Q,server=on,wait=off
         destination  ... -incoming tcp:127.0.0.1:PORT
         then on the source's QMP:
                      migrate-set-capabilities events=on
                      migrate-set-parameters downtime-limit=D
                          max-bandwidth=2^40 (QEMU 7.2's default is 128 MiB/s
                          (134217728 bytes/s); 1 TiB/s is "unlimited" here)
                      migrate uri=tcp:127.0.0.1:PORT
                      (everything else QEMU's defaults: no multifd, no
                      compression, no xbzrle, no auto-converge; QEMU iterates
                      until the rest fits the downtime limit, with no round
                      limit: the script cancels it after --timeout)

Per run: the source boots, the guest starts `dirty MIB EVERY`; after
--settle seconds of passes the migration starts; the script reads both
serial consoles, stamping every line with the host's monotonic clock when it
arrives, and the VMM's events (ours: migration-progress/-done/-failed on the
control socket; QEMU: MIGRATION and STOP on the source's QMP, RESUME on the
destination's, then query-migrate). After the migration it waits for
--post-lines pass lines from the destination.

Measured per run:
  * total: the VMM's own figure (ours total_ms; QEMU query-migrate
    total-time), and the host's wall time from sending the migrate command to
    the completion event;
  * downtime: the VMM's own figure (ours downtime_ms: pause to the
    destination's Ack, i.e. including the destination building its VM, split
    into pause -> last frame sent and -> Ack; QEMU downtime: stop to the last
    byte sent, i.e. not including the destination's load, and STOP -> RESUME
    on the host clock), and the guest-observed one: the gap between the
    arrival of the source's last "dirty pass" line and the destination's
    first. That gap also holds the guest's work between its last line and the
    pause (slowed by dirty tracking), so it is split at the pause (ours: the
    done event minus downtime_ms; QEMU: STOP): "pause -> first destination
    line" is the guest-side downtime, resolved to the destination's line
    interval (reported, with the source's, as the resolution);
  * bytes sent (ours bytes: the whole stream; QEMU ram.transferred), rounds
    (ours rounds, pre-copy + final; QEMU ram.dirty-sync-count), ours' rate of
    each pre-copy round, the send rate during stop-and-copy (guest paused),
    and total / (bytes / loopback bandwidth): how close the total time is to
    what the bytes alone need on this host's loopback (the goal: <= 1.5);
  * the guest's pass rate before and during the migration (its slowdown from
    dirty tracking);
  * host CPU and run-queue wait (/proc/PID/task/TID/schedstat) of the sending
    thread (ours: the thread the migrate command creates; QEMU:
    "live_migration"), of the destination's main thread (both VMMs receive
    there) and of the vCPU thread;
  * the test guest's counter wrap: its pages are zero but for the counter
    byte, which is 0 every 256 passes; a round that reads them then sends
    zero pages and is short, which can make a migration converge. Reported:
    zero pages sent beyond the RAM outside the working set, in working sets,
    and the pass number (mod 256) at the switch;
  * correctness: no DIRTY MISMATCH on either side, the destination's first
    pass number is exactly the source's last + EVERY (a line the pause split
    is completed by the destination), the destination keeps printing passes,
    ours: the source exits 0; QEMU: source and destination query-status.

Loopback bandwidth: at the start of every repetition the script blasts
--bw-bytes (default 1 GiB) through a TCP loopback connection between two
threads of its own (sendall of 1 MiB buffers, recv_into) and reports MiB/s.

Schedule: every configuration (downtime target x memory size x working set)
runs --reps times on both VMMs, back to back, which VMM goes first
alternating; one VM pair at a time. Reported: medians (min-max), ours/QEMU ratio of the medians, and
/proc/loadavg at every run.

Output: markdown on stdout; --json FILE writes every run (events, QEMU's
query-migrate, line timings, VMM stderr tails); --from-json FILE reprints the
report of such a file. Progress on stderr. Stdlib only.
Example:
  tools/bench/migration_bench.py --vmm build/vmm/vmm \\
      --guest build/guest-images/test-guest/test-guest.elf --reps 5 \\
      --downtime-ms 100,300 --json /tmp/mb.json
"""
import argparse
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    DEFAULT_QEMU_CPU, QEMU_UNLIMITED_BW, QMP, JsonLines, add_vm_args, free_port, stat, ratio,
    host_info, parse_size, loadavg, sha256_file)

READY = b"TESTGUEST READY"
MIB = 1 << 20
PASS_RE = re.compile(rb"dirty pass (\d+)")
# Control sockets (ours and QMP): connect for up to 20 s, retrying every 20 ms;
# a reply within 20 s.
SOCK = {"timeout": 20, "retry": 0.02, "reply_timeout": 20}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------- loopback blast --

def loopback_bandwidth(total, chunk=MIB):
    """MiB/s of one TCP loopback stream between two threads of this process."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    got = [0, 0.0]

    def recv():
        c, _ = ls.accept()
        buf = bytearray(chunk)
        view = memoryview(buf)
        n = 0
        while True:
            k = c.recv_into(view)
            if not k:
                break
            n += k
        got[0] = n
        got[1] = time.monotonic()
        c.close()

    t = threading.Thread(target=recv)
    t.start()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b"\x5a" * chunk
    t0 = time.monotonic()
    sent = 0
    while sent < total:
        s.sendall(data)
        sent += chunk
    s.shutdown(socket.SHUT_WR)
    t.join()
    s.close()
    ls.close()
    secs = got[1] - t0
    return {"bytes": got[0], "s": secs, "mibs": got[0] / secs / MIB}


# ------------------------------------------------------------ processes --

class Proc:
    """A VMM process with its serial console on stdin/stdout; stdout chunks are
    kept with their arrival time (host monotonic)."""

    def __init__(self, who, role, argv):
        self.who, self.role, self.argv = who, role, argv
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.chunks = []  # (t, bytes)
        self.out = bytearray()
        self.err = bytearray()
        self.open = {self.p.stdout.fileno(): "out", self.p.stderr.fileno(): "err"}
        self.rc = None
        self.sched_last = {}  # tid -> (run_ns, wait_ns, comm), the last good reading

    def feed(self, fd, t):
        data = os.read(fd, 1 << 16)
        if not data:
            del self.open[fd]
            return
        if self.open[fd] == "out":
            self.chunks.append((t, data))
            self.out += data
        else:
            self.err += data

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def alive(self):
        if self.rc is None:
            self.rc = self.p.poll()
        return self.rc is None

    def threads(self):
        """{tid: (run_ns, wait_ns, comm)}; remembered, so that a process that
        exits keeps its last reading."""
        base = f"/proc/{self.p.pid}/task"
        out = {}
        try:
            tids = os.listdir(base)
        except OSError:
            return dict(self.sched_last)
        for tid in tids:
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    run, wait = f.read().split()[:2]
                with open(f"{base}/{tid}/comm") as f:
                    comm = f.read().strip()
                out[int(tid)] = (int(run), int(wait), comm)
            except (OSError, ValueError):
                pass
        # Threads that ended (or a process that is exiting) keep their last
        # reading: counters only grow.
        merged = dict(self.sched_last)
        for tid, v in out.items():
            if tid not in merged or v[0] >= merged[tid][0]:
                merged[tid] = v
        self.sched_last = merged
        return out

    def kill(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.rc = self.p.returncode
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass

    def err_tail(self, n=2500):
        return bytes(self.err[-n:]).decode(errors="replace")


def pump(procs, socks, timeout):
    """One select over every open stdout/stderr and control socket."""
    fds = {}
    for p in procs:
        for fd in p.open:
            fds[fd] = p
    for s in socks:
        if s is not None and not s.closed:
            fds[s.fileno()] = s
    if not fds:
        time.sleep(timeout)
        return
    r, _, _ = select.select(list(fds), [], [], max(0.0, timeout))
    t = time.monotonic()
    for fd in r:
        obj = fds[fd]
        if isinstance(obj, Proc):
            obj.feed(fd, t)
        else:
            obj.feed(t)


def timed_lines(chunks, prefix=b""):
    """[(t, line bytes)] of complete lines (t = arrival of the chunk that ended
    the line), and the bytes after the last newline."""
    out = []
    pending = prefix
    for t, data in chunks:
        pending += data
        while True:
            i = pending.find(b"\n")
            if i < 0:
                break
            out.append((t, pending[:i].rstrip(b"\r")))
            pending = pending[i + 1:]
    return out, pending


def pass_lines(lines):
    res = []
    for t, l in lines:
        m = PASS_RE.search(l)
        if m:
            res.append((t, int(m.group(1))))
    return res


def wait_for(procs, socks, pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        pump(procs, socks, min(left, 0.1))


# ----------------------------------------------------------- VMM commands --

def ours_src_cmd(a, mem, sock):
    return [a.vmm, "--kernel", a.guest, "--mem", mem, "--serial", "stdio", "--log-level",
            a.ours_log_level, "--api-socket", sock]


def ours_dst_cmd(a, mem, port):
    return [a.vmm, "--incoming", f"tcp:127.0.0.1:{port}", "--mem", mem, "--serial", "stdio",
            "--log-level", a.ours_log_level]


def qemu_cmd(a, mem, qmp, port=None):
    cmd = [a.qemu, "-name", "debug-threads=on", "-M", a.qemu_machine, "-accel", "kvm",
           "-cpu", a.qemu_cpu, "-m", mem,
           "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-kernel", a.guest, "-qmp", f"unix:{qmp},server=on,wait=off"]
    if port is not None:
        cmd += ["-incoming", f"tcp:127.0.0.1:{port}"]
    return cmd


# --------------------------------------------------------------- one run --

def thread_delta(before, after):
    """{tid: (cpu_ms, wait_ms, comm)} for threads in `after`."""
    out = {}
    for tid, (run, wait, comm) in after.items():
        r0, w0 = before.get(tid, (0, 0, ""))[:2]
        out[tid] = ((run - r0) / 1e6, (wait - w0) / 1e6, comm)
    return out


def mean_gap(ts):
    """Mean interval (ms) of line arrival times; lines often arrive several
    to a read, so a median of the gaps would be 0."""
    return (ts[-1] - ts[0]) / (len(ts) - 1) * 1000 if len(ts) >= 2 else None


def run_one(a, who, mem, dirty_mib, every, downtime_ms, rep):
    rec = {"vmm": who, "mem": mem, "dirty_mib": dirty_mib, "every": every, "rep": rep,
           "downtime_target_ms": downtime_ms,
           "loadavg": loadavg(), "ok": False}
    tmp = tempfile.mkdtemp(prefix="migbench-")
    port = free_port()
    src = dst = ctl = dctl = None
    procs = []
    try:
        if who == "ours":
            api = os.path.join(tmp, "src.sock")
            dst = Proc(who, "dst", ours_dst_cmd(a, mem, port))
            src = Proc(who, "src", ours_src_cmd(a, mem, api))
        else:
            dq, sq = os.path.join(tmp, "dst.qmp"), os.path.join(tmp, "src.qmp")
            dst = Proc(who, "dst", qemu_cmd(a, mem, dq, port))
            src = Proc(who, "src", qemu_cmd(a, mem, sq))
        procs = [src, dst]
        rec["src_cmd"], rec["dst_cmd"] = src.argv, dst.argv
        wait_for(procs, [], lambda: READY in src.out or not src.alive(), 60, "TESTGUEST READY")
        if READY not in src.out:
            raise RuntimeError(f"source exited ({src.rc}) before READY: {src.err_tail()}")
        ready_len = len(src.out)
        src.send(f"dirty {dirty_mib} {every}")
        wait_for(procs, [], lambda: b"dirty pass" in src.out[ready_len:], 120,
                 "the first 'dirty pass' line")
        t_first = time.monotonic()
        # Settle: the first pass faults every page in; measure the steady rate.
        wait_for(procs, [], lambda: time.monotonic() - t_first >= a.settle, a.settle + 5,
                 "settle")
        if who == "ours":
            ctl = JsonLines(api, **SOCK)
        else:
            ctl = QMP(sq, **SOCK)
            ctl.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "events", "state": True}])
            ctl.cmd("migrate-set-parameters", **{"downtime-limit": downtime_ms,
                                                 "max-bandwidth": QEMU_UNLIMITED_BW})
            rec["qemu_params"] = ctl.cmd("query-migrate-parameters")
        if who == "qemu":
            dctl = QMP(dq, **SOCK)  # its RESUME event says when the guest runs there
        socks = [ctl, dctl]
        sched_src0 = src.threads()
        sched_dst0 = dst.threads()
        rec["load_at_migrate"] = loadavg()
        t_mig = time.monotonic()
        if who == "ours":
            r = ctl.request({"cmd": "migrate", "uri": f"tcp:127.0.0.1:{port}",
                             "downtime_ms": downtime_ms})
            if not r.get("ok"):
                raise RuntimeError(f"migrate refused: {r}")
        else:
            ctl.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        # Wait for the end, sampling the threads' CPU time as we go.
        final = None
        t_done = None
        last_sample = 0.0
        qemu_info = None
        timed_out = False
        while final is None:
            now = time.monotonic()
            if now - t_mig > a.timeout:
                timed_out = True
                break
            if now - last_sample > 0.1:
                src.threads()
                dst.threads()
                last_sample = now
            pump(procs, socks, 0.05)
            for t, e in ctl.events:
                ev = e.get("event")
                if who == "ours" and ev in ("migration-done", "migration-failed"):
                    final, t_done = e, t
                elif who == "qemu" and ev == "MIGRATION":
                    st = e.get("data", {}).get("status")
                    if st in ("completed", "failed", "cancelled"):
                        final, t_done = e, t
            if who == "ours" and final is None and not src.alive():
                raise RuntimeError(f"source exited ({src.rc}) during the migration: "
                                   f"{src.err_tail()}")
        rec["host_wall_ms"] = (t_done - t_mig) * 1000 if t_done else None
        src.threads()
        dst.threads()
        sched_src1 = dict(src.sched_last)
        sched_dst1 = dict(dst.sched_last)
        if who == "qemu":
            # QEMU 7.2 sets "completed" before it fills in total-time and
            # downtime: poll until they are there.
            t_q = time.monotonic()
            while True:
                try:
                    qemu_info = ctl.cmd("query-migrate")
                except RuntimeError as e:
                    qemu_info = {"error": str(e)}
                    break
                if (qemu_info.get("status") != "completed" or qemu_info.get("total-time")
                        or time.monotonic() - t_q > 5):
                    break
                pump(procs, socks, 0.02)
            rec["qemu_query_migrate"] = qemu_info
        if timed_out:
            rec["error"] = f"no result within --timeout {a.timeout} s"
            if who == "ours":
                rec["status_at_timeout"] = ctl.request({"cmd": "status"}).get("migration")
                ctl.request({"cmd": "migrate-cancel"})
            else:
                rec["status_at_timeout"] = ctl.cmd("query-migrate")
                ctl.cmd("migrate_cancel")
        rec["events"] = [{"t_ms": (t - t_mig) * 1000, **e} for t, e in ctl.events]
        # When the source paused the guest (host clock): QEMU's STOP event;
        # ours: the migration-done event minus the downtime it reports
        # (pause -> destination's Ack, measured by the source).
        t_pause = None
        if who == "qemu":
            t_pause = next((t for t, e in ctl.events if e.get("event") == "STOP"), None)
        elif final is not None and final.get("event") == "migration-done":
            t_pause = t_done - final["downtime_ms"] / 1000
        if who == "ours":
            rec["progress"] = [e for t, e in ctl.events if e.get("event") == "migration-progress"]
        if final is not None:
            if who == "ours":
                ok = final["event"] == "migration-done"
                rec["result"] = final
                if ok:
                    rec.update(total_ms=final["total_ms"], downtime_ms=final["downtime_ms"],
                               bytes=final["bytes"], rounds=final["rounds"],
                               converged=final.get("converged"),
                               zero_pages=final.get("zero_pages"),
                               ram_pages=parse_size(mem) // 4096,
                               vmm_bandwidth_mibs=final.get("bandwidth_mibs"))
                else:
                    rec["error"] = f"migration-failed: {final.get('error')}"
            else:
                ok = final["data"]["status"] == "completed"
                q = qemu_info or {}
                if ok and "ram" in q:
                    rec.update(total_ms=q.get("total-time"), downtime_ms=q.get("downtime"),
                               setup_ms=q.get("setup-time"), bytes=q["ram"].get("transferred"),
                               rounds=q["ram"].get("dirty-sync-count"),
                               vmm_bandwidth_mibs=q["ram"].get("mbps", 0) * 1e6 / 8 / MIB,
                               zero_pages=q["ram"].get("duplicate"),
                               ram_pages=q["ram"].get("total", 0) // 4096,
                               converged=True)
                elif not ok:
                    rec["error"] = f"QEMU migration {final['data']['status']}: {q}"
            rec["migrated"] = ok
        # After: the destination runs on; collect its pass lines.
        if rec.get("migrated"):
            def enough():
                dl, _ = timed_lines(dst.chunks)
                return (len(pass_lines(dl)) >= a.post_lines or b"MISMATCH" in dst.out
                        or not dst.alive())
            try:
                wait_for(procs, socks, enough, a.post_timeout, "destination pass lines")
            except RuntimeError as e:
                rec["error"] = f"destination: {e}"
            if who == "ours":
                try:
                    wait_for(procs, socks, lambda: not src.alive(), 20, "the source to exit")
                except RuntimeError as e:
                    rec["error"] = f"source: {e}"
                rec["src_rc"] = src.rc
            else:
                try:
                    rec["src_status"] = ctl.cmd("query-status")
                    rec["dst_status"] = dctl.cmd("query-status")
                except RuntimeError as e:
                    rec["error"] = f"QMP status: {e}"
        pump(procs, socks, 0.05)
        if dctl is not None:
            rec["dst_events"] = [{"t_ms": (t - t_mig) * 1000, **e} for t, e in dctl.events]
            t_res = next((t for t, e in dctl.events if e.get("event") == "RESUME"), None)
            if t_pause and t_res:
                rec["stop_to_resume_ms"] = (t_res - t_pause) * 1000

        # ---- Serial analysis.
        src_lines, rest = timed_lines(src.chunks)
        dst_lines, dst_rest = timed_lines(dst.chunks, prefix=rest)
        sp = pass_lines(src_lines)
        dp = pass_lines(dst_lines)
        before = [x for x in sp if x[0] < t_mig]
        during = [x for x in sp if x[0] >= t_mig]
        rec["mismatch_src"] = b"MISMATCH" in src.out
        rec["mismatch_dst"] = b"MISMATCH" in dst.out
        if rec["mismatch_src"] or rec["mismatch_dst"]:
            m = re.search(rb"DIRTY MISMATCH[^\n]*", bytes(dst.out) + b"|" + bytes(src.out))
            rec["mismatch_line"] = m.group(0).decode(errors="replace") if m else None
        win = [x for x in before if x[0] >= t_mig - 1.0]
        if len(win) >= 2:
            rec["passes_per_s_before"] = (win[-1][1] - win[0][1]) / (win[-1][0] - win[0][0])
            rec["line_gap_ms_before"] = mean_gap([x[0] for x in win])
        if during and before:
            span = during[-1][0] - t_mig
            rec["passes_per_s_during"] = ((during[-1][1] - before[-1][1]) / span
                                          if span > 0 else None)
            rec["max_line_gap_ms_precopy"] = max(
                (b[0] - a_[0]) * 1000 for a_, b in zip([before[-1]] + during, during))
        rec["line_gap_ms_src_last"] = mean_gap([x[0] for x in sp[-10:]])
        rec["line_gap_ms_dst_first"] = mean_gap([x[0] for x in dp[:10]])
        rec["src_pass_lines"] = [(round((t - t_mig) * 1000, 2), n) for t, n in sp
                                 if t >= t_mig - 0.5]
        rec["dst_pass_lines"] = [(round((t - t_mig) * 1000, 2), n) for t, n in dp[:40]]
        rec["src_last_pass"] = sp[-1][1] if sp else None
        rec["dst_first_pass"] = dp[0][1] if dp else None
        rec["dst_passes"] = len(dp)
        if sp and dp:
            rec["guest_gap_ms"] = (dp[0][0] - sp[-1][0]) * 1000
            if t_pause is not None:
                # The gap split at the pause: the guest still ran on the
                # source but had not finished EVERY more passes (slowed by
                # dirty tracking), then paused until its first line on the
                # destination.
                rec["src_line_to_pause_ms"] = (t_pause - sp[-1][0]) * 1000
                rec["pause_to_dst_line_ms"] = (dp[0][0] - t_pause) * 1000
            rec["src_last_line_ms"] = (sp[-1][0] - t_mig) * 1000
            rec["dst_first_line_ms"] = (dp[0][0] - t_mig) * 1000
            step = dp[0][1] - sp[-1][1]
            rec["pass_step"] = step
            rec["continuity"] = step == every
            # Lines that straddle the pause come out of the destination; a
            # step of 2-3 x EVERY would mean a line lost on the way.
        # ---- CPU.
        sd = thread_delta(sched_src0, sched_src1)
        if sd:
            if who == "ours":
                new = [tid for tid in sd if tid not in sched_src0]
                mig_tid = max(new, key=lambda t: sd[t][0]) if new else None
            else:
                cand = [tid for tid in sd if sd[tid][2] == "live_migration"]
                mig_tid = cand[0] if cand else None
            vcpu_tid = max((t for t in sched_src0 if t != mig_tid),
                           key=lambda t: sched_src0[t][0], default=None)
            if mig_tid is not None:
                rec["sender_cpu_ms"], rec["sender_wait_ms"] = sd[mig_tid][:2]
                if rec.get("host_wall_ms"):
                    rec["sender_other_ms"] = (rec["host_wall_ms"] - rec["sender_cpu_ms"]
                                              - rec["sender_wait_ms"])
            if vcpu_tid is not None and vcpu_tid in sd:
                rec["vcpu_cpu_ms"], rec["vcpu_wait_ms"] = sd[vcpu_tid][:2]
            rec["src_cpu_ms"] = sum(v[0] for v in sd.values())
        dd = thread_delta(sched_dst0, sched_dst1)
        if dd:
            rec["dst_cpu_ms"] = sum(v[0] for v in dd.values())
            # Both VMMs receive on their main thread (tid = pid).
            if dst.p.pid in dd:
                rec["recv_cpu_ms"], rec["recv_wait_ms"] = dd[dst.p.pid][:2]
        rec["ok"] = bool(rec.get("migrated") and not rec.get("error")
                         and not rec["mismatch_dst"] and not rec["mismatch_src"]
                         and rec.get("dst_passes", 0) >= 2 and rec.get("continuity"))
        if who == "qemu" and rec.get("migrated") and (
                (rec.get("dst_status") or {}).get("status") != "running"
                or (rec.get("src_status") or {}).get("status") != "postmigrate"):
            rec["ok"] = False
            rec["error"] = rec.get("error") or (
                f"QEMU status: source {rec.get('src_status')}, destination "
                f"{rec.get('dst_status')}")
        if who == "ours" and rec.get("src_rc") not in (0, None):
            rec["ok"] = False
            rec["error"] = rec.get("error") or f"source exit {rec['src_rc']}"
    except Exception as e:  # noqa: BLE001 - reported per run
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        for c in (ctl, dctl):
            if c is not None:
                c.close()
        for p in procs:
            p.kill()
        for p in procs:
            rec[f"{p.role}_stderr_tail"] = p.err_tail()
            rec[f"{p.role}_rc"] = p.rc
        rec["load_end"] = loadavg()
        shutil.rmtree(tmp, ignore_errors=True)
    return rec


# ------------------------------------------------------------- reporting --

def fmt(st, digits=0):
    if st is None:
        return "-"
    f = f"{{:,.{digits}f}}"
    if st["n"] == 1:
        return f.format(st["median"])
    return f"{f.format(st['median'])} ({f.format(st['min'])}-{f.format(st['max'])})"


METRICS = [
    # key, label, digits
    ("total_ms", "total, VMM-reported (ms)", 0),
    ("host_wall_ms", "total, host wall: command -> completion event (ms)", 0),
    ("downtime_ms", "downtime, VMM-reported (ms)", 1),
    ("final_send_ms", "  ours: pause -> last frame sent (final pages + state, ms)", 1),
    ("ack_wait_ms", "  ours: last frame sent -> destination's Ack (ms)", 1),
    ("stop_to_resume_ms", "QEMU: source STOP -> destination RESUME event (host clock, ms)", 1),
    ("guest_gap_ms", "downtime, guest-observed: pass-line gap across the switch (ms)", 1),
    ("src_line_to_pause_ms",
     "  of which last source line -> pause (guest slowed by tracking, ms)", 1),
    ("pause_to_dst_line_ms", "  of which pause -> first destination line (ms)", 1),
    ("line_gap_ms_src_last",
     "  resolution: mean pass-line interval, source's last 10 lines (ms)", 1),
    ("line_gap_ms_dst_first",
     "  resolution: mean pass-line interval, destination's first 10 (ms)", 1),
    ("bytes_mib", "sent (MiB)", 1),
    ("rounds", "rounds / dirty syncs", 0),
    ("eff_mibs", "effective rate: bytes / total (MiB/s)", 0),
    ("round_mibs", "ours: median rate of its pre-copy rounds after round 0 (MiB/s)", 0),
    ("stopcopy_mibs", "send rate during stop-and-copy, guest paused (MiB/s)", 0),
    ("total_over_ideal", "total / (bytes / loopback bandwidth)", 2),
    ("passes_per_s_before", "guest passes/s before", 0),
    ("passes_per_s_during", "guest passes/s during pre-copy", 0),
    ("max_line_gap_ms_precopy", "longest pass-line gap during pre-copy (ms)", 1),
    ("sender_cpu_ms", "sending thread CPU (ms)", 0),
    ("sender_wait_ms", "sending thread run-queue wait (ms)", 0),
    ("sender_other_ms", "sending thread blocked/sleeping (wall - CPU - wait, ms)", 0),
    ("recv_cpu_ms", "receiving thread CPU (destination main thread, ms)", 0),
    ("recv_wait_ms", "receiving thread run-queue wait (ms)", 0),
    ("vcpu_cpu_ms", "vCPU thread CPU during migration (ms)", 0),
    ("dst_cpu_ms", "destination process CPU (ms)", 0),
    ("wrap_zero_ws", "working-set pages sent as zero pages (counter wrap), in working sets", 2),
]


def derive(rec, bw_mibs):
    if rec.get("bytes") is not None:
        rec["bytes_mib"] = rec["bytes"] / MIB
        if rec.get("total_ms"):
            rec["eff_mibs"] = rec["bytes"] / MIB / (rec["total_ms"] / 1000)
            if bw_mibs:
                ideal_ms = rec["bytes"] / MIB / bw_mibs * 1000
                rec["ideal_ms"] = ideal_ms
                rec["total_over_ideal"] = rec["total_ms"] / ideal_ms
    if rec.get("zero_pages") is not None and rec.get("ram_pages"):
        # The guest's pages are zero but for the counter byte, which wraps to
        # 0 every 256 passes: pages read then go as zero pages (cheap), and a
        # round that catches the wrap is short. Zero pages beyond the RAM
        # outside the working set, in working sets:
        ws = rec["dirty_mib"] * 256
        rec["wrap_zero_ws"] = max(0, rec["zero_pages"] - (rec["ram_pages"] - ws)) / ws
    if rec.get("src_last_pass") is not None:
        rec["last_pass_mod256"] = rec["src_last_pass"] % 256
    # Send rate with the guest paused (nothing else of the VM competes):
    # ours: the final pages over the time from the pause to the last frame
    # sent; QEMU: downtime-bytes over its downtime.
    res = rec.get("result") or {}
    if rec["vmm"] == "ours" and res.get("final_send_ms") and res.get("final_pages", 0) > 256:
        rec["stopcopy_mibs"] = res["final_pages"] * 4096 / MIB / (res["final_send_ms"] / 1000)
    q = rec.get("qemu_query_migrate") or {}
    dbytes = (q.get("ram") or {}).get("downtime-bytes", 0)
    if rec["vmm"] == "qemu" and dbytes > MIB and q.get("downtime"):
        rec["stopcopy_mibs"] = dbytes / MIB / (q["downtime"] / 1000)
    if rec["vmm"] == "ours" and res.get("final_send_ms") is not None and res.get("downtime_ms"):
        rec["final_send_ms"] = res["final_send_ms"]
        rec["ack_wait_ms"] = res["downtime_ms"] - res["final_send_ms"]
    # Ours: each pre-copy round's rate after round 0 (its own measurement).
    rounds = [e.get("bandwidth_mibs") for e in rec.get("progress", [])[1:]
              if e.get("round_pages", 0) > 1024]
    if rounds:
        rec["round_mibs"] = statistics.median(rounds)


def md_table(hdr, rows):
    out = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def report(a, info, configs, runs, bws):
    lines = []
    lines.append(f"# Live migration: ours vs QEMU microvm ({time.strftime('%Y-%m-%d %H:%M')})\n")
    if info.get("sha256"):
        lines.append("Binaries: " + ", ".join(f"`{p}` sha256 {h[:12]}"
                                              for p, h in info["sha256"].items()) + ".\n")
    lines.append(f"Host: {info.get('cpu', '?')}, nproc {info['nproc']}, kernel {info['kernel']}, "
                 f"nested PVM: {info['nested_pvm']}; {info.get('qemu_version', '')}; "
                 f"load average at start {info['load_start']}, end {info['load_end']}.")
    lines.append(f"Downtime target(s) {a.downtime_ms} ms (both); QEMU max-bandwidth "
                 f"{QEMU_UNLIMITED_BW} bytes/s; ours: no cap (default). {a.reps} repetitions, "
                 f"settle {a.settle} s.\n")
    bwst = stat([b["mibs"] for b in bws])
    lines.append(f"Loopback TCP bandwidth (one stream, {a.bw_bytes >> 20} MiB, per repetition): "
                 f"{fmt(bwst)} MiB/s; median used below.\n")
    for mem, dmib, every, dt in configs:
        lines.append(f"## {mem} guest, `dirty {dmib} {every}` ({dmib} MiB working set), "
                     f"downtime target {dt} ms\n")
        rows = []
        by = {w: [r for r in runs if r["mem"] == mem and r["dirty_mib"] == dmib
                  and r["downtime_target_ms"] == dt and r["vmm"] == w]
              for w in ("ours", "qemu")}
        good = {w: [r for r in by[w] if r["ok"]] for w in by}
        for k, label, dg in METRICS:
            so, sq = stat([r.get(k) for r in good["ours"]]), stat([r.get(k) for r in good["qemu"]])
            if so is None and sq is None:
                continue
            rows.append([label, fmt(so, dg), fmt(sq, dg), ratio(so, sq)])
        for w in ("ours", "qemu"):
            conv = [r.get("converged") for r in good[w]]
            rows.append([f"runs ok / all ({w})", f"{len(good[w])} / {len(by[w])}", "", ""]
                        if w == "ours" else
                        [f"runs ok / all (QEMU)", "", f"{len(good[w])} / {len(by[w])}", ""])
        rows.append(["ours converged (else stop-and-copy after max_rounds)",
                     ", ".join(str(r.get("converged")) for r in good["ours"]), "", ""])
        lines.append(md_table(["metric", "ours", "QEMU", "ours/QEMU"], rows))
        lines.append("")
        # Per-run details.
        prow = []
        for r in by["ours"] + by["qemu"]:
            prow.append([r["vmm"], r["rep"], f"{r.get('total_ms', 0) or 0:.0f}",
                         f"{r.get('downtime_ms', 0) or 0:.1f}",
                         f"{r['guest_gap_ms']:.1f}" if r.get("guest_gap_ms") is not None else "-",
                         f"{r.get('bytes_mib', 0) or 0:.1f}", r.get("rounds", "-"),
                         f"{r['total_over_ideal']:.2f}" if r.get("total_over_ideal") else "-",
                         f"{r.get('src_last_pass')}->{r.get('dst_first_pass')}"
                         f" ({r.get('last_pass_mod256')})",
                         f"{r['wrap_zero_ws']:.2f}" if r.get("wrap_zero_ws") is not None else "-",
                         str(r.get("converged", "-")),
                         "yes" if r.get("mismatch_dst") or r.get("mismatch_src") else "no",
                         " ".join(f"{x:.2f}" for x in r.get("load_at_migrate", r["loadavg"])),
                         "ok" if r["ok"] else f"FAILED: {r.get('error', '?')}"[:200]])
        lines.append(md_table(["vmm", "rep", "total ms", "downtime ms", "guest gap ms", "MiB",
                               "rounds", "total/ideal", "passes src->dst (mod 256)",
                               "wrap zero ws", "converged", "mismatch",
                               "loadavg", "result"], prow))
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    add_vm_args(ap)
    ap.add_argument("--qemu-machine", default="microvm", help="QEMU -M (default microvm)")
    ap.add_argument("--mems", default="512M,2G", help="guest RAM sizes (default 512M,2G)")
    ap.add_argument("--dirty", default="64:4,16:16",
                    help="working sets as MIB:EVERY, comma-separated (default 64:4,16:16: "
                         "a pass line every ~2-3 ms while the guest runs untracked, about half "
                         "of it printing; every ~5-30 ms under dirty tracking)")
    ap.add_argument("--downtime-ms", default="100",
                    help="downtime target(s), both VMMs, comma-separated (default 100)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--vmms", default="ours,qemu", help="which VMMs (default ours,qemu)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds of dirty passes before migrating (default 1.0)")
    ap.add_argument("--timeout", type=float, default=120,
                    help="give up (cancel) a migration after this many seconds (default 120)")
    ap.add_argument("--post-lines", type=int, default=20,
                    help="destination pass lines to wait for (default 20)")
    ap.add_argument("--post-timeout", type=float, default=30,
                    help="... for at most this many seconds (default 30)")
    ap.add_argument("--bw-bytes", default="1G",
                    help="bytes per loopback bandwidth measurement (default 1G)")
    ap.add_argument("--ours-log-level", default="info",
                    help="our vmm's --log-level, both sides (default info; debug shows more "
                         "of where the downtime goes)")
    ap.add_argument("--json", metavar="OUT", help="write everything as JSON to OUT")
    ap.add_argument("--from-json", metavar="IN",
                    help="do not run anything: print the report of an earlier --json file")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            d = json.load(f)
        old = argparse.Namespace(**d["args"])
        for r in d["runs"]:
            derive(r, d["host"]["loopback_mibs_median"])
        configs = []
        for r in d["runs"]:
            c = (r["mem"], r["dirty_mib"], r["every"], r["downtime_target_ms"])
            if c not in configs:
                configs.append(c)
        print(report(old, d["host"], configs, d["runs"], d["loopback"]))
        return 0
    a.bw_bytes = parse_size(a.bw_bytes)
    vmms = [v.strip() for v in a.vmms.split(",") if v.strip()]
    for what, path in (("vmm", a.vmm), ("guest", a.guest)):
        if "ours" in vmms or what == "guest":
            if not os.path.isfile(path):
                ap.error(f"{what} not found at {path}")
    if "qemu" in vmms and shutil.which(a.qemu) is None:
        ap.error(f"{a.qemu} not found (apt-get install qemu-system-x86)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        ap.error("/dev/kvm is not accessible")
    mems = [m.strip() for m in a.mems.split(",") if m.strip()]
    dirty = []
    for x in a.dirty.split(","):
        mib, _, every = x.partition(":")
        dirty.append((int(mib), int(every or 8)))
    downtimes = [int(x) for x in a.downtime_ms.split(",") if x.strip()]
    configs = [(m, d, e, dt) for dt in downtimes for m in mems for d, e in dirty]

    info = host_info(a.qemu if "qemu" in vmms else None, vmm=a.vmm, guest=a.guest,
                     sha256={p: sha256_file(p) for p in (a.vmm, a.guest) if os.path.isfile(p)},
                     load_start=loadavg())

    runs, bws = [], []
    k = 0
    for rep in range(a.reps):
        bw = loopback_bandwidth(a.bw_bytes)
        bw["rep"], bw["loadavg"] = rep, loadavg()
        bws.append(bw)
        log(f"rep {rep}: loopback {bw['mibs']:.0f} MiB/s (load {bw['loadavg']})")
        for mem, dmib, every, dt in configs:
            order = vmms if k % 2 == 0 else list(reversed(vmms))
            k += 1
            for who in order:
                r = run_one(a, who, mem, dmib, every, dt, rep)
                r["loopback_mibs"] = bw["mibs"]
                runs.append(r)
                log(f"rep {rep} {mem} dirty {dmib} downtime {dt}: {who}: "
                    + ("ok" if r["ok"] else f"FAILED {r.get('error')}")
                    + f" total {r.get('total_ms')} downtime {r.get('downtime_ms')} "
                      f"gap {r.get('guest_gap_ms')} bytes {r.get('bytes')} "
                      f"rounds {r.get('rounds')} load {r['loadavg']}")
    info["load_end"] = loadavg()
    bw_med = statistics.median(b["mibs"] for b in bws)
    info["loopback_mibs_median"] = bw_med
    for r in runs:
        derive(r, bw_med)
    text = report(a, info, configs, runs, bws)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "host": info, "loopback": bws, "runs": runs,
                       "report_markdown": text}, f, indent=1, default=str)
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
