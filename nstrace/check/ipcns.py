"""IPC namespaces: a message queue made outside is invisible inside, and one made inside invisible
outside (article 003).
"""

import ctypes
import errno
import json
import os
import subprocess
import sys

from .scenario import (
    Expect,
    flag,
    hold,
    report,
    run_inside,
    run_inside_main,
    scenario,
)

_libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, IPC_EXCL, IPC_RMID = 0o1000, 0o2000, 0


# --- IPC isolation, both ways (003) ------------------------------------------------------

IPC_KEYS = (0x6E730001, 0x6E730002)  # "ns" 1 and 2: System V keys of our own


@scenario("ipc-isolation", "a message queue made outside is invisible inside a new IPC namespace, and one made inside is invisible outside")
def ipc_isolation(launcher):
    # held until the launcher's cleanup, so /proc can be compared; its namespace and queue die with it
    _, rep = run_inside(launcher, __name__, ["unshare", "--ipc"], "ipc-outside", *IPC_KEYS)
    what = "util-linux unshare --ipc: "
    return [Expect("unshare", pid=rep.get("outside_pid"), flags=flag("ipc"), changed=["ipc"],
                   what=what + "the \"outside\" IPC namespace (the host's own is never touched)"),
            Expect("unshare", pid=rep.get("inside_pid"), flags=flag("ipc"), changed=["ipc"], proc=("match", "gone"),
                   what=what + "the \"inside\" one, made from the outside one"),
            Expect("facts", inside={"outside made its queue": True, "inside sees the outside queue": False,
                                    "inside made its own queue": True, "outside sees the inside queue": False},
                   seen_inside=rep.get("facts"), what="msgget() and /proc/sysvipc/msg on each side")]


# --- inside: what runs in the namespaces (python -m nstrace.check.<this module> WHAT ARGS) ---------


def _queue_keys():
    with open("/proc/sysvipc/msg") as f:
        return {int(line.split()[0]) for line in f.readlines()[1:]}


def _msgget(key, flags):
    qid = _libc.msgget(ctypes.c_int(key), flags)
    return qid if qid >= 0 else -ctypes.get_errno()


def ipc_outside(key_out, key_in):
    """In the "outside" IPC namespace: make a queue, start the inside one, compare both views."""
    key_out, key_in = int(key_out), int(key_in)
    made = _msgget(key_out, IPC_CREAT | IPC_EXCL | 0o600) >= 0
    inside = subprocess.Popen(["unshare", "--ipc", sys.executable, "-m", __spec__.name, "ipc-inside", str(key_out), str(key_in)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen = json.loads(inside.stdout.readline() or "{}")
    facts = {"outside made its queue": made,
             "inside sees the outside queue": seen.get("sees", True),
             "inside made its own queue": seen.get("made", False),
             # by msgget, and in the list ipcs(1) reads
             "outside sees the inside queue": _msgget(key_in, 0) >= 0 or key_in in _queue_keys()}
    inside.stdin.close()
    inside.wait()
    report({"outside_pid": os.getpid(), "inside_pid": inside.pid, "facts": facts})
    hold()


def ipc_inside(key_out, key_in):
    key_out, key_in = int(key_out), int(key_in)
    sees = _msgget(key_out, 0) != -errno.ENOENT or key_out in _queue_keys()
    made = _msgget(key_in, IPC_CREAT | IPC_EXCL | 0o600) >= 0
    report({"sees": sees, "made": made})
    hold()




INSIDE = {"ipc-outside": ipc_outside, "ipc-inside": ipc_inside}

if __name__ == "__main__":
    run_inside_main(INSIDE)
