"""The tracers compared, each run the way a user runs it.

nstrace and bpftrace trace system-wide in the background while the workload
runs; strace and perf trace wrap the workload's command. A background tracer
is "live" when it says so (nstrace's stderr line, bpftrace's BEGIN probe,
which fires after every probe is attached); its first captured event is
measured separately (figures.startup).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SYSCALLS = "clone,clone3,unshare,setns"
NSTRACE = Path(sys.executable).with_name("nstrace")

# The same nine tracepoints nstrace attaches: enter/exit of the four calls and
# task_newtask; plain clones (no CLONE_NEW* flag) are dropped in the kernel as
# nstrace does by default. clone3's flags are in user memory: kept, unfiltered.
BPFTRACE_SCRIPT = r"""
BEGIN { printf("live\n"); }
tracepoint:syscalls:sys_enter_clone /args->clone_flags & 0x7e020000/ { @t[tid] = nsecs; @f[tid] = args->clone_flags; }
tracepoint:syscalls:sys_enter_clone3 { @t[tid] = nsecs; @f[tid] = 0; }
tracepoint:syscalls:sys_enter_unshare { @t[tid] = nsecs; @f[tid] = args->unshare_flags; }
tracepoint:syscalls:sys_enter_setns { @t[tid] = nsecs; @f[tid] = args->flags; }
tracepoint:task:task_newtask /@t[tid]/ { @c[tid] = args->pid; }
tracepoint:syscalls:sys_exit_clone, tracepoint:syscalls:sys_exit_clone3,
tracepoint:syscalls:sys_exit_unshare, tracepoint:syscalls:sys_exit_setns /@t[tid]/ {
  printf("%llu %d %d %s %s 0x%llx %d %d\n", nsecs, pid, tid, comm, probe, @f[tid], args->ret, @c[tid]);
  delete(@t[tid]); delete(@f[tid]); delete(@c[tid]);
}
END { clear(@t); clear(@f); clear(@c); }
"""

# The floor of this hook set: the same nine tracepoints with programs that
# only count. What nstrace costs above it is nstrace's own doing.
BPFTRACE_FLOOR_SCRIPT = r"""
BEGIN { printf("live\n"); }
tracepoint:syscalls:sys_enter_clone, tracepoint:syscalls:sys_enter_clone3,
tracepoint:syscalls:sys_enter_unshare, tracepoint:syscalls:sys_enter_setns,
tracepoint:syscalls:sys_exit_clone, tracepoint:syscalls:sys_exit_clone3,
tracepoint:syscalls:sys_exit_unshare, tracepoint:syscalls:sys_exit_setns,
tracepoint:task:task_newtask { @hits = count(); }
"""


def strace_prefix():
    return ["strace", "-f", "-o", "/dev/null", "-e", f"trace={SYSCALLS}"]


def perf_prefix():
    return ["perf", "trace", "-o", "/dev/null", "-e", SYSCALLS, "--"]


def availability():
    """{tool: None if usable, else why not}: each is tried once for real."""
    out = {"nstrace": None if NSTRACE.exists() else f"{NSTRACE} missing: run bash scripts/setup.sh"}
    for tool, argv, package in (("strace", strace_prefix() + ["true"], "strace"),
                                ("perf", perf_prefix() + ["true"], "linux-perf"),
                                ("bpftrace", ["bpftrace", "-e", "BEGIN { exit(); }"], "bpftrace")):
        if not shutil.which(argv[0]):
            out[tool] = f"{argv[0]} not installed (Debian package {package})"
            continue
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            out[tool] = None if r.returncode == 0 else \
                f"{argv[0]} fails here: {(r.stderr.strip().splitlines() or ['exit %d' % r.returncode])[-1]}"
        except subprocess.TimeoutExpired:
            out[tool] = f"{argv[0]} did not finish a trivial run within 60 s"
    return out


class Background:
    """A system-wide tracer process: start, wait until live, stop with SIGINT (as Ctrl-C)."""

    name = "?"

    def __init__(self, stdout_path=os.devnull):
        self.stdout_path = stdout_path
        self.proc = None
        self.started = None        # time.monotonic() just before exec
        self.started_wall = None   # time.time() at the same moment
        self.live_s = None         # from exec to the tracer saying it is live
        self.stop_s = None         # from SIGINT to the process gone
        self.stderr_lines = []

    def argv(self):
        raise NotImplementedError

    def is_live(self):
        raise NotImplementedError

    def start(self, timeout=60):
        self._out = open(self.stdout_path, "w")
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdout=self._out, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = self.started + timeout
        while not self.is_live():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited before going live: {' | '.join(self.stderr_lines[-3:])}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not live after {timeout} s")
            time.sleep(0.001)
        self.live_s = time.monotonic() - self.started
        return self

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def vm_hwm_kib(self):
        """Peak resident set of the tracer process so far (VmHWM), KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None

    def stop(self, timeout=60):
        """SIGINT, then wait; a tracer still there after `timeout` s is killed and counted as hung."""
        t = time.monotonic()
        self.hung = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.hung = True
                self.proc.kill()
                self.proc.wait()
        self.stop_s = time.monotonic() - t
        self._reader.join(5)
        self._out.close()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc and self.proc.returncode is None:
            self.stop()


class NstraceWatch(Background):
    """`nstrace watch --json` with stdout to a file (by default /dev/null)."""

    name = "nstrace"
    # --quick sets a small ring buffer: a full 4 MiB one takes seconds to drain at stop
    extra_args = ()
    # --baseline: another build's nstrace, measured beside this one under the name BASELINE
    baseline = None
    BASELINE = "nstrace@baseline"

    def __init__(self, stdout_path=os.devnull, executable=None):
        super().__init__(stdout_path)
        self.executable = executable or NSTRACE

    def argv(self):
        return [str(self.executable), "watch", "--json", *self.extra_args]

    def is_live(self):
        return any("tracing live" in l for l in self.stderr_lines)

    def summary(self):
        """The closing summary nstrace prints on stderr: events, lost, filtered."""
        for line in reversed(self.stderr_lines):
            if line.startswith("nstrace: summary "):
                return json.loads(line[len("nstrace: summary "):])
        return None

    def first_event_s(self, comm):
        """From exec to the exit of the first captured operation of `comm` (record ts is wall clock)."""
        with open(self.stdout_path) as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("comm") == comm:
                    return rec["ts"] - self.started_wall
        return None


class Bpftrace(Background):
    """bpftrace running BPFTRACE_SCRIPT, its output to a file (by default /dev/null)."""

    name = "bpftrace"

    def __init__(self, stdout_path, script=BPFTRACE_SCRIPT):
        # bpftrace says "live" on stdout, so its output must be a file we can read
        super().__init__(stdout_path)
        self.script = script

    def argv(self):
        return ["bpftrace", "-B", "line", "-e", self.script]

    def is_live(self):
        try:
            with open(self.stdout_path) as f:
                return "live" in f.read(4096)
        except FileNotFoundError:
            return False

    def first_event_s(self, comm):
        with open(self.stdout_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[0].isdigit() and parts[3] == comm:
                    return int(parts[0]) / 1e9 - self.started   # nsecs is CLOCK_MONOTONIC
        return None
