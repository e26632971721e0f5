"""Run one namespace operation in a process of our own, and hold it there.

``python -m nstrace.check.nsop SPEC`` (SPEC is JSON) performs a single clone,
clone3, unshare or setns with exact arguments, prints one JSON line
describing what happened (its pid, the return value or errno, the child's
pid, the /proc/<pid>/ns links of itself and of the child, and with
``inside`` what the new namespaces look like from inside), then keeps itself
and any child alive until its stdin closes. The launcher and the tests trace
it and compare the kernel record with that line while the processes exist.

SPEC keys: op (clone|clone3|unshare|setns), flags (int), ns_path (setns: a
file to open, e.g. /proc/123/ns/net), pidfd_of (setns: a pid), fd (setns: a
raw fd number), uid (drop to this uid, keeping no capabilities, before the
call), inside (report the inside view), fork_after (fork once after the call,
so the child enters a new pid or time namespace), rootfs (clone: the child
pivots into this directory, as the seeds' container does).
"""

import ctypes
import json
import os
import sys

from ..kernel import flags as fl
from ..linux import procns, syscalls
from . import inside as inside_mod

PR_SET_DUMPABLE = 4
WALL = 0x40000000  # __WALL, include/uapi/linux/wait.h: the child's exit signal may not be SIGCHLD


def _drop_to(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to non-root: all capabilities go
    # The uid change cleared "dumpable", which makes /proc/self/ns root-only
    # (fs/proc/base.c); set it back so we can read our own links.
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def _new_types(flags, op):
    return set(fl.requested_types(flags, op))


def _child(go_r, facts_w, types, want_inside, rootfs=None, empty=None):
    """A new child: wait for the parent's go (uid maps written), report the inside view, hold.
    empty: (a /proc and the old root, opened before) for an empty mount namespace."""
    os.read(go_r, 1)
    mounts = inside_mod.leave_empty_root(*empty) if empty else None
    facts = inside_mod.view(types - {"mnt"} if empty else types) if want_inside else {}
    if want_inside and empty:
        facts["mounts"] = mounts
    if rootfs:
        facts["container"] = inside_mod.enter_rootfs(rootfs)
    os.write(facts_w, (json.dumps(facts) + "\n").encode())
    os.close(facts_w)
    os.read(go_r, 1)  # released when the parent closes its end
    os._exit(0)


def _spawn(call, types, want_inside, map_user, rootfs=None, empty=None):
    """Make a child with call() (clone, clone3, or fork); return (pid, inside facts, release fd)."""
    go_r, go_w = os.pipe()
    facts_r, facts_w = os.pipe()
    pid = call()
    if pid == 0:
        os.close(go_w)
        os.close(facts_r)
        _child(go_r, facts_w, types, want_inside, rootfs, empty)
    os.close(go_r)
    os.close(facts_w)
    if map_user:
        inside_mod.write_id_maps(pid, *map_user)
    os.write(go_w, b"g")
    with os.fdopen(facts_r) as f:
        facts = json.loads(f.readline() or "{}")
    return pid, facts, go_w


def run(spec):
    op = spec["op"]
    flags = int(spec.get("flags", 0))
    want_inside = bool(spec.get("inside"))
    fd = -1
    if op == "setns":
        if "pidfd_of" in spec:
            fd = syscalls.pidfd_open(int(spec["pidfd_of"]))
        elif "ns_path" in spec:
            fd = os.open(spec["ns_path"], os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = int(spec.get("fd", -1))
    if "uid" in spec:
        _drop_to(int(spec["uid"]))

    types = _new_types(flags, op)
    # An empty mount namespace has no /proc: inside.leave_empty_root() needs these, opened before
    empty = (os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC),
             os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) if fl.empty_mount_ns(flags, op) else None
    mounts = None
    outside_ids = os.getuid(), os.getgid()  # inside a new user ns these read as the overflow id
    report = {"pid": os.getpid(), "tid": os.getpid(), "op": op, "flags": flags, "fd": fd,
              "ret": None, "errno": None, "child_pid": None}
    release = []
    try:
        if op in ("clone", "clone3"):
            call = syscalls.clone if op == "clone" else syscalls.clone3
            pid, facts, go_w = _spawn(lambda: call(flags), types, want_inside,
                                      outside_ids if "user" in types else None, spec.get("rootfs"), empty)
            report["ret"] = report["child_pid"] = pid
            report["inside"] = facts
            release.append((pid, go_w))
        elif op == "unshare":
            report["ret"] = syscalls.unshare(flags)
            mounts = inside_mod.leave_empty_root(*empty) if empty else None
        elif op == "setns":
            report["ret"] = syscalls.setns(fd, flags)
        else:
            raise SystemExit(f"nsop: unknown op {op!r}")
    except OSError as e:
        report["ret"] = -e.errno
        report["errno"] = e.errno

    if op in ("unshare", "setns") and report["errno"] is None:
        if op == "setns" and not types and "ns_path" in spec:
            types = {os.readlink(spec["ns_path"]).split(":")[0]} if spec["ns_path"].startswith("/proc") else set()
        if "user" in types and op == "unshare":
            inside_mod.write_id_maps(os.getpid(), *outside_ids)
        if want_inside:
            report["inside"] = inside_mod.view(types - {"pid", "time"} - ({"mnt"} if empty else set()))
            if empty:
                report["inside"]["mounts"] = mounts
        if spec.get("fork_after") or (want_inside and types & {"pid", "time"}):
            # pid and time namespaces are entered by the next child, not by the caller
            pid, facts, go_w = _spawn(os.fork, types, want_inside, None)
            report["fork_child"] = pid
            report["fork_child_ns"] = procns.ns_links(pid)
            report["fork_inside"] = facts
            release.append((pid, go_w))

    report["ns"] = procns.ns_links(os.getpid())
    report["start_ticks"] = procns.start_ticks(os.getpid())
    if report["child_pid"]:
        report["child_ns"] = procns.ns_links(report["child_pid"])
    print(json.dumps(report), flush=True)

    sys.stdin.read()  # hold until released
    for pid, go_w in release:
        os.close(go_w)
        os.waitpid(pid, WALL)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
