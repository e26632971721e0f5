"""PID namespaces: unshare and setns move only pid_for_children, the next fork enters; a PID
namespace's init (articles 003 and 004).
"""

import json
import os
import signal
import subprocess
import sys
import time

from ..linux import procns
from .scenario import (
    Expect,
    flag,
    released,
    report,
    run_inside,
    run_inside_main,
    scenario,
)


@scenario("unshare-pid-children-only", "unshare(CLONE_NEWPID) changes only pid_for_children; the caller keeps its pid")
def unshare_pid_children_only(launcher):
    h = launcher.nsop({"op": "unshare", "flags": flag("pid"), "fork_after": True, "inside": True})
    rep = h.report
    return [Expect("unshare", pid=h.pid, flags=flag("pid"), changed=["pid_for_children"],
                   what="the caller's own pid namespace never changes"),
            Expect("clone", pid=h.pid, changed=["pid"], ns_after={"pid": rep["fork_child_ns"]["pid"]},
                   inside={"pid": 1}, seen_inside=rep.get("fork_inside"),
                   what="its first child is pid 1 of the new namespace")]


@scenario("setns-pid-then-fork", "setns into a PID namespace, then the fork that actually enters it")
def setns_pid_then_fork(launcher):
    holder = launcher.holder(["pid"])
    target = os.stat(f"/proc/{holder}/ns/pid").st_ino
    h = launcher.nsop({"op": "setns", "ns_path": f"/proc/{holder}/ns/pid", "flags": flag("pid"),
                       "fork_after": True})
    return [Expect("setns", pid=h.pid, flags=flag("pid"), changed=["pid_for_children"],
                   ns_after={"pid_for_children": target}, what="setns changes pid_for_children only"),
            Expect("clone", pid=h.pid, changed=["pid"], ns_after={"pid": target},
                   what="the following fork is born inside the target pid namespace")]


# --- the PID namespace's init (004) -------------------------------------------------------------

@scenario("pid-init-rules", "a PID namespace's init: orphans are re-parented to it, it ignores a signal it has no handler for, and its SIGKILL ends every process inside")
def pid_init_rules(launcher):
    # stderr: util-linux unshare complains ("sigprocmask unblock failed") when its child dies of the
    # SIGKILL this scenario sends on purpose
    proc, rep = run_inside(launcher, __name__, ["unshare", "--pid", "--fork", "--kill-child"], "pid-init", stderr=subprocess.DEVNULL)
    facts = dict(rep.get("facts") or {})
    init = rep.get("init")
    if init:
        # From the parent namespace: SIGTERM, to which init has no handler, is ignored as from inside
        # (kernel/signal.c sig_task_ignored: SIGNAL_UNKILLABLE init, SIG_DFL; only SIGKILL and SIGSTOP
        # are forced from an ancestor namespace; 5.10 to 7.2)
        os.kill(init, signal.SIGTERM)
        proc.stdin.write("ping\n")
        proc.stdin.flush()
        facts["init survives SIGTERM from the parent namespace"] = proc.stdout.readline().strip() == "alive"
        members = [(pid, procns.start_ticks(pid)) for pid in rep.get("members", [])]
        os.kill(init, signal.SIGKILL)  # kernel/pid_namespace.c zap_pid_ns_processes(): every member gets SIGKILL
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(procns.start_ticks(p) == start for p, start in members):
            time.sleep(0.02)
        facts["every member gone after SIGKILL of init"] = bool(members) and \
            not any(procns.start_ticks(p) == start for p, start in members)
    released(proc)
    return [Expect("unshare", pid=proc.pid, flags=flag("pid"), changed=["pid_for_children"], proc=("match", "gone"),
                   what="util-linux unshare --pid: a new pid namespace for its children"),
            Expect("clone", pid=proc.pid, changed=["pid"], proc=("match", "gone"),
                   what="its --fork child is born as pid 1, the namespace's init"),
            Expect("facts", inside={"init is pid 1": True, "orphan re-parented to init": True,
                                    "init survives SIGTERM from inside": True,
                                    "init survives SIGTERM from the parent namespace": True,
                                    "every member gone after SIGKILL of init": True},
                   seen_inside=facts, what="the init rules of pid_namespaces(7), tried for real")]



# --- inside: what runs in the namespaces (python -m nstrace.check.<this module> WHAT ARGS) ---------


def pid_init():
    """pid 1 of a new PID namespace, with no handler for SIGTERM."""
    facts = {"init is pid 1": os.getpid() == 1}
    r, w = os.pipe()
    first = os.fork()
    if first == 0:  # the parent that goes away
        parent = os.getpid()
        if os.fork() == 0:  # the orphan-to-be
            deadline = time.monotonic() + 10
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.01)
            os.write(w, json.dumps({"ppid": os.getppid(), "pid": _global_pid()}).encode() + b"\n")
            signal.pause()
        os._exit(0)
    os.waitpid(first, 0)
    with os.fdopen(r) as reader:
        orphan = json.loads(reader.readline() or "{}")
    facts["orphan re-parented to init"] = orphan.get("ppid") == 1
    r, w = os.pipe()
    if os.fork() == 0:
        os.kill(1, signal.SIGTERM)  # from inside: ignored, init has no handler
        os.write(w, f"{_global_pid()}\n".encode())
        signal.pause()
    with os.fdopen(r) as reader:
        sender = int(reader.readline() or 0)
    time.sleep(0.3)
    facts["init survives SIGTERM from inside"] = True  # this line runs only if it did
    report({"init": _global_pid(), "members": [_global_pid(), orphan.get("pid"), sender], "facts": facts})
    for line in sys.stdin:
        print("alive", flush=True)


def _global_pid(pid="self"):
    """The pid in the outermost namespace (/proc here is the parent's: first NSpid field)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("NSpid:"))


INSIDE = {"pid-init": pid_init}

if __name__ == "__main__":
    run_inside_main(INSIDE)
