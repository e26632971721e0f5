"""Which container a cgroup, a process or a namespace belongs to.

Container runtimes name a container's cgroup after it (docker, containerd and
Kubernetes, CRI-O, podman, LXC, systemd-nspawn): :func:`classify_cgroup`
reads those conventions. A record carries the cgroup v2 id of its caller at
the call (probes: ``bpf_get_current_cgroup_id()``): on cgroup2 that id is the
kernfs node id of the cgroup's directory, which is also its inode number on
64-bit (fs/kernfs/kernfs-internal.h kernfs_ino(), kernel/cgroup/cgroup.c
cgroup_id(), 5.10 to 7.2), and kernfs file handles carry it
(fs/kernfs/mount.c kernfs_encode_fh()), so open_by_handle_at() turns the id
back into the directory, and so its path, in one call. :class:`Attribution`
does that once per id: ids are never reused while the system runs.

A cgroup removed before its id is looked up (a container that exits within
the reader's 50 ms) leaves no path to read: its records say null, and keep
their ``cgroup_id``. A namespace's container is the one every process in it
belongs to (as ``nstrace ls`` says), read from /proc when asked.

A process's container is its cgroup v2 cgroup's, else the first of its cgroup v1
hierarchies' (a hybrid or legacy host, where docker's cgroupfs driver makes
``docker/<id>`` in each controller's hierarchy and leaves the v2 cgroup alone):
``ls`` and ``watch`` follow the same rule. v1 membership is no cgroup id's, so a
record's v1 container is read from /proc while its caller lives
(nstrace/tracing/attribution.py).

Cgroup names are any bytes but "/" and a newline (kernel/cgroup/cgroup.c
cgroup_mkdir() and cgroup-v1.c cgroup1_rename() refuse "\\n", 5.10 to 6.18): paths
are read as bytes, split at "\\n" alone, kept as str with undecodable bytes as
surrogates, and the names a container is known by escaped (comm.safe_comm).
"""

import ctypes
import os
import re
import time

from . import mounts
from .comm import safe_comm


def _text(s):
    """Outside text (psutil and os give str with undecodable bytes as surrogates), escaped."""
    return safe_comm(os.fsencode(s))


_HEX64 = r"([0-9a-f]{64})"
# (runtime, pattern) in order; the first match wins. Kubernetes first: its
# paths embed the engine's own scope names (cri-containerd-, crio-, docker-).
_CGROUP_RULES = (
    ("kubernetes", re.compile(r"kubepods.*?/(?:(?P<engine>cri-containerd|crio|docker)-)?" + _HEX64 + r"(?:\.scope)?(?:/|\Z)")),
    ("docker", re.compile(r"/docker[-/]" + _HEX64 + r"(?:\.scope)?(?:/|\Z)")),
    ("containerd", re.compile(r"/cri-containerd-" + _HEX64 + r"\.scope(?:/|\Z)")),
    ("cri-o", re.compile(r"/crio-" + _HEX64 + r"\.scope(?:/|\Z)")),
    # podman: libpod-<id>.scope (systemd) or /libpod_parent/libpod-<id> (cgroupfs);
    # libpod-conmon-<id>.scope is the monitor beside the container, not in it
    ("podman", re.compile(r"/libpod-" + _HEX64 + r"(?:\.scope)?(?:/|\Z)")),
    ("systemd-nspawn", re.compile(r"/machine\.slice/(?:systemd-nspawn@(?P<svc>[^/]+)\.service|machine-(?P<scope>[^/]+)\.scope)(?:/|\Z)")),
    ("lxc", re.compile(r"/lxc(?:\.payload\.|/)(?P<lxc>[^/.][^/]*)(?:/|\Z)")),
)
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def _unescape_systemd(name):
    """systemd unit-name escaping: machine-my\\x2dbox.scope names machine my-box. Bytes: an
    escaped byte need not be UTF-8."""
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), os.fsencode(name))


def classify_cgroup(path):
    """The container a cgroup path belongs to, or None.

    Returns {"runtime", "id", "name", "pod"}: ``id`` the 64-hex container id
    (docker, kubernetes, containerd, cri-o, podman), ``name`` the machine or
    container name (systemd-nspawn, lxc), ``pod`` the Kubernetes pod uid.
    """
    for runtime, pattern in _CGROUP_RULES:
        m = pattern.search(path)
        if not m:
            continue
        groups = m.groupdict()
        out = {"runtime": runtime, "id": None, "name": None, "pod": None}
        if runtime == "systemd-nspawn":
            out["name"] = safe_comm(_unescape_systemd(groups["svc"] or groups["scope"]))
        elif runtime == "lxc":
            out["name"] = _text(groups["lxc"])
        else:
            out["id"] = m.group(m.re.groups)  # the last group is the hex id
        if runtime == "kubernetes":
            out["engine"] = {"cri-containerd": "containerd", "crio": "cri-o"}.get(groups["engine"], groups["engine"])
            pod = _POD.search(path)
            out["pod"] = pod.group(1).replace("_", "-") if pod else None
        return out
    return None


def container_label(c):
    """Short text for a container: docker:0123456789ab, systemd-nspawn:mybox."""
    if not c:
        return "-"
    return f"{c['runtime']}:{c['id'][:12] if c.get('id') else c.get('name')}"


def matches(c, wanted):
    """True if container c is the one `wanted` names: a prefix of its id, or its name."""
    return bool(c) and ((c.get("id") or "").startswith(wanted) or c.get("name") == wanted)


def process_container(pid, tid=None, v1_only=False):
    """The container of a process (of its thread tid, if given) from /proc, or None.

    Its cgroup v2 cgroup's, else the first of its v1 hierarchies' that is a container's; with
    v1_only, the v1 hierarchies' alone (the caller knows the v2 cgroup's already).
    """
    paths = task_cgroups(pid, tid)
    if paths is None:
        return None
    v2 = [path for hierarchy, path in paths if hierarchy == 0]
    v1 = [path for hierarchy, path in paths if hierarchy != 0]
    for path in v1 if v1_only else v2 + v1:
        found = classify_cgroup(path)
        if found:
            return found
    return None


def task_cgroups(pid, tid=None):
    """[(hierarchy id, path)] of /proc/<pid>/cgroup (or /proc/<pid>/task/<tid>/cgroup), None if gone.

    One line per hierarchy, "ID:CONTROLLERS:PATH", the path printed as it is
    (kernel/cgroup/cgroup.c proc_cgroup_show(), 5.10 to 6.18): a name cannot hold the
    newline, but any other byte (str.splitlines() would also cut at \\x1c-\\x1e, \\x85,
    U+2028...). The v2 hierarchy is id 0.
    """
    where = f"/proc/{pid}/task/{tid}/cgroup" if tid else f"/proc/{pid}/cgroup"
    try:
        with open(where, "rb") as f:
            data = f.read()
    except OSError:
        return None
    out = []
    for line in data.split(b"\n"):
        hierarchy, _, rest = line.partition(b":")
        _, colon, path = rest.partition(b":")
        if colon and hierarchy.isdigit():
            out.append((int(hierarchy), os.fsdecode(path)))
    return out


def cgroup_mounts():
    """[(mount point, root of the mount in its hierarchy, fstype)] of the cgroup and cgroup2
    mounts here, one per hierarchy (v1: each its own device number)."""
    try:
        entries = mounts.mountinfo()
    except OSError:
        return []
    seen, out = set(), []
    for device, root, point, fstype in entries:
        if fstype in ("cgroup", "cgroup2") and device not in seen:
            seen.add(device)
            out.append((point, root, fstype))
    return out


def cgroup2_mount():
    """(mount point, root of the mount in the hierarchy) of a cgroup2 mount here, or None."""
    return next(((point, root) for point, root, fstype in cgroup_mounts() if fstype == "cgroup2"), None)


def _in_hierarchy(path, point, root):
    """A directory under mount point `point` as its hierarchy names it (as /proc/<pid>/cgroup does)."""
    rel = path[len(point):] if path.startswith(point) else path
    return os.path.normpath(root.rstrip("/") + "/" + rel.lstrip("/")) if rel.strip("/") else root


def v1_only_containers():
    """True if a process here is in a container that only a cgroup v1 hierarchy names (docker's
    cgroupfs driver on a hybrid or legacy host): then a record whose cgroup v2 id is no container's
    may still be a container's. Walks the v1 hierarchies mounted here, and stops at the first such
    process. A container a v2 cgroup names too (a systemd driver mirrors its scope into every
    hierarchy) does not count: its records' cgroup id says it."""
    for point, root, fstype in cgroup_mounts():
        if fstype != "cgroup":
            continue
        for top, _, _ in os.walk(point):
            if classify_cgroup(_in_hierarchy(top, point, root)) and _has_v1_only_process(top):
                return True
    return False


def _has_v1_only_process(directory):
    """True if the first living process of this cgroup v1 directory is in no v2 container."""
    try:
        with open(os.path.join(directory, "cgroup.procs"), "rb") as f:
            pids = f.read().split()
    except OSError:
        return False
    for pid in pids:
        paths = task_cgroups(int(pid))
        if paths is not None:
            return not any(classify_cgroup(path) for hierarchy, path in paths if hierarchy == 0)
    return False


class _FileHandle(ctypes.Structure):
    # struct file_handle (include/uapi/linux/fcntl.h ... fs/fhandle.c), with kernfs's 8-byte id
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("id", ctypes.c_uint64)]


FILEID_KERNFS = 0xFE  # include/linux/exportfs.h, 5.10 to 7.2


class Attribution:
    """Containers by cgroup id (cached for the life of the process: ids are not reused) and by
    namespace (read from /proc, kept for `ttl` seconds: namespaces and their members change)."""

    def __init__(self, ttl=1.0):
        self._by_cgroup = {}
        self._by_ns = {}
        self._ttl = ttl
        self._mount = cgroup2_mount()
        self._mount_fd = None
        self._libc = None
        self._scanned_at = 0.0
        self._tree = {}
        self._v1_found, self._v1_next = False, 0.0

    def v1_only_containers(self):
        """:func:`v1_only_containers`, walked again when asked, but never for more than a fiftieth
        of the time (here a walk takes about a millisecond, a big host's tens): the reader's peak
        rate pays at most 2% for it. A container started in v1 is seen within fifty walks' time
        (here about 50 ms, the reader's own poll): the first records of the first such container
        may say null before then."""
        now = time.monotonic()
        if now >= self._v1_next:
            self._v1_found = v1_only_containers()
            self._v1_next = now + 50 * (time.monotonic() - now)
        return self._v1_found

    def of_cgroup(self, cgroup_id):
        """The container whose cgroup (v2) has this id, or None (not a container's, or unknown)."""
        try:
            return self._by_cgroup[cgroup_id]
        except KeyError:
            pass
        path = self.cgroup_path(cgroup_id)
        found = self._by_cgroup[cgroup_id] = classify_cgroup(path) if path is not None else None
        return found

    def cgroup_path(self, cgroup_id):
        """The path of cgroup `cgroup_id` in the cgroup2 hierarchy ("/" for its root), or None."""
        if not self._mount or not cgroup_id:
            return None
        point, root = self._mount
        path = self._by_handle(cgroup_id, point)
        if path is None:
            path = self._by_walk(cgroup_id, point)
        return None if path is None else _in_hierarchy(path, point, root)

    def _by_handle(self, cgroup_id, point):
        try:
            if self._mount_fd is None:
                self._libc = ctypes.CDLL(None, use_errno=True)
                self._mount_fd = os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            handle = _FileHandle(8, FILEID_KERNFS, cgroup_id)
            fd = self._libc.open_by_handle_at(self._mount_fd, ctypes.byref(handle),
                                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        if fd < 0:
            return None  # ESTALE: gone; EPERM: no CAP_DAC_READ_SEARCH (the walk below may still see it)
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)

    def _by_walk(self, cgroup_id, point):
        """The directory whose inode is the id, by walking the hierarchy (at most every 0.2 s)."""
        if cgroup_id not in self._tree and time.monotonic() - self._scanned_at > 0.2:
            self._scanned_at = time.monotonic()
            tree = {}
            for top, dirs, _ in os.walk(point):
                try:
                    tree[os.stat(top).st_ino] = top
                except OSError:
                    continue
            self._tree = tree
        return self._tree.get(cgroup_id)

    def of_namespace(self, ns_type, inode, ns_id=None, entered_by=frozenset()):
        """The container every process in namespace type:[inode] belongs to, or None (a host
        namespace, one shared by several containers, one no process is in). The processes in
        `entered_by`, the callers of a setns into it, do not count: they have just joined it,
        and one that has not exited yet would make any container's namespace the host's."""
        key = (ns_type, inode, ns_id, entered_by)
        hit = self._by_ns.get(key)
        now = time.monotonic()
        if hit and now - hit[0] < self._ttl:
            return hit[1]
        owner, seen = None, False
        link = f"{ns_type}:[{inode}]"
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in entered_by:
                continue
            try:
                if os.readlink(f"/proc/{name}/ns/{ns_type}") != link:
                    continue
            except OSError:
                continue
            mine = process_container(name)
            if mine is None or (seen and mine != owner):
                owner = None  # a host process, or a second container: nobody's alone
                break
            owner, seen = mine, True
        self._by_ns[key] = (now, owner)
        return owner

    def close(self):
        if self._mount_fd is not None:
            os.close(self._mount_fd)
            self._mount_fd = None
