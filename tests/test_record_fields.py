"""Fields every record carries for the other layers: the caller's cgroup (for the container view)."""

import os
import subprocess
import sys
import tempfile

import pytest

from nstrace.linux import mounts

from nshelpers import flag, wait_for

pytestmark = pytest.mark.root("loads BPF programs and makes cgroups")

UNSHARE_ON_CUE = """
import ctypes, sys
sys.stdin.readline()
sys.exit(ctypes.CDLL(None, use_errno=True).unshare(0x04000000))  # CLONE_NEWUTS
"""


def cgroup2_root():
    """Where the cgroup v2 hierarchy is mounted, mounting it on a temporary directory if nowhere
    (a lab guest mounts none). Returns (path, mounted_here)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4], False
    path = tempfile.mkdtemp(prefix="nstrace-cg2-")
    mounts.mount("none", path, "cgroup2")
    return path, True


def test_cgroup_id_is_the_callers_cgroup_at_the_call(tracer):
    """A process moved into a new cgroup, then unshare(): the record's cgroup_id is that
    directory's inode number (kernel/cgroup/cgroup.c: a cgroup's id is its kernfs node id,
    which is the directory's inode number on 64-bit, 5.10 to 7.2), not the cgroup it started in."""
    root, mounted = cgroup2_root()
    group = os.path.join(root, f"nstrace-test-{os.getpid()}")
    os.mkdir(group)
    try:
        proc = subprocess.Popen([sys.executable, "-c", UNSHARE_ON_CUE], stdin=subprocess.PIPE, text=True)
        try:
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(proc.pid))
            proc.stdin.write("go\n")
            proc.stdin.close()
            assert proc.wait(timeout=10) == 0
            [rec] = wait_for(tracer, lambda r: r.pid == proc.pid and r.op == "unshare")
        finally:
            proc.kill()
            proc.wait()
        assert rec.flags == ["CLONE_NEWUTS"] and rec.raw_flags == flag("uts")
        assert rec.cgroup_id == os.stat(group).st_ino
        assert rec.cgroup_id != os.stat(root).st_ino
    finally:
        os.rmdir(group)
        if mounted:
            mounts.umount(root)
            os.rmdir(root)
