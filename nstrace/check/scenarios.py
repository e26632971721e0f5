"""The scenario catalogue: each experiment of the seed articles as a named, checked run.

A scenario makes namespaces through a :class:`~nstrace.check.launcher.Launcher` and
returns what the trace must show: one :class:`Expect` per operation. The
checker (nstrace/check/checker.py) matches them with the records and with the
documented kernel path in kernel-notes/paths.toml.
"""

import dataclasses
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..kernel import flags as fl
from ..linux import mountns
from ..linux.mounts import umount

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


for _t in TYPES:
    for _op in ("clone", "clone3", "unshare"):
        if (_op, _t) != ("clone", "time"):
            scenario(f"{_op}-{_t}", f"{_op}(CLONE_{fl.NS_TYPES[_t].removeprefix('CLONE_')}) makes a new {_t} namespace")(
                create(_op, _t))
    scenario(f"setns-{_t}", f"setns(fd of /proc/<pid>/ns/{_t}) joins a live {_t} namespace")(join(_t))


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


@scenario("setns-pidfd", "setns(pidfd, UTS|IPC|NET|CGROUP|MNT) joins several namespaces of a process at once")
def setns_pidfd(launcher):
    types = ["mnt", "uts", "ipc", "net", "cgroup"]
    holder = launcher.holder(types)
    nstype = sum(flag(t) for t in types)
    h = launcher.nsop({"op": "setns", "pidfd_of": holder, "flags": nstype, "inside": True})
    targets = {t: os.stat(f"/proc/{holder}/ns/{t}").st_ino for t in types}
    return [Expect("setns", pid=h.pid, flags=nstype, changed=[e for e in fl.NS_ENTRIES if e in types],
                   ns_after=targets, inside=inside_for(types, False), seen_inside=h.report.get("inside"),
                   what="one setns through a pidfd moves the caller into all five")]


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


@scenario("userns-unprivileged", "an unprivileged clone(CLONE_NEWUSER); the parent writes uid_map/gid_map after a pipe handshake")
def userns_unprivileged(launcher):
    h = launcher.nsop({"op": "clone", "flags": flag("user"), "uid": 65534, "inside": True})
    return [Expect("clone", pid=h.pid, flags=flag("user"), changed=["user"], inside={"uid": 0},
                   seen_inside=h.report.get("inside"), what="nobody outside, root inside after the uid_map")]


@scenario("container", "the seeds' docker-like container: UTS|IPC|PID|NS, private /proc, rootfs with bind mounts, pivot_root")
def container(launcher):
    rootfs = launcher.workdir / "rootfs"
    rootfs.mkdir(mode=0o755)  # explicit modes: under umask 000 others could plant symlinks root mounts on
    for d in ("usr", "proc", "old_root"):
        (rootfs / d).mkdir(mode=0o755)
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path("/", link).is_symlink():  # Debian 12 is merged-/usr
            (rootfs / link).symlink_to(os.readlink(Path("/", link)))
    flags = flag("uts") | flag("ipc") | flag("pid") | flag("mnt")
    h = launcher.nsop({"op": "clone", "flags": flags, "inside": True, "rootfs": str(rootfs)})
    seen = h.report.get("inside") or {}
    return [Expect("clone", pid=h.pid, flags=flags, changed=["mnt", "uts", "ipc", "pid", "pid_for_children"],
                   inside={"pid": 1, "hostname": "nstrace-demo",
                           "container": {"proc_pids": [1], "old_root_empty": True,
                                         "root": sorted(["usr", "proc", "old_root", *(
                                             link for link in ("bin", "lib", "lib64", "sbin")
                                             if Path("/", link).is_symlink())])}},
                   seen_inside=seen, what="pid 1 with its own hostname, /proc and root")]


@scenario("netns-veth", "two network namespaces of ours joined by a veth pair, a UDP datagram across")
def netns_veth(launcher):
    a, b = launcher.netns("a"), launcher.netns("b")
    va, vb = "nst-" + launcher.id[:4] + "a", "nst-" + launcher.id[:4] + "b"
    host_links = set(socket.if_nameindex())
    # Both ends live in namespaces this run made: the host's network is never touched.
    launcher.run(["ip", "-n", a, "link", "add", va, "type", "veth", "peer", "name", vb, "netns", b])
    launcher.run(["ip", "-n", a, "addr", "add", "10.253.0.1/30", "dev", va])
    launcher.run(["ip", "-n", b, "addr", "add", "10.253.0.2/30", "dev", vb])
    for ns, dev in ((a, va), (b, vb)):
        launcher.run(["ip", "-n", ns, "link", "set", dev, "up"])
    # The receiver says when it is bound; the sender repeats itself in case the link was not
    # carrying yet. No fixed sleep: under load the receiver's start once outlasted one.
    recv = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('10.253.0.2',4789));"
            "print('bound',flush=True);s.settimeout(5);print(s.recvfrom(64)[0].decode())")
    send = ("import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for _ in range(5):s.sendto(b'hello',('10.253.0.2',4789));time.sleep(0.05)")
    receiver = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", recv], stdout=subprocess.PIPE, text=True)
    receiver.stdout.readline()  # "bound", or "" if it died: then got is "" and the expectation says so
    launcher.run(["ip", "netns", "exec", a, sys.executable, "-c", send])
    got = receiver.communicate(timeout=10)[0].strip()
    # `ip netns add` setns()es back to its own netns right after: its unshare is superseded (ip/ipnetns.c)
    return [Expect("unshare", comm="ip", flags=flag("net"), changed=["net"], proc=("match", "gone", "superseded"),
                   what="`ip netns add` is unshare(CLONE_NEWNET) plus a bind mount of the ns file"),
            Expect("setns", comm="ip", flags=flag("net"), changed=["net"], proc=("match", "gone"),
                   what="`ip netns exec` is setns into the bind-mounted ns file"),
            Expect("facts", inside={"datagram": "hello", "host_links_unchanged": True},
                   seen_inside={"datagram": got, "host_links_unchanged": set(socket.if_nameindex()) == host_links},
                   what="a datagram crossed the veth pair; the host's links are untouched")]


@scenario("bind-mount-keepalive", "a namespace kept alive by bind-mounting its ns file, joined after its last process exited, "
                                  "freed at the umount")
def bind_mount_keepalive(launcher):
    holder = launcher.holder(["uts"])
    path = launcher.bind_ns(holder, "uts")
    inode = os.stat(path).st_ino
    launcher.kill(holder)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{holder}") and time.monotonic() < deadline:
        time.sleep(0.01)
    h = launcher.nsop({"op": "setns", "ns_path": str(path), "flags": flag("uts")})
    h.release()  # its last process again: only the bind mount holds it now
    # The umount drops the last reference: the nsfs dentry goes when the mount is released, on the
    # way back to user space from umount2() (fs/namespace.c mntput_no_expire() -> task_work, 5.10 to
    # 7.2), so the death is this process's own, in its own call.
    umount(str(path))
    return [Expect("setns", pid=h.pid, flags=flag("uts"), changed=["uts"], ns_after={"uts": inode},
                   proc=("match", "gone"),  # it may exit before its record is read: released above
                   what="the bind mount held the namespace: same inode after its last process died"),
            Expect("free", pid=os.getpid(), ns={"type": "uts", "inode": inode}, proc=(), needs="deaths",
                   what="it outlived every process, and died at the umount of its ns file")]


def _mount_ns_birth(op, make):
    """A scenario body for open_tree/fsmount: make() returns the new namespace's fd."""
    def run(launcher):
        fd = make(launcher)
        try:
            inode = os.fstat(fd).st_ino
            link = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return [Expect(op, pid=os.getpid(), ns={"type": "mnt", "inode": inode}, changed=[], proc=(),
                       what=f"{op} made mount namespace {link} behind the fd it returned; the caller stays where it was"),
                Expect("facts", inside={"fd_is_a_mount_namespace": True},
                       seen_inside={"fd_is_a_mount_namespace": link == f"mnt:[{inode}]"},
                       what="the fd is an nsfs file of a new mount namespace")]
    return run


def _open_tree(launcher):
    if not mountns.has_open_tree_namespace():
        raise Unsupported("this kernel's open_tree() has no OPEN_TREE_NAMESPACE (7.x)")
    return mountns.open_tree(str(launcher.workdir), mountns.OPEN_TREE_NAMESPACE | mountns.OPEN_TREE_CLOEXEC)


def _fsmount(launcher):
    if not mountns.has_fsmount_namespace():
        raise Unsupported("this kernel's fsmount() has no FSMOUNT_NAMESPACE (7.x)")
    fs = mountns.fsopen("tmpfs")
    try:
        mountns.fsconfig_create(fs)
        return mountns.fsmount(fs, mountns.FSMOUNT_NAMESPACE | mountns.FSMOUNT_CLOEXEC)
    finally:
        os.close(fs)


scenario("open-tree-namespace", "open_tree(dir, OPEN_TREE_NAMESPACE) returns a new mount namespace with a copy of "
                                "the tree (7.x)")(_mount_ns_birth("open_tree", _open_tree))
scenario("fsmount-namespace", "fsmount(tmpfs, FSMOUNT_NAMESPACE) returns a new mount namespace with the new "
                              "filesystem (7.x)")(_mount_ns_birth("fsmount", _fsmount))


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


@scenario("fail-einval", "clone(CLONE_NEWNS|CLONE_FS) is EINVAL: a new mount ns cannot share fs_struct")
def fail_einval(launcher):
    flags = flag("mnt") | fl.CLONE_FLAGS["CLONE_FS"]
    h = launcher.nsop({"op": "clone", "flags": flags})
    return [Expect("clone", pid=h.pid, flags=flags, errno="EINVAL", changed=[], what="refused before anything is made")]


@scenario("fail-wrong-nstype", "setns(uts fd, CLONE_NEWNET) is EINVAL: nstype must match the fd")
def fail_wrong_nstype(launcher):
    holder = launcher.holder(["uts"])
    h = launcher.nsop({"op": "setns", "ns_path": f"/proc/{holder}/ns/uts", "flags": flag("net")})
    return [Expect("setns", pid=h.pid, flags=flag("net"), errno="EINVAL", changed=[],
                   what="the fd's real type (uts) is not the one asked for (net)")]


@scenario("fail-eperm", "unshare(CLONE_NEWUTS) without CAP_SYS_ADMIN is EPERM")
def fail_eperm(launcher):
    h = launcher.nsop({"op": "unshare", "flags": flag("uts"), "uid": 65534})
    return [Expect("unshare", pid=h.pid, flags=flag("uts"), errno="EPERM", changed=[],
                   what="an unprivileged caller may only make a user namespace (and others inside it)")]
