"""What /proc says about a task's namespaces, and whether it agrees with the kernel record.

A pid alone is not an identity: the task may have exited and the number been
given to another. Every check therefore compares the task's start time
(``/proc/<pid>/stat`` field 22, clock ticks since boot, derived by the
kernel from ``task->start_boottime`` in fs/proc/array.c) with the one the
BPF side recorded, before and after reading the links.
"""

import os

import psutil

from . import flags as fl

_TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")


def ns_links(pid, tid=None):
    """{entry: inode} from /proc/<pid>/task/<tid>/ns, or None if the task is gone.

    Entries /proc does not show are left out: time on kernels without
    CONFIG_TIME_NS, and pid_for_children after unshare(CLONE_NEWPID) until the
    first child is born (kernel/pid_namespace.c pidns_for_children_get()
    returns no namespace while child_reaper is unset; 6.1 to 6.18).
    """
    base = f"/proc/{pid}/task/{tid or pid}/ns"
    out = {}
    try:
        names = os.listdir(base)
    except (FileNotFoundError, ProcessLookupError):
        return None
    for name in fl.NS_ENTRIES:
        if name not in names:
            continue
        try:
            link = os.readlink(f"{base}/{name}")  # e.g. "uts:[4026531838]"
        except (FileNotFoundError, ProcessLookupError):
            continue  # see above; a task that exited is caught by check()
        out[name] = int(link[link.index("[") + 1:-1])
    return out


def start_ticks(pid, tid=None):
    """The task's start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19])


def ns_to_ticks(ns):
    """Kernel nanoseconds to /proc clock ticks, as nsec_to_clock_t() does."""
    return ns // (1_000_000_000 // _TICKS_PER_SEC)


def check(pid, tid, start_ns, expected):
    """Compare expected {entry: inode} with /proc for task (pid, tid) born at start_ns.

    Returns a dict: ``status`` is ``match``, ``mismatch`` (with ``diff``:
    entry -> {"kernel": inode, "proc": inode}) or ``gone`` (with ``reason``).
    ``unseen`` lists entries the kernel recorded but /proc does not show.
    """
    want_ticks = ns_to_ticks(start_ns)
    if start_ticks(pid, tid) != want_ticks:
        return {"status": "gone", "pid": tid, "reason": _gone_reason(pid, tid)}
    links = ns_links(pid, tid)
    # Read the start time again: the links must belong to the same task.
    if not links or start_ticks(pid, tid) != want_ticks:
        return {"status": "gone", "pid": tid, "reason": "exited"}
    diff = {name: {"kernel": expected.get(name), "proc": links[name]}
            for name in links if expected.get(name) and expected[name] != links[name]}
    result = {"status": "mismatch" if diff else "match", "pid": tid}
    if diff:
        result["diff"] = diff
    unseen = [name for name in fl.NS_ENTRIES if expected.get(name) and name not in links]
    if unseen:
        result["unseen"] = unseen  # the kernel has them, /proc does not show them (yet)
    return result


def _gone_reason(pid, tid):
    return "exited" if start_ticks(pid, tid) is None else "pid reused"


def descendants(pid):
    """pid and every live descendant (psutil), for --pid seeding. Raises psutil.NoSuchProcess."""
    proc = psutil.Process(pid)
    return [pid] + [child.pid for child in proc.children(recursive=True)]
