"""The scenario catalogue's parts: a scenario makes namespaces through a
:class:`~nstrace.check.launcher.Launcher` and returns what the trace must show, one :class:`Expect`
per operation; the checker (nstrace/check/checker.py) matches them with the records and with the
documented kernel path in kernel-notes/paths.toml. The scenarios themselves are in one module per
namespace type they teach (operations.py: every type by every call), gathered in catalogue.py.

A scenario whose proof is a process's own view runs it as `python -m nstrace.check.<module> WHAT`
(run_inside): it reports JSON lines on stdout and holds until its stdin closes. Nothing touches
the host's own namespaces: a "host" side that must be changed (a message queue made outside, mounts
whose propagation is tried) is itself a namespace of ours. Every process is the launcher's
(Launcher.spawn), every netns one of its `ip netns add`s; mounts live only in mount namespaces that
die with those processes.
"""

import dataclasses
import json
import os
import subprocess
import sys

from ..kernel import flags as fl

TYPES = tuple(fl.NS_TYPES)

# Which /proc/<pid>/ns entries an operation changes, per namespace type (kernel/nsproxy.c,
# kernel/fork.c, kernel/time/namespace.c; 6.1 to 6.18): unshare of pid or time only changes the
# *_for_children entry; a clone child is born inside both; setns into a time ns switches the caller.
CHANGES = {
    "unshare": {"pid": ["pid_for_children"], "time": ["time_for_children"]},
    "clone": {"pid": ["pid", "pid_for_children"], "time": ["time", "time_for_children"]},
    "setns": {"pid": ["pid_for_children"], "time": ["time", "time_for_children"]},
}
CHANGES["clone3"] = CHANGES["clone"]

# What a process inside a new namespace of each type must see (nstrace/check/inside.py).
INSIDE = {
    "uts": {"hostname": "nstrace-demo"},
    "net": {"interfaces": ["lo"]},
    "ipc": {"msg_queues": 0},
    "cgroup": {"cgroup_paths": ["/"]},
    "user": {"uid": 0},
}


def changes(op, ns_type):
    return CHANGES[op].get(ns_type, [ns_type])


def flag(ns_type):
    return fl.CLONE_FLAGS[fl.NS_TYPES[ns_type]]


# CLONE_EMPTY_MNTNS and UNSHARE_EMPTY_MNTNS came with 7.1 (include/uapi/linux/sched.h); a kernel
# before refuses both with EINVAL (clone3_args_valid(), check_unshare_flags(): kernel/fork.c, 6.12)
EMPTY_MNTNS_SINCE = (7, 1)


def lacks_empty_mntns(flags, op):
    """Why this kernel cannot run op with flags, if they ask for an empty mount namespace it has not; else None."""
    if not fl.empty_mount_ns(flags, op) or _kernel_series() >= EMPTY_MNTNS_SINCE:
        return None
    name = next(n for n in fl.decode_flags(flags, op) if n.endswith("_EMPTY_MNTNS"))
    return f"this kernel ({os.uname().release}) has no {name}: Linux 7.1+"


def _kernel_series():
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


class Unsupported(Exception):
    """Raised by a scenario this kernel cannot run; the message says why. The check reports it as skipped."""


@dataclasses.dataclass
class Expect:
    """One operation the trace must hold, and what must be true of it."""

    op: str                            # an events.OPS name, or "facts": no record, only inside
    pid: int | None = None             # the process that made the call (None: match by comm)
    comm: str | None = None
    flags: int | None = None           # raw flags / nstype
    errno: str | None = None           # None: must succeed
    changed: list | None = None        # exact /proc/<pid>/ns entries that change
    ns_after: dict | None = None       # entries that must hold these inodes afterwards
    inside: dict | None = None         # expected inside view (subset)
    seen_inside: dict | None = None    # what the process reported from inside
    proc: tuple = ("match",)           # acceptable /proc check results
    what: str = ""                     # one line for the learner
    ns: dict | None = None             # open_tree, fsmount, free: what the record's "ns" must hold (subset)
    needs: str | None = None           # "deaths": judged only where a hook sees namespaces die


@dataclasses.dataclass
class Scenario:
    name: str
    summary: str
    run: object                        # callable(launcher) -> list[Expect]


CATALOGUE = {}


def scenario(name, summary):
    def register(fn):
        CATALOGUE[name] = Scenario(name, summary, fn)
        return fn
    return register


def inside_for(types, pid_one):
    want = {}
    for t in types:
        want.update(INSIDE.get(t, {}))
    if "pid" in types and pid_one:
        want["pid"] = 1
    return want


def create(op, ns_type):
    """clone, clone3 or unshare making one new namespace of ns_type."""
    def run(launcher):
        spec = {"op": op, "flags": flag(ns_type), "inside": True}
        h = launcher.nsop(spec)
        rep = h.report
        expects = [Expect(op, pid=h.pid, flags=flag(ns_type), changed=changes(op, ns_type),
                          inside=inside_for([ns_type], op != "unshare"), seen_inside=rep.get("inside"),
                          what=f"{op} makes a new {ns_type} namespace")]
        if op == "unshare" and ns_type in ("pid", "time"):
            # the caller stays where it was; its next child is the first one inside
            expects.append(Expect("clone", pid=h.pid, flags=None, changed=[ns_type],
                                  ns_after={ns_type: rep["ns"].get(f"{ns_type}_for_children")},
                                  inside={"pid": 1} if ns_type == "pid" else {},
                                  seen_inside=rep.get("fork_inside"),
                                  what=f"the next fork enters the new {ns_type} namespace"))
        return expects
    return run


def join(ns_type):
    """setns through an nsfs fd (/proc/<pid>/ns/<type>) into a live namespace."""
    def run(launcher):
        holder = launcher.holder([ns_type])
        path = f"/proc/{holder}/ns/{ns_type}"
        target = os.stat(path).st_ino
        h = launcher.nsop({"op": "setns", "ns_path": path, "flags": flag(ns_type), "inside": True})
        expects = [Expect("setns", pid=h.pid, flags=flag(ns_type), changed=changes("setns", ns_type),
                          ns_after={e: target for e in changes("setns", ns_type)},
                          inside=inside_for([ns_type], False) if ns_type != "user" else {},
                          seen_inside=h.report.get("inside"), what=f"setns joins a live {ns_type} namespace")]
        if ns_type == "pid":
            expects.append(Expect("clone", pid=h.pid, changed=["pid"], ns_after={"pid": target},
                                  what="the next fork enters it"))
        return expects
    return run


def run_inside(launcher, module, wrapper, what, *args, **popen_kw):
    """Run WHAT of `module` (python -m) under `wrapper` (a util-linux unshare command line) as a launcher
    process; return (Popen, its first report)."""
    proc = launcher.spawn([*wrapper, sys.executable, "-m", module, what, *map(str, args)],
                          cwd="/",  # the interpreter imports the installed nstrace, not a checkout's
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen_kw)
    line = proc.stdout.readline()
    return proc, (json.loads(line) if line else {"error": f"{what} reported nothing (exit {proc.poll()})"})


def released(proc):
    """Let a held process go, and wait for it."""
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- what runs inside (python -m nstrace.check.<module> WHAT ARGS) --------------------------


def report(obj):
    print(json.dumps(obj), flush=True)


def hold():
    sys.stdin.read()


def run_inside_main(inside):
    """A module's entry point as run_inside runs it: WHAT and its arguments from argv."""
    inside[sys.argv[1]](*sys.argv[2:])
