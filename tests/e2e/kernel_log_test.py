#!/usr/bin/env python3
"""Unit test (label unit) of linux_tests.kernel_trouble: the kernel-log check
every Linux test ends with must catch real trouble and allow only the listed
emulation artifact, and that only on the emulated host."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import linux_tests  # noqa: E402

XSAVE_WARNING = """[    0.100000] ------------[ cut here ]------------
[    0.100001] XSAVE consistency problem: size 2696 != kernel_size 576
[    0.100002] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:737 fpu__init_system_xstate+0x4
[    0.100003] Modules linked in:
[    0.100004] Call Trace:
[    0.100005]  <TASK>
[    0.100006]  start_kernel+0x4e0/0x6ff
[    0.100007]  </TASK>
[    0.100008] ---[ end trace 0000000000000000 ]---
"""
OTHER_WARNING = XSAVE_WARNING.replace("XSAVE consistency problem: size 2696 != kernel_size 576",
                                      "refcount_t: underflow; use-after-free.")


class KernelTrouble(unittest.TestCase):
    def setUp(self):
        os.environ.pop("VMM_E2E_EMULATED_HOST", None)

    def test_clean_log(self):
        self.assertEqual(linux_tests.kernel_trouble("[ 1.0] Run /init as init process\n"), [])

    def test_single_line_trouble(self):
        for line in ("i8042: probe of i8042 failed with error -22",
                     "Kernel panic - not syncing: Attempted to kill init!",
                     "general protection fault, probably for non-canonical address",
                     "BUG: kernel NULL pointer dereference, address: 0000000000000000"):
            self.assertEqual(len(linux_tests.kernel_trouble(f"[ 2.0] {line}\n")), 1, line)

    def test_xsave_artifact_allowed_only_on_the_emulated_host(self):
        self.assertEqual(len(linux_tests.kernel_trouble(XSAVE_WARNING)), 1)
        os.environ["VMM_E2E_EMULATED_HOST"] = "qemu-tcg-svm"
        self.assertEqual(linux_tests.kernel_trouble(XSAVE_WARNING), [])
        # Another warning is never allowed, and a report is one block.
        blocks = linux_tests.kernel_trouble(XSAVE_WARNING + OTHER_WARNING)
        self.assertEqual(len(blocks), 1)
        self.assertIn("refcount_t: underflow", "\n".join(blocks[0]))


if __name__ == "__main__":
    unittest.main()
