"""The live namespace map: every namespace on this system, who is in it, who owns it.

The processes and their /proc/<pid>/ns links are what lsns(8) reads, and
``nstrace ls`` agrees with it (tests/test_view.py runs both): one row per
(type, inode) with the number of processes whose /proc/<pid>/ns/<type> points
there and the lowest such pid. To that the kernel adds, through nsfs ioctls
(include/uapi/linux/nsfs.h): the never-reused ``ns_id`` (NS_GET_ID, 6.18+),
the owning user namespace (NS_GET_USERNS) and, for the two hierarchical types
(pid, user), the parent (NS_GET_PARENT).

On 6.19+ the kernel's listns() adds the namespaces no /proc scan can find
(nstrace/linux/nstree.py), marked ``listns_only``. Namespaces no process is
in are listed too, with ``nprocs`` 0 and
``held_by`` saying what keeps them alive, because they are exactly the ones a
reader of a trace wonders about: a bind mount of an ns file (nsfs entries of
every mount namespace's mountinfo, e.g. ``ip netns add``), an open fd, a
pid_for_children/time_for_children not entered yet, a thread that unshared
on its own, or only being the owner or parent of another namespace. lsns 2.38
does not list these; the comparison in the tests is over namespaces with
processes.

Containers are recognised from each process's cgroup path by the runtimes'
naming conventions (containers.classify_cgroup); a namespace belongs to a
container when all its processes are in that one container. The host's
namespaces, which containers share (user, time and cgroup namespaces often),
belong to no container: a process outside every container is in them.

Names, command lines, mount points and container names are what other users
chose: they are escaped where they are read (comm.safe_comm: \\xNN for a
control byte or a byte that is not UTF-8), so that the table, the trees, the
JSON and the session snapshots hold no control character.
"""

import dataclasses
import errno
import fcntl
import os
import time

import psutil

from ..errors import UsageError
from ..kernel import flags as fl
from . import containers, mounts, nsfs, nstree
from .comm import safe_comm


def _text(s):
    """Outside text (psutil and os give str with undecodable bytes as surrogates), escaped."""
    return safe_comm(os.fsencode(s))


TYPES = tuple(fl.NS_TYPES)              # the eight namespace types, lsns's rows
HIERARCHICAL = ("pid", "user")          # NS_GET_PARENT answers only for these


# --- containers (nstrace/linux/containers.py) ------------------------------------

classify_cgroup, container_label = containers.classify_cgroup, containers.container_label
_container_of = containers.process_container


def owner_label(ns):
    """What `nstrace ls` shows as a namespace's CONTAINER: the container all its processes are in;
    "pod:<uid>" when they are the containers of one Kubernetes pod, "several (N)" when they are N
    containers' and no pod's; "-" for a namespace of the host (a process outside every container
    is in it, however many containers share it) or with no process."""
    if ns.container:
        return container_label(ns.container)
    if not ns.containers or ns.host:
        return "-"
    pods = {c.get("pod") for c in ns.containers}
    if len(pods) == 1 and None not in pods:
        return f"pod:{pods.pop()[:13]}"
    return f"several ({len(ns.containers)})"


# --- the map -------------------------------------------------------------------

@dataclasses.dataclass
class Process:
    """A process as the map saw it: its namespaces per /proc/<pid>/ns entry."""

    pid: int
    ppid: int
    comm: str
    command: str
    uid: int | None
    ns: dict                       # entry -> inode, for the entries /proc shows
    container: dict | None = None


@dataclasses.dataclass
class Namespace:
    type: str
    inode: int
    ns_id: int | None = None
    nprocs: int = 0
    pid: int | None = None         # lowest pid in it
    ppid: int | None = None
    comm: str | None = None
    command: str | None = None
    uid: int | None = None
    owner: int | None = None       # inode of the owning user namespace
    parent: int | None = None      # inode of the parent (pid and user namespaces)
    container: dict | None = None  # when every process in it is in this container
    containers: list = dataclasses.field(default_factory=list)
    host: bool = False             # a process outside every container is in it: the host's, whoever else shares it
    listns_only: bool = False      # only the kernel's listns() (6.19+) shows it: nothing /proc shows holds it
    held_by: list = dataclasses.field(default_factory=list)   # what keeps it alive without processes
    pids: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def key(self):
        return (self.type, self.inode)

    def to_json(self):
        out = dataclasses.asdict(self)
        out.pop("pids")
        return out


@dataclasses.dataclass
class NsMap:
    """A snapshot of every namespace and process; JSON round-trips (recorded sessions keep two)."""

    namespaces: list
    processes: list
    unreadable: list               # pids whose /proc/<pid>/ns could not be read
    taken: float                   # wall-clock seconds

    def get(self, ns_type, inode):
        return self._index().get((ns_type, inode))

    def _index(self):
        if getattr(self, "_by_key", None) is None:
            self._by_key = {n.key: n for n in self.namespaces}
        return self._by_key

    def process(self, pid):
        return next((p for p in self.processes if p.pid == pid), None)

    def select(self, types=(), pid=None):
        """The namespaces of these types (all if empty), of process pid if given."""
        chosen = self.namespaces
        if pid is not None:
            proc = self.process(pid)
            if proc is None:
                why = "its namespaces cannot be read (permission denied)" if pid in self.unreadable else "no such process"
                raise UsageError(f"--pid {pid}: {why}")
            keys = {(fl.ns_type_of_entry(e), ino) for e, ino in proc.ns.items()}
            chosen = [n for n in chosen if n.key in keys]
        if types:
            chosen = [n for n in chosen if n.type in types]
        return chosen

    def to_json(self, processes=True):
        out = {"taken": self.taken, "namespaces": [n.to_json() for n in self.namespaces],
               "unreadable": self.unreadable}
        if processes:
            out["processes"] = [dataclasses.asdict(p) for p in self.processes]
        return out

    @classmethod
    def from_json(cls, obj):
        names = {f.name for f in dataclasses.fields(Namespace)}
        pnames = {f.name for f in dataclasses.fields(Process)}
        return cls([Namespace(**{k: v for k, v in n.items() if k in names}) for n in obj.get("namespaces", [])],
                   [Process(**{k: v for k, v in p.items() if k in pnames}) for p in obj.get("processes", [])],
                   obj.get("unreadable", []), obj.get("taken", 0.0))


def _links(base):
    """{entry: (type, inode)} of an ns directory; PermissionError if we may not look."""
    out = {}
    for entry in fl.NS_ENTRIES:
        try:
            link = nsfs.parse_link(os.readlink(f"{base}/{entry}"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # not on this kernel, hidden (pid_for_children before the first child), or a zombie
        if link:
            out[entry] = link
    return out


def _related_fd(fd, request):
    """An fd for the owner/parent namespace, or None where the kernel will not say (EPERM at the top)."""
    try:
        return fcntl.ioctl(fd, request)
    except OSError:
        return None


def _mount_points(pid):
    """(mountpoint, type, inode) of every nsfs mount in the mount namespace of pid."""
    try:
        entries = mounts.mountinfo(pid)
    except OSError:
        return []
    # an nsfs mount's root is the namespace's link text, "net:[4026531840]"
    return [(point, *link) for _, root, point, fstype in entries
            if fstype == "nsfs" and (link := nsfs.parse_link(root))]


def snapshot():
    """Every namespace on the system now, as an :class:`NsMap`.

    Needs root to see other users' processes (like lsns); unreadable
    processes are listed in ``unreadable``, never guessed.
    """
    taken = time.time()
    namespaces, processes, unreadable = {}, [], []
    # (type, inode) -> paths that open it, best first
    openers = {}

    def note(ns_type, inode, opener, holder=None):
        ns = namespaces.setdefault((ns_type, inode), Namespace(ns_type, inode))
        openers.setdefault(ns.key, []).append(opener)
        if holder and holder not in ns.held_by:
            ns.held_by.append(holder)
        return ns

    for proc in psutil.process_iter(["pid", "ppid", "name", "cmdline", "uids"]):
        info = proc.info
        pid = info["pid"]
        try:
            links = _links(f"/proc/{pid}/ns")
        except PermissionError:
            unreadable.append(pid)
            continue
        except OSError:
            continue  # exited while we looked
        if not links:
            continue  # gone, or a zombie without namespaces
        uids = info.get("uids")
        name = _text(info["name"] or "")
        p = Process(pid, info["ppid"] or 0, name, " ".join(_text(a) for a in info["cmdline"] or []) or name,
                    uids.real if uids else None, {e: ino for e, (_, ino) in links.items()}, _container_of(pid))
        processes.append(p)
        for entry, (ns_type, inode) in links.items():
            path = f"/proc/{pid}/ns/{entry}"
            if entry in TYPES:
                note(ns_type, inode, path).pids.append(pid)
            elif links.get(fl.ns_type_of_entry(entry), (None, None))[1] != inode:
                note(ns_type, inode, path, f"{entry} of pid {pid}")
        _threads(pid, links, note)
        _fds(pid, note)

    # Bind mounts: the nsfs entries of every mount namespace, read through one member each.
    mnt_readers = {}
    for p in processes:
        mnt_readers.setdefault(p.ns.get("mnt"), p.pid)
    for mnt_ns, pid in mnt_readers.items():
        for point, ns_type, inode in _mount_points(pid):
            note(ns_type, inode, f"/proc/{pid}/root{point}", f"bind mount {_text(point)} (mnt:[{mnt_ns}])")

    by_pid = {p.pid: p for p in processes}
    for ns in namespaces.values():
        _fill_members(ns, by_pid)
    _ask_kernel(namespaces, openers, list(namespaces.values()))
    _ask_kernel(namespaces, openers, _listed_by_kernel(namespaces, openers))
    ordered = sorted(namespaces.values(), key=lambda n: (n.inode, TYPES.index(n.type) if n.type in TYPES else 99))
    return NsMap(ordered, sorted(processes, key=lambda p: p.pid), sorted(unreadable), taken)


def _threads(pid, links, note):
    """Threads in namespaces of their own (a thread may unshare uts, ipc, net ... alone)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    except OSError:
        return
    for tid in tids:
        try:
            theirs = _links(f"/proc/{pid}/task/{tid}/ns")
        except OSError:
            continue
        for entry, (ns_type, inode) in theirs.items():
            if links.get(entry, (None, None))[1] != inode:
                note(ns_type, inode, f"/proc/{pid}/task/{tid}/ns/{entry}", f"thread {tid} of pid {pid}")


def _fds(pid, note):
    """Namespaces a process holds open as fds (the ns file itself, not a pidfd)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        try:
            link = nsfs.parse_link(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if link and link[0] in TYPES:
            note(*link, f"/proc/{pid}/fd/{fd}", f"fd {fd} of pid {pid}")


def _fill_members(ns, by_pid):
    ns.pids.sort()
    ns.nprocs = len(ns.pids)
    if ns.pids:
        ns.held_by = []  # processes hold it; other holders are not news
        first = by_pid[ns.pids[0]]
        ns.pid, ns.ppid, ns.comm, ns.command, ns.uid = first.pid, first.ppid, first.comm, first.command, first.uid
        found = [by_pid[p].container for p in ns.pids]
        distinct = []
        for c in found:
            if c and c not in distinct:
                distinct.append(c)
        ns.containers = distinct
        ns.host = not all(found)
        ns.container = distinct[0] if len(distinct) == 1 and not ns.host else None


LISTNS_ONLY = "listns() only: no process, bind mount or open fd that /proc shows holds it"


def _listed_by_kernel(namespaces, openers):
    """The namespaces the kernel's listns() (6.19+) shows and /proc did not: each added to
    `namespaces`, marked listns_only, with an fd of it to ask the kernel about. [] where there is
    no listns()."""
    try:
        ids = nstree.list_ids()
    except OSError:
        return []  # EPERM and the like: what /proc showed stands
    found = []
    for ns_id in ids or ():
        fd = nstree.open_by_id(ns_id)
        if fd is None:
            continue  # gone since the listing
        try:
            key = (fl.NS_FLAG_VALUES.get(nstree.nstype(fd)), os.fstat(fd).st_ino)
        except OSError:
            key = (None, None)
        if key[0] in TYPES and key not in namespaces:
            ns = namespaces[key] = Namespace(*key, ns_id=ns_id, held_by=[LISTNS_ONLY], listns_only=True)
            openers[key] = [f"/proc/self/fd/{fd}"]  # _ask_kernel closes it
            found.append(ns)
        else:
            os.close(fd)
    return found


def _ask_kernel(namespaces, openers, queue):
    """ns_id, owner and parent of the namespaces in `queue`, by nsfs ioctls on an fd of each.

    Owners and parents no process is in are added as they are found, so the
    ownership and pid trees are complete.
    """
    id_works = True
    queue = list(queue)
    while queue:
        ns = queue.pop()
        fd = None
        for path in openers.get(ns.key, []):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # that holder went away; try the next
            st = os.fstat(fd)
            if st.st_ino == ns.inode:
                break
            os.close(fd)
            fd = None
        if fd is None:
            continue
        try:
            if id_works:
                try:
                    ns.ns_id = nsfs.get_id(fd)
                except OSError as e:
                    id_works = e.errno != errno.ENOTTY  # before 6.18 nsfs has no NS_GET_ID
            for request, ns_type, field in ((nsfs.NS_GET_USERNS, "user", "owner"), (nsfs.NS_GET_PARENT, ns.type, "parent")):
                if field == "parent" and ns.type not in HIERARCHICAL:
                    continue
                other = _related_fd(fd, request)
                if other is None:
                    continue
                try:
                    inode = os.fstat(other).st_ino
                    setattr(ns, field, inode)
                    if (ns_type, inode) not in namespaces:
                        # keep it reachable: our fd is the only way back to it now
                        new = namespaces[(ns_type, inode)] = Namespace(
                            ns_type, inode, held_by=[f"{field} of {ns.type}:[{ns.inode}]"])
                        openers[new.key] = [f"/proc/self/fd/{os.dup(other)}"]
                        queue.append(new)
                finally:
                    os.close(other)
        finally:
            os.close(fd)
    # the dup'ed fds above were only needed while asking (and their numbers are free again)
    for key, paths in openers.items():
        for path in paths:
            if path.startswith("/proc/self/fd/"):
                try:
                    os.close(int(path.rsplit("/", 1)[1]))
                except OSError:
                    pass
        openers[key] = [p for p in paths if not p.startswith("/proc/self/fd/")]


def sees_everything():
    """True if this process may read every process's /proc/<pid>/ns as far as permissions go:
    fs/proc/namespaces.c asks ptrace_may_access(PTRACE_MODE_READ_FSCREDS), which CAP_SYS_PTRACE
    passes for any process of the initial user namespace (kernel/ptrace.c __ptrace_may_access(),
    security/commoncap.c cap_ptrace_access_check(), 6.12). What is still refused is a security
    module's choice, not something the caller could change."""
    try:
        with open("/proc/self/status", "rb") as f:  # its Name: line is whatever we were started as
            caps = next(int(line.split()[1], 16) for line in f if line.startswith(b"CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(caps >> 19 & 1)  # CAP_SYS_PTRACE, include/uapi/linux/capability.h


# --- trees ---------------------------------------------------------------------

def tree(namespaces, relation):
    """Roots of a forest as [(Namespace, children)] by "owner" (user-namespace ownership) or "parent" (pid).

    A namespace whose owner/parent is not among ``namespaces`` is a root.
    """
    if relation == "parent":
        namespaces = [n for n in namespaces if n.type == "pid"]
        up = lambda n: ("pid", n.parent) if n.parent else None
    else:
        up = lambda n: ("user", n.owner) if n.owner else None
    keys = {n.key for n in namespaces}
    children = {}
    roots = []
    for n in namespaces:
        parent = up(n)
        if parent and parent in keys and parent != n.key:
            children.setdefault(parent, []).append(n)
        else:
            roots.append(n)

    def build(n, seen):
        if n.key in seen:
            return (n, [])
        kids = sorted(children.get(n.key, []), key=lambda c: (c.type != "user", c.inode))
        return (n, [build(c, seen | {n.key}) for c in kids])
    return [build(r, frozenset()) for r in roots]


def with_ancestors(chosen, all_namespaces):
    """chosen plus every owner and parent above them, so a filtered tree still hangs together."""
    index = {n.key: n for n in all_namespaces}
    out = {n.key: n for n in chosen}
    todo = list(chosen)
    while todo:
        n = todo.pop()
        for key in (("user", n.owner), (n.type, n.parent) if n.type in HIERARCHICAL else None):
            if key and key[1] and key in index and key not in out:
                out[key] = index[key]
                todo.append(index[key])
    return sorted(out.values(), key=lambda n: n.inode)
