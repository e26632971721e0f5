"""Processes that name themselves as an attacker would, make namespace operations, then hold still.

A victim is a child of the test process (so a tracer with --pid of ours
follows it): it renames itself with prctl(PR_SET_NAME), makes its
operations one after the other, says so, and waits, in the namespaces it
ended in, until it is released; /proc stays as it left it meanwhile.
"""

import ctypes
import os
import select
import signal

from nstrace.kernel import flags as fl
from nstrace.linux import syscalls

PR_SET_NAME = 15
NEWUTS = fl.CLONE_FLAGS["CLONE_NEWUTS"]
NEWIPC = fl.CLONE_FLAGS["CLONE_NEWIPC"]
NEWNET = fl.CLONE_FLAGS["CLONE_NEWNET"]
VFORK = fl.CLONE_FLAGS["CLONE_VFORK"]

# Names a process may give itself (15 bytes at most): JSON and terminal escapes, HTML, a
# tab, a newline, UTF-8, bytes that are not UTF-8, a bidi override, C1 controls.
HOSTILE_NAMES = [
    b'q"uo\\te', b"tab\there", b"nl\nline", b"esc\x1b[31mred", b"\x1b]0;title\x07", b"<script>x</s",
    b"a&b>c", b"\xc3\xbctf8-\xc3\xb1", b"\xff\xfe-not-utf8", b"\xe2\x80\xaebidi", b"c1\xc2\x85\xc2\x9b",
    b"\x7fdel\x01", b"plain-name",
]

_libc = ctypes.CDLL(None, use_errno=True)


def set_name(comm):
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(comm), 0, 0, 0)


def _reap(pid):
    os.waitpid(pid, 0)


def _clone_and_exit(flags, call):
    pid = call(flags)
    if pid == 0:
        os._exit(0)
    _reap(pid)


def _vfork_then_move():
    """clone(CLONE_VFORK|CLONE_NEWUTS): the child unshares its IPC namespace and execs, and only
    then does its parent's clone return: the child's record comes before its parent's."""
    pid = syscalls.clone(VFORK | NEWUTS)
    if pid == 0:
        try:
            syscalls.unshare(NEWIPC)
            os.execv("/bin/sleep", ["sleep", "60"])
        finally:
            os._exit(1)
    return pid


def _call(fn, *args):
    fn(*args)


def _failing(call, *args):
    try:
        call(*args)
    except OSError:
        return
    raise AssertionError("the call was meant to fail")


# Each operation: what the victim does, given an fd of the UTS namespace it started in. What one
# returns is a process of the victim's own, killed when it is released.
OPERATIONS = {
    "unshare": lambda home: _call(syscalls.unshare, NEWUTS),
    "unshare-ipc": lambda home: _call(syscalls.unshare, NEWUTS | NEWIPC),
    "setns-back": lambda home: _call(syscalls.setns, home, NEWUTS),
    "clone": lambda home: _clone_and_exit(NEWUTS, syscalls.clone),
    "clone3": lambda home: _clone_and_exit(NEWUTS | NEWNET, syscalls.clone3),
    "setns-badfd": lambda home: _failing(syscalls.setns, -1, 0),
    "vfork-move": lambda home: _vfork_then_move(),
}
# The records (op, succeeded) each operation leaves, in order: the vfork child's unshare first.
RECORDS = {
    "unshare": [("unshare", True)], "unshare-ipc": [("unshare", True)], "setns-back": [("setns", True)],
    "clone": [("clone", True)], "clone3": [("clone3", True)], "setns-badfd": [("setns", False)],
    "vfork-move": [("unshare", True), ("clone", True)],
}


class Victim:
    """Fork a victim that, for each name of `comms`, renames itself so and makes `ops` (names of
    OPERATIONS), then holds until release(). With gated, it waits for start() before all that."""

    def __init__(self, comms, ops, gated=False):
        self.comms, self.ops = list(comms), list(ops)
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        start_r, start_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the victim
            code = 1
            try:
                for fd in (go_w, done_r, start_w):
                    os.close(fd)
                if gated:
                    os.read(start_r, 1)
                home = os.open("/proc/self/ns/uts", os.O_RDONLY)
                keep = []
                for comm in self.comms:
                    set_name(comm)
                    keep += [OPERATIONS[op](home) for op in self.ops]
                os.write(done_w, b"x")
                os.read(go_r, 1)  # released (a byte, not EOF: victims forked later hold the pipe too)
                for pid in filter(None, keep):
                    os.kill(pid, signal.SIGKILL)
                    _reap(pid)
                code = 0
            finally:
                os._exit(code)
        for fd in (go_r, done_w, start_r):
            os.close(fd)
        self.pid, self._go, self._done, self._start = pid, go_w, done_r, start_w
        if not gated:
            self.start()

    def start(self):
        """Let it act; return once it has made every operation."""
        os.write(self._start, b"x")
        os.close(self._start)
        self._start = None
        ready, _, _ = select.select([self._done], [], [], 10)
        ok = os.read(self._done, 1) if ready else b""
        os.close(self._done)
        if ok != b"x":
            self.release()
            raise AssertionError(f"victim {self.comms} {self.ops} failed")

    def expected(self):
        """(comm, op, succeeded) of the records it made, in order; the vfork child's carry its name too."""
        return [(comm, op, ok) for comm in self.comms for name in self.ops for op, ok in RECORDS[name]]

    def release(self):
        if self._start is not None:  # never started: it must not act now
            os.kill(self.pid, signal.SIGKILL)
            os.close(self._done)
            os.close(self._start)
            self._start = None
        if self._go is not None:
            try:
                os.write(self._go, b"x")
            except BrokenPipeError:
                pass  # it is gone already
            os.close(self._go)
            self._go = None
            os.waitpid(self.pid, 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
