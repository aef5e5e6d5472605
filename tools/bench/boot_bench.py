#!/usr/bin/env python3
"""Boot benchmark: our VMM vs QEMU microvm, side by side on the same host.

Part 1 (always): the freestanding test guest (guest-images/test-guest), N
alternating iterations of
  * ours, PVH entry:   vmm --kernel test-guest.elf --boot-protocol pvh ...
  * ours, 64-bit entry (the default Linux 64-bit boot protocol)
  * QEMU microvm:      qemu-system-x86_64 -M microvm -accel kvm ... -kernel test-guest.elf
(QEMU enters the guest through the same Xen PVH note.) Per run it measures
  ready_ms   process start (just before fork/exec) -> "TESTGUEST READY" read
             from the serial pipe (the guest prints it right after entry: our
             proxy for "first guest instruction")
  memory     /proc/PID/status VmRSS/RssAnon/RssFile/RssShmem right after READY,
             and /proc/PID/smaps split into the guest-RAM mapping (the anonymous
             mapping of exactly the guest size; its Rss = guest pages touched so
             far, by the guest or by the loader/firmware) and everything else
             ("VMM RSS excluding guest RAM" = sum of Rss of all other mappings)
  exit_ms    process start -> process gone (pidfd readable) after "exit 0" is
             sent (includes the few ms this script spends reading /proc, which
             is also reported as sample_ms and is the same work for every row)
  teardown_ms  "exit 0" written -> process gone

Part 2 (only with --debian-kernel and --initrd): a stock Debian kernel on QEMU
microvm (timeout --debian-qemu-timeout, records how it ends and QEMU's error
text) and on ours (time until --debian-marker appears on the serial console,
timeout --debian-vmm-timeout).

Output: a markdown report on stdout, or JSON with --json. Stdlib only.
Example:
  tools/bench/boot_bench.py --build /tmp/build-bench -n 10
"""
import argparse
import json
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

READY = b"TESTGUEST READY"
DEFAULT_QEMU_CPU = "host,-arch-capabilities"


# ----------------------------------------------------------------- helpers --

def parse_size(text):
    """'512M' -> bytes (K/M/G suffixes, binary)."""
    t = text.strip().upper().rstrip("B")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    return int(t) * mult


def read_status(pid):
    """Selected /proc/PID/status fields, in KiB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize",
                           "Threads"):
                    out[key] = int(val.split()[0])
    except OSError:
        pass
    return out


def read_smaps(pid, guest_bytes):
    """Splits Rss between the guest-RAM mapping and everything else (KiB).

    The guest RAM is the anonymous mapping whose size is exactly the guest's
    memory size (for both our VMM and QEMU's memory-backend-ram); if none
    matches exactly, the largest anonymous mapping not smaller than the guest
    size is taken (and reported).
    """
    maps = []
    cur = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):
                    lo, hi = (int(x, 16) for x in first.split("-"))
                    parts = line.split()
                    name = parts[5] if len(parts) > 5 else ""
                    cur = {"size": hi - lo, "name": name, "perms": parts[1], "rss": 0,
                           "thp": 0}
                    maps.append(cur)
                elif first == "Rss:" and cur is not None:
                    cur["rss"] = int(line.split()[1])
                elif first == "AnonHugePages:" and cur is not None:
                    cur["thp"] = int(line.split()[1])
    except OSError:
        return None
    anon = [m for m in maps if m["name"] in ("", "[anon]") or m["name"].startswith("[anon:")]
    guest = [m for m in anon if m["size"] == guest_bytes]
    if not guest:
        bigger = sorted((m for m in anon if m["size"] >= guest_bytes), key=lambda m: m["size"])
        guest = bigger[:1]
    total = sum(m["rss"] for m in maps)
    g_rss = sum(m["rss"] for m in guest)
    return {
        "rss_total_kib": total,
        "guest_ram_rss_kib": g_rss,
        "guest_ram_thp_kib": sum(m["thp"] for m in guest),
        "vmm_rss_excl_guest_kib": total - g_rss,
        "guest_mappings": [m["size"] for m in guest],
        "mappings": len(maps),
    }


class Proc:
    """A child with its stdout/stderr drained through select and a pidfd for exit."""

    def __init__(self, cmd, stdin=True):
        self.cmd = cmd
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pidfd = os.pidfd_open(self.p.pid)
        self.out = bytearray()
        self.err = bytearray()
        self.open = {self.p.stdout.fileno(): self.out, self.p.stderr.fileno(): self.err}
        self.t_exit = None

    def _poll(self, timeout):
        fds = list(self.open) + ([self.pidfd] if self.t_exit is None else [])
        if not fds:
            time.sleep(max(timeout, 0))
            return
        r, _, _ = select.select(fds, [], [], max(timeout, 0))
        now = time.monotonic()
        for fd in r:
            if fd == self.pidfd:
                self.t_exit = now
                continue
            data = os.read(fd, 65536)
            if data:
                self.open[fd] += data
            else:
                del self.open[fd]

    def wait_for(self, needle, timeout):
        """Time (monotonic) when needle was first read on stdout, or None."""
        deadline = time.monotonic() + timeout
        while True:
            if needle in self.out:
                return time.monotonic()
            if self.t_exit is not None and not self.open:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._poll(min(left, 1.0))

    def wait_any(self, out_needle, err_needle, timeout):
        """Waits for out_needle on stdout, err_needle on stderr, exit or timeout.
        Returns (what, monotonic time): what is "out", "err", "exit" or "timeout"."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if out_needle in self.out:
                return "out", now
            if err_needle and err_needle in self.err:
                return "err", now
            if self.t_exit is not None and not self.open:
                return "exit", self.t_exit
            if now >= deadline:
                return "timeout", now
            self._poll(min(deadline - now, 1.0))

    def wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while self.t_exit is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._poll(left)
        # drain what is left in the pipes (the process is gone)
        end = time.monotonic() + 2
        while self.open and time.monotonic() < end:
            self._poll(0.2)
        return self.p.wait()

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def kill(self):
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass


def ms(a, b):
    return None if a is None or b is None else (b - a) * 1000.0


# ------------------------------------------------------ part 1: tiny guest --

def tiny_configs(a):
    mem = a.mem
    ours = [a.vmm, "--kernel", a.guest, "--mem", mem, "--serial", "stdio", "--log-level", "warn"]
    qemu_m = "microvm" + (f",{a.qemu_machine_opts}" if a.qemu_machine_opts else "")
    qemu = [a.qemu, "-M", qemu_m, "-accel", "kvm", "-cpu", a.qemu_cpu, "-m", mem,
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-kernel", a.guest, "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    return [
        # name, label, command, expected exit status for "exit 0"
        ("ours_pvh", "ours, PVH entry", ours[:3] + ["--boot-protocol", "pvh"] + ours[3:], 0),
        ("ours_linux64", "ours, 64-bit entry (default)", ours, 0),
        # isa-debug-exit: QEMU exits with (value << 1) | 1
        ("qemu_microvm", "QEMU microvm (PVH entry)", qemu, 1),
    ]


def run_tiny_once(cmd, expect_rc, guest_bytes, timeout):
    r = {"ok": False}
    p = Proc(cmd)
    try:
        t_ready = p.wait_for(READY, timeout)
        if t_ready is None:
            r["error"] = "no READY: " + bytes(p.err[-2000:]).decode(errors="replace").strip()
            return r
        r["ready_ms"] = ms(p.t0, t_ready)
        st = read_status(p.p.pid)
        sm = read_smaps(p.p.pid, guest_bytes)
        t_sent = time.monotonic()
        r["sample_ms"] = ms(t_ready, t_sent)
        r["status_kib"] = st
        r["smaps"] = sm
        p.send("exit 0")
        rc = p.wait_exit(timeout)
        if rc is None:
            r["error"] = "did not exit after 'exit 0'"
            return r
        r["exit_ms"] = ms(p.t0, p.t_exit)
        r["teardown_ms"] = ms(t_sent, p.t_exit)
        r["returncode"] = rc
        r["ok"] = rc == expect_rc
        if not r["ok"]:
            r["error"] = f"exit status {rc}, expected {expect_rc}: " + \
                bytes(p.err[-2000:]).decode(errors="replace").strip()
        return r
    finally:
        p.kill()


def metric_values(runs, path):
    vals = []
    for r in runs:
        if not r.get("ok"):
            continue
        v = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return vals


METRICS = [
    # key, label, path in the run record, unit
    ("ready_ms", "start -> READY (ms)", ("ready_ms",), "ms"),
    ("exit_ms", "start -> exit (ms)", ("exit_ms",), "ms"),
    ("teardown_ms", "'exit 0' -> exit (ms)", ("teardown_ms",), "ms"),
    ("vmrss", "VmRSS at READY (KiB)", ("status_kib", "VmRSS"), "KiB"),
    ("rssanon", "RssAnon (KiB)", ("status_kib", "RssAnon"), "KiB"),
    ("rssfile", "RssFile (KiB)", ("status_kib", "RssFile"), "KiB"),
    ("rssshmem", "RssShmem (KiB)", ("status_kib", "RssShmem"), "KiB"),
    ("guest_rss", "guest RAM resident (KiB)", ("smaps", "guest_ram_rss_kib"), "KiB"),
    ("guest_thp", "... of which THP (KiB)", ("smaps", "guest_ram_thp_kib"), "KiB"),
    ("vmm_rss", "RSS excl. guest RAM (KiB)", ("smaps", "vmm_rss_excl_guest_kib"), "KiB"),
]


def summarize(runs):
    s = {}
    for key, _, path, _ in METRICS:
        vals = metric_values(runs, path)
        if vals:
            s[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                      "n": len(vals)}
    return s


def fmt_stat(st, unit):
    if not st:
        return "n/a"
    f = (lambda v: f"{v:.1f}") if unit == "ms" else (lambda v: f"{v:,.0f}")
    return f"{f(st['median'])} ({f(st['min'])}-{f(st['max'])})"


def bench_tiny(a):
    configs = tiny_configs(a)
    guest_bytes = parse_size(a.mem)
    runs = {name: [] for name, *_ in configs}
    for w in range(a.warmup):
        for name, _, cmd, rc in configs:
            run_tiny_once(cmd, rc, guest_bytes, a.timeout)
    for i in range(a.iterations):
        # alternate, and rotate the order so no configuration always goes first
        order = configs[i % len(configs):] + configs[:i % len(configs)]
        for name, _, cmd, rc in order:
            r = run_tiny_once(cmd, rc, guest_bytes, a.timeout)
            r["iteration"] = i
            runs[name].append(r)
            if not a.json:
                status = f"{r['ready_ms']:.1f}/{r['exit_ms']:.1f} ms" if r.get("ok") else \
                    "FAILED: " + r.get("error", "?")[:200]
                print(f"  [{i + 1}/{a.iterations}] {name}: {status}", file=sys.stderr)
    return {
        "configs": [{"name": n, "label": l, "command": c, "expected_exit_status": rc}
                    for n, l, c, rc in configs],
        "runs": runs,
        "summary": {n: summarize(rs) for n, rs in runs.items()},
        "failures": {n: sum(1 for r in rs if not r.get("ok")) for n, rs in runs.items()},
    }


# ------------------------------------------------ part 2: Debian kernel --

def bench_debian(a):
    res = {}
    guest_bytes = parse_size(a.mem)
    qemu = [a.qemu, "-M", "microvm" + (f",{a.qemu_machine_opts}" if a.qemu_machine_opts else ""),
            "-accel", "kvm", "-cpu", a.qemu_cpu, "-m", a.mem, "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio", "-kernel", a.debian_kernel, "-initrd", a.initrd,
            "-append", a.debian_append, "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    p = Proc(qemu, stdin=True)
    try:
        # On KVM_EXIT_INTERNAL_ERROR QEMU prints "KVM internal error. Suberror: N",
        # "emulation failure" and a register dump, then PAUSES the VM (the
        # process stays alive): stop waiting once that text shows up.
        what, t = p.wait_any(a.debian_marker.encode(), b"KVM internal error",
                             a.debian_qemu_timeout)
        r = {"command": qemu, "timeout_s": a.debian_qemu_timeout}
        if what == "out":
            r["outcome"] = "marker"
            r["marker_s"] = t - p.t0
            r["status_kib"] = read_status(p.p.pid)
            r["smaps"] = read_smaps(p.p.pid, guest_bytes)
        elif what == "err":
            r["outcome"] = "KVM internal error"
            r["error_s"] = t - p.t0
            end = time.monotonic() + 2  # let the register dump arrive
            while time.monotonic() < end and p.t_exit is None:
                p._poll(0.2)
        elif what == "exit":
            r["outcome"] = "exited"
            r["exit_s"] = t - p.t0
        else:
            r["outcome"] = "timeout"
        p.kill()
        r["returncode"] = p.p.returncode
        err = bytes(p.err).decode(errors="replace")
        r["stderr_tail"] = err[-3000:]
        r["emulation_failure"] = "emulation failure" in err.lower()
        r["serial_tail"] = bytes(p.out[-2000:]).decode(errors="replace")
        res["qemu"] = r
    finally:
        p.kill()

    ours = [a.vmm, "--kernel", a.debian_kernel, "--initrd", a.initrd, "--mem", a.mem,
            "--serial", "stdio", "--log-level", "info", *a.debian_vmm_arg]
    p = Proc(ours, stdin=True)
    try:
        what, t = p.wait_any(a.debian_marker.encode(), None, a.debian_vmm_timeout)
        r = {"command": ours, "timeout_s": a.debian_vmm_timeout}
        if what == "out":
            r["outcome"] = "marker"
            r["marker_s"] = t - p.t0
            r["status_kib"] = read_status(p.p.pid)
            r["smaps"] = read_smaps(p.p.pid, guest_bytes)
        elif what == "exit":
            r["outcome"] = "exited"
            r["exit_s"] = t - p.t0
        else:
            r["outcome"] = "timeout"
        p.kill()
        r["returncode"] = p.p.returncode
        r["stderr_tail"] = bytes(p.err[-3000:]).decode(errors="replace")
        r["serial_tail"] = bytes(p.out[-2000:]).decode(errors="replace")
        res["ours"] = r
    finally:
        p.kill()
    return res


# ------------------------------------------------------------------ report --

def host_info(qemu):
    info = {"kernel": platform.release(), "nproc": os.cpu_count(),
            "nested_pvm": os.path.exists("/sys/module/kvm_pvm")}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["loadavg"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    try:
        q = subprocess.run([qemu, "--version"],
                           capture_output=True, text=True, timeout=10)
        info["qemu_version"] = q.stdout.splitlines()[0] if q.stdout else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def report_markdown(a, result):
    out = []
    h = result["host"]
    out.append("# Boot benchmark\n")
    out.append(f"Host: kernel {h.get('kernel')}, nproc {h.get('nproc')}, CPU {h.get('cpu', '?')}, "
               f"nested kvm_pvm: {h.get('nested_pvm')}, load avg at start "
               f"{' '.join(h.get('loadavg', []))}; {h.get('qemu_version', '')}\n")
    t = result["tiny"]
    out.append(f"## Tiny guest ({a.iterations} alternating iterations, {a.warmup} warm-up, "
               f"guest {a.mem})\n")
    out.append("Median (min-max) per configuration.\n")
    names = [c["name"] for c in t["configs"]]
    labels = {c["name"]: c["label"] for c in t["configs"]}
    hdr = "| metric | " + " | ".join(labels[n] for n in names)
    ratio_cols = [n for n in names if n.startswith("ours")]
    hdr += "".join(f" | {n}/QEMU" for n in ratio_cols) + " |"
    out.append(hdr)
    out.append("|" + "---|" * (1 + len(names) + len(ratio_cols)))
    for key, label, _, unit in METRICS:
        row = f"| {label} | " + " | ".join(fmt_stat(t["summary"][n].get(key), unit)
                                             for n in names)
        q = t["summary"].get("qemu_microvm", {}).get(key)
        for n in ratio_cols:
            o = t["summary"][n].get(key)
            row += " | " + (f"{o['median'] / q['median']:.2f}" if o and q and q["median"] else
                            "n/a")
        out.append(row + " |")
    out.append("")
    sample = metric_values(sum(t["runs"].values(), []), ("sample_ms",))
    if sample:
        out.append(f"/proc sampling pause between READY and 'exit 0' (inside start -> exit): "
                   f"median {statistics.median(sample):.1f} ms.\n")
    fails = {n: c for n, c in t["failures"].items() if c}
    if fails:
        out.append(f"FAILED runs: {fails}\n")
        for n, rs in t["runs"].items():
            for r in rs:
                if not r.get("ok"):
                    out.append(f"- {n} iteration {r.get('iteration')}: {r.get('error')}")
        out.append("")
    out.append("Commands:\n")
    for c in t["configs"]:
        out.append(f"- {c['label']}: `{shlex.join(c['command'])}`")
    out.append("")
    out.append("## Stock Debian kernel boot\n")
    d = result.get("debian")
    if not d:
        out.append("Skipped: --debian-kernel and --initrd were not given.\n")
    else:
        for who in ("qemu", "ours"):
            r = d[who]
            out.append(f"### {who}\n")
            out.append(f"`{shlex.join(r['command'])}`\n")
            line = f"outcome: {r['outcome']}"
            if "marker_s" in r:
                line += f", marker after {r['marker_s']:.2f} s"
            if "error_s" in r:
                line += f" after {r['error_s']:.2f} s" + \
                    (" (emulation failure)" if r.get("emulation_failure") else "")
            if "exit_s" in r:
                line += f", exited after {r['exit_s']:.2f} s with status {r.get('returncode')}"
            if r["outcome"] == "timeout":
                line += f" (timeout {r['timeout_s']} s)"
            out.append(line + "\n")
            if r.get("smaps"):
                out.append(f"RSS at marker: VmRSS {r['status_kib'].get('VmRSS')} KiB, "
                           f"guest RAM {r['smaps']['guest_ram_rss_kib']} KiB, "
                           f"excl. guest {r['smaps']['vmm_rss_excl_guest_kib']} KiB\n")
            tail = r.get("stderr_tail", "").strip()
            if tail:
                out.append("stderr (tail):\n\n```\n" + "\n".join(tail.splitlines()[-15:]) +
                           "\n```\n")
    return "\n".join(out)


def find_default(build, candidates):
    for c in candidates:
        p = os.path.join(build, c)
        if os.path.exists(p):
            return p
    return os.path.join(build, candidates[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--build", default="build", help="build directory (default: build)")
    ap.add_argument("--vmm", help="vmm binary (default: BUILD/vmm/vmm)")
    ap.add_argument("--guest", help="test guest (default: BUILD/guest-images/test-guest/"
                                    "test-guest.elf)")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--qemu-cpu", default=DEFAULT_QEMU_CPU,
                    help=f"QEMU -cpu (default {DEFAULT_QEMU_CPU}: plain 'host' aborts on this "
                         "nested host with 'failed to set MSR 0x10a')")
    ap.add_argument("--qemu-machine-opts", default="",
                    help="extra microvm options, e.g. isa-serial=on (default: none; "
                         "microvm's isa-serial is on by default)")
    ap.add_argument("-n", "--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted runs per configuration")
    ap.add_argument("--mem", default="512M")
    ap.add_argument("--timeout", type=float, default=60, help="per tiny-guest run (s)")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--json-out", metavar="FILE", help="also write the JSON result to FILE")
    ap.add_argument("--debian-kernel", help="stock kernel (vmlinuz or vmlinux) for part 2")
    ap.add_argument("--initrd", help="initrd for part 2")
    ap.add_argument("--debian-append", default="console=ttyS0 reboot=k panic=-1 nowatchdog",
                    help="QEMU -append for part 2")
    ap.add_argument("--debian-marker", default="VMM-GUEST-READY")
    ap.add_argument("--debian-qemu-timeout", type=float, default=120)
    ap.add_argument("--debian-vmm-timeout", type=float, default=3600)
    ap.add_argument("--debian-vmm-arg", action="append", default=[],
                    help="extra vmm argument for part 2 (repeatable), e.g. "
                         "--debian-vmm-arg=--boot-protocol --debian-vmm-arg=pvh")
    a = ap.parse_args()
    a.vmm = a.vmm or find_default(a.build, ["vmm/vmm", "vmm"])
    a.guest = a.guest or find_default(a.build, ["guest-images/test-guest/test-guest.elf"])
    for what, path in (("vmm", a.vmm), ("guest", a.guest)):
        if not os.path.isfile(path):
            ap.error(f"{what} not found at {path} (use --build or --{what})")
    if shutil.which(a.qemu) is None:
        ap.error(f"{a.qemu} not found")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        ap.error("/dev/kvm is not accessible")
    if bool(a.debian_kernel) != bool(a.initrd):
        ap.error("--debian-kernel and --initrd go together")

    result = {"host": host_info(a.qemu), "args": {k: v for k, v in vars(a).items()}}
    result["tiny"] = bench_tiny(a)
    result["debian"] = bench_debian(a) if a.debian_kernel else None
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(result, f, indent=1)
    if a.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(report_markdown(a, result))
    return 0 if not any(result["tiny"]["failures"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
