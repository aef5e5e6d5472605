#!/usr/bin/env python3
"""Boot benchmark: our VMM vs QEMU microvm, side by side on the same host.

Part 1 (unless --skip-tiny): the freestanding test guest (guest-images/test-guest), N
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

Part 2 (unless --skip-linux): Linux boot. For each kernel whose images exist
(a kernel with a missing image is skipped with a message):
  minimal  our default guest: CACHE/kernel/minimal/vmlinux +
           CACHE/initramfs/initramfs-minimal.cpio, the VMM's default command line
  debian   stock Debian kernel: CACHE/kernel/debian/vmlinux +
           CACHE/initramfs/initramfs-debian.cpio, --cmdline DEBIAN_CMDLINE (as in
           tests/e2e/linux_tests.py)
(CACHE = $VMM_CACHE or ~/.cache/vmm), --linux-iterations boots (default 1) of
  * ours: vmm --kernel VMLINUX --initrd CPIO --mem 512M --serial stdio
          --log-level info [--cmdline ...]
  * QEMU: qemu-system-x86_64 -M microvm -accel kvm -cpu host,-arch-capabilities
          -m 512M -nodefaults -no-user-config -nographic -serial stdio
          -kernel VMLINUX -initrd CPIO -append "<our VMM's 'command line:' log
          line for the same kernel, i.e. including what the VMM appends>"
Per boot it records the wall time from process start to the first read of the
console lines "Linux version" (banner), "Run /init as init process" and
"VMM-GUEST-READY" (marker), and our VMM's "boot probe: mark 1 at X ms since
VMM start" (X, from its stderr). On the marker it sends "poweroff" and records
the exit status and time. Otherwise it stops (kills) the VM at
"Run /init" + --debian-after-init s (debian only), when QEMU reports
"KVM internal error" (QEMU then pauses the VM; the error text and the guest
RIP, symbolized with the System.map next to the kernel, are kept), when the
process exits, or at the timeout (--linux-timeout for ours, default 2400 s;
--linux-qemu-timeout for QEMU, default 300 s); "how it ended" names which, and
for ours quotes its last stderr line. Linux results never make the script
fail; its exit status reflects the tiny guest only.

Output: a markdown report on stdout, or JSON with --json. Stdlib only.
Examples:
  tools/bench/boot_bench.py --build /tmp/build-bench -n 10
  tools/bench/boot_bench.py --build /tmp/build-bench --skip-tiny --linux-kernels minimal
"""
import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (CMDLINE_RE, DEFAULT_QEMU_CPU, VMMS, WatchedProcess,  # noqa: E402
                      choice_list, emit_result, logged_cmdline, parse_size, proc_status,
                      smaps_split)

READY = b"TESTGUEST READY"


# ----------------------------------------------------------------- helpers --

class Proc(WatchedProcess):
    """benchlib's WatchedProcess (a child on pipes, needles on stdout/stderr)
    with this script's two waits."""

    def wait_for(self, needle, timeout):
        """Time (monotonic) when needle was first read on stdout, or None."""
        if self.wait_until(lambda: needle in self.out, timeout):
            return time.monotonic()
        return None

    def wait_exit(self, timeout):
        """The exit status, once the process is gone (what is left in its
        pipes is read for up to 2 s more); None after timeout s."""
        if not self.wait_until(lambda: self.t_exit is not None, timeout):
            return None
        self.drain(2)
        return self.p.wait()


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
        st = proc_status(p.p.pid)
        sm = smaps_split(p.p.pid, guest_bytes)
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


# ------------------------------------------------------ part 2: Linux boot --

# Console lines (guest serial, stdout) whose first appearance is timed.
LINUX_MILESTONES = [
    # key, needle, column label
    ("banner", b"Linux version", "banner s"),
    ("run_init", b"Run /init as init process", "Run /init s"),
    ("marker", b"VMM-GUEST-READY", "marker s"),
]
# Our VMM's log lines (stderr).
PROBE_RE = re.compile(rb"boot probe: mark 1 at ([0-9.]+) ms since VMM start")
LOG_PREFIX_RE = re.compile(r"^\[[0-9:.]+\] \[\w+\] ")
QEMU_RIP_RE = re.compile(rb"RIP=([0-9a-fA-F]{8,16})")
# The stock kernel's command line in tests/e2e/linux_tests.py (DEBIAN_CMDLINE).
DEBIAN_CMDLINE = ("console=ttyS0 reboot=k nowatchdog i8042.noaux i8042.nomux "
                  "i8042.dumbkbd ipv6.disable=1 mitigations=off lsm=capability dis_ucode_ldr")


CACHE_DEFAULT = os.environ.get("VMM_CACHE", os.path.expanduser("~/.cache/vmm"))


kernel_list = choice_list(("minimal", "debian"))
vmm_list = choice_list(VMMS)


def last_line(buf):
    for line in reversed(bytes(buf).decode(errors="replace").splitlines()):
        if line.strip():
            return line.strip()
    return ""


def load_system_map(path):
    """Sorted [(addr, name)] of text symbols, or None."""
    if not path or not os.path.isfile(path):
        return None
    syms = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                try:
                    syms.append((int(parts[0], 16), parts[2]))
                except ValueError:
                    pass
    syms.sort()
    return syms


def symbolize(syms, addr):
    if not syms:
        return None
    lo, hi = 0, len(syms)
    while lo < hi:
        mid = (lo + hi) // 2
        if syms[mid][0] <= addr:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0:
        return None
    base, name = syms[lo - 1]
    off = addr - base
    return name if off == 0 else f"{name}+{off:#x}"


def linux_kernels(a):
    """The kernels of the Linux section: (name, kernel, initrd, cmdline or None,
    seconds to keep running after 'Run /init' when no marker came, or None =
    until the timeout)."""
    ks = []
    for name in a.linux_kernels:
        if name == "minimal":
            ks.append({"name": "minimal", "kernel": a.minimal_kernel,
                       "initrd": a.minimal_initrd, "cmdline": a.minimal_cmdline,
                       "after_init_s": None})
        else:
            ks.append({"name": "debian", "kernel": a.debian_kernel,
                       "initrd": a.debian_initrd, "cmdline": a.debian_cmdline,
                       "after_init_s": a.debian_after_init})
    return ks


def ours_linux_cmd(a, k):
    cmd = [a.vmm, "--kernel", k["kernel"], "--initrd", k["initrd"], "--mem", a.linux_mem,
           "--serial", "stdio", "--log-level", "info"]
    if k["cmdline"] is not None:
        cmd += ["--cmdline", k["cmdline"]]
    return cmd + a.linux_vmm_arg


def qemu_linux_cmd(a, k, append):
    return [a.qemu, "-M", "microvm" + (f",{a.qemu_machine_opts}" if a.qemu_machine_opts else ""),
            "-accel", "kvm", "-cpu", a.qemu_cpu, "-m", a.linux_mem, "-nodefaults",
            "-no-user-config", "-nographic", "-serial", "stdio", "-kernel", k["kernel"],
            "-initrd", k["initrd"], "-append", append]


def vmm_cmdline_probe(a, k):
    """The command line our VMM would give the guest (its 'command line:' log
    line), from a VMM started just long enough to print it. Used when the
    'ours' run did not happen or did not print it."""
    return logged_cmdline(ours_linux_cmd(a, k), 120)


def run_linux_once(a, k, who, cmd, guest_bytes, timeout, syms):
    """One boot. Times the console milestones; on the marker sends 'poweroff' and
    waits for the exit; otherwise stops at 'Run /init' + after_init_s, on a QEMU
    'KVM internal error', on exit, or at the timeout."""
    r = {"kernel": k["name"], "vmm": who, "command": cmd, "timeout_s": timeout}
    p = Proc(cmd, [(key, needle) for key, needle, _ in LINUX_MILESTONES],
             [("probe", b"boot probe: mark 1 at"), ("kvm_error", b"KVM internal error")])
    try:
        deadline = p.t0 + timeout
        while True:
            now = time.monotonic()
            if "marker" in p.seen:
                r["end"] = "marker"
                break
            if "kvm_error" in p.seen:
                r["end"] = "kvm_error"
                p.drain(2)  # the register dump follows; QEMU then pauses the VM
                break
            if p.t_exit is not None and not p.open:
                r["end"] = "exited"
                break
            if (k["after_init_s"] is not None and "run_init" in p.seen and
                    now >= p.seen["run_init"] + k["after_init_s"]):
                r["end"] = "after_init"
                break
            if now >= deadline:
                r["end"] = "timeout"
                break
            p.poll(min(deadline - now, 1.0))

        if r["end"] == "marker":
            r["status_kib"] = proc_status(p.p.pid)
            r["smaps"] = smaps_split(p.p.pid, guest_bytes)
            t_sent = time.monotonic()
            p.send("poweroff")
            rc = p.wait_exit(a.poweroff_timeout)
            if rc is None:
                r["end"] = "poweroff_timeout"
            else:
                r["returncode"] = rc
                r["exit_s"] = p.t_exit - p.t0
                r["poweroff_to_exit_s"] = p.t_exit - t_sent
        elif r["end"] == "exited":
            r["returncode"] = p.p.wait()
            r["exit_s"] = p.t_exit - p.t0
        else:
            # still running: keep its memory figures, then stop it
            r["status_kib"] = proc_status(p.p.pid)
            r["smaps"] = smaps_split(p.p.pid, guest_bytes)
        r["killed"] = p.p.poll() is None
        p.kill()
        if r["killed"]:
            r["returncode"] = p.p.returncode
        # leftovers in the pipes are lost after kill(); what we have is enough

        for key, _, _ in LINUX_MILESTONES:
            if key in p.seen:
                r[key + "_s"] = p.seen[key] - p.t0
        m = PROBE_RE.search(p.err)
        if m:
            r["probe_ms"] = float(m.group(1))
            r["probe_read_s"] = p.seen.get("probe", p.t0) - p.t0
        m = CMDLINE_RE.search(p.err)
        if m:
            r["guest_cmdline"] = m.group(1).decode(errors="replace")
        err = bytes(p.err).decode(errors="replace")
        r["last_stderr_line"] = last_line(p.err)
        r["stderr_tail"] = err[-3000:]
        r["serial_tail"] = bytes(p.out[-2000:]).decode(errors="replace")
        if r["end"] == "kvm_error":
            i = err.find("KVM internal error")
            block = err[i:]
            r["kvm_error_text"] = block[:3000]
            r["emulation_failure"] = "emulation failure" in block.lower()
            m = QEMU_RIP_RE.search(block.encode())
            if m:
                r["guest_rip"] = "0x" + m.group(1).decode().lower()
                r["guest_rip_symbol"] = symbolize(syms, int(m.group(1), 16))
        r["how_ended"] = describe_end(r, k)
        return r
    finally:
        p.kill()


def describe_end(r, k):
    """One line for the table's 'how it ended' column."""
    last = LOG_PREFIX_RE.sub("", r.get("last_stderr_line", ""))
    end = r["end"]
    if end == "marker":
        s = "marker, 'poweroff' sent"
    elif end == "poweroff_timeout":
        s = "marker, 'poweroff' sent, no exit: killed"
    elif end == "kvm_error":
        first = r.get("kvm_error_text", "").splitlines()[0].strip() if r.get(
            "kvm_error_text") else "KVM internal error"
        s = first + ("; emulation failure" if r.get("emulation_failure") else "")
        if r.get("guest_rip"):
            s += f"; guest RIP {r['guest_rip']}"
            if r.get("guest_rip_symbol"):
                s += f" ({r['guest_rip_symbol']})"
        return s + "; killed"
    elif end == "exited":
        s = "exited by itself"
    elif end == "after_init":
        s = f"killed {k['after_init_s']:g} s after 'Run /init'"
    else:
        s = f"timeout ({r['timeout_s']:g} s): killed"
    if r["vmm"] == "ours" or end == "exited":
        if len(last) > 160:
            last = last[:157] + "..."
        s += f"; last log: {last}" if last else ""
    return s


def describe_exit(r):
    rc = r.get("returncode")
    if r.get("killed"):
        return "killed"
    if "poweroff_to_exit_s" in r:
        return f"{rc} at {r['exit_s']:.1f} s (poweroff +{r['poweroff_to_exit_s']:.1f} s)"
    if "exit_s" in r:
        return f"{rc} at {r['exit_s']:.1f} s"
    return str(rc)


def bench_linux(a):
    guest_bytes = parse_size(a.linux_mem)
    res = {"kernels": [], "skipped": [], "runs": []}
    kernels = []
    for k in linux_kernels(a):
        missing = [p for p in (k["kernel"], k["initrd"]) if not os.path.isfile(p)]
        if missing:
            msg = (f"{k['name']} kernel skipped: missing {', '.join(missing)} "
                   f"(build it with guest-images/*.sh, or pass --{k['name']}-kernel/"
                   f"--{k['name']}-initrd)")
            print(msg, file=sys.stderr)
            res["skipped"].append({"kernel": k["name"], "reason": msg})
            continue
        k["system_map"] = os.path.join(os.path.dirname(k["kernel"]), "System.map")
        kernels.append(k)
        res["kernels"].append(dict(k))
    syms = {}
    for i in range(a.linux_iterations):
        for k in kernels:
            append = None
            for who in a.linux_vmms:
                if who == "ours":
                    cmd = ours_linux_cmd(a, k)
                    timeout = a.linux_timeout
                else:
                    if append is None:
                        append = vmm_cmdline_probe(a, k)
                    if append is None:
                        msg = f"{k['name']}: QEMU skipped, no 'command line:' from our VMM"
                        print(msg, file=sys.stderr)
                        res["runs"].append({"kernel": k["name"], "vmm": "qemu",
                                            "iteration": i, "end": "not run",
                                            "how_ended": msg})
                        continue
                    cmd = qemu_linux_cmd(a, k, append)
                    timeout = a.linux_qemu_timeout
                    if k["name"] not in syms:
                        syms[k["name"]] = load_system_map(k["system_map"])
                print(f"  linux [{i + 1}/{a.linux_iterations}] {k['name']} / {who}: "
                      f"running (timeout {timeout:g} s)...", file=sys.stderr, flush=True)
                r = run_linux_once(a, k, who, cmd, guest_bytes, timeout, syms.get(k["name"]))
                r["iteration"] = i
                if who == "ours" and r.get("guest_cmdline"):
                    append = r["guest_cmdline"]
                res["runs"].append(r)
                print(f"  linux [{i + 1}/{a.linux_iterations}] {k['name']} / {who}: " +
                      ", ".join(f"{c}: {v}" for c, v in linux_row_cells(r).items()),
                      file=sys.stderr, flush=True)
    res["table_rows"] = linux_table_rows(a, res["runs"])
    res["table_markdown"] = linux_table_markdown(res["table_rows"])
    return res


def fmt_s(v):
    return "-" if v is None else f"{v:.2f}"


def linux_row_cells(r):
    return {
        "banner s": fmt_s(r.get("banner_s")),
        "Run /init s": fmt_s(r.get("run_init_s")),
        "marker s": fmt_s(r.get("marker_s")),
        "boot-probe ms": "-" if r.get("probe_ms") is None else f"{r['probe_ms']:.1f}",
        "exit": describe_exit(r) if r.get("end") != "not run" else "-",
        "how it ended": r.get("how_ended", ""),
    }


LINUX_COLUMNS = ["kernel", "VMM", "banner s", "Run /init s", "marker s", "boot-probe ms",
                 "exit", "how it ended"]


def linux_table_rows(a, runs):
    rows = []
    for r in runs:
        label = "ours" if r["vmm"] == "ours" else "QEMU microvm"
        if a.linux_iterations > 1:
            label += f" #{r['iteration'] + 1}"
        rows.append({"kernel": r["kernel"], "VMM": label, **linux_row_cells(r)})
    if a.linux_iterations > 1:
        groups = {}
        for r in runs:
            groups.setdefault((r["kernel"], r["vmm"]), []).append(r)
        for (kname, who), rs in groups.items():
            row = {"kernel": kname,
                   "VMM": ("ours" if who == "ours" else "QEMU microvm") + " median"}
            for key, label in (("banner_s", "banner s"), ("run_init_s", "Run /init s"),
                               ("marker_s", "marker s"), ("probe_ms", "boot-probe ms")):
                vals = [r[key] for r in rs if r.get(key) is not None]
                if not vals:
                    row[label] = "-"
                else:
                    med = statistics.median(vals)
                    row[label] = (f"{med:.1f}" if key == "probe_ms" else f"{med:.2f}") + \
                        (f" ({len(vals)}/{len(rs)})" if len(vals) < len(rs) else "")
            row["exit"] = ""
            row["how it ended"] = f"median over the runs that reached the line"
            rows.append(row)
    return rows


def linux_table_markdown(rows):
    out = ["| " + " | ".join(LINUX_COLUMNS) + " |", "|" + "---|" * len(LINUX_COLUMNS)]
    for row in rows:
        out.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in LINUX_COLUMNS)
                   + " |")
    return "\n".join(out)


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
    t = result.get("tiny")
    if not t:
        out.append("## Tiny guest\n")
        out.append("Skipped (--skip-tiny).\n")
    else:
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
    out.append("## Linux boot\n")
    d = result.get("linux")
    if d is None:
        out.append("Skipped (--skip-linux).\n")
        return "\n".join(out)
    out.append(f"{a.linux_iterations} iteration(s), guest {a.linux_mem}; times are wall "
               "seconds from process start to the first read of the console line; "
               "boot-probe ms is our VMM's own log ('boot probe: mark 1 at X ms since VMM "
               "start', written by the initramfs just before the marker).\n")
    for s in d["skipped"]:
        out.append(f"- {s['reason']}")
    if d["skipped"]:
        out.append("")
    if d["runs"]:
        out.append(d["table_markdown"] + "\n")
    if not d["runs"]:
        return "\n".join(out)
    out.append("Commands (QEMU's -append is the command line our VMM logged for the same "
               "kernel):\n")
    seen = set()
    for r in d["runs"]:
        if "command" in r and (r["kernel"], r["vmm"]) not in seen:
            seen.add((r["kernel"], r["vmm"]))
            out.append(f"- {r['kernel']} / {r['vmm']}: `{shlex.join(r['command'])}`")
    out.append("")
    for r in d["runs"]:
        if r.get("kvm_error_text"):
            out.append(f"QEMU error text ({r['kernel']}, iteration {r['iteration'] + 1}):\n")
            out.append("```\n" + "\n".join(r["kvm_error_text"].strip().splitlines()[:20]) +
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
    ap.add_argument("--qemu", default="qemu-system-x86_64",
                    help="QEMU binary, both parts (default qemu-system-x86_64)")
    ap.add_argument("--qemu-cpu", default=DEFAULT_QEMU_CPU,
                    help=f"QEMU -cpu (default {DEFAULT_QEMU_CPU}: plain 'host' aborts on this "
                         "nested host with 'failed to set MSR 0x10a'); both parts")
    ap.add_argument("--qemu-machine-opts", default="",
                    help="extra microvm options, e.g. isa-serial=on (default: none; "
                         "microvm's isa-serial is on by default); both parts")
    ap.add_argument("-n", "--iterations", type=int, default=10,
                    help="tiny-guest iterations (default 10)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="uncounted tiny-guest runs per configuration (default 1)")
    ap.add_argument("--mem", default="512M", help="tiny-guest RAM (default 512M)")
    ap.add_argument("--timeout", type=float, default=60, help="per tiny-guest run (s, default 60)")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--json-out", metavar="FILE", help="also write the JSON result to FILE")
    ap.add_argument("--skip-tiny", action="store_true", help="skip part 1 (tiny guest)")

    g = ap.add_argument_group("part 2: Linux boot")
    g.add_argument("--skip-linux", action="store_true", help="skip part 2 (Linux boot)")
    g.add_argument("--cache-dir", default=CACHE_DEFAULT,
                   help="guest image cache (default: $VMM_CACHE or ~/.cache/vmm; now "
                        f"{CACHE_DEFAULT})")
    g.add_argument("--linux-kernels", default="minimal,debian", type=kernel_list,
                   help="which kernels, comma-separated (default minimal,debian)")
    g.add_argument("--linux-vmms", default="ours,qemu", type=vmm_list,
                   help="which VMMs, comma-separated, run in this order per kernel "
                        "(default ours,qemu)")
    g.add_argument("--minimal-kernel", help="default: CACHE/kernel/minimal/vmlinux")
    g.add_argument("--minimal-initrd", help="default: CACHE/initramfs/initramfs-minimal.cpio")
    g.add_argument("--minimal-cmdline", default=None,
                   help="--cmdline for ours (default: none, i.e. the VMM's default)")
    g.add_argument("--debian-kernel", help="default: CACHE/kernel/debian/vmlinux")
    g.add_argument("--debian-initrd", help="default: CACHE/initramfs/initramfs-debian.cpio")
    g.add_argument("--debian-cmdline", default=DEBIAN_CMDLINE,
                   help="--cmdline for ours (default: DEBIAN_CMDLINE of "
                        f"tests/e2e/linux_tests.py: \"{DEBIAN_CMDLINE}\")")
    g.add_argument("--debian-after-init", type=float, default=30, metavar="S",
                   help="stop the debian kernel S seconds after 'Run /init as init process' "
                        "unless the marker came (default 30)")
    g.add_argument("--linux-mem", default="512M", help="guest RAM (default 512M)")
    g.add_argument("--linux-timeout", type=float, default=2400, metavar="S",
                   help="per boot of ours (default 2400)")
    g.add_argument("--linux-qemu-timeout", type=float, default=300, metavar="S",
                   help="per boot of QEMU (default 300)")
    g.add_argument("--poweroff-timeout", type=float, default=600, metavar="S",
                   help="wait for the exit after 'poweroff' (default 600)")
    g.add_argument("--linux-iterations", type=int, default=1,
                   help="boots per kernel and VMM (default 1)")
    g.add_argument("--linux-vmm-arg", action="append", default=[],
                   help="extra argument for our vmm (repeatable), e.g. "
                        "--linux-vmm-arg=--system-map --linux-vmm-arg=PATH")
    a = ap.parse_args()
    a.vmm = a.vmm or find_default(a.build, ["vmm/vmm", "vmm"])
    a.guest = a.guest or find_default(a.build, ["guest-images/test-guest/test-guest.elf"])
    c = a.cache_dir
    a.minimal_kernel = a.minimal_kernel or os.path.join(c, "kernel", "minimal", "vmlinux")
    a.minimal_initrd = a.minimal_initrd or os.path.join(c, "initramfs", "initramfs-minimal.cpio")
    a.debian_kernel = a.debian_kernel or os.path.join(c, "kernel", "debian", "vmlinux")
    a.debian_initrd = a.debian_initrd or os.path.join(c, "initramfs", "initramfs-debian.cpio")
    if a.skip_tiny and a.skip_linux:
        ap.error("--skip-tiny and --skip-linux: nothing to do")
    need = [("vmm", a.vmm)] + ([] if a.skip_tiny else [("guest", a.guest)])
    for what, path in need:
        if not os.path.isfile(path):
            ap.error(f"{what} not found at {path} (use --build or --{what})")
    if (not a.skip_tiny or "qemu" in a.linux_vmms) and shutil.which(a.qemu) is None:
        ap.error(f"{a.qemu} not found")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        ap.error("/dev/kvm is not accessible")

    result = {"host": host_info(a.qemu), "args": {k: v for k, v in vars(a).items()}}
    result["tiny"] = None if a.skip_tiny else bench_tiny(a)
    result["linux"] = None if a.skip_linux else bench_linux(a)
    emit_result(result, a.json_out, a.json, lambda: report_markdown(a, result))
    # Linux boots that stop early are results, not failures: only the tiny guest
    # (which must reach READY and exit on every run) decides the exit status.
    return 1 if result["tiny"] and any(result["tiny"]["failures"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
