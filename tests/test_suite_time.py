"""No test may depend on how long the suite has run: a fresh machine's first lab downloads can make
the same suite run many minutes longer than a warm machine's."""

import time

import psutil

from nshelpers import namespace_holder


def test_session_holder_sleeps_until_the_session_ends(ns_holder):
    """The session-wide namespace holder is not on a timer: with `sleep 600` every setns test after
    the tenth minute of a fresh machine's run found it gone."""
    with open(f"/proc/{ns_holder}/cmdline", "rb") as f:
        argv = f.read().rstrip(b"\0").split(b"\0")
    assert argv == [b"sleep", b"infinity"], argv


def test_the_holder_is_gone_after_its_block():
    """And nothing of it outlives the session: its sleep, pid 1 of a pid namespace of its own, would
    be reparented to init and sleep on forever."""
    with namespace_holder() as pid:
        assert psutil.pid_exists(pid)
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"holder {pid} still runs"
        time.sleep(0.02)
