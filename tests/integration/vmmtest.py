"""Drives the vmm binary with a guest on its serial console (stdin/stdout pipes)."""
import json
import os
import select
import socket
import subprocess
import sys
import time

SKIP = 77


def require_kvm():
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("SKIP: /dev/kvm is not available on this host")
        sys.exit(SKIP)


class Guest:
    """A running vmm process whose serial console is our pipe."""

    def __init__(self, vmm, kernel, args=(), log_level="info", wrapper=()):
        # wrapper: a command prefix that execs the vmm, e.g. ("ip", "netns", "exec", NS).
        # kernel=None: no --kernel (e.g. for --restore DIR in args).
        kernel_args = ["--kernel", kernel] if kernel is not None else []
        self.cmd = [*wrapper, vmm, *kernel_args, "--serial", "stdio", "--log-level",
                    log_level, *args]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out = b""
        self.err = b""
        self.pos = 0  # how far expect() has consumed self.out

    def _pump(self, timeout):
        fds = [f for f in (self.proc.stdout, self.proc.stderr) if f and not f.closed]
        if not fds:
            time.sleep(timeout)
            return False
        r, _, _ = select.select(fds, [], [], timeout)
        got = False
        for f in r:
            data = os.read(f.fileno(), 65536)
            if not data:
                f.close()
                continue
            got = True
            if f is self.proc.stdout:
                self.out += data
            else:
                self.err += data
        return got

    def expect(self, text, timeout=20):
        """Waits for text on the console after the last match; returns the line it is on."""
        needle = text.encode()
        deadline = time.monotonic() + timeout
        while True:
            i = self.out.find(needle, self.pos)
            # Only a complete line counts (or whatever is left once the vmm has exited).
            end = self.out.find(b"\n", i) if i >= 0 else -1
            if i >= 0 and (end >= 0 or self.proc.poll() is not None):
                start = self.out.rfind(b"\n", 0, i) + 1
                end = len(self.out) if end < 0 else end
                self.pos = i + len(needle)
                return self.out[start:end].decode(errors="replace").strip()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {text!r}\n{self.transcript()}")
            if not self._pump(min(left, 0.2)) and self.proc.poll() is not None:
                # drain anything left, then fail if still absent
                while self._pump(0.05):
                    pass
                if self.out.find(needle, self.pos) < 0:
                    raise AssertionError(f"vmm exited ({self.proc.returncode}) before {text!r}\n"
                                         f"{self.transcript()}")

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def command(self, line, expect, timeout=20):
        self.send(line)
        return self.expect(expect, timeout)

    def wait(self, timeout=20):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"vmm did not exit within {timeout}s\n{self.transcript()}")
            self._pump(0.1)
        while self._pump(0.05):
            pass
        return self.proc.returncode

    def expect_log(self, text, timeout=30):
        """Waits for text in the vmm's log (stderr)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.err:
            if self.proc.poll() is not None and not self._pump(0.05):
                raise AssertionError(f"vmm exited before logging {text!r}\n{self.transcript()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the vmm log in {timeout}s\n"
                                     f"{self.transcript()}")
            self._pump(0.05)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def transcript(self):
        return ("--- console ---\n" + self.out.decode(errors="replace") +
                "\n--- vmm log ---\n" + self.err.decode(errors="replace"))


def incoming(vmm, uri, *args, wrapper=()):
    """A `vmm --incoming URI` destination, returned once it listens (a source
    that connects earlier is refused: slow hosts made fixed sleeps flaky)."""
    g = Guest(vmm, None, ("--incoming", uri, *args), wrapper=wrapper)
    g.expect_log("waiting for a migration on")
    return g


class Client:
    """A raw control-socket client: line-delimited JSON."""

    def __init__(self, path, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.s.settimeout(timeout)
        self.buf = b""
        self.events = []
        self.next_id = 1

    def line(self):
        while b"\n" not in self.buf:
            data = self.s.recv(65536)
            if not data:
                raise EOFError("control socket closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send_raw(self, text):
        self.s.sendall(text.encode() + b"\n")

    def close(self):
        self.s.close()

    def call(self, cmd, **args):
        rid = self.next_id
        self.next_id += 1
        self.send_raw(json.dumps({"id": rid, "cmd": cmd, **args}))
        return self.reply(rid)

    def reply(self, rid):
        while True:
            msg = self.line()
            if "event" in msg:
                self.events.append(msg)
                continue
            if msg.get("id") == rid:
                return msg

    def wait_event(self, name, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e["event"] == name:
                    return e
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            msg = self.line()
            if "event" in msg:
                self.events.append(msg)


def check(cond, msg, guest=None):
    if not cond:
        raise AssertionError(msg + ("\n" + guest.transcript() if guest else ""))
