"""Helpers shared by the benchmark scripts in tools/bench (stdlib only)."""
import hashlib


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
    import os
    import platform
    import subprocess
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
