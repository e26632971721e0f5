"""fork(2) and vfork(2) that move their child into a namespace are records too.

After unshare(CLONE_NEWPID) the caller's next child is the first process of the new pid namespace
(kernel/fork.c copy_process() -> alloc_pid(pid_ns_for_children)). dash and Python's subprocess make
that child with vfork(2), not clone(2) (strace shows `vfork()`), so a trace of clone alone would
never see the namespace get its init. Real programs: util-linux unshare, dash, and a raw fork(2).
"""

import json
import subprocess
import sys

import pytest

from nshelpers import NSTRACE

pytestmark = pytest.mark.root("loads BPF programs and makes pid namespaces")

FORK = "import ctypes, os\nlibc = ctypes.CDLL(None)\n" \
       "libc.unshare(0x20000000)\n" \
       "pid = libc.syscall(57)\n" \
       "os._exit(0) if pid == 0 else (print(pid, flush=True), os.waitpid(pid, 0))\n"  # fork(2): 57 on x86-64


def watch(*args, out=None):
    res = subprocess.run([str(NSTRACE), "watch", "--json", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    if out is not None:
        out.append(res)
    return [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]  # COMMAND keeps stdout


def test_dash_vforks_the_init_of_the_pid_namespace_unshare_made():
    """util-linux unshare --pid without --fork: dash stays in the old pid namespace, and the child it
    vforks for /bin/true is the first process of the new one (its init: once it exits, the namespace
    takes no more processes, so dash's script stops at one child)."""
    recs = watch("--", "unshare", "--pid", "dash", "-c", "/bin/true; :")
    [vfork] = [r for r in recs if r["op"] == "vfork"]
    assert vfork["comm"] == "dash" and vfork["flags"] == ["CLONE_VM", "CLONE_VFORK"], vfork
    assert vfork["ret"] == vfork["child_pid"], "what vfork returns: the child's pid in dash's (the first) pid ns"
    assert vfork["exit_signal"] == "SIGCHLD"
    assert vfork["ns_after"]["pid"] != vfork["ns_before"]["pid"]
    assert vfork["ns_after"]["pid"] == vfork["ns_before"]["pid_for_children"] and vfork["changed"] == ["pid"]
    assert vfork["duration_us"] == 0 and vfork["kernel_path"] == []


def test_a_raw_fork_into_a_new_pid_namespace():
    [rec] = [r for r in watch("--", sys.executable, "-c", FORK) if r["op"] == "fork"]
    assert rec["flags"] == [] and rec["ret"] == rec["child_pid"] and rec["changed"] == ["pid"], rec


def test_what_a_fork_returns_in_a_nested_pid_namespace():
    """The caller is pid 1 of a pid namespace of its own (unshare --pid --fork), unshares another and
    forks: fork returns the child's pid as the caller's namespace numbers it, not the init
    namespace's, and the record's ret is that number."""
    run = []
    recs = watch("--", "unshare", "--pid", "--fork", sys.executable, "-c", FORK, out=run)
    [rec] = [r for r in recs if r["op"] == "fork"]
    told = int(run[0].stdout.splitlines()[0])
    assert rec["ret"] == told != rec["child_pid"], (rec["ret"], told, rec["child_pid"])


def test_a_vfork_that_moves_nothing_is_dropped_unless_all():
    recs = watch("--", "dash", "-c", "/bin/true; /bin/true")
    assert not [r for r in recs if r["op"] == "vfork"], recs
    every = watch("--all", "--", "dash", "-c", "/bin/true; /bin/true")
    assert len([r for r in every if r["op"] == "vfork"]) == 2, every
