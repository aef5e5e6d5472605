#!/usr/bin/env python3
"""Run one shell command inside an emulated "normal AMD-SVM KVM host" (L1).

L1 is Debian's generic 6.1 kernel under QEMU's TCG (software CPU, `-cpu
max,+svm`: AuthenticAMD with SVM, NPT), with its real kvm_amd loaded and the
host's root filesystem as its root (read-only 9p share, made writable with an
overlayfs tmpfs layer: nothing the job writes reaches the host except through
the work share). build-l1.sh makes the boot files (cached); this script calls
it first.

The job runs as root in L1, in the repository (or --cwd), with PATH, HOME and
a few more variables taken from this environment (--env adds more). Its
stdout and stderr are copied here as they arrive (stdout to stdout, stderr to
stderr). L1's console goes to a log file, never parsed for results: the job's
exit status comes back through the work share.

Exit status:
  0-255  the job's own exit status, when the job finished (the last stderr
         line says "run_l1: job exited N")
  123    L1 died, reset or powered off before the job finished (QEMU exited
         without a job status: kernel panic, triple fault, /init failure)
  124    the outer watchdog fired: the job ran past --timeout, or L1 hung
         (its heartbeat, rewritten every 5 s, stopped for --hang-timeout);
         QEMU was killed. On a hang, RUN_DIR/l1-hang.json records the
         evidence first: for how long L1's console has been silent (a live
         L1 kernel reports a stuck CPU within ~25 s, and again while it
         stays stuck: soft-lockup and RCU-stall detectors), and the L1 CPU state
         (QEMU monitor 'info registers -a', three samples 1 s apart)
  125    harness failure: bad arguments, build-l1.sh failed, QEMU did not start
A job can exit 123-125 itself; the last stderr line always says which case
it was.

Timing lines (stderr, prefix "run_l1: time:"): QEMU start -> job start (L1
boot), job duration, total.

Example:
  tests/svm-host/run_l1.py --timeout 600 -- build/vmm/vmm --help
  tests/svm-host/run_l1.py -c 'cd build && ctest -L kvm -j2'
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD_L1 = os.path.join(HERE, "build-l1.sh")

EXIT_L1_DIED = 123
EXIT_TIMEOUT = 124
EXIT_HARNESS = 125

# Variables handed to the job when set here (besides --env).
PASS_ENV = ("PATH", "HOME", "VMM_CACHE", "PYENV_ROOT", "PYENV_VERSION", "LANG", "LC_ALL",
            "TZ", "CTEST_OUTPUT_ON_FAILURE", "CTEST_PARALLEL_LEVEL", "VMM_TEST_SEED")

POLL_S = 0.2
POWEROFF_GRACE_S = 60   # from the job's status file to QEMU's exit


class HarnessError(Exception):
    pass


def say(msg):
    print(f"run_l1: {msg}", file=sys.stderr, flush=True)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # Bad arguments are a harness failure (125), not argparse's 2, which
        # a job could return.
        self.print_usage(sys.stderr)
        say(f"harness failure: {message}")
        sys.exit(EXIT_HARNESS)


def parse_args(argv):
    p = Parser(
        prog="run_l1.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] (-c 'SHELL COMMAND' | -- CMD [ARG...])")
    p.add_argument("-c", dest="shell", metavar="SCRIPT",
                   help="run this shell text (sh) instead of CMD ARG...")
    p.add_argument("--timeout", type=float, default=1800,
                   help="outer watchdog, wall-clock seconds from QEMU start (default %(default)s)")
    p.add_argument("--hang-timeout", type=float, default=180,
                   help="declare L1 hung when its heartbeat has not changed for this many "
                        "seconds after the job started; 0: off (default %(default)s)")
    # The default shape is the one measured reliable (docs/svm-host.md):
    # multi-threaded TCG hung L1 itself, single-threaded TCG with two L1 CPUs
    # hung L2 guests of more than one vCPU (QEMU's as well as ours).
    p.add_argument("--smp", type=int, default=1, help="L1 vCPUs (default %(default)s)")
    p.add_argument("--mem", default="4G", help="L1 memory (default %(default)s)")
    p.add_argument("--tcg-thread", choices=("multi", "single"), default="single",
                   help="TCG threading: one host thread per vCPU or one for all (default %(default)s)")
    p.add_argument("--cpu", default="max,+svm", help="QEMU -cpu (default %(default)s)")
    p.add_argument("--root", choices=("auto", "overlay", "ro"), default="auto",
                   help="L1 root: overlayfs (tmpfs over the 9p host root) or the read-only "
                        "9p root; auto = overlay, falling back to ro (default %(default)s)")
    p.add_argument("--host-cache", choices=("loose", "mmap", "none"), default="loose",
                   help="9p cache mode of the host root; loose caches metadata and data in L1 "
                        "(host files changed during the run may look stale) (default %(default)s)")
    p.add_argument("--msize", type=int, default=262144, help="9p msize (default %(default)s)")
    p.add_argument("--cmdline", default="console=ttyS0 panic=-1 mitigations=off",
                   help="L1 kernel command line (default %(default)r); the svm.* knobs are added")
    p.add_argument("--append", default="", help="more L1 kernel parameters")
    p.add_argument("--cwd", default=REPO, help="the job's directory in L1 (default: the repository)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set a variable for the job (repeatable)")
    p.add_argument("--run-dir", help="directory for the work share and logs "
                                     "(default: a new temporary directory)")
    p.add_argument("--keep", action="store_true",
                   help="keep the run directory (it is always kept on a harness failure, "
                        "L1 death or timeout)")
    p.add_argument("--console-log", help="L1 console log (default: RUN_DIR/console.log)")
    p.add_argument("--l1-dir", help="use these boot files (vmlinuz, initramfs.cpio) instead "
                                    "of running build-l1.sh")
    p.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    p.add_argument("--nice", type=int, default=10, help="nice level for QEMU (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="fewer harness messages")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="command and arguments (after --)")
    a = p.parse_args(argv)
    if a.cmd and a.cmd[0] == "--":
        a.cmd = a.cmd[1:]
    if bool(a.cmd) == bool(a.shell):
        p.error("give exactly one of -c SCRIPT or -- CMD [ARG...]")
    for e in a.env:
        if "=" not in e or not e.split("=", 1)[0]:
            p.error(f"--env wants NAME=VALUE, got {e!r}")
    return a


def l1_boot_files(a):
    """(vmlinuz, initramfs) from --l1-dir or build-l1.sh's last output lines."""
    if a.l1_dir:
        files = [os.path.join(a.l1_dir, n) for n in ("vmlinuz", "initramfs.cpio")]
    else:
        r = subprocess.run([BUILD_L1], stdout=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise HarnessError(f"build-l1.sh failed with status {r.returncode}")
        out = {os.path.basename(line): line for line in r.stdout.split()}
        files = [out.get("vmlinuz", ""), out.get("initramfs.cpio", "")]
    for f in files:
        if not os.path.isfile(f):
            raise HarnessError(f"missing L1 boot file {f!r}")
    return files


def job_script(a):
    """The text of job.sh: environment, cd, command."""
    lines = ["# generated by run_l1.py; /init runs it with sh in L1's root"]
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.update(e.split("=", 1) for e in a.env)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(f"cd {shlex.quote(os.path.abspath(a.cwd))} || exit 125")
    lines.append(a.shell if a.shell else "exec " + shlex.join(a.cmd))
    return "\n".join(lines) + "\n"


def qemu_argv(a, vmlinuz, initrd, work, console, monitor):
    cmdline = " ".join(filter(None, [
        a.cmdline, f"svm.root={a.root}", f"svm.hostcache={a.host_cache}",
        f"svm.msize={a.msize}", a.append]))
    return [
        "nice", "-n", str(a.nice), a.qemu,
        "-accel", f"tcg,thread={a.tcg_thread}", "-cpu", a.cpu,
        "-smp", str(a.smp), "-m", a.mem,
        "-nographic", "-no-reboot", "-vga", "none", "-nic", "none",
        "-monitor", f"unix:{monitor},server=on,wait=off",
        "-serial", f"file:{console}",
        "-kernel", vmlinuz, "-initrd", initrd, "-append", cmdline,
        # The host's root, read-only; remap inode numbers across host mounts.
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        # The per-run work share: job.sh in, stdout/stderr/status out.
        "-fsdev", f"local,id=work,path={work},security_model=none",
        "-device", "virtio-9p-pci,fsdev=work,mount_tag=work",
    ]


class Stream:
    """Copies new bytes of a file in the work share to a local stream."""

    def __init__(self, path, out):
        self.path, self.out, self.pos = path, out, 0

    def pump(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.pos += len(data)
            self.out.buffer.write(data)
            self.out.flush()


class Heartbeat:
    """Tracks when the heartbeat file in the work share last changed."""

    def __init__(self, path):
        self.path, self.value, self.since = path, None, None

    def silent_for(self, now):
        value = read_text(self.path)
        if self.since is None or value != self.value:
            self.value, self.since = value, now
        return now - self.since


def console_quiet_s(console):
    """Seconds since L1 last wrote to its console (QEMU appends to the file)."""
    try:
        return time.time() - os.path.getmtime(console)
    except OSError:
        return None


def monitor_command(path, command, timeout=5.0):
    """One HMP command on QEMU's monitor socket; its output (or the error)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
            sk.settimeout(timeout)
            sk.connect(path)
            sk.sendall(command.encode() + b"\n")
            data, deadline = b"", time.monotonic() + timeout
            # The reply ends with the next "(qemu) " prompt after the echo.
            while data.count(b"(qemu) ") < 2 and time.monotonic() < deadline:
                chunk = sk.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return f"(monitor: {e})"
    return data.decode(errors="replace").replace("\r", "")


def record_hang(run_dir, monitor, console, silent_s):
    """Evidence of an L1 hang, before QEMU is killed: RUN_DIR/l1-hang.json."""
    samples = []
    for i in range(3):
        if i:
            time.sleep(1)
        samples.append(monitor_command(monitor, "info registers -a"))
    # Per sample, per CPU: "RIP=... CPL=n HLT=n" (EIP in 32-bit modes).
    rips = [[" ".join(t for t in ln.split() if t.split("=")[0] in ("RIP", "EIP", "CPL", "HLT"))
             for ln in smp.splitlines() if ln.startswith(("RIP=", "EIP="))]
            for smp in samples]
    evidence = {"heartbeat_silent_s": round(silent_s, 1),
                "console_quiet_s": round(console_quiet_s(console) or 0, 1),
                "rip_samples": rips, "registers": samples}
    with open(os.path.join(run_dir, "l1-hang.json"), "w") as f:
        json.dump(evidence, f, indent=1)
    return evidence


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def job_status(work):
    """The job's exit status from the work share, or None before it exists.
    /init writes status.tmp and renames it, so a present file is complete."""
    text = read_text(os.path.join(work, "status"))
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise HarnessError(f"unreadable job status {text!r} in {work}/status")


def console_tail(console, n=25):
    try:
        with open(console, errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return "(no console log)"
    return "\n".join("    " + line for line in lines[-n:])


def run(a):
    """Boot L1, run the job, return this script's exit status."""
    vmlinuz, initrd = l1_boot_files(a)
    run_dir = a.run_dir or tempfile.mkdtemp(prefix="svm-l1-")
    work = os.path.join(run_dir, "work")
    os.makedirs(work, exist_ok=True)
    for name in ("job.sh", "started", "started.tmp", "stdout", "stderr", "status", "status.tmp",
                 "init.log", "root-mode", "finished", "heartbeat", "heartbeat.tmp", "heartbeat.pid"):
        if os.path.exists(os.path.join(work, name)):
            os.unlink(os.path.join(work, name))
    with open(os.path.join(work, "job.sh"), "w") as f:
        f.write(job_script(a))
    console = os.path.abspath(a.console_log or os.path.join(run_dir, "console.log"))
    monitor = os.path.join(run_dir, "monitor.sock")
    argv = qemu_argv(a, vmlinuz, initrd, work, console, monitor)
    if not a.quiet:
        say(f"run dir {run_dir}; console log {console}")
        say("qemu: " + shlex.join(argv))
    streams = [Stream(os.path.join(work, "stdout"), sys.stdout),
               Stream(os.path.join(work, "stderr"), sys.stderr)]
    qemu_log = open(os.path.join(run_dir, "qemu.log"), "wb")
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log,
                                stderr=subprocess.STDOUT)
    except OSError as e:
        raise HarnessError(f"cannot start QEMU: {e}")
    t_start = t_done = None
    outcome = None
    beat = Heartbeat(os.path.join(work, "heartbeat"))
    try:
        while True:
            now = time.monotonic()
            if t_start is None and os.path.exists(os.path.join(work, "started")):
                t_start = now
                say(f"time: L1 boot (QEMU start -> job start) {t_start - t0:.1f} s "
                    f"(L1 uptime {read_text(os.path.join(work, 'started'))} s, "
                    f"root {read_text(os.path.join(work, 'root-mode'))})")
            for s in streams:
                s.pump()
            exited = proc.poll() is not None   # before reading status: no race
            status = job_status(work)
            if status is not None:
                t_done = now
                outcome = ("job", status)
                break
            if exited:
                outcome = ("died", proc.returncode)
                break
            if now - t0 > a.timeout:
                outcome = ("timeout", None)
                break
            silent = beat.silent_for(now) if t_start is not None else 0
            if a.hang_timeout > 0 and silent > a.hang_timeout:
                outcome = ("hung", (silent, record_hang(run_dir, monitor, console, silent)))
                break
            time.sleep(POLL_S)
        if outcome[0] == "job":
            try:
                proc.wait(timeout=POWEROFF_GRACE_S)
            except subprocess.TimeoutExpired:
                say(f"L1 did not power off within {POWEROFF_GRACE_S} s after the job; killing QEMU")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        qemu_log.close()
        for s in streams:
            s.pump()
    return report(a, outcome, t0, t_start, t_done, run_dir, console)


def report(a, outcome, t0, t_start, t_done, run_dir, console):
    kind, value = outcome
    end = time.monotonic()
    started = "the job had started" if t_start else "the job had not started"
    if t_start and t_done:
        l1 = [read_text(os.path.join(run_dir, "work", n)) for n in ("started", "finished")]
        try:
            l1_s = f" (L1 clock {float(l1[1]) - float(l1[0]):.1f} s)"
        except (TypeError, ValueError):
            l1_s = ""
        say(f"time: job {t_done - t_start:.1f} s{l1_s}")
    say(f"time: total {end - t0:.1f} s")
    qemu_log = read_text(os.path.join(run_dir, "qemu.log"))
    if kind == "job":
        say(f"job exited {value}")
        if not a.keep and not a.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        return value
    if qemu_log:
        say("QEMU said:\n" + "\n".join("    " + x for x in qemu_log.splitlines()[-10:]))
    say("last L1 console lines:\n" + console_tail(console))
    init_log = read_text(os.path.join(run_dir, "work", "init.log"))
    if init_log:
        say("L1 /init log:\n" + "\n".join("    " + x for x in init_log.splitlines()[-10:]))
    console_empty = not os.path.exists(console) or os.path.getsize(console) == 0
    if kind == "died" and value != 0 and console_empty:
        # QEMU exits 0 on an L1 reset (-no-reboot) or power-off; non-zero with
        # an empty console means QEMU itself failed (bad option, no memory...).
        say(f"harness failure: QEMU exited with status {value} before L1 printed anything. "
            f"Run dir kept: {run_dir}")
        return EXIT_HARNESS
    if kind == "hung":
        silent, evidence = value
        printed = f"its console silent for the last {evidence['console_quiet_s']:.0f} s"
        say(f"L1 hung: its heartbeat stopped for {silent:.0f} s ({started}), {printed}; "
            f"L1 RIP samples {evidence['rip_samples']} (l1-hang.json); "
            f"watchdog killed QEMU after {end - t0:.1f} s. Run dir kept: {run_dir}")
        return EXIT_TIMEOUT
    if kind == "timeout":
        say(f"L1 hung or timed out: no job status after {a.timeout:.0f} s ({started}); "
            f"watchdog killed QEMU. Run dir kept: {run_dir}")
        return EXIT_TIMEOUT
    say(f"L1 died/reset before the job finished: QEMU exited with status {value} "
        f"after {end - t0:.1f} s ({started}). Run dir kept: {run_dir}")
    return EXIT_L1_DIED


def on_sigterm(signum, frame):
    # Unwind through run()'s finally, which kills QEMU.
    say(f"terminated by signal {signum}; killing QEMU")
    raise SystemExit(128 + signum)


def main(argv):
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run(a)
    except HarnessError as e:
        say(f"harness failure: {e}")
        return EXIT_HARNESS
    except KeyboardInterrupt:
        say("interrupted; QEMU killed")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
