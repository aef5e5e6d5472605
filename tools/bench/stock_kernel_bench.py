#!/usr/bin/env python3
"""Stock Debian kernels to a shell: our VMM vs QEMU microvm, side by side.

Runs on a KVM host with hardware virtualization (VMX/SVM: a real one, or the
emulated AMD-SVM host of tests/svm-host/run_l1.py with --emulated-host). On a
nested PVM host (our build machines) a stock kernel cannot run user space
(docs/linux-boot.md): every boot would time out.

Kernels (--kernels, default cloud,generic; images under $VMM_CACHE or
~/.cache/vmm, from guest-images/fetch-debian-kernel.sh and build-initramfs.sh):
  cloud    kernel/debian/vmlinuz + initramfs/initramfs-debian.cpio
  generic  kernel/debian-generic/vmlinuz + initramfs/initramfs-debian-generic.cpio
Per kernel, -n iterations; each runs both VMMs, in an order that alternates
(ours first when iteration + kernel index is even):
  ours  vmm --kernel VMLINUZ --initrd CPIO --mem 256M --cpus C --serial stdio
  QEMU  qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256M -smp C
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot
        -kernel VMLINUZ -initrd CPIO -append "CMDLINE"
where CMDLINE is what our VMM logged as 'command line:' for the same kernel
and --cpus (so both guests get the same parameters). -no-reboot makes a guest
reset end QEMU: with KVM, QEMU turns a triple fault into a silent reset, and
without -no-reboot the guest would just boot again.

Per boot (wall times from just before fork/exec):
  banner_s   'Linux version' read on the serial console
  marker_s   'VMM-GUEST-READY' read (the initramfs's /init has its shell up)
  answer_s   the answer to the typed 'echo answer=$((6*7)) nproc=$(nproc)'
  memory     /proc/PID/status VmRSS and /proc/PID/smaps split into the
             guest-RAM mapping and the rest ('RSS excl. guest RAM'), read at
             the shell, after the answer
  exit       'poweroff -f' typed (ACPI power-off in both VMMs): exit status
             and poweroff_s (typed -> process gone)
Outcome of a boot: ok (the answer with nproc == C, exit status 0 after
'poweroff -f', no kernel trouble), or one failure kind:
  triple_fault     ours: exit 3 'guest triple fault'; QEMU: exited 0 under
                   -no-reboot with no kernel reboot/power-off message
                   (inferred: QEMU prints nothing for a KVM triple fault)
  panic            'Kernel panic' on the console (ours also exits 3)
  kvm_error        'KVM internal error' (QEMU stops the VM; ours exits 3)
  crash            any other exit 3 of ours (the reason is kept)
  vmm_error        ours exit 1, QEMU non-zero exit (error output kept)
  guest_reset      the kernel asked for a reset before 'poweroff -f'
  timeout          no marker within --timeout (default 300 s)
  stall            no console output for --stall-timeout s before the marker
                   (off by default; the guest stopped making visible progress)
  no_answer        marker, but no answer within --answer-timeout
  wrong_nproc      the guest saw a different number of CPUs
  poweroff_timeout / bad_exit   no exit after 'poweroff -f' / non-zero status
  kernel_trouble   otherwise ok, but tests/e2e/linux_tests.py's
                   kernel_trouble() finds warnings/oopses/failed probes in the
                   console (its allow-list applies; --emulated-host sets
                   VMM_E2E_EMULATED_HOST=qemu-tcg-svm, which allows the TCG
                   XSAVE artifact, and nothing else does)
A failed boot keeps its console's last lines and never stops the script.

Report: per kernel, median (min-max) of each metric over the completed boots
(ok or kernel_trouble: the times are valid), the ratio ours/QEMU of the
medians and the min-max of the per-iteration ratios (iterations where both
VMMs completed), and the outcomes per VMM; the failed
boots with their console tails. --json prints JSON instead; --jsonl FILE
appends each boot as it ends (survives a hung host); --from-json FILE...
merges earlier --json/--jsonl outputs (e.g. several sessions) into one report.
Stdlib only. Examples:
  tools/bench/stock_kernel_bench.py -n 3
  tests/svm-host/run_l1.py --timeout 3000 -- \\
      python3 tools/bench/stock_kernel_bench.py --emulated-host -n 2 --json > out.json
  tools/bench/stock_kernel_bench.py --from-json s1.json s2.json s3.jsonl
"""
import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from benchlib import (CMDLINE_RE, VMMS, WatchedProcess, add_stock_vm_args,  # noqa: E402
                      choice_list, emit_result, failure_kinds, host_info, host_kvm_module,
                      loadavg, logged_cmdline, parse_size, proc_status, smaps_split, stat)

CACHE_DEFAULT = os.environ.get("VMM_CACHE", os.path.expanduser("~/.cache/vmm"))
KERNELS = {  # name -> (kernel dir under CACHE/kernel, initramfs under CACHE/initramfs)
    "cloud": ("debian", "initramfs-debian.cpio"),
    "generic": ("debian-generic", "initramfs-debian-generic.cpio"),
}
VMM_LABEL = {"ours": "ours", "qemu": "QEMU microvm"}

MILESTONES = [(b"Linux version", "banner"), (b"Run /init as init process", "run_init"),
              (b"VMM-GUEST-READY", "marker")]
ANSWER_CMD = "echo answer=$((6*7)) nproc=$(nproc)"
ANSWER_RE = re.compile(rb"answer=42 nproc=(\d+)")  # the typed line's echo never matches
PANIC = b"Kernel panic"
KVM_ERROR = b"KVM internal error"
LOG_PREFIX_RE = re.compile(r"^\[[0-9:. -]+\] \[\w+\] ")
# What the kernel prints when it resets or powers off on purpose.
KERNEL_REBOOT = (b"reboot: Restarting system", b"reboot: Power down", b"reboot: System halted")


# ------------------------------------------------------------ one process --

class Console(WatchedProcess):
    """A VMM process with its serial console on our pipes (benchlib's
    WatchedProcess): needles are (bytes, key) pairs watched on stdout, seen[key]
    the time of the read that completed one; t_last_out the time console bytes
    last arrived. pass_fds: file descriptors the child inherits (e.g. QEMU's
    -incoming fd:N)."""

    def __init__(self, cmd, needles, pass_fds=()):
        super().__init__(cmd, [(key, needle) for needle, key in dict(needles).items()],
                         pass_fds=pass_fds)
        self.t_last_out = self.t0

    def on_read(self, buf, old_len, now):
        if buf is self.out:
            self.t_last_out = now
        super().on_read(buf, old_len, now)


# --------------------------------------------------------------- commands --

def kernel_images(a, name):
    kdir, cpio = KERNELS[name]
    return (os.path.join(a.cache_dir, "kernel", kdir, "vmlinuz"),
            os.path.join(a.cache_dir, "initramfs", cpio))


def ours_cmd(a, kernel, initrd):
    return [a.vmm, "--kernel", kernel, "--initrd", initrd, "--mem", a.mem,
            "--cpus", str(a.cpus), "--serial", "stdio", *a.vmm_arg]


def qemu_cmd(a, kernel, initrd, append):
    machine = "microvm" + (f",{a.qemu_machine_opts}" if a.qemu_machine_opts else "")
    return [a.qemu, "-M", machine, "-accel", "kvm", "-cpu", a.qemu_cpu, "-m", a.mem,
            "-smp", str(a.cpus), "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "stdio", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", append, *a.qemu_arg]


def probe_cmdline(a, kernel, initrd):
    """The command line our VMM gives this kernel (its 'command line:' log
    line), from a VMM started just long enough to print it."""
    return logged_cmdline(ours_cmd(a, kernel, initrd), 60)


# --------------------------------------------------------------- one boot --

def boot_once(a, who, cmd, guest_bytes):
    """One boot to the shell, a typed command, 'poweroff -f'. Returns the record
    (times in s from process start; see the module doc)."""
    r = {"vmm": who, "command": cmd}
    c = Console(cmd, [(n, k) for n, k in MILESTONES] + [(PANIC, "panic"), (KVM_ERROR, "kvm_error")])
    def stopper():
        if a.stall_timeout and time.monotonic() - c.t_last_out > a.stall_timeout:
            r["stalled"] = True
            return True
        return "marker" in c.seen or "panic" in c.seen or (who == "qemu" and KVM_ERROR in c.err)

    try:
        c.wait_until(stopper, a.timeout)
        if "marker" in c.seen and "panic" not in c.seen:
            c.send(ANSWER_CMD)
            if c.wait_until(lambda: ANSWER_RE.search(c.out) or "panic" in c.seen,
                            a.answer_timeout) and ANSWER_RE.search(c.out):
                r["answer_s"] = time.monotonic() - c.t0
                r["guest_nproc"] = int(ANSWER_RE.search(c.out).group(1))
                r["status_kib"] = proc_status(c.p.pid)
                r["smaps"] = smaps_split(c.p.pid, guest_bytes)
                t_sent = time.monotonic()
                r["poweroff_sent"] = c.send("poweroff -f")
                if c.wait_until(lambda: c.t_exit is not None, a.poweroff_timeout):
                    r["poweroff_s"] = c.t_exit - t_sent
        if "panic" in c.seen or KVM_ERROR in c.err:
            c.drain(10 if who == "ours" else 2)  # ours exits with the reason; QEMU pauses
        elif c.t_exit is not None:
            c.drain(2)
        r["killed"] = c.p.poll() is None
        if c.t_exit is not None:
            r["exit_s"] = c.t_exit - c.t0
        r["returncode"] = c.kill()
    finally:
        c.kill()
    for _, key in MILESTONES:
        if key in c.seen:
            r[key + "_s"] = c.seen[key] - c.t0
    m = CMDLINE_RE.search(c.err)
    if m:
        r["guest_cmdline"] = m.group(1).decode(errors="replace")
    r["serial"] = bytes(c.out).decode(errors="replace")
    r["stderr"] = bytes(c.err).decode(errors="replace")
    classify(a, r)
    return r


def vmm_reason(stderr):
    """Our VMM's last error line ('... (exit code N)'), without the log prefix."""
    for line in reversed(stderr.splitlines()):
        if "(exit code" in line or "[error]" in line:
            return LOG_PREFIX_RE.sub("", line.strip())
    lines = [x for x in stderr.splitlines() if x.strip()]
    return LOG_PREFIX_RE.sub("", lines[-1].strip()) if lines else ""


def trouble_in(text):
    """kernel_trouble() of tests/e2e/linux_tests.py (its allow-list), or None
    if it cannot be imported."""
    try:
        sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
        from linux_tests import kernel_trouble
    except Exception as e:  # noqa: BLE001 - any import problem: report, do not crash
        return [[f"(kernel_trouble unavailable: {e})"]]
    return kernel_trouble(text)


def last_line(text):
    lines = [x.strip() for x in text.replace("\r", "").splitlines() if x.strip()]
    return lines[-1][:160] if lines else "none"


def crash_kind(text):
    t = text.lower()
    if "triple fault" in t:
        return "triple_fault"
    if "kernel panic" in t:
        return "panic"
    if "kvm internal error" in t or "emulation failure" in t:
        return "kvm_error"
    return "crash"


def classify(a, r):
    """Sets r['outcome'] (ok or a failure kind) and r['detail'] (one line)."""
    who, rc, serial, err = r["vmm"], r.get("returncode"), r["serial"], r["stderr"]
    r["trouble"] = [b[:40] for b in trouble_in(serial)]
    exited = not r.get("killed") and r.get("exit_s") is not None
    after_poweroff = "poweroff_s" in r
    reason = vmm_reason(err) if who == "ours" else "\n".join(
        x for x in err.splitlines() if x.strip())[-600:]
    kind, detail = "ok", ""
    if who == "ours" and exited and rc == 3:
        kind, detail = crash_kind(reason), reason
    elif PANIC.decode() in serial:
        line = next((x for x in serial.splitlines() if "Kernel panic" in x), "Kernel panic")
        kind, detail = "panic", line.strip()
    elif KVM_ERROR.decode() in err:
        i = err.find(KVM_ERROR.decode())
        kind, detail = "kvm_error", " ".join(err[i:i + 300].split())
    elif exited and rc not in (0, None):
        kind, detail = "vmm_error", f"exit status {rc}: {reason}"
    elif exited and not after_poweroff:
        asked = next((m.decode() for m in KERNEL_REBOOT if m in serial.encode(errors="replace")),
                     None)
        if asked:
            kind, detail = "guest_reset", f"exit status {rc} after the kernel printed '{asked}'"
        elif who == "qemu":
            kind, detail = "triple_fault", (
                "QEMU exited 0 under -no-reboot before 'poweroff -f' without a kernel "
                "reset/power-off message (inferred triple fault)" +
                (f"; QEMU said: {reason}" if reason else ""))
        else:
            kind, detail = "guest_reset", f"exit status {rc}: {reason}"
    elif "marker_s" not in r and r.get("stalled"):
        kind, detail = "stall", (f"console silent for {a.stall_timeout:g} s before the marker "
                                 f"(last line: {last_line(serial)})")
    elif "marker_s" not in r:
        kind, detail = "timeout", f"no marker within {a.timeout:g} s (last line: {last_line(serial)})"
    elif "answer_s" not in r:
        kind, detail = "no_answer", f"no answer within {a.answer_timeout:g} s"
    elif r.get("guest_nproc") != a.cpus:
        kind, detail = "wrong_nproc", f"nproc {r.get('guest_nproc')}, expected {a.cpus}"
    elif not after_poweroff:
        kind, detail = "poweroff_timeout", f"no exit within {a.poweroff_timeout:g} s"
    elif rc != 0:
        kind, detail = "bad_exit", f"exit status {rc} after 'poweroff -f': {reason}"
    elif r["trouble"]:
        kind, detail = "kernel_trouble", r["trouble"][0][0].strip()
    r["outcome"], r["detail"] = kind, detail
    if who == "ours" and kind == "ok":
        r["detail"] = reason  # e.g. "guest powered off (ACPI)"


def compact(r, tail_lines, full):
    """The record as kept in the output: consoles cut to their last lines
    (more for failed boots); with full, also the whole console and stderr."""
    n = tail_lines if r["outcome"] != "ok" else 10
    out = {k: v for k, v in r.items() if k not in ("serial", "stderr")}
    out["serial_tail"] = r["serial"].replace("\r", "").splitlines()[-n:]
    out["stderr_tail"] = r["stderr"].replace("\r", "").splitlines()[-n:]
    if full:
        out["serial_full"], out["stderr_full"] = r["serial"], r["stderr"]
    return out


# ------------------------------------------------------------- the bench --

def run_bench(a):
    guest_bytes = parse_size(a.mem)
    res = {"runs": [], "skipped": [], "cmdlines": {}}
    kernels = []
    for name in a.kernels:
        kernel, initrd = kernel_images(a, name)
        missing = [p for p in (kernel, initrd) if not os.path.isfile(p)]
        if missing:
            res["skipped"].append(f"{name}: missing {', '.join(missing)} (guest-images/"
                                  "fetch-debian-kernel.sh, build-initramfs.sh)")
            log(res["skipped"][-1])
        else:
            kernels.append((name, kernel, initrd))
    jsonl = open(a.jsonl, "a") if a.jsonl else None
    try:
        for i in range(a.iterations):
            for ki, (name, kernel, initrd) in enumerate(kernels):
                order = list(a.vmms) if (i + ki) % 2 == 0 else list(reversed(a.vmms))
                for who in order:
                    r = run_one(a, res, name, kernel, initrd, who, guest_bytes)
                    r.update(kernel=name, iteration=i, order=order.index(who),
                             loadavg=loadavg(), time=time.time())
                    r = compact(r, a.tail_lines, a.full_console)
                    res["runs"].append(r)
                    log(f"[{i + 1}/{a.iterations}] {name} / {who}: {one_line(r)}")
                    if jsonl:
                        jsonl.write(json.dumps(r) + "\n")
                        jsonl.flush()
                        os.fsync(jsonl.fileno())
    finally:
        if jsonl:
            jsonl.close()
    return res


def run_one(a, res, name, kernel, initrd, who, guest_bytes):
    if who == "ours":
        r = boot_once(a, who, ours_cmd(a, kernel, initrd), guest_bytes)
        if r.get("guest_cmdline"):
            res["cmdlines"].setdefault(name, r["guest_cmdline"])
        return r
    append = res["cmdlines"].get(name)
    if append is None:
        append = probe_cmdline(a, kernel, initrd)
        if append is None:
            return {"vmm": who, "outcome": "not_run", "detail": "no 'command line:' from our "
                    "VMM", "serial": "", "stderr": ""}
        res["cmdlines"][name] = append
    return boot_once(a, who, qemu_cmd(a, kernel, initrd, append), guest_bytes)


def one_line(r):
    if r["outcome"] == "ok":
        return (f"ok, marker {r['marker_s']:.1f} s, answer {r['answer_s']:.1f} s, "
                f"VmRSS {r.get('status_kib', {}).get('VmRSS', '?')} KiB")
    return f"FAILED {r['outcome']}: {r.get('detail', '')[:200]}"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- report --

METRICS = [  # key, label, getter, unit
    ("banner_s", "'Linux version' on the console (s)", lambda r: r.get("banner_s"), "s"),
    ("marker_s", "VMM-GUEST-READY (s)", lambda r: r.get("marker_s"), "s"),
    ("answer_s", "answer to a typed command (s)", lambda r: r.get("answer_s"), "s"),
    ("poweroff_s", "'poweroff -f' -> exit (s)", lambda r: r.get("poweroff_s"), "s"),
    ("vmrss", "VmRSS at the shell (KiB)", lambda r: (r.get("status_kib") or {}).get("VmRSS"),
     "KiB"),
    ("vmm_rss", "RSS excl. guest RAM (KiB)",
     lambda r: (r.get("smaps") or {}).get("vmm_rss_excl_guest_kib"), "KiB"),
    ("guest_rss", "guest RAM resident (KiB)",
     lambda r: (r.get("smaps") or {}).get("guest_ram_rss_kib"), "KiB"),
]


def fmt_v(v, unit):
    return f"{v:.1f}" if unit == "s" else f"{v:,.0f}"


def fmt_stat(st, unit):
    if not st:
        return "-"
    return (f"{fmt_v(st['median'], unit)} ({fmt_v(st['min'], unit)}-{fmt_v(st['max'], unit)}), "
            f"n={st['n']}")


# Boots whose times and memory count: they reached the shell, answered and
# exited 0 after 'poweroff -f'; a kernel-log warning does not void the times.
COMPLETED = ("ok", "kernel_trouble")


def paired_ratios(runs, get):
    """ours/QEMU per (session, iteration) where both completed (runs: one kernel)."""
    pairs = {}
    for r in runs:
        if r["outcome"] in COMPLETED and get(r) is not None:
            pairs.setdefault((r.get("session", 0), r["iteration"]), {})[r["vmm"]] = get(r)
    return [p["ours"] / p["qemu"] for p in pairs.values()
            if "ours" in p and "qemu" in p and p["qemu"]]


def kernel_table(runs):
    by = {w: [r for r in runs if r["vmm"] == w and r["outcome"] in COMPLETED] for w in VMMS}
    out = ["| metric | ours | QEMU microvm | ours/QEMU (medians) | per-iteration ratios min-max |",
           "|---|---|---|---|---|"]
    for key, label, get, unit in METRICS:
        so, sq = (stat([get(r) for r in by[w]]) for w in VMMS)
        ratio = f"{so['median'] / sq['median']:.2f}" if so and sq and sq["median"] else "-"
        pr = paired_ratios(runs, get)
        spread = f"{min(pr):.2f}-{max(pr):.2f} (n={len(pr)})" if pr else "-"
        out.append(f"| {label} | {fmt_stat(so, unit)} | {fmt_stat(sq, unit)} | {ratio} | "
                   f"{spread} |")
    return out


def outcome_table(runs, kernels):
    out = ["| kernel | VMM | boots | ok | completed | failures by kind |",
           "|---|---|---|---|---|---|"]
    for k in kernels:
        for w in VMMS:
            rs = [r for r in runs if r["kernel"] == k and r["vmm"] == w]
            if not rs:
                continue
            fails = failure_kinds(rs)
            ok = sum(1 for r in rs if r["outcome"] == "ok")
            done = sum(1 for r in rs if r["outcome"] in COMPLETED)
            out.append(f"| {k} | {VMM_LABEL[w]} | {len(rs)} | {ok} | {done} | {fails} |")
    return out


def report_markdown(result):
    h, args, runs = result["host"], result["args"], result["runs"]
    kernels = list(dict.fromkeys(r["kernel"] for r in runs)) or args["kernels"]
    out = ["# Stock Debian kernels to a shell: ours vs QEMU microvm\n"]
    hosts = result.get("hosts") or [h]
    for hh in hosts:
        out.append(f"Host: kernel {hh.get('kernel')}, nproc {hh.get('nproc')}, CPU "
                   f"{hh.get('cpu', '?')}, KVM {hh.get('kvm_module')}, emulated host: "
                   f"{hh.get('emulated_host')}, load avg at start {hh.get('loadavg')}; "
                   f"{hh.get('qemu_version', '')}")
    sessions = result.get("sessions", 1)
    out.append(f"\n{sessions} session(s); guest {args['mem']}, --cpus {args['cpus']}; "
               f"{args['iterations']} iteration(s) per kernel and session, VMM order "
               "alternating. Metrics: median (min-max) over the completed boots (ok, or "
               "ok but for kernel-log trouble: shell, answer, exit 0 after 'poweroff -f'); "
               "per-iteration ratios pair ours and QEMU of the same iteration.\n")
    for s in result.get("skipped", []):
        out.append(f"- skipped: {s}")
    for k in kernels:
        krs = [r for r in runs if r["kernel"] == k]
        out.append(f"## {k} kernel\n")
        out += kernel_table(krs)
        out.append("")
    out.append("## Outcomes\n")
    out += outcome_table(runs, kernels)
    out.append("")
    failed = [r for r in runs if r["outcome"] != "ok"]
    if failed:
        out.append("## Failed boots\n")
        for r in failed:
            out.append(f"### {r['kernel']} / {VMM_LABEL[r['vmm']]}, session "
                       f"{r.get('session', 0) + 1}, iteration {r['iteration'] + 1}: "
                       f"{r['outcome']}\n")
            out.append(f"{r.get('detail', '')}\n")
            if r.get("marker_s") is not None:
                out.append(f"(marker at {r['marker_s']:.1f} s)\n")
            for b in r.get("trouble", [])[:3]:
                out.append("kernel trouble:\n\n```\n" + "\n".join(b[:15]) + "\n```\n")
            out.append("console, last lines:\n\n```\n" + "\n".join(r.get("serial_tail", []))
                       + "\n```\n")
            if r.get("stderr_tail"):
                out.append("VMM stderr, last lines:\n\n```\n" +
                           "\n".join(r["stderr_tail"][-8:]) + "\n```\n")
    out.append("## Commands\n")
    seen = set()
    for r in runs:
        if "command" in r and (r["kernel"], r["vmm"]) not in seen:
            seen.add((r["kernel"], r["vmm"]))
            out.append(f"- {r['kernel']} / {r['vmm']}: `{shlex.join(r['command'])}`")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------- main --

def load_results(paths):
    """Merges --json outputs and --jsonl files (one boot a line) into one
    result; each file is a session."""
    merged = {"runs": [], "hosts": [], "skipped": [], "sessions": len(paths)}
    for si, path in enumerate(paths):
        with open(path) as f:
            text = f.read()
        if path.endswith(".jsonl"):
            recs = [json.loads(x) for x in text.splitlines() if x.strip()]
            header = next((x for x in recs if x.get("type") == "header"), {})
            runs = [x for x in recs if x.get("type") != "header"]
        else:
            header = json.loads(text)
            runs = header["runs"]
        for r in runs:
            r["session"] = si
        merged["runs"] += runs
        if header.get("host"):
            merged["hosts"].append(header["host"])
            merged.setdefault("host", header["host"])
            merged.setdefault("args", header["args"])
        merged["skipped"] += header.get("skipped", [])
    if "args" not in merged:
        raise SystemExit("no header (host/args) in any input file")
    return merged


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    add_stock_vm_args(ap)
    ap.add_argument("--vmm-arg", action="append", default=[],
                    help="extra argument for our vmm (repeatable)")
    ap.add_argument("--kernels", type=choice_list(tuple(KERNELS)), default=["cloud", "generic"],
                    help="comma-separated subset of cloud,generic (default both)")
    ap.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    ap.add_argument("--mem", default="256M", help="guest RAM (default 256M)")
    ap.add_argument("-n", "--iterations", type=int, default=3,
                    help="boots per kernel and VMM (default 3)")
    ap.add_argument("--timeout", type=float, default=300,
                    help="process start -> marker, s (default 300)")
    ap.add_argument("--stall-timeout", type=float, default=0,
                    help="give up when the console has been silent this long before the "
                         "marker, s (default 0: off)")
    ap.add_argument("--answer-timeout", type=float, default=120,
                    help="marker -> the typed command's answer, s (default 120)")
    ap.add_argument("--poweroff-timeout", type=float, default=120,
                    help="'poweroff -f' -> exit, s (default 120)")
    ap.add_argument("--emulated-host", action="store_true",
                    help="this is the emulated SVM host of tests/svm-host: allow its XSAVE "
                         "artifact in the kernel log (VMM_E2E_EMULATED_HOST=qemu-tcg-svm)")
    ap.add_argument("--cache-dir", default=CACHE_DEFAULT,
                    help=f"guest image cache (default $VMM_CACHE or ~/.cache/vmm: {CACHE_DEFAULT})")
    ap.add_argument("--tail-lines", type=int, default=40,
                    help="console lines kept per failed boot (default 40)")
    ap.add_argument("--full-console", action="store_true",
                    help="keep every boot's whole console and VMM stderr in the JSON")
    ap.add_argument("--json", action="store_true", help="JSON on stdout instead of markdown")
    ap.add_argument("--json-out", metavar="FILE", help="also write the JSON result to FILE")
    ap.add_argument("--jsonl", metavar="FILE",
                    help="append a header line and then each boot as one JSON line, as it ends")
    ap.add_argument("--from-json", nargs="+", metavar="FILE",
                    help="no boots: merge these --json/--jsonl outputs (one session each) "
                         "into one report")
    return ap, ap.parse_args()


def main():
    ap, a = parse_args()
    if a.from_json:
        result = load_results(a.from_json)
    else:
        # kernel_trouble() reads this when it runs: the emulation's XSAVE
        # artifact is allowed on the emulated host only.
        if a.emulated_host:
            os.environ["VMM_E2E_EMULATED_HOST"] = "qemu-tcg-svm"
        else:
            os.environ.pop("VMM_E2E_EMULATED_HOST", None)
        if "ours" in a.vmms and not os.path.isfile(a.vmm):
            ap.error(f"vmm not found at {a.vmm} (--vmm)")
        if "qemu" in a.vmms and shutil.which(a.qemu) is None:
            ap.error(f"{a.qemu} not found (--qemu)")
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            ap.error("/dev/kvm is not accessible")
        kvm = host_kvm_module()
        if kvm == "kvm_pvm":
            log("warning: this host's KVM is PVM: a stock kernel cannot run user space here "
                "(docs/linux-boot.md); expect timeouts")
        host = host_info(a.qemu, kvm_module=kvm, emulated_host=a.emulated_host,
                         loadavg=loadavg())
        args = {k: v for k, v in vars(a).items() if k != "from_json"}
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps({"type": "header", "host": host, "args": args}) + "\n")
        result = {"host": host, "args": args, **run_bench(a)}
        result["host"]["loadavg_end"] = loadavg()
    emit_result(result, a.json_out, a.json, lambda: report_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
