"""A /proc check claims only what it compared: a task caught exiting is gone, a call whose change
/proc cannot show yet is unseen, and a difference lost events explain is never a mismatch.

Real processes on the real kernel: a pid namespace's init held in do_exit() by a zombie it cannot
reap, unshare(CLONE_NEWPID) before and after its first child, a ring buffer too small for what
a process does.
"""

import os
import signal
import time

import pytest
from nshelpers import wait_for

from nstrace.kernel import flags as fl
from nstrace.linux import procns, syscalls

pytestmark = pytest.mark.root("makes namespaces and loads BPF programs")

NEWUTS = fl.CLONE_FLAGS["CLONE_NEWUTS"]
NEWPID = fl.CLONE_FLAGS["CLONE_NEWPID"]


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def exiting_init():
    """(pid, its pipe) of a pid namespace's init that unshared its UTS namespace, was killed, and
    is held in do_exit() after its namespaces were released.

    Its exit waits in zap_pid_ns_processes() until every pid of its namespace is freed
    (kernel/pid_namespace.c, 6.1 to 6.18), which comes after exit_task_namespaces() in do_exit()
    (kernel/exit.c: exit_notify() -> forget_original_parent() -> find_child_reaper()). A zombie
    made in its namespace by a process outside it (setns, then fork), whose parent does not reap
    it, keeps one pid: the init stays there, alive but with no nsproxy, until it is reaped.
    """
    ready_r, ready_w = os.pipe()
    init = syscalls.clone(NEWPID)
    if init == 0:  # pid 1 of a new pid namespace
        try:
            syscalls.unshare(NEWUTS)
            os.write(ready_w, b"x")
            while True:
                signal.pause()
        finally:
            os._exit(0)
    assert os.read(ready_r, 1) == b"x"
    reap_r, reap_w = os.pipe()
    outsider = os.fork()
    if outsider == 0:  # outside the namespace: its zombie child is inside
        try:
            fd = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY)
            syscalls.setns(fd, NEWPID)
            zombie = os.fork()
            if zombie == 0:
                os._exit(0)
            os.write(ready_w, b"x")
            os.read(reap_r, 1)  # told to: reap it, which lets the init finish exiting
            os.waitpid(zombie, 0)
        finally:
            os._exit(0)
    assert os.read(ready_r, 1) == b"x"
    os.kill(init, signal.SIGKILL)
    try:
        _wait(lambda: set(procns.ns_links(init) or ()) == {"pid", "user"})
        assert procns._stat(init)[0] not in "ZX"  # not a zombie: still in do_exit()
        yield init
    finally:
        os.write(reap_w, b"x")
        os.waitpid(outsider, 0)
        os.waitpid(init, 0)


def test_a_task_caught_exiting_is_gone_not_a_match(tracer, exiting_init):
    [rec] = wait_for(tracer, lambda r: r.pid == exiting_init and r.op == "unshare")
    # /proc shows its user and pid entries alone, and they agree: not a match of what unshare did
    assert rec.proc_check == {"status": "gone", "pid": exiting_init, "reason": "exiting"}


def test_unseen_until_the_first_child_then_match(tracer):
    """unshare(CLONE_NEWPID) changes only pid_for_children, which /proc hides until the namespace
    has its init (pidns_for_children_get(), kernel/pid_namespace.c): nothing it did can be compared."""
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.unshare(NEWPID)
            os.write(done_w, b"1")
            os.read(go_r, 1)
            child = os.fork()  # pid 1 of the new namespace: now /proc shows pid_for_children
            if child == 0:
                os.read(go_r, 1)
                os._exit(0)
            syscalls.unshare(NEWUTS)
            os.write(done_w, b"2")
            os.read(go_r, 1)
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        finally:
            os._exit(0)
    try:
        assert os.read(done_r, 1) == b"1"
        [first] = wait_for(tracer, lambda r: r.pid == pid and r.op == "unshare")
        assert first.changed == ["pid_for_children"]
        assert first.proc_check == {"status": "unseen", "pid": pid, "unseen": ["pid_for_children"]}
        os.write(go_w, b"x")
        assert os.read(done_r, 1) == b"2"
        [second] = wait_for(tracer, lambda r: r.pid == pid and r.op == "unshare")
        assert second.proc_check == {"status": "match", "pid": pid}
    finally:
        os.write(go_w, b"xx")
        os.waitpid(pid, 0)


def test_check_compares_what_the_call_changed(tracer):
    """procns.check() on a real task: match needs an entry the call changed among those compared."""
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.unshare(NEWPID)
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        [rec] = wait_for(tracer, lambda r: r.pid == pid and r.op == "unshare")
        args = (pid, pid, rec.start_time_ns, rec.ns_after, rec.ns_id_after)
        assert procns.check(*args, changed=["pid_for_children"])["status"] == "unseen"
        assert procns.check(*args, changed=["uts"])["status"] == "match"  # had it changed uts
        assert procns.check(*args)["status"] == "match"  # no changed: any entry compared will do
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
