"""What /proc says about a task's namespaces, and whether it agrees with the kernel record.

A pid alone is not an identity: the task may have exited and the number been
given to another. Every check therefore compares the task's start time
(``/proc/<pid>/stat`` field 22, clock ticks since boot, derived by the
kernel from ``task->start_boottime`` in fs/proc/array.c) with the one the
BPF side recorded, before and after reading the links.
"""

import errno
import os

from ..kernel import flags as fl
from . import nsfs

_TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")

# None: not tried yet; False: the kernel has no NS_GET_ID (ENOTTY), stop asking.
_ns_get_id_works = None

# The entries the task's nsproxy backs: each ->get() of fs/proc/namespaces.c reads task->nsproxy,
# but user's reads the task's cred and pid's its struct pid (checked against 6.1 and 6.18). An
# exiting task drops its nsproxy in do_exit() -> exit_task_namespaces() before exit_notify() makes
# it a zombie (kernel/exit.c): meanwhile /proc shows only its user and pid entries.
NSPROXY_ENTRIES = tuple(e for e in fl.NS_ENTRIES if e not in ("user", "pid"))


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
        except PermissionError:
            # EACCES: fs/proc/namespaces.c proc_ns_readlink() answers so for a task reaped since
            # the listdir (and for one its ptrace check refuses); check() then finds it gone
            continue
        out[name] = nsfs.parse_link(link)[1]
    return out


def ns_ids(pid, tid=None):
    """{entry: ns_id} from NS_GET_ID on /proc/<pid>/task/<tid>/ns/*, or None.

    None when the kernel has no NS_GET_ID (before 6.18: ENOTTY). Entries that
    cannot be opened (see :func:`ns_links`; all of them once the task is gone)
    are left out.
    """
    global _ns_get_id_works
    if _ns_get_id_works is False:
        return None
    base = f"/proc/{pid}/task/{tid or pid}/ns"
    out = {}
    for name in fl.NS_ENTRIES:
        try:
            fd = os.open(f"{base}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # absent on this kernel, hidden for now, or the task exited
        try:
            out[name] = nsfs.get_id(fd)
            _ns_get_id_works = True
        except OSError as e:
            if e.errno == errno.ENOTTY:  # nsfs answers unknown ioctls with ENOTTY
                _ns_get_id_works = False  # an older kernel: inodes only, as before
                return None
            continue  # this entry only: the check goes on with its inode
        finally:
            os.close(fd)
    return out


def _stat(pid, tid=None):
    """(state letter, start ticks) of a task from its stat file, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def start_ticks(pid, tid=None):
    """The task's start time in clock ticks since boot, or None if it is gone."""
    st = _stat(pid, tid)
    return st[1] if st else None


def _alive_ticks(pid, tid):
    """Start ticks of a task that still has namespaces: None once it is a zombie.

    A zombie keeps its stat file but has dropped its nsproxy: /proc then shows
    only the pid and user links (from its struct pid and cred), which would
    look like a partial match.
    """
    st = _stat(pid, tid)
    return st[1] if st and st[0] not in ("Z", "X", "x") else None


def ns_to_ticks(ns):
    """Kernel nanoseconds to /proc clock ticks, as nsec_to_clock_t() does."""
    return ns // (1_000_000_000 // _TICKS_PER_SEC)


def check(pid, tid, start_ns, expected, expected_ids=None, changed=None):
    """Compare expected {entry: inode} with /proc for task (pid, tid) born at start_ns.

    Returns a dict; ``status`` is one of:

    - ``match``: every entry /proc shows agrees, and at least one of them is
      an entry the call changed (``changed``; None or empty: any entry);
    - ``mismatch``, with ``diff``: entry -> {"kernel": inode, "proc": inode};
    - ``unseen``: what /proc shows agrees, but it shows none of the entries
      the call changed (pid_for_children after unshare(CLONE_NEWPID), until
      the first child is born): nothing the call did could be compared;
    - ``gone``, with ``reason``: "exited", "pid reused", or "exiting" (alive,
      but its namespaces already released: nothing left to compare).

    ``unseen`` (the key) lists entries the kernel recorded but /proc does not
    show. With ``expected_ids`` ({entry: ns_id}, the record's ns_id_*) and a
    kernel that answers NS_GET_ID, an entry whose inode agrees but whose ns_id
    does not is a mismatch too (diff adds "kernel_ns_id" and "proc_ns_id"):
    the inode was reused by another namespace.
    """
    want_ticks = ns_to_ticks(start_ns)
    if _alive_ticks(pid, tid) != want_ticks:
        return {"status": "gone", "pid": tid, "reason": _gone_reason(pid, tid, want_ticks)}
    links = ns_links(pid, tid)
    ids = ns_ids(pid, tid) if expected_ids and any(expected_ids.values()) else None
    # Read the start time again: the links must belong to the same, living task.
    if not links or _alive_ticks(pid, tid) != want_ticks:
        return {"status": "gone", "pid": tid, "reason": _gone_reason(pid, tid, want_ticks)}
    held = [name for name in NSPROXY_ENTRIES if expected.get(name)]
    if held and not any(name in links for name in held):
        return {"status": "gone", "pid": tid, "reason": "exiting"}
    diff = {name: {"kernel": expected.get(name), "proc": links[name]}
            for name in links if expected.get(name) and expected[name] != links[name]}
    for name, proc_id in (ids or {}).items():
        kernel_id = expected_ids.get(name)
        if name in links and name not in diff and kernel_id and proc_id != kernel_id:
            diff[name] = {"kernel": expected.get(name), "proc": links[name],
                          "kernel_ns_id": kernel_id, "proc_ns_id": proc_id}
    claimed = [name for name in changed or () if expected.get(name)] or \
        [name for name in fl.NS_ENTRIES if expected.get(name)]
    status = "mismatch" if diff else "match" if any(name in links for name in claimed) else "unseen"
    result = {"status": status, "pid": tid}
    if diff:
        result["diff"] = diff
    unseen = [name for name in fl.NS_ENTRIES if expected.get(name) and name not in links]
    if unseen:
        result["unseen"] = unseen  # the kernel has them, /proc does not show them (yet)
    return result


def _gone_reason(pid, tid, want_ticks):
    ticks = start_ticks(pid, tid)
    return "pid reused" if ticks is not None and ticks != want_ticks else "exited"


def tgid_of(tid):
    """The process (thread group) thread `tid` belongs to, or None if there is no such thread."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def descendants(pid):
    """pid and every live descendant, for --pid seeding (and every nstrace.trace() block): from the
    parent of each process in /proc, its stat's fourth field (fs/proc/array.c do_task_stat(): the
    real parent's tgid, 6.18). Not psutil's children(), which reads the same files: importing psutil
    costs a block's start more than the reading. Raises ProcessLookupError if pid does not exist."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])  # after the comm, whatever it holds
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(name))
    if not os.path.exists(f"/proc/{pid}/stat"):
        raise ProcessLookupError(pid)
    found, todo = [], [pid]
    while todo:  # a pid reused while /proc was read could close a loop: each is taken once
        p = todo.pop()
        if p not in found:
            found.append(p)
            todo += children.get(p, ())
    return found
