"""Run one namespace operation in a process of our own, and hold it there.

``python -m nstrace.nsop SPEC`` (SPEC is JSON) performs a single clone,
clone3, unshare or setns with exact arguments, prints one JSON line
describing what happened (its pid and tid, the return value or errno, the
child's pid, the /proc/<pid>/ns links of itself and of the child), then
keeps itself and any child alive until its stdin closes. The launcher and
the tests trace it and compare the kernel record with that line while the
processes still exist.

SPEC keys: op (clone|clone3|unshare|setns), flags (int), ns_path (setns: a
file to open, e.g. /proc/123/ns/net), pidfd_of (setns: a pid), uid (drop to
this uid, keeping no capabilities, before the call).
"""

import ctypes
import json
import os
import sys

from . import nscalls, procns


def _drop_to(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to non-root: all capabilities go
    # The uid change cleared "dumpable", which makes /proc/self/ns root-only
    # (fs/proc/base.c); set it back so we can read our own links.
    PR_SET_DUMPABLE = 4
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def run(spec):
    op = spec["op"]
    flags = int(spec.get("flags", 0))
    fd = -1
    if op == "setns":
        if "pidfd_of" in spec:
            fd = nscalls.pidfd_open(int(spec["pidfd_of"]))
        elif "ns_path" in spec:
            fd = os.open(spec["ns_path"], os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = int(spec.get("fd", -1))
    if "uid" in spec:
        _drop_to(int(spec["uid"]))

    release_r, release_w = os.pipe()
    report = {"pid": os.getpid(), "tid": os.getpid(), "op": op, "flags": flags, "fd": fd,
              "ret": None, "errno": None, "child_pid": None}
    try:
        if op == "unshare":
            report["ret"] = nscalls.unshare(flags)
        elif op == "setns":
            report["ret"] = nscalls.setns(fd, flags)
        elif op in ("clone", "clone3"):
            call = nscalls.clone if op == "clone" else nscalls.clone3
            child = call(flags)
            if child == 0:
                # The child: wait for the parent to let go, touch nothing else.
                os.close(release_w)
                os.read(release_r, 1)
                os._exit(0)
            report["ret"] = report["child_pid"] = child
        else:
            raise SystemExit(f"nsop: unknown op {op!r}")
    except OSError as e:
        report["ret"] = -e.errno
        report["errno"] = e.errno
    os.close(release_r)
    report["ns"] = procns.ns_links(os.getpid())
    report["start_ticks"] = procns.start_ticks(os.getpid())
    if report["child_pid"]:
        report["child_ns"] = procns.ns_links(report["child_pid"])
    print(json.dumps(report), flush=True)

    sys.stdin.read()  # hold until released
    os.close(release_w)
    if report["child_pid"]:
        # __WALL (include/uapi/linux/wait.h): the child's exit signal may not be SIGCHLD
        os.waitpid(report["child_pid"], 0x40000000)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
