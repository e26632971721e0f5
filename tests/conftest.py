"""Shared fixtures: a live tracer on the real kernel, and namespace operations to trace.

Everything here runs for real: the BPF object is loaded into the running
kernel, operations are real syscalls made by real processes, and /proc is
the real one. These tests need root; CI runs them as root.
"""

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from nstrace.trace.tracer import Options, Tracer

ROOT = Path(__file__).resolve().parent.parent
@pytest.fixture(scope="session")
def session_tracer():
    if os.geteuid() != 0:
        pytest.skip("loads BPF programs into the kernel: needs root (CI runs as root)")
    with Tracer(Options(poll_ms=20)) as t:
        yield t


@pytest.fixture
def tracer(session_tracer):
    """The session's tracer, drained: what other tests did while nobody read it is gone,
    so the ring buffer has room and every record seen is this test's."""
    while session_tracer.poll(0):
        pass
    return session_tracer


@pytest.fixture(scope="session")
def ns_holder():
    """A process living in new namespaces of all eight types, to setns into.

    Created by util-linux unshare with --fork: the forked child (sleep) is
    the one inside the new PID and time namespaces.
    """
    if os.geteuid() != 0:
        pytest.skip("creates namespaces of every type: needs root (CI runs as root)")
    proc = subprocess.Popen(["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--user",
                             "--cgroup", "--time", "--fork", "sleep", "600"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            kids = psutil.Process(proc.pid).children()
            if kids and kids[0].name() == "sleep":
                yield kids[0].pid
                break
            time.sleep(0.02)
        else:
            raise AssertionError("namespace holder did not start")
    finally:
        proc.kill()
        for kid in psutil.Process(proc.pid).children(recursive=True) if psutil.pid_exists(proc.pid) else []:
            kid.kill()
        proc.wait()
