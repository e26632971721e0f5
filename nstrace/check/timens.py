"""Time namespaces: clone() cannot make one (CLONE_NEWTIME is in its exit-signal byte), and the exec
after unshare(CLONE_NEWTIME) moves its caller into it (6.12+).
"""

import errno
import os

from .scenario import Expect, Unsupported, flag, scenario


@scenario("clone-time", "clone() cannot make a time namespace: 0x80 is in its exit-signal byte")
def clone_time(launcher):
    h = launcher.nsop({"op": "clone", "flags": flag("time")})
    # Exit signal 0x91 is no signal. Up to 6.18 legacy clone() takes it: a plain fork. 7.2 checks
    # every caller's exit signal in kernel_clone() (up to 6.18 only clone3's: copy_clone_args_from_user()),
    # so EINVAL, and still nothing made (kernel/fork.c of 6.1, 6.12, 7.2; 6.18 is this repo's host).
    # The trace must say what the call really returned.
    refused = h.report.get("errno") == errno.EINVAL
    return [Expect("clone", pid=h.pid, flags=flag("time"), changed=[], errno="EINVAL" if refused else None,
                   what=("refused: 7.2 checks the exit signal (0x91) of clone() too" if refused else
                         "a plain fork whose exit signal is 0x91") +
                   "; use clone3 or unshare for CLONE_NEWTIME")]


@scenario("exec-time", "`unshare --time CMD`: unshare(CLONE_NEWTIME) changes time_for_children, the exec of CMD "
                       "moves into it (6.12+)")
def exec_time(launcher):
    before = os.stat("/proc/self/ns/time").st_ino
    out = launcher.run(["unshare", "--time", "readlink", "/proc/self/ns/time"])
    inode = int(out.strip().removeprefix("time:[").removesuffix("]"))
    if inode == before:
        # kernel/nsproxy.c exec_task_namespaces() arrived in 6.12; before it, only a child enters
        raise Unsupported("exec does not move into time_for_children on this kernel (exec_task_namespaces, 6.12+)")
    # the unshare's /proc is read after the exec moved the caller: the exec's record explains it
    return [Expect("unshare", comm="unshare", flags=flag("time"), changed=["time_for_children"],
                   ns_after={"time_for_children": inode}, proc=("match", "superseded", "gone", "unseen"),
                   what="unshare(CLONE_NEWTIME) changes only time_for_children"),
            Expect("exec", comm="unshare", flags=0, changed=["time"], ns_after={"time": inode, "time_for_children": inode},
                   proc=("match", "gone"), what="the exec moves the caller into its new time namespace")]
