#!/usr/bin/env python3
"""virtio throughput benchmark: our VMM vs QEMU microvm, same guest, one run.

Both VMMs run the freestanding test guest (guest-images/test-guest) with the
same raw disk file (--disk-size, default 256 MiB, created on --disk-dir,
default /dev/shm, i.e. tmpfs: the whole file is in the page cache and nothing
is written back to a disk) and, as root, the same TAP. The guest's benchmark
commands (its README, "Benchmark commands": blkbench, netbench, benchirq,
mmiobench; tsc) run in its ring 3 and issue requests back to back, without
hashing:
  ours: vmm --kernel G --mem M --serial stdio --log-level warn
            --disk path=F [--net tap=T,mac=MAC]
  QEMU: qemu-system-x86_64 -M microvm,rtc=off -accel kvm -cpu host,-arch-capabilities
            -m M -nodefaults -no-user-config -nographic -serial stdio
            -global virtio-mmio.force-legacy=false -kernel G
            -drive id=d0,file=F,format=raw,if=none,cache=writeback
            -device virtio-blk-device,drive=d0
            [-netdev tap,id=n0,ifname=T,script=no,downscript=no
             -device virtio-net-device,netdev=n0,mac=MAC]
            -device isa-debug-exit,iobase=0xf4,iosize=4

Workloads (WORKLOADS below): sequential read/write with 64 and 128 KiB
requests, 4 KiB random read/write, 4 KiB random read with 4 requests in flight,
and, with a TAP, guest TX of 1514- and 60-byte frames (the host kernel drops
them: unknown ethertype) and guest RX of frames the script sends into the TAP
with an AF_PACKET socket; all as an interrupt-driven driver would (the guest
acknowledges InterruptStatus once per batch of completions: two MMIO exits),
then five of them again with pure polling ("benchirq off": no interrupts, no
exits but the notifies), and the cost of one MMIO exit (mmiobench).

Schedule: one warm-up session per VMM runs every workload with a small amount
of work and measures its rate; each workload's amount is then fixed for all
repetitions and both VMMs so that the faster VMM needs about --target-seconds.
Then --reps repetitions; in each, every workload runs on both VMMs back to back
(which one goes first alternates), each run in a freshly booted VM, then the
host baselines run. One VM runs at a time (an idle test guest polls its UART,
which costs a host CPU), and the two runs of a pair are seconds apart, so their
ratio cancels much of the drift of the background load.

Timing, per command: host wall clock from writing the command line to reading
the reply (includes ~1-10 ms of UART and ring switching; runs are >= ~1 s),
and the guest's TSC delta (reply field cycles=) converted with the TSC rate
measured over the warm-up sessions (the `tsc` command at their start and end
against the host's monotonic clock; /proc/cpuinfo's "cpu MHz" is reported next
to it). RX uses the guest TSC only (first to last frame). Around each command
the script also reads /proc/PID/task/*/schedstat: CPU time and run-queue wait
of the vCPU thread (the one that ran most: the guest spins) and of all other
VMM threads (the device side).

Host baselines (same run, same file): dd of the whole file to /dev/null with
bs=64K/128K, dd from /dev/zero over the file (conv=notrunc), 4 KiB random
pread/pwrite with one thread (Python, one syscall per request: a lower bound of
what the host can do), and, with a TAP: writes of vnet-header + frame to the
TAP fd (what a VMM does per TX frame) and the AF_PACKET sender's own rate into
the TAP (the ceiling of the RX workload).

--linux (optional, ours only: QEMU cannot boot that kernel on the nested
build hosts) also boots our default guest (minimal kernel + busybox initramfs
from $VMM_CACHE or ~/.cache/vmm) with the same disk as /dev/vda and times
busybox `dd` in it (LINUX_DD below). On the nested build hosts guest kernel
code is interpreted (~1 MIPS), so those numbers measure that, not the device.

Output: a markdown report on stdout (medians, min-max, ours/QEMU ratios);
--json FILE writes everything (every run's raw reply included). Stdlib only.
Example:
  tools/bench/virtio_bench.py --vmm build/vmm/vmm \\
      --guest build/guest-images/test-guest/test-guest.elf --reps 5 --json /tmp/vb.json
  tools/bench/virtio_bench.py --workloads randrd4k,tx60 --reps 3 --linux
"""
import argparse
import fcntl
import json
import os
import platform
import random
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    DEFAULT_QEMU_CPU, add_vm_args, stat, host_info, parse_size, cpuinfo_mhz)

READY = b"TESTGUEST READY"
SECTOR = 512
MIB = 1 << 20
GUEST_MAC = "52:54:00:be:4c:01"
ETH_TEST = 0x88B5
NET_HDR = 12

# name, label, kind, parameters, initial amount for the warm-up (requests or frames)
WORKLOADS = [
    ("seqrd64k", "seq read 64 KiB, QD1", "blk",
     dict(op="r", req=128, pat="seq", depth=1, irq="ack"), 1024),
    ("seqrd128k", "seq read 128 KiB, QD1", "blk",
     dict(op="r", req=256, pat="seq", depth=1, irq="ack"), 512),
    ("seqwr64k", "seq write 64 KiB, QD1", "blk",
     dict(op="w", req=128, pat="seq", depth=1, irq="ack"), 1024),
    ("seqwr128k", "seq write 128 KiB, QD1", "blk",
     dict(op="w", req=256, pat="seq", depth=1, irq="ack"), 512),
    ("randrd4k", "rand read 4 KiB, QD1", "blk",
     dict(op="r", req=8, pat="rand", depth=1, irq="ack"), 2000),
    ("randwr4k", "rand write 4 KiB, QD1", "blk",
     dict(op="w", req=8, pat="rand", depth=1, irq="ack"), 2000),
    ("randrd4k_qd4", "rand read 4 KiB, QD4", "blk",
     dict(op="r", req=8, pat="rand", depth=4, irq="ack"), 4000),
    ("tx1514", "net TX 1514-byte frames", "tx", dict(len=1514, irq="ack"), 20000),
    ("tx60", "net TX 60-byte frames", "tx", dict(len=60, irq="ack"), 20000),
    ("rx1514", "net RX 1514-byte frames", "rx", dict(len=1514, irq="ack"), 20000),
    # Pure polling ("benchirq off"): no interrupts, no InterruptStatus exits.
    ("seqrd64k_poll", "seq read 64 KiB, QD1, polling", "blk",
     dict(op="r", req=128, pat="seq", depth=1, irq="off"), 1024),
    ("randrd4k_poll", "rand read 4 KiB, QD1, polling", "blk",
     dict(op="r", req=8, pat="rand", depth=1, irq="off"), 4000),
    ("randrd4k_qd4_poll", "rand read 4 KiB, QD4, polling", "blk",
     dict(op="r", req=8, pat="rand", depth=4, irq="off"), 8000),
    ("tx1514_poll", "net TX 1514-byte frames, polling", "tx", dict(len=1514, irq="off"), 50000),
    ("tx60_poll", "net TX 60-byte frames, polling", "tx", dict(len=60, irq="off"), 50000),
    # The cost of one MMIO exit to the VMM's user space (a register read).
    ("mmio", "MMIO register read (exit to user space)", "mmio", dict(irq="ack"), 5000),
]

REPLY_RE = re.compile(r"(BLKBENCH|NETBENCH (?:tx|rx)) (ok|timeout) (?:reqs|frames)=(\d+)"
                      r"(?: bytes=(\d+))? cycles=(\d+) kicks=(\d+) isr=(\d+)$")
MMIO_RE = re.compile(r"MMIOBENCH reads=(\d+) cycles=(\d+) bad=0$")


# ----------------------------------------------------------------- helpers --

def loadavg():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return []


class GuestError(Exception):
    pass


class Session:
    """One VM running the test guest; line commands over its serial (stdio)."""

    def __init__(self, who, cmd, timeout=60):
        self.who = who
        self.cmd = cmd
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.buf = bytearray()
        self.err = bytearray()
        self.fds = {self.p.stdout.fileno(): self.buf, self.p.stderr.fileno(): self.err}
        try:
            self.expect(READY.decode(), timeout)
        except GuestError:
            self.close()
            raise

    def _read(self, timeout):
        if not self.fds:
            raise GuestError(f"{self.who}: VMM exited: "
                             f"{bytes(self.err[-1500:]).decode(errors='replace').strip()}")
        r, _, _ = select.select(list(self.fds), [], [], max(timeout, 0))
        for fd in r:
            data = os.read(fd, 65536)
            if data:
                self.fds[fd] += data
            else:
                del self.fds[fd]

    def poll_line(self):
        """A complete stdout line if one is buffered (non-blocking), else None."""
        self._read(0)
        return self._take_line()

    def _take_line(self):
        i = self.buf.find(b"\n")
        if i < 0:
            return None
        line = bytes(self.buf[:i]).decode(errors="replace").strip("\r")
        del self.buf[:i + 1]
        return line

    def expect(self, prefix, timeout):
        """The next stdout line starting with prefix (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._take_line()
            if line is not None:
                if line.startswith(prefix) or line.startswith("ERR") or line.startswith("EXC"):
                    if not line.startswith(prefix):
                        raise GuestError(f"{self.who}: guest said {line!r}")
                    return line
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(f"{self.who}: no {prefix!r} line within {timeout} s")
            self._read(min(left, 1.0))

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def command(self, line, prefix, timeout=120):
        """(reply, t_sent, t_reply) with monotonic times."""
        t0 = time.monotonic()
        self.send(line)
        reply = self.expect(prefix, timeout)
        return reply, t0, time.monotonic()

    def thread_times(self):
        """{tid: (ns on a CPU, ns waiting on a run queue)} of every VMM thread
        (/proc/PID/task/TID/schedstat)."""
        out = {}
        base = f"/proc/{self.p.pid}/task"
        try:
            tids = os.listdir(base)
        except OSError:
            return out
        for tid in tids:
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    run, wait = f.read().split()[:2]
                out[int(tid)] = (int(run), int(wait))
            except (OSError, ValueError):
                pass
        return out

    def tsc(self):
        """(guest TSC, host time): the host time is the middle of the round trip."""
        reply, t0, t1 = self.command("tsc", "TSC ", 30)
        return int(reply.split()[1]), (t0 + t1) / 2

    def close(self, timeout=10):
        if self.p.poll() is None:
            try:
                self.send("exit 0")
            except OSError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.send_signal(signal.SIGKILL)
                self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass


# --------------------------------------------------------------- the TAP --

TUNSETIFF = 0x400454CA
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


class Tap:
    """A TAP for the benchmark (IPv6 off so the host sends nothing on it)."""

    def __init__(self):
        self.name = f"vbt{os.getpid() % 1000000}"
        self._ip("link", "del", self.name)
        subprocess.run(["ip", "tuntap", "add", self.name, "mode", "tap"], check=True)
        try:
            with open(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass
        subprocess.run(["ip", "link", "set", self.name, "up"], check=True)

    def stats(self):
        out = {}
        for k in ("rx_packets", "rx_dropped", "tx_packets", "tx_dropped"):
            try:
                with open(f"/sys/class/net/{self.name}/statistics/{k}") as f:
                    out[k] = int(f.read())
            except (OSError, ValueError):
                out[k] = None
        return out

    def open_fd(self):
        """The TAP's queue, opened like a VMM does (vnet header, 12 bytes)."""
        fd = os.open("/dev/net/tun", os.O_RDWR)
        ifr = struct.pack("16sH22x", self.name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", NET_HDR))
        return fd

    def packet_socket(self):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TEST))
        s.bind((self.name, ETH_TEST))
        return s

    @staticmethod
    def _ip(*args):
        subprocess.run(["ip", *args], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def close(self):
        self._ip("link", "del", self.name)


def test_frame(length, src=bytes.fromhex("02aabbccddee")):
    """A broadcast frame of the test ethertype, `length` bytes."""
    return b"\xff" * 6 + src + ETH_TEST.to_bytes(2, "big") + bytes(
        (k & 0xff) for k in range(length - 14))


# ------------------------------------------------------------ VMM commands --

def ours_cmd(a, tap):
    cmd = [a.vmm, "--kernel", a.guest, "--mem", a.mem, "--serial", "stdio",
           "--log-level", "warn", "--disk", f"path={a.disk}"]
    if tap:
        cmd += ["--net", f"tap={tap.name},mac={GUEST_MAC}"]
    return cmd


def qemu_cmd(a, tap):
    cmd = [a.qemu, "-M", "microvm,rtc=off", "-accel", "kvm", "-cpu", a.qemu_cpu, "-m", a.mem,
           "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-global", "virtio-mmio.force-legacy=false", "-kernel", a.guest,
           "-drive", f"id=d0,file={a.disk},format=raw,if=none,cache=writeback",
           "-device", "virtio-blk-device,drive=d0"]
    if tap:
        cmd += ["-netdev", f"tap,id=n0,ifname={tap.name},script=no,downscript=no",
                "-device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}"]
    return cmd + ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]


# -------------------------------------------------------------- workloads --

def workload_command(kind, p, amount):
    if kind == "blk":
        return (f"blkbench {p['op']} {amount * p['req']} {p['req']} {p['pat']} {p['depth']}",
                "BLKBENCH ")
    if kind == "tx":
        return f"netbench tx {amount} {p['len']}", "NETBENCH "
    if kind == "mmio":
        return f"mmiobench {amount}", "MMIOBENCH "
    return None, None


def parse_reply(reply):
    m = MMIO_RE.match(reply)
    if m:
        return {"n": int(m.group(1)), "bytes": None, "cycles": int(m.group(2)), "kicks": 0,
                "isr": 0}
    m = REPLY_RE.match(reply)
    if not m or m.group(2) != "ok":
        raise GuestError(f"unexpected reply {reply!r}")
    return {"n": int(m.group(3)), "bytes": int(m.group(4)) if m.group(4) else None,
            "cycles": int(m.group(5)), "kicks": int(m.group(6)), "isr": int(m.group(7))}


def set_irq_mode(s, mode, state):
    if state.get("irq") != mode:
        s.command(f"benchirq {mode}", "BENCHIRQ ")
        state["irq"] = mode


def run_rx(s, tap, sock, frames, length, timeout_s=120):
    """netbench rx: the host sends frames into the TAP until the guest has
    counted `frames` of them. Returns (reply, t_sent, t_reply, extra)."""
    frame = test_frame(length)
    before = tap.stats()
    t0 = time.monotonic()
    s.send(f"netbench rx {frames} {int(timeout_s * 1000)}")
    sent = 0
    reply = None
    deadline = t0 + timeout_s + 30
    while reply is None:
        for _ in range(256):
            try:
                sock.send(frame)
                sent += 1
            except OSError:
                break
        line = s.poll_line()
        if line is not None and line.startswith("NETBENCH rx "):
            reply = line
        elif line is not None and line.startswith(("ERR", "EXC")):
            raise GuestError(f"{s.who}: guest said {line!r}")
        if time.monotonic() > deadline:
            raise GuestError(f"{s.who}: no netbench rx reply")
    t1 = time.monotonic()
    after = tap.stats()
    dropped = None
    if after["tx_dropped"] is not None:
        dropped = after["tx_dropped"] - before["tx_dropped"]
    return reply, t0, t1, {"sent": sent, "tap_tx_dropped": dropped}


def thread_deltas(before, after):
    """Per-thread (run, wait) ns over a command; the vCPU thread is the one
    that ran most (the guest spins in ring 3 for the whole command), every
    other thread that ran counts as the device side (ours: the device worker;
    QEMU: its main loop, I/O thread pool, ...)."""
    d = {tid: (after[tid][0] - before.get(tid, (0, 0))[0],
               after[tid][1] - before.get(tid, (0, 0))[1]) for tid in after}
    if not d:
        return None
    vcpu = max(d, key=lambda t: d[t][0])
    others = [v for t, v in d.items() if t != vcpu]
    return {"vcpu_run_ns": d[vcpu][0], "vcpu_wait_ns": d[vcpu][1],
            "dev_run_ns": sum(v[0] for v in others), "dev_wait_ns": sum(v[1] for v in others),
            "dev_threads": sum(1 for v in others if v[0] > 0)}


def run_workload(s, w, amount, tap, sock, state):
    """One workload command on a running VM; the parsed reply plus timing."""
    name, label, kind, p, _ = w
    set_irq_mode(s, p["irq"], state)
    # Device discovery and initialization happen on first use: not timed.
    init = ("netinfo", "NET ") if kind in ("tx", "rx") else ("blkinfo", "BLK ")
    if init[0] not in state:
        s.command(*init)
        state[init[0]] = True
    tb = s.thread_times()
    load = loadavg()
    if kind == "rx":
        reply, t0, t1, extra = run_rx(s, tap, sock, amount, p["len"])
    else:
        line, prefix = workload_command(kind, p, amount)
        before = tap.stats() if (tap and kind == "tx") else None
        reply, t0, t1 = s.command(line, prefix, timeout=600)
        extra = {"command": line}
        if before:
            # Frames the guest sent that reached the host (TAP rx counter).
            after = tap.stats()
            extra["tap_rx_packets"] = after["rx_packets"] - before["rx_packets"]
    ta = s.thread_times()
    r = parse_reply(reply)
    if "tap_rx_packets" in extra and extra["tap_rx_packets"] != r["n"]:
        print(f"  WARNING: {s.who} {name}: guest sent {r['n']} frames, the TAP counted "
              f"{extra['tap_rx_packets']}", file=sys.stderr)
    r.update(extra, reply=reply, wall_s=t1 - t0, workload=name, vmm=s.who, loadavg=load,
             threads=thread_deltas(tb, ta))
    return r


def payload_bytes(w, r):
    _, _, kind, p, _ = w
    if kind == "blk":
        return r["n"] * p["req"] * SECTOR
    if kind == "rx":
        return r["bytes"]
    if kind == "mmio":
        return 0
    return r["n"] * p["len"]


class VM:
    """A Session plus what the workloads need (packet socket, irq mode)."""

    def __init__(self, who, cmd, tap):
        self.s = Session(who, cmd)
        self.tap = tap
        self.sock = None
        self.state = {}
        try:
            if tap:
                self.sock = tap.packet_socket()
                self.sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    def run(self, w, amount):
        return run_workload(self.s, w, amount, self.tap, self.sock, self.state)

    def close(self):
        if self.sock:
            self.sock.close()
        self.s.close()


def warmup_session(a, who, cmd, workloads, tap):
    """One VM runs every workload once with its initial amount. Returns
    ({workload: record}, measured TSC Hz over the whole session)."""
    vm = VM(who, cmd, tap)
    out = {}
    try:
        tsc0, h0 = vm.s.tsc()
        for w in workloads:
            r = vm.run(w, w[4])
            out[w[0]] = r
            if not a.quiet:
                print(f"  [warm-up] {who:4} {w[0]:18} {r['reply']} ({r['wall_s']:.2f} s wall)",
                      file=sys.stderr, flush=True)
        tsc1, h1 = vm.s.tsc()
    finally:
        vm.close()
    return out, (tsc1 - tsc0) / (h1 - h0), h1 - h0


def measured_run(a, who, cmd, w, amount, tap, rep):
    """A fresh VM for one workload run (so the two VMMs' runs of a workload
    are next to each other in time)."""
    vm = VM(who, cmd, tap)
    try:
        r = vm.run(w, amount)
    except GuestError as e:
        # Kept and reported; the run does not count.
        r = {"failed": True, "error": str(e), "workload": w[0], "vmm": who,
             "vmm_stderr_tail": bytes(vm.s.err[-2000:]).decode(errors="replace")}
        print(f"  [{rep}] {who:4} {w[0]:18} FAILED: {e}", file=sys.stderr, flush=True)
    finally:
        vm.close()
    r["rep"] = rep
    if r.get("failed"):
        return r
    if not a.quiet:
        print(f"  [{rep}] {who:4} {w[0]:18} {r['reply']} ({r['wall_s']:.2f} s wall)",
              file=sys.stderr, flush=True)
    return r


# -------------------------------------------------------- host baselines --

def host_dd(a, bs_kib, write):
    """dd over the whole file: (MiB/s, seconds)."""
    size = os.path.getsize(a.disk)
    count = size // (bs_kib * 1024)
    if write:
        cmd = ["dd", "if=/dev/zero", f"of={a.disk}", f"bs={bs_kib}K", f"count={count}",
               "conv=notrunc", "status=none"]
    else:
        cmd = ["dd", f"if={a.disk}", "of=/dev/null", f"bs={bs_kib}K", f"count={count}",
               "status=none"]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    dt = time.monotonic() - t0
    return count * bs_kib * 1024 / MIB / dt, dt


def host_rand4k(a, write, seconds):
    """4 KiB pread/pwrite at random 4 KiB-aligned offsets, one thread: IOPS."""
    fd = os.open(a.disk, os.O_RDWR if write else os.O_RDONLY)
    try:
        npos = os.path.getsize(a.disk) // 4096
        rnd = random.Random(1)
        offs = [rnd.randrange(npos) * 4096 for _ in range(65536)]
        buf = bytearray(4096)
        data = bytes(range(256)) * 16
        n = 0
        t0 = time.monotonic()
        end = t0 + seconds
        while True:
            if write:
                for off in offs[:1024]:
                    os.pwrite(fd, data, off)
            else:
                for off in offs[:1024]:
                    os.preadv(fd, [buf], off)
            n += 1024
            offs = offs[1024:] + offs[:1024]
            if time.monotonic() >= end:
                break
        return n / (time.monotonic() - t0)
    finally:
        os.close(fd)


def host_tap_write(tap, length, seconds):
    """vnet header + frame written to the TAP fd (what a VMM does per TX
    frame); nobody reads, the host kernel drops the frames. Frames/s."""
    fd = tap.open_fd()
    try:
        pkt = bytes(NET_HDR) + test_frame(length)
        n = 0
        t0 = time.monotonic()
        end = t0 + seconds
        while True:
            for _ in range(1024):
                os.write(fd, pkt)
            n += 1024
            if time.monotonic() >= end:
                break
        return n / (time.monotonic() - t0)
    finally:
        os.close(fd)


def host_packet_send(tap, length, seconds):
    """The RX workload's sender alone: AF_PACKET sends into the TAP while its
    queue is open (like a VMM's) but not read, so frames are dropped once the
    queue is full. Frames/s: the ceiling of the RX workload."""
    fd = tap.open_fd()
    sock = tap.packet_socket()
    sock.setblocking(False)
    try:
        frame = test_frame(length)
        n = 0
        t0 = time.monotonic()
        end = t0 + seconds
        while True:
            for _ in range(256):
                try:
                    sock.send(frame)
                    n += 1
                except OSError:
                    pass
            if time.monotonic() >= end:
                break
        return n / (time.monotonic() - t0)
    finally:
        sock.close()
        os.close(fd)


def run_host_baselines(a, tap, base, rep):
    add = lambda k, v: base.setdefault(k, []).append(v)  # noqa: E731
    for bs in (64, 128):
        add(f"seqrd{bs}k", host_dd(a, bs, False)[0])
        add(f"seqwr{bs}k", host_dd(a, bs, True)[0])
    add("randrd4k", host_rand4k(a, False, a.host_seconds))
    add("randwr4k", host_rand4k(a, True, a.host_seconds))
    if tap:
        add("tx1514", host_tap_write(tap, 1514, a.host_seconds))
        add("tx60", host_tap_write(tap, 60, a.host_seconds))
        add("rx1514", host_packet_send(tap, 1514, a.host_seconds))
    if not a.quiet:
        print(f"  [{rep}] host baselines: " +
              ", ".join(f"{k} {v[-1]:,.0f}" for k, v in base.items()), file=sys.stderr,
              flush=True)


# ----------------------------------------------------------------- report --

def rates(w, r):
    """(wall rate, TSC rate) in the workload's unit, and MiB/s by the TSC."""
    _, _, kind, p, _ = w
    b = payload_bytes(w, r)
    wall = None
    if kind == "blk" and p["pat"] == "seq":
        if r["wall_s"]:
            wall = b / MIB / r["wall_s"]
        return wall, b / MIB / r["tsc_s"], b / MIB / r["tsc_s"]
    if kind != "rx":
        wall = r["n"] / r["wall_s"]
    return wall, r["n"] / r["tsc_s"], b / MIB / r["tsc_s"]


def unit(w):
    _, _, kind, p, _ = w
    if kind == "blk":
        return "MiB/s" if p["pat"] == "seq" else "IOPS"
    if kind == "mmio":
        return "exits/s"
    return "frames/s"


def fmt(st, digits=None):
    if not st:
        return "-"
    d = digits if digits is not None else (0 if st["median"] >= 100 else 1)
    f = lambda v: f"{v:,.{d}f}"  # noqa: E731
    return f"{f(st['median'])} ({f(st['min'])}-{f(st['max'])})"


def per_op(runs, key):
    return stat([r["threads"][key] / 1e3 / r["n"] for r in runs if r.get("threads")])


def summarize(workloads, results, base):
    out = {}
    for w in workloads:
        name = w[0]
        row = {"unit": unit(w)}
        for who in ("ours", "qemu"):
            runs = results.get(name, {}).get(who, [])
            rs = [rates(w, r) for r in runs]
            row[who] = {
                "wall": stat([x[0] for x in rs]),
                "tsc": stat([x[1] for x in rs]),
                "mib_s": stat([x[2] for x in rs]),
                "kicks_per_op": stat([r["kicks"] / r["n"] for r in runs]),
                "isr_per_op": stat([r["isr"] / r["n"] for r in runs]),
                "us_per_op": stat([r["tsc_s"] / r["n"] * 1e6 for r in runs]),
                "dev_cpu_us_per_op": per_op(runs, "dev_run_ns"),
                "dev_wait_us_per_op": per_op(runs, "dev_wait_ns"),
                "vcpu_wait_us_per_op": per_op(runs, "vcpu_wait_ns"),
            }
        for key in ("wall", "tsc"):
            o, q = row["ours"][key], row["qemu"][key]
            row[f"ratio_{key}"] = (o["median"] / q["median"]) if o and q and q["median"] else None
        # The two VMMs' runs of one repetition are next to each other in time:
        # their ratio cancels much of the background load's drift.
        pairs = []
        ours = {r["rep"]: r for r in results.get(name, {}).get("ours", [])}
        for q in results.get(name, {}).get("qemu", []):
            o = ours.get(q["rep"])
            if o:
                pairs.append(rates(w, o)[1] / rates(w, q)[1])
        row["pair_ratios"] = pairs
        row["ratio_pairs"] = stat(pairs)
        # Polling and QD4 rows share the baseline of the plain workload.
        hb = stat(base.get(name.replace("_poll", "").replace("_qd4", ""), []))
        row["host"] = hb
        o = row["ours"]["tsc"]
        row["ours_vs_host"] = o["median"] / hb["median"] if o and hb and hb["median"] else None
        out[name] = row
    return out


def md_table(hdr, rows):
    out = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def report(a, info, workloads, amounts, summary, skipped):
    out = ["# virtio benchmark: our VMM vs QEMU microvm\n"]
    out.append(f"Host: kernel {info['kernel']}, nproc {info['nproc']}, CPU {info.get('cpu', '?')}, "
               f"nested kvm_pvm: {info['nested_pvm']}; {info.get('qemu_version', '')}; "
               f"load avg {' '.join(info['load_start'])} at start, "
               f"{' '.join(info['load_end'])} at end.\n")
    out.append(f"Disk: {a.disk} ({a.disk_size_bytes // MIB} MiB raw, {info['disk_fs']}: in the "
               f"page cache); guest {a.mem}; {a.reps} repetitions; guest TSC "
               f"{info['tsc_mhz']:.1f} MHz (measured over the warm-up sessions; /proc/cpuinfo "
               f"cpu MHz {info.get('cpuinfo_mhz')}).\n")
    for s in skipped:
        out.append(f"- SKIPPED: {s}")
    if skipped:
        out.append("")
    out.append("Median (min-max) over the repetitions. *TSC*: rate from the guest's cycle "
               "count for the loop; *wall*: host clock around the command. ours/QEMU > 1: ours "
               "is faster; *medians* is the ratio of the two TSC medians, *pairs* the median "
               "(min-max) of the per-repetition ratios (each repetition runs both VMMs back to "
               "back). *host*: the host baseline (same file, same TAP).\n")
    ratio = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    rows = []
    for w in workloads:
        name, label = w[0], w[1]
        r = summary[name]
        amt = amounts[name]
        amount = (f"{amt * w[3]['req'] * SECTOR // MIB} MiB" if w[2] == "blk" and
                  w[3]["pat"] == "seq" else f"{amt:,}")
        rows.append([label, r["unit"], amount, fmt(r["ours"]["tsc"]), fmt(r["qemu"]["tsc"]),
                     ratio(r["ratio_tsc"]), fmt(r["ratio_pairs"], 2), fmt(r["ours"]["wall"]),
                     fmt(r["qemu"]["wall"]), fmt(r["host"]), ratio(r["ours_vs_host"])])
    out += md_table(["workload", "unit", "amount", "ours (TSC)", "QEMU (TSC)",
                     "ours/QEMU medians", "ours/QEMU pairs", "ours (wall)", "QEMU (wall)",
                     "host", "ours/host"], rows)
    out.append("")
    out.append("Per request or frame (medians): guest time (TSC); QueueNotify writes (kicks) and "
               "InterruptStatus acknowledgements (isr); host CPU time of the VMM's threads other "
               "than the vCPU thread (*device CPU*: ours the device worker, QEMU its main loop "
               "and I/O threads) and the time those threads waited for a CPU while runnable "
               "(*device wait*), from /proc/PID/task/*/schedstat around the command.\n")
    m = lambda st, d=2: "-" if not st else f"{st['median']:,.{d}f}"  # noqa: E731
    rows = []
    for w in workloads:
        o, q = summary[w[0]]["ours"], summary[w[0]]["qemu"]
        rows.append([w[1], m(o["us_per_op"], 1), m(q["us_per_op"], 1), m(o["kicks_per_op"]),
                     m(q["kicks_per_op"]), m(o["isr_per_op"]), m(q["isr_per_op"]),
                     m(o["dev_cpu_us_per_op"], 1), m(q["dev_cpu_us_per_op"], 1),
                     m(o["dev_wait_us_per_op"], 1), m(q["dev_wait_us_per_op"], 1)])
    out += md_table(["workload", "ours us/op", "QEMU us/op", "ours kicks/op", "QEMU kicks/op",
                     "ours isr/op", "QEMU isr/op", "ours device CPU us/op",
                     "QEMU device CPU us/op", "ours device wait us/op",
                     "QEMU device wait us/op"], rows)
    out.append("")
    out.append("Commands:\n")
    for who, cmd in info["commands"].items():
        out.append(f"- {who}: `{shlex.join(cmd)}`")
    out.append("")
    out.append("Guest command per workload: " + "; ".join(
        f"{w[0]}: `{workload_command(w[2], w[3], amounts[w[0]])[0] or f'netbench rx {amounts[w[0]]} 120000'}`"
        + (" after `benchirq off`" if w[3]["irq"] == "off" else "")
        for w in workloads) + "\n")
    return "\n".join(out)


# ------------------------------------------- optional: a Linux guest, ours --

CACHE_DEFAULT = os.environ.get("VMM_CACHE", os.path.expanduser("~/.cache/vmm"))
LINUX_MARKER = "VMM-GUEST-READY"
LINUX_CMDLINE = "console=ttyS0 reboot=k nowatchdog"
# name, label, busybox dd arguments, bytes moved, host baseline key, unit
LINUX_DD = [
    ("seqrd1m", "dd read bs=1M (guest page cache)",
     "if=/dev/vda of=/dev/null bs=1M count=4", 4 * MIB, "seqrd128k", "MiB/s"),
    ("seqrd1m_direct", "dd read bs=1M iflag=direct",
     "if=/dev/vda of=/dev/null bs=1M count=16 iflag=direct", 16 * MIB, "seqrd128k", "MiB/s"),
    ("seqwr1m_direct", "dd write bs=1M oflag=direct",
     "if=/dev/zero of=/dev/vda bs=1M count=16 oflag=direct", 16 * MIB, "seqwr128k", "MiB/s"),
    ("rd4k_direct", "dd read bs=4K iflag=direct (sequential, QD1)",
     "if=/dev/vda of=/dev/null bs=4K count=256 iflag=direct", 256, "randrd4k", "IOPS"),
]
BUSYBOX_TIME_RE = re.compile(r"^(real|user|sys)\s+(\d+)m\s*([0-9.]+)s", re.M)


def linux_sh(g, cmd, timeout):
    """One shell command line; (output text, host seconds). The markers are
    typed split by "" so the console's echo never matches them."""
    g.send(f'echo @@vb""-begin; {cmd}; echo @@vb""-end=$?')
    g.expect("@@vb-begin", timeout)
    start = g.pos
    t0 = time.monotonic()
    line = g.expect("@@vb-end=", timeout)
    dt = time.monotonic() - t0
    body = g.out[start:g.pos].decode(errors="replace")
    if not line.rstrip().endswith("=0"):
        raise GuestError(f"guest command failed: {cmd}: {body[-500:]}")
    return body, dt


def bench_linux(a):
    """Boots our default guest (minimal kernel + busybox initramfs) with the
    benchmark disk as /dev/vda and times busybox dd in it. Ours only: QEMU
    cannot boot this kernel on the nested build hosts (docs/benchmarks.md)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                    "tests", "integration"))
    from vmmtest import Guest  # noqa: E402
    for path in (a.linux_kernel, a.linux_initrd):
        if not os.path.isfile(path):
            return {"skipped": f"{path} is missing (guest-images/build-kernel.sh, "
                               "build-initramfs.sh)"}
    args = ["--initrd", a.linux_initrd, "--mem", a.mem, "--cmdline", LINUX_CMDLINE,
            "--disk", f"path={a.disk}"]
    g = Guest(a.vmm, a.linux_kernel, args, log_level="warn")
    res = {"command": g.cmd, "runs": []}
    t0 = time.monotonic()
    try:
        g.expect(LINUX_MARKER, timeout=a.linux_timeout)
        res["boot_s"] = time.monotonic() - t0
        if not a.quiet:
            print(f"  linux: shell after {res['boot_s']:.1f} s", file=sys.stderr, flush=True)
        for name, label, dd, nbytes, _, unit_ in LINUX_DD:
            out, wall = linux_sh(g, f"time dd {dd}", a.linux_timeout)
            times = {m.group(1): int(m.group(2)) * 60 + float(m.group(3))
                     for m in BUSYBOX_TIME_RE.finditer(out)}
            real = times.get("real")
            r = {"name": name, "label": label, "dd": dd, "bytes": nbytes, "unit": unit_,
                 "real_s": real, "sys_s": times.get("sys"), "user_s": times.get("user"),
                 "wall_s": wall, "output": out.strip()}
            if real:
                r["rate"] = nbytes / MIB / real if unit_ == "MiB/s" else nbytes / real
            res["runs"].append(r)
            if not a.quiet:
                print(f"  linux: dd {dd}: real {real} s ({wall:.1f} s wall)", file=sys.stderr,
                      flush=True)
        g.send("poweroff")
        res["exit"] = g.wait(600)
    finally:
        g.kill()
    return res


def report_linux(lin, base, summary):
    out = ["## Linux guest (ours only)\n"]
    if "skipped" in lin:
        return "\n".join(out + [f"Skipped: {lin['skipped']}\n"])
    out.append(f"Shell after {lin.get('boot_s', 0):.1f} s; busybox `time dd` in the guest "
               "(rates from its *real*; *sys*: guest kernel time). Host baseline and test-guest "
               "columns: the main table's row named in parentheses. Command: "
               f"`{shlex.join(lin['command'])}`\n")
    rows = []
    for r in lin["runs"]:
        key = next(x[4] for x in LINUX_DD if x[0] == r["name"])
        hb = stat(base.get(key, []))
        tg = summary.get(key, {}).get("ours", {}).get("tsc")
        rate = r.get("rate")
        rows.append([r["label"], f"`dd {r['dd']}`", r["unit"],
                     "-" if rate is None else f"{rate:,.1f}",
                     "-" if r["real_s"] is None else f"{r['real_s']:.2f}",
                     "-" if r.get("sys_s") is None else f"{r['sys_s']:.2f}",
                     f"{fmt(hb)} ({key})", "-" if not tg else f"{tg['median']:,.0f} ({key})"])
    out += md_table(["workload", "command", "unit", "Linux guest, ours", "real s",
                     "guest sys s", "host baseline", "test guest, ours"], rows)
    out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------- main --

def fs_type(path):
    try:
        out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        return out or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def make_disk(path, size):
    """Writes every byte (a non-zero pattern), so the file has no holes and
    is entirely in the page cache."""
    block = bytes((i * 7 + 1) & 0xff for i in range(MIB))
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    add_vm_args(ap)
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--mem", default="256M", help="guest RAM, both VMMs (default 256M)")
    ap.add_argument("--disk-dir", default="/dev/shm",
                    help="where the disk file is made (default /dev/shm: tmpfs, page cache only)")
    ap.add_argument("--disk-size", default="256M", help="disk file size (default 256M)")
    ap.add_argument("--target-seconds", type=float, default=1.5,
                    help="aim each command at this long on the faster VMM (default 1.5)")
    ap.add_argument("--host-seconds", type=float, default=1.0,
                    help="duration of each timed host baseline loop (default 1.0)")
    ap.add_argument("--workloads", help="comma-separated subset of: " +
                    ",".join(w[0] for w in WORKLOADS))
    ap.add_argument("--no-net", action="store_true", help="skip the network workloads")
    ap.add_argument("--json", metavar="OUT", help="write the full results as JSON to OUT")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--linux", action="store_true",
                    help="also boot our default Linux guest (ours only) with the same disk "
                         "and time busybox dd in it (~2-3 minutes on the nested build hosts)")
    ap.add_argument("--linux-kernel", help="default: $VMM_CACHE/kernel/minimal/vmlinux")
    ap.add_argument("--linux-initrd",
                    help="default: $VMM_CACHE/initramfs/initramfs-minimal.cpio")
    ap.add_argument("--linux-timeout", type=float, default=2400,
                    help="boot and per-command timeout of the Linux part (s, default 2400)")
    a = ap.parse_args()
    a.linux_kernel = a.linux_kernel or os.path.join(CACHE_DEFAULT, "kernel", "minimal", "vmlinux")
    a.linux_initrd = a.linux_initrd or os.path.join(CACHE_DEFAULT, "initramfs",
                                                    "initramfs-minimal.cpio")

    for what, path in (("vmm", a.vmm), ("guest", a.guest)):
        if not os.path.isfile(path):
            ap.error(f"{what} not found at {path}")
    if shutil.which(a.qemu) is None:
        ap.error(f"{a.qemu} not found")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        ap.error("/dev/kvm is not accessible")
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    workloads = WORKLOADS
    if a.workloads:
        want = [x.strip() for x in a.workloads.split(",") if x.strip()]
        bad = [x for x in want if x not in {w[0] for w in WORKLOADS}]
        if bad:
            ap.error(f"unknown workloads {bad}")
        workloads = [w for w in WORKLOADS if w[0] in want]

    skipped = []
    tap = None
    net = [w for w in workloads if w[2] in ("tx", "rx")]
    if net and a.no_net:
        skipped.append("network workloads: --no-net")
    elif net and os.geteuid() != 0:
        skipped.append("network workloads: a TAP needs root")
    elif net and (not os.path.exists("/dev/net/tun") or shutil.which("ip") is None):
        skipped.append("network workloads: no /dev/net/tun or no ip(8)")
    if skipped:
        workloads = [w for w in workloads if w[2] not in ("tx", "rx")]
        for s in skipped:
            print(f"SKIP: {s}", file=sys.stderr)

    a.disk_size_bytes = parse_size(a.disk_size)
    a.disk = os.path.join(a.disk_dir, f"virtio-bench-{os.getpid()}.raw")
    info = host_info(a.qemu, load_start=loadavg(), cpuinfo_mhz=cpuinfo_mhz())

    results, base, lin, failures = {}, {}, None, []
    try:
        make_disk(a.disk, a.disk_size_bytes)
        info["disk_fs"] = fs_type(a.disk)
        if any(w[2] in ("tx", "rx") for w in workloads):
            tap = Tap()
        cmds = {"ours": ours_cmd(a, tap), "qemu": qemu_cmd(a, tap)}
        info["commands"] = cmds

        # Warm-up: one session per VMM runs every workload with a small amount
        # and measures the guest TSC rate; each workload's amount is then sized
        # for --target-seconds on the faster VMM.
        amounts = {}
        warm, tsc_hz = {}, []
        for who in ("ours", "qemu"):
            recs, hz, span = warmup_session(a, who, cmds[who], workloads, tap)
            warm[who] = recs
            tsc_hz.append(hz)
            info.setdefault("tsc_calibration", []).append(
                {"vmm": who, "hz": hz, "over_s": span})
        info["tsc_hz"] = statistics.median(tsc_hz)
        for who in warm:
            for r in warm[who].values():
                r["tsc_s"] = r["cycles"] / info["tsc_hz"]
        for w in workloads:
            name = w[0]
            best = max(warm[who][name]["n"] / warm[who][name]["tsc_s"] for who in warm
                       if warm[who][name]["tsc_s"] > 0)
            amt = max(1, int(best * a.target_seconds))
            if w[2] == "blk" and w[3]["pat"] == "seq":
                amt = max(amt, a.disk_size_bytes // (w[3]["req"] * SECTOR))  # >= one pass
            amounts[name] = amt
        info["warmup"] = warm

        # Each repetition: every workload on both VMMs back to back (a fresh VM
        # per run; which VMM goes first alternates), then the host baselines.
        k = 0
        for rep in range(a.reps):
            for w in workloads:
                order = ("ours", "qemu") if k % 2 == 0 else ("qemu", "ours")
                k += 1
                for who in order:
                    r = measured_run(a, who, cmds[who], w, amounts[w[0]], tap, rep)
                    if r.get("failed"):
                        failures.append(r)
                        continue
                    r["tsc_s"] = r["cycles"] / info["tsc_hz"]
                    results.setdefault(w[0], {}).setdefault(who, []).append(r)
            run_host_baselines(a, tap, base, rep)
        lin = bench_linux(a) if a.linux else None
    finally:
        if tap:
            tap.close()
        try:
            os.unlink(a.disk)
        except OSError:
            pass

    info["load_end"] = loadavg()
    info["tsc_mhz"] = info["tsc_hz"] / 1e6
    summary = summarize(workloads, results, base)
    text = report(a, info, workloads, amounts, summary, skipped)
    if failures:
        text += "\nFAILED runs (not counted):\n\n" + "\n".join(
            f"- rep {f['rep']} {f['vmm']} {f['workload']}: {f['error']}" for f in failures) + "\n"
    if lin is not None:
        text += "\n" + report_linux(lin, base, summary)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items()}, "host": info,
                       "workloads": [{"name": w[0], "label": w[1], "kind": w[2],
                                      "params": w[3], "amount": amounts[w[0]]}
                                     for w in workloads],
                       "summary": summary, "runs": results, "host_baselines": base,
                       "skipped": skipped, "linux": lin, "failures": failures,
                       "report_markdown": text}, f,
                      indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
