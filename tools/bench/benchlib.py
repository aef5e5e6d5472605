"""Helpers shared by the benchmark scripts in tools/bench (stdlib only)."""
import argparse
import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def parse_size(text):
    """'512M' -> bytes (K/M/G suffixes, binary; a trailing B is ignored)."""
    t = text.strip().upper().rstrip("B")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    return int(t) * mult


def loadavg():
    """The 1/5/15-minute load averages as floats ([] if unreadable)."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return []


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpuinfo_mhz():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def host_info(qemu=None, **extra):
    """What a report records about the host: kernel, CPUs, nested PVM, load,
    CPU model and (if given) the QEMU binary's version; plus `extra`."""
    import platform
    info = {"kernel": platform.release(), "nproc": os.cpu_count(),
            "nested_pvm": os.path.exists("/sys/module/kvm_pvm"), **extra}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f
                               if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if qemu:
        try:
            info["qemu_version"] = subprocess.run([qemu, "--version"], capture_output=True,
                                                  text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return info


DEFAULT_QEMU_CPU = "host,-arch-capabilities"
# QEMU's migrate-set-parameters max-bandwidth meaning "unlimited" (bytes/s; QEMU 7.2's
# default, 128 MiB/s, would throttle it).
QEMU_UNLIMITED_BW = 1 << 40


def add_vm_args(ap):
    """--vmm, --guest, --qemu, --qemu-cpu: the binaries a side-by-side
    benchmark of the test guest runs, with the same defaults everywhere."""
    ap.add_argument("--vmm", default="build/vmm/vmm", help="our vmm (default build/vmm/vmm)")
    ap.add_argument("--guest", default="build/guest-images/test-guest/test-guest.elf",
                    help="test guest ELF (default build/guest-images/test-guest/test-guest.elf)")
    ap.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    ap.add_argument("--qemu-cpu", default=DEFAULT_QEMU_CPU,
                    help=f"QEMU -cpu (default {DEFAULT_QEMU_CPU}; plain 'host' aborts on the "
                         "nested build hosts)")


VMMS = ("ours", "qemu")   # the two sides of a side-by-side benchmark


def choice_list(choices):
    """An argparse type: a comma-separated non-empty subset of choices, as a
    list in the order given, without repeats."""
    def parse(text):
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return list(dict.fromkeys(items))
    return parse


def add_stock_vm_args(ap):
    """--vmm, --qemu, --qemu-cpu, --qemu-machine-opts, --qemu-arg, --vmms: the
    VMMs of the stock-kernel benchmarks and which of them run (QEMU's -append
    is what our VMM logs as its command line for the same kernel)."""
    ap.add_argument("--vmm", default=os.path.join(REPO, "build", "vmm", "vmm"),
                    help="our vmm (default: build/vmm/vmm of this repository); also gives "
                         "QEMU's kernel command line")
    ap.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    ap.add_argument("--qemu-cpu", default="host",
                    help="QEMU -cpu (default host; 'host' aborts on nested PVM hosts, where "
                         "stock kernels cannot run anyway)")
    ap.add_argument("--qemu-machine-opts", default="",
                    help="extra microvm options, e.g. acpi=on (default: none)")
    ap.add_argument("--qemu-arg", action="append", default=[],
                    help="extra QEMU argument, every QEMU process (repeatable)")
    ap.add_argument("--vmms", type=choice_list(VMMS), default=list(VMMS),
                    help="comma-separated subset of ours,qemu (default both)")


def stat(vals):
    """median/min/max/n of the values that are not None (None if there are none)."""
    import statistics
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}


def ratio(a, b):
    """a's median over b's (two stat() results), as text; '-' if either is missing."""
    if a is None or b is None or not b["median"]:
        return "-"
    return f"{a['median'] / b['median']:.2f}"


# ------------------------------------------------- a running VMM's memory --

STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize", "Threads")


def proc_status(pid, keys=STATUS_KEYS):
    """Selected /proc/PID/status fields as ints (KiB for the Vm*/Rss* ones);
    {} if the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in keys:
                    out[key] = int(val.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def smaps_mappings(pid):
    """Every mapping of a process from /proc/PID/smaps as {size, name, rss,
    thp} (bytes for size, KiB for the rest); None if unreadable."""
    maps, cur = [], None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):
                    lo, hi = (int(x, 16) for x in first.split("-"))
                    parts = line.split(None, 5)
                    cur = {"size": hi - lo, "name": parts[5].strip() if len(parts) > 5 else "",
                           "rss": 0, "thp": 0}
                    maps.append(cur)
                elif first == "Rss:" and cur is not None:
                    cur["rss"] = int(line.split()[1])
                elif first == "AnonHugePages:" and cur is not None:
                    cur["thp"] = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return maps


def smaps_split(pid, guest_bytes):
    """A VMM's Rss split between its guest-RAM mapping and everything else (KiB),
    from /proc/PID/smaps; None if unreadable.

    The guest RAM is the anonymous mapping whose size is exactly guest_bytes
    (our VMM's and QEMU's memory-backend-ram alike); if none matches, the
    smallest anonymous mapping not smaller than that (its size is reported in
    guest_mappings). vmm_rss_excl_guest_kib is the sum of Rss over all other
    mappings: binary, libraries, heap, thread stacks."""
    maps = smaps_mappings(pid)
    if maps is None:
        return None
    anon = [m for m in maps if m["name"] in ("", "[anon]") or m["name"].startswith("[anon:")]
    guest = [m for m in anon if m["size"] == guest_bytes]
    if not guest:
        guest = sorted((m for m in anon if m["size"] >= guest_bytes), key=lambda m: m["size"])[:1]
    total = sum(m["rss"] for m in maps)
    g_rss = sum(m["rss"] for m in guest)
    return {"rss_total_kib": total, "guest_ram_rss_kib": g_rss,
            "guest_ram_thp_kib": sum(m["thp"] for m in guest),
            "vmm_rss_excl_guest_kib": total - g_rss,
            "guest_mappings": [m["size"] for m in guest], "mappings": len(maps)}


def host_kvm_module():
    """The module serving /dev/kvm: kvm_pvm, kvm_intel, kvm_amd or None."""
    for m in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if os.path.isdir(f"/sys/module/{m}"):
            return m
    return None


# ------------------------------------------------ a child process on pipes --

class PipedProcess:
    """A child process with its stdout and stderr on pipes, drained with
    select, and a pidfd for its exit.

    t0: monotonic time just before Popen (every time a script reports is
    measured from it); t_exit: the time of the poll() that saw the pidfd
    readable (None until then); out, err: everything read so far. A subclass
    watches the output in on_read(), called after every read that added to
    out or err. stdin: a pipe for send() (else /dev/null); pass_fds: file
    descriptors the child inherits (e.g. QEMU's -incoming fd:N)."""

    def __init__(self, cmd, stdin=True, pass_fds=()):
        self.cmd = cmd
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  pass_fds=pass_fds)
        self.pidfd = os.pidfd_open(self.p.pid)
        self.out, self.err = bytearray(), bytearray()
        self.open = {self.p.stdout.fileno(): self.out, self.p.stderr.fileno(): self.err}
        self.t_exit = None

    @property
    def gone(self):
        """Exited and both pipes at their end: nothing more will come."""
        return self.t_exit is not None and not self.open

    def fds(self):
        """What poll() selects on: the pipes not yet at their end and, until
        the exit is seen, the pidfd."""
        return list(self.open) + ([self.pidfd] if self.t_exit is None and self.pidfd >= 0
                                  else [])

    def poll(self, timeout):
        """One select over fds() for up to timeout s; reads what is ready (one
        read per pipe) and notes the exit."""
        fds = self.fds()
        if not fds:
            time.sleep(max(timeout, 0))
            return
        ready, _, _ = select.select(fds, [], [], max(timeout, 0))
        now = time.monotonic()
        for fd in ready:
            if fd == self.pidfd:
                self.t_exit = now
            else:
                self._read(fd, now)

    def _read(self, fd, now):
        buf = self.open[fd]
        data = os.read(fd, 65536)
        if not data:
            del self.open[fd]
            return
        old_len = len(buf)
        buf += data
        self.on_read(buf, old_len, now)

    def on_read(self, buf, old_len, now):
        """Hook: buf (self.out or self.err) grew past old_len in the read at
        `now` (monotonic). Does nothing here."""

    def wait_until(self, done, timeout):
        """Polls until done() returns something true (returned), or the process
        is gone or timeout s pass (then done()'s last value)."""
        deadline = time.monotonic() + timeout
        while True:
            got = done()
            if got:
                return got
            left = deadline - time.monotonic()
            if left <= 0 or self.gone:
                return done()
            self.poll(min(left, 0.5))

    def drain(self, seconds):
        """Keeps reading for up to `seconds` (less once both pipes are at
        their end)."""
        end = time.monotonic() + seconds
        while self.open and time.monotonic() < end:
            self.poll(min(0.2, end - time.monotonic()))

    def send(self, line):
        """Writes line and a newline to stdin; False if the pipe is broken."""
        try:
            self.p.stdin.write(line.encode() + b"\n")
            self.p.stdin.flush()
            return True
        except OSError:
            return False

    def stop(self):
        """SIGKILL if still running (this child only, by its pid), and reap it:
        its exit status."""
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.p.wait()

    def kill(self, drain=0):
        """stop(), read what is left on the pipes for up to `drain` s, then close
        the pipes and the pidfd. Returns the exit status; calling it again is
        harmless."""
        rc = self.stop()
        if drain:
            self.drain(drain)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        self.open = {}
        return rc


class WatchedProcess(PipedProcess):
    """A PipedProcess that notes when byte strings first appear on stdout
    (out_needles) and stderr (err_needles), given as (key, needle) pairs:
    seen[key] is the time of the read that completed the needle."""

    def __init__(self, cmd, out_needles=(), err_needles=(), **kw):
        self.out_needles, self.err_needles = dict(out_needles), dict(err_needles)
        self.seen = {}
        super().__init__(cmd, **kw)

    def on_read(self, buf, old_len, now):
        needles = self.out_needles if buf is self.out else self.err_needles
        for key, needle in needles.items():
            if key not in self.seen and buf.find(needle, max(0, old_len - len(needle))) >= 0:
                self.seen[key] = now


# Our VMM's log line with the guest's command line (QEMU gets it as -append).
CMDLINE_RE = re.compile(rb"\] command line: ([^\r\n]*)\r?\n")


def logged_cmdline(cmd, timeout):
    """The command line our VMM gives the guest (its 'command line:' log line),
    from the VMM `cmd` started just long enough to print it; None if it does
    not within timeout s."""
    p = PipedProcess(cmd)
    try:
        m = p.wait_until(lambda: CMDLINE_RE.search(p.err), timeout)
        return m.group(1).decode(errors="replace") if m else None
    finally:
        p.kill()


# ------------------------------------ control sockets: ours and QEMU's QMP --

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for a migration
    destination to listen on)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tcp_listening(port):
    """Whether some socket of this network namespace listens on TCP port
    (/proc/net/tcp and tcp6, state 0A); checking never connects, so a
    destination that accepts only one connection is not disturbed."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 3 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


class BenchError(RuntimeError):
    """A control-socket failure (cannot connect, closed, no reply, QMP error)."""


def connect_unix(path, timeout=10, retry=0.01):
    """A unix stream socket connected to path, retrying every `retry` s (the
    server may not listen yet) for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as e:
            s.close()
            if time.monotonic() > deadline:
                raise BenchError(f"cannot connect to {path}: {e}") from e
            time.sleep(retry)


class JsonLines:
    """A client of line-delimited JSON on a unix socket: our VMM's control
    socket (docs/api.md) or QEMU's QMP. Messages with an "event" key go to
    self.events as (arrival time, message), in order, and stay there until a
    caller removes them; all others (replies, QMP's greeting) to self.replies.

    Blocking use: request() (send, wait for the next reply), wait_event().
    Event-loop use: select on fileno(), then feed(t); `closed` is set at EOF."""

    def __init__(self, path, timeout=10, retry=0.01, reply_timeout=60):
        self.s = connect_unix(path, timeout, retry)
        self.reply_timeout = reply_timeout
        self.buf = b""
        self.events = []   # (t, msg)
        self.replies = []  # msg
        self.closed = False

    def fileno(self):
        return self.s.fileno()

    def feed(self, t):
        """Reads what has arrived (one recv) and files the complete lines."""
        try:
            data = self.s.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if not line.strip():
                continue
            msg = json.loads(line)
            if "event" in msg:
                self.events.append((t, msg))
            else:
                self.replies.append(msg)

    def _read(self, deadline, what):
        """Waits until deadline for more input and feeds it; raises BenchError
        on a timeout or a closed socket."""
        if self.closed:
            raise BenchError(f"control socket closed while waiting for {what}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"no {what} on the control socket")
        r, _, _ = select.select([self.s], [], [], left)
        if r:
            self.feed(time.monotonic())

    def send(self, obj, fds=None):
        """One message; fds (a list of file descriptors) go along as SCM_RIGHTS."""
        data = (json.dumps(obj) + "\n").encode()
        if fds:
            socket.send_fds(self.s, [data], fds)
        else:
            self.s.sendall(data)

    def next_reply(self, timeout=None):
        """The oldest reply not yet taken, waiting up to timeout s (default
        reply_timeout); events that arrive meanwhile are kept."""
        deadline = time.monotonic() + (self.reply_timeout if timeout is None else timeout)
        while not self.replies:
            self._read(deadline, "reply")
        return self.replies.pop(0)

    def request(self, obj, timeout=None, fds=None):
        """Sends obj and returns its reply (the next one: requests on one
        connection are answered in order)."""
        self.send(obj, fds)
        return self.next_reply(timeout)

    def wait_event(self, pred, timeout=None):
        """The first kept event for which pred(msg) holds, waiting for more up
        to timeout s: (arrival time, msg). It and the events before it are
        removed from self.events."""
        deadline = time.monotonic() + (self.reply_timeout if timeout is None else timeout)
        checked = 0
        while True:
            for i in range(checked, len(self.events)):
                if pred(self.events[i][1]):
                    t, m = self.events[i]
                    del self.events[:i + 1]
                    return t, m
            checked = len(self.events)
            self._read(deadline, "event")

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class QMP(JsonLines):
    """QEMU's QMP: greeting and capabilities negotiation on connect; execute()
    returns QEMU's whole response, cmd() its "return" or raises BenchError."""

    def __init__(self, path, timeout=10, retry=0.01, reply_timeout=60):
        super().__init__(path, timeout, retry, reply_timeout)
        self.greeting = self.next_reply()
        self.cmd("qmp_capabilities")

    def execute(self, name, fds=None, **args):
        return self.request({"execute": name, **({"arguments": args} if args else {})},
                            fds=fds)

    def cmd(self, name, **args):
        r = self.execute(name, **args)
        if "error" in r:
            raise BenchError(f"QMP {name} {args}: {r['error']}")
        return r.get("return")


def failure_kinds(records):
    """'2 timeout, 1 panic' for the records whose outcome is not 'ok'; '-' if none."""
    kinds = {}
    for r in records:
        if r["outcome"] != "ok":
            kinds[r["outcome"]] = kinds.get(r["outcome"], 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "-"


def emit_result(result, json_out, as_json, markdown):
    """A bench's result: to the file json_out (if given), then JSON or the
    markdown text markdown() returns on stdout."""
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result, f, indent=1)
    if as_json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        text = markdown()
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
