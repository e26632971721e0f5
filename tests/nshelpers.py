"""Helpers for tests that trace real namespace operations."""

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from nstrace.kernel import flags as fl

ROOT = Path(__file__).resolve().parent.parent
NSTRACE = ROOT / ".venv" / "bin" / "nstrace"
PYTHON = sys.executable
# Where child Pythons of the tests run: outside the checkout, so that they import nstrace as
# installed in .venv, as the tests do (tests/conftest.py), not this checkout's files.
ELSEWHERE = "/"


def wait_for(tracer, predicate, timeout=5.0, count=1):
    """Poll the tracer until `count` records satisfy predicate; return them."""
    found = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found += [r for r in tracer.poll(20) if predicate(r)]
        if len(found) >= count:
            return found
    raise AssertionError(f"no record matched within {timeout}s (found {len(found)} of {count})")


@contextmanager
def nsop(spec):
    """Run `python -m nstrace.check.nsop SPEC`; yield its report while it holds still."""
    proc = subprocess.Popen([PYTHON, "-m", "nstrace.check.nsop", json.dumps(spec)], cwd=ELSEWHERE,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, f"nsop {spec} printed nothing"
        yield json.loads(line)
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


@contextmanager
def namespace_holder():
    """A process in new namespaces of all eight types, to setns into; its pid while the block runs,
    gone after it.

    Created by util-linux unshare with --fork: the forked child (sleep) is the one inside the new
    PID and time namespaces. It sleeps until the block ends, not on a timer: on a fresh machine the
    lab's first kernel downloads alone outlast any fixed sleep. --kill-child: should unshare die
    first, the kernel kills the child too (PR_SET_PDEATHSIG); else the child, pid 1 of its own pid
    namespace and reparented to init, would sleep on forever.
    """
    proc = subprocess.Popen(["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--user", "--cgroup", "--time",
                             "--fork", "--kill-child", "sleep", "infinity"])
    kid = None
    try:
        deadline = time.monotonic() + 5
        while kid is None:
            assert time.monotonic() < deadline, "namespace holder did not start"
            kids = psutil.Process(proc.pid).children()
            if kids and kids[0].name() == "sleep":
                kid = kids[0]
            else:
                time.sleep(0.02)
        yield kid.pid
    finally:
        if kid is not None:
            kid.kill()
        proc.kill()
        proc.wait()


def flag(ns_type):
    return fl.CLONE_FLAGS[fl.NS_TYPES[ns_type]]


def loader_programs():
    """Ids of the BPF programs loaded now that are nstrace's syscall bodies."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    return [p["id"] for p in json.loads(out.stdout or "[]") if p.get("name") in ("sys_enter", "sys_exit")]


def programs_left_after(before, timeout=10.0):
    """The ids of nstrace's syscall bodies not in `before` still loaded once they are gone or
    `timeout` seconds have passed: a holder detaches them moments after nstrace exits (bpf/teardown.py)."""
    deadline = time.monotonic() + timeout
    while set(loader_programs()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    return set(loader_programs()) - before
