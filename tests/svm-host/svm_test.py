#!/usr/bin/env python3
"""One test of the `svm` ctest label: boots the emulated AMD-SVM KVM host (L1,
run_l1.py) and runs, inside it, either the whole `kvm` label or one Linux
test of tests/e2e/linux_tests.py (which picks Debian's stock kernel there,
as on any VMX/SVM host).

Usage:
  svm_test.py --build-dir DIR kvm
  svm_test.py --build-dir DIR linux NAME

Exit status: 0 pass; 77 SKIP (printed with the reason) where the emulated
host cannot run here: not x86-64, not root, no qemu-system-x86_64, or
VMM_SVM=off; 1 the test failed or L1 failed (hung, died): an L1 failure is
never a pass. An L1 boot is retried once only when its console shows a
signature listed in EMULATOR_SIGNATURES (each with the evidence that the
emulator, not the VMM, causes it), and the retry is reported.
"""
import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RUN_L1 = os.path.join(HERE, "run_l1.py")
SKIP = 77
L1_FAILED = (123, 124)  # run_l1.py: L1 died/reset, watchdog (hang or timeout)

# L1 console signatures proven to be the emulator's (docs/svm-host.md has
# the measurements). Empty: no L1 failure is retried.
EMULATOR_SIGNATURES = []

# The TCG mode and L1 shape, chosen by measured failure rates (docs/svm-host.md).
L1_ARGS = ["--tcg-thread", "single", "--smp", "2", "--mem", "4G"]


def skip_reason():
    if os.environ.get("VMM_SVM", "").lower() in ("0", "off", "no"):
        return "VMM_SVM=off"
    if platform.machine() != "x86_64":
        return f"the emulated SVM host needs an x86-64 machine, this is {platform.machine()}"
    if os.geteuid() != 0:
        return "the emulated SVM host needs root (QEMU shares / read-only, mknod in its initramfs)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
    return None


def job(a):
    """(shell command run in L1, wall-clock timeout in s)."""
    build = os.path.abspath(a.build_dir)
    if a.what == "kvm":
        return f"cd {build} && ctest -L '^kvm$' -j2 --output-on-failure --timeout 300", 2400
    return (f"python3 {REPO}/tests/e2e/linux_tests.py --vmm {build}/vmm/vmm {a.name}", 1500)


def run_once(cmd, timeout, run_dir):
    argv = [sys.executable, RUN_L1, *L1_ARGS, "--timeout", str(timeout), "--run-dir", run_dir,
            "--env", "VMM_E2E_EMULATED_HOST=qemu-tcg-svm", "-c", cmd]
    print("svm_test: " + " ".join(argv), flush=True)
    return subprocess.run(argv).returncode


def emulator_signature(run_dir):
    try:
        with open(os.path.join(run_dir, "console.log"), errors="replace") as f:
            console = f.read()
    except OSError:
        return None
    for sig in EMULATOR_SIGNATURES:
        if re.search(sig["pattern"], console):
            return sig
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("what", choices=("kvm", "linux"))
    ap.add_argument("name", nargs="?")
    a = ap.parse_args()
    if a.what == "linux" and not a.name:
        ap.error("linux needs a test name")
    why = skip_reason()
    if why:
        print(f"SKIP: {why}")
        return SKIP
    cmd, timeout = job(a)
    for attempt in (1, 2):
        run_dir = tempfile.mkdtemp(prefix="svm-test-")
        rc = run_once(cmd, timeout, run_dir)
        if rc not in L1_FAILED:
            shutil.rmtree(run_dir, ignore_errors=True)
            break
        sig = emulator_signature(run_dir)
        if attempt == 2 or sig is None:
            print(f"svm_test: L1 failed (run_l1 exit {rc}); no retry: "
                  f"{'second attempt' if sig else 'no proven emulator signature'}; "
                  f"logs in {run_dir}", flush=True)
            return 1
        print(f"svm_test: RETRY: L1 failed with the emulator signature '{sig['name']}' "
              f"({sig['evidence']}); booting L1 once more", flush=True)
    if rc == SKIP:
        return SKIP
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
