"""Every namespace type created by unshare, clone and clone3, and joined by setns,
traced on the running kernel and compared with /proc of the live process."""

import errno
import os
import subprocess
import sys
import time

import pytest
from nshelpers import flag, nsop, wait_for

from nstrace.kernel import flags as fl
from nstrace.record import layout
from nstrace.tracing.tracer import Options, Tracer

TYPES = list(fl.NS_TYPES)

# Which /proc/<pid>/ns entries each operation changes, per namespace type
# (kernel/nsproxy.c, kernel/fork.c, kernel/time/namespace.c; checked on 6.18):
# unshare of pid or time only changes the *_for_children entry; a clone
# child is born inside both; setns into a time ns switches the caller at once.
UNSHARE_CHANGES = {"pid": ["pid_for_children"], "time": ["time_for_children"]}
CLONE_CHANGES = {"pid": ["pid", "pid_for_children"], "time": ["time", "time_for_children"]}
SETNS_CHANGES = {"pid": ["pid_for_children"], "time": ["time", "time_for_children"]}


def expected(table, ns_type):
    return table.get(ns_type, [ns_type])


def assert_ns_ids(rec):
    """On kernels with ns_common.ns_id (6.18+) every changed entry has a new 64-bit id."""
    if not any(rec.ns_id_before.values()):
        return
    for entry in rec.changed:
        assert rec.ns_id_after[entry] and rec.ns_id_after[entry] != rec.ns_id_before[entry]


@pytest.mark.parametrize("ns_type", TYPES)
def test_unshare(tracer, ns_type):
    with nsop({"op": "unshare", "flags": flag(ns_type)}) as rep:
        assert rep["ret"] == 0, rep
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "unshare")
        assert rec.flags == [fl.NS_TYPES[ns_type]]
        assert rec.raw_flags == flag(ns_type)
        assert (rec.ret, rec.errno, rec.child_pid) == (0, None, None)
        assert rec.changed == expected(UNSHARE_CHANGES, ns_type)
        if ns_type == "pid":
            # /proc hides pid_for_children until the new pid ns has its init
            # (kernel/pid_namespace.c pidns_for_children_get)
            assert "pid_for_children" not in rep["ns"]
            assert rec.proc_check["unseen"] == ["pid_for_children"]
        assert {k: v for k, v in rec.ns_after.items() if k in rep["ns"]} == rep["ns"], \
            "kernel record and /proc links differ"
        # unseen: nothing the call changed could be compared (pid_for_children is all it changed)
        assert rec.proc_check["status"] == ("unseen" if ns_type == "pid" else "match"), rec.proc_check
        assert rec.nsproxy["before"] and rec.nsproxy["after"]
        if ns_type != "user":  # a user ns lives in the cred, not the nsproxy
            assert rec.nsproxy["before"] != rec.nsproxy["after"]
        assert_ns_ids(rec)


# clone() cannot ask for CLONE_NEWTIME (test_clone_newtime_is_a_signal): clone3 does.
CLONE_CASES = [(op, t) for op in ("clone", "clone3") for t in TYPES if (op, t) != ("clone", "time")]


@pytest.mark.parametrize("op,ns_type", CLONE_CASES)
def test_clone(tracer, ns_type, op):
    with nsop({"op": op, "flags": flag(ns_type)}) as rep:
        assert rep["ret"] > 0, rep
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == op)
        assert fl.NS_TYPES[ns_type] in rec.flags
        assert rec.ret == rep["child_pid"] == rec.child_pid == rec.child_tid
        assert rec.exit_signal == "SIGCHLD"
        assert rec.changed == expected(CLONE_CHANGES, ns_type)
        assert rec.ns_before == rep["ns"], "the caller's own namespaces"
        assert rec.ns_after == rep["child_ns"], "the child's namespaces, as /proc shows them"
        assert rec.proc_check == {"status": "match", "pid": rep["child_pid"]}
        assert_ns_ids(rec)


def test_clone_newtime_is_a_signal():
    """clone() cannot create a time namespace: 0x80 lands in the exit-signal byte.

    kernel/fork.c SYSCALL_DEFINE5(clone) splits flags into flags & ~CSIGNAL and
    exit_signal = flags & CSIGNAL, and (unlike clone3) does not validate the
    signal: the child is born in the parent's time ns with exit signal 0x91.
    That is a plain fork, so only --all (trace_all) shows it.
    """
    with Tracer(Options(trace_all=True, poll_ms=20)) as tracer, \
            nsop({"op": "clone", "flags": flag("time")}) as rep:
        assert rep["ret"] > 0, rep
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "clone")
        assert rec.child_pid == rep["child_pid"]
        assert "CLONE_NEWTIME" not in rec.flags, "clone()'s low byte is a signal, not flags"
        assert rec.exit_signal == str(0x80 | 17)
        assert rec.changed == []


@pytest.mark.parametrize("ns_type", TYPES)
def test_setns_nsfs(tracer, ns_holder, ns_type):
    path = f"/proc/{ns_holder}/ns/{ns_type}"
    target_inode = os.stat(path).st_ino
    with nsop({"op": "setns", "ns_path": path, "flags": flag(ns_type)}) as rep:
        assert rep["ret"] == 0, rep
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "setns")
        assert rec.flags == [fl.NS_TYPES[ns_type]]
        assert rec.target == {"fd": rep["fd"], "kind": "nsfs", "type": ns_type, "inode": target_inode,
                              "ns_id": rec.target["ns_id"], "container": None}  # the holder's: no container
        assert rec.changed == expected(SETNS_CHANGES, ns_type)
        for entry in rec.changed:
            assert rec.ns_after[entry] == target_inode
        assert rec.ns_after == rep["ns"]
        assert rec.proc_check["status"] == "match", rec.proc_check


def test_setns_nstype_zero_still_resolves_the_type(tracer, ns_holder):
    path = f"/proc/{ns_holder}/ns/uts"
    with nsop({"op": "setns", "ns_path": path, "flags": 0}) as rep:
        assert rep["ret"] == 0
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "setns")
        assert rec.raw_flags == 0 and rec.flags == []
        assert rec.target["kind"] == "nsfs" and rec.target["type"] == "uts"
        assert rec.changed == ["uts"]


def test_setns_pidfd_several_types(tracer, ns_holder):
    nstype = flag("uts") | flag("ipc") | flag("net")
    with nsop({"op": "setns", "pidfd_of": ns_holder, "flags": nstype}) as rep:
        assert rep["ret"] == 0, rep
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "setns")
        # the holder is no container's process: its container is said, as null
        assert rec.target == {"fd": rep["fd"], "kind": "pidfd", "pid": ns_holder, "container": None}
        assert rec.changed == ["uts", "ipc", "net"]
        for entry in rec.changed:
            assert rec.ns_after[entry] == os.stat(f"/proc/{ns_holder}/ns/{entry}").st_ino
        assert rec.proc_check["status"] == "match"


# --- failing calls: traced with their errno, nothing changed ----------------

def test_setns_bad_fd(tracer):
    with nsop({"op": "setns", "fd": 987, "flags": 0}) as rep:
        assert rep["errno"] == errno.EBADF
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "setns")
        assert (rec.ret, rec.errno) == (-errno.EBADF, "EBADF")
        assert rec.target == {"fd": 987, "kind": "badfd"}
        assert rec.changed == [] and rec.ns_after == rec.ns_before


def test_setns_wrong_nstype(tracer, ns_holder):
    with nsop({"op": "setns", "ns_path": f"/proc/{ns_holder}/ns/uts", "flags": flag("net")}) as rep:
        assert rep["errno"] == errno.EINVAL
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "setns")
        assert rec.errno == "EINVAL" and rec.flags == ["CLONE_NEWNET"]
        assert rec.target["type"] == "uts", "the fd's real type, whatever nstype claimed"
        assert rec.changed == []


@pytest.mark.parametrize("op,flags", [
    ("clone", fl.CLONE_FLAGS["CLONE_NEWNS"] | fl.CLONE_FLAGS["CLONE_FS"]),
    ("clone", fl.CLONE_FLAGS["CLONE_NEWUSER"] | fl.CLONE_FLAGS["CLONE_FS"]),
    ("clone3", fl.CLONE_FLAGS["CLONE_NEWPID"] | fl.CLONE_FLAGS["CLONE_THREAD"]
     | fl.CLONE_FLAGS["CLONE_SIGHAND"] | fl.CLONE_FLAGS["CLONE_VM"]),
])
def test_einval_combinations(tracer, op, flags):
    with nsop({"op": op, "flags": flags}) as rep:
        assert rep["errno"] == errno.EINVAL, rep
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == op)
        assert rec.errno == "EINVAL" and rec.ret == -errno.EINVAL
        assert fl.encode_flags(rec.flags, op) == flags
        assert rec.child_pid is None and rec.ns_after is None
        assert rec.proc_check["status"] == "match", "the caller stayed where it was"


@pytest.mark.parametrize("op", ["unshare", "setns"])
def test_eperm_unprivileged(tracer, ns_holder, op):
    spec = {"op": op, "flags": flag("uts"), "uid": 65534}
    if op == "setns":
        spec["ns_path"] = f"/proc/{ns_holder}/ns/uts"
    with nsop(spec) as rep:
        assert rep["errno"] == errno.EPERM, rep
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == op)
        assert (rec.errno, rec.uid) == ("EPERM", 65534)
        assert rec.changed == []


def test_fork_entering_a_pid_namespace_is_kept(tracer):
    """A plain fork after unshare(CLONE_NEWPID) moves the child into the new pid ns:
    the kernel filter keeps it although it carries no CLONE_NEW* flag."""
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "true"])
    [rec] = wait_for(tracer, lambda r: r.pid == proc.pid and r.op in ("clone", "clone3"))
    assert proc.wait() == 0
    assert not fl.ns_types_in(rec.raw_flags & ~fl.CSIGNAL), "a plain fork"
    assert "pid" in rec.changed and rec.ns_after["pid"] == rec.ns_before["pid_for_children"]


# --- a reused in-flight slot -------------------------------------------------

SAME_THREAD_OPS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pid = libc.syscall(56, 0x04000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWUTS | SIGCHLD), fork-like
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
assert libc.setns(fd, 0x04000000) == 0 and libc.unshare(0x04000000) == 0
"""


def test_reused_slot_keeps_nothing_of_the_record_before(tracer):
    """One thread's clone, setns and unshare go through the same in-flight slot
    (same tid), which the entry does not zero as a whole: each record carries
    only its own operation's fields, and the padding after comm is zero."""
    proc = subprocess.Popen([sys.executable, "-c", SAME_THREAD_OPS])
    assert proc.wait(timeout=30) == 0
    mine, deadline = {}, time.monotonic() + 5
    while len(mine) < 3 and time.monotonic() < deadline:
        tracer.poll_json(20)
        for i in range(tracer._batch.n):
            raw = tracer._batch.raw(i)
            head = layout.EventHead.from_buffer_copy(raw)
            if head.pid == proc.pid:
                mine.setdefault(layout.OPS.get(head.op), (head, raw))
    assert set(mine) == {"clone", "setns", "unshare"}, mine.keys()
    for op, (head, raw) in mine.items():
        comm_end = layout.EventHead.comm.offset + layout.EventHead.comm.size
        assert raw[comm_end:layout.EventHead.before.offset] == b"\0" * 4, op
        if head.nsteps == 0:
            assert head.steps_dropped == 0, op
        if op != "clone":
            assert (head.child_pid, head.child_tid, head.child_start_ns) == (0, 0, 0), op
        if op != "setns":
            assert (head.target_kind, head.target_nstype, head.target_inum, head.target_ns_id,
                    head.target_pid) == (0, 0, 0, 0, 0), op
    assert mine["clone"][0].child_pid and mine["setns"][0].target_inum
