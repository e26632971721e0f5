"""Mount namespaces: one kept alive by a bind mount of its ns file, births outside clone/unshare
(open_tree, fsmount: 7.x), empty ones (clone3 and unshare: 7.1+), chroot beside pivot_root, and mount
propagation (articles 001, 003, 004).
"""

import ctypes
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..kernel import flags as fl
from ..linux import mountns
from ..linux.mounts import umount
from .scenario import (
    Expect,
    Unsupported,
    flag,
    hold,
    lacks_empty_mntns,
    report,
    run_inside,
    run_inside_main,
    scenario,
)

_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC, MS_PRIVATE, MS_SLAVE, MS_SHARED, MS_UNBINDABLE = 4096, 0x4000, 1 << 18, 1 << 19, 1 << 20, 1 << 17


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


# --- empty mount namespaces (7.1+) ------------------------------------------------------------

def _empty_mount_ns_birth(op, flag_name):
    """A scenario body: op with flag_name makes a mount namespace holding only a copy of the root mount."""
    def run(launcher):
        flags = fl.flag_table(op)[flag_name]
        if lacks_empty_mntns(flags, op):
            raise Unsupported(lacks_empty_mntns(flags, op))
        h = launcher.nsop({"op": op, "flags": flags, "inside": True})
        who = "the child" if op == "clone3" else "the caller"
        return [Expect(op, pid=h.pid, flags=flags, changed=["mnt"], inside={"mounts": 1},
                       seen_inside=h.report.get("inside"),
                       what=f"{op}({flag_name}) puts {who} in a new mount namespace whose only mount is a copy "
                            "of the root: nothing mounted on it, not even /proc")]
    return run


scenario("empty-mntns-clone3", "clone3(CLONE_EMPTY_MNTNS): the child's new mount namespace holds the root mount "
                               "alone (7.1+)")(_empty_mount_ns_birth("clone3", "CLONE_EMPTY_MNTNS"))
scenario("empty-mntns-unshare", "unshare(UNSHARE_EMPTY_MNTNS), CLONE_PARENT_SETTID's bit: the caller's new mount "
                                "namespace holds the root mount alone (7.1+)")(
    _empty_mount_ns_birth("unshare", "UNSHARE_EMPTY_MNTNS"))


# --- chroot beside pivot_root (003, 004) --------------------------------------------------

def _rootfs(launcher, name):
    rootfs = launcher.workdir / name
    rootfs.mkdir(mode=0o755)
    for d in ("usr", "proc", "old_root"):
        (rootfs / d).mkdir(mode=0o755)
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path("/", link).is_symlink():  # Debian is merged-/usr
            (rootfs / link).symlink_to(os.readlink(Path("/", link)))
    return rootfs


@scenario("rootfs-chroot-vs-pivot", "the docker-like rootfs entered with chroot and with pivot_root: only pivot_root leaves no way back to the host's root")
def rootfs_chroot_vs_pivot(launcher):
    expects, seen = [], {}
    for how in ("chroot", "pivot_root"):
        rootfs = _rootfs(launcher, f"rootfs-{how}")
        proc, rep = run_inside(launcher, __name__, ["unshare", "--mount", "--pid", "--fork", "--kill-child"], "rootfs", how, rootfs)
        seen[how] = rep
        expects.append(Expect("unshare", pid=proc.pid, changed=["mnt", "pid_for_children"],
                              what=f"util-linux unshare --mount --pid, then {how} into the rootfs"))
    root = sorted(p.name for p in (launcher.workdir / "rootfs-chroot").iterdir() if p.name != ".escape")
    expects.append(Expect("facts", inside={
        "chroot": {"pid": 1, "root": root, "escaped to the host's root": True},
        "pivot_root": {"pid": 1, "root": root, "escaped to the host's root": False, "old root in the namespace": False}},
        seen_inside=seen, what="chroot only moves this process's root: the host's tree is still in its mount "
                               "namespace and `chroot(subdir); chdir(..)` climbs back to it; after pivot_root and "
                               "umount of the old root there is nothing above the rootfs"))
    return expects


# --- mount propagation (004) ------------------------------------------------------------------

PROPAGATION = ("shared", "slave", "private", "unbindable")


@scenario("mount-propagation", "shared, slave, private and unbindable mounts: which new mounts cross between two mount namespaces")
def mount_propagation(launcher):
    top = launcher.workdir / "propagation"
    top.mkdir(mode=0o755)
    _, rep = run_inside(launcher, __name__, ["unshare", "--mount", "--propagation", "private"], "propagation-outside", top)
    want = {"shared": {"outside mount seen inside": True, "inside mount seen outside": True},
            "slave": {"outside mount seen inside": True, "inside mount seen outside": False},
            "private": {"outside mount seen inside": False, "inside mount seen outside": False},
            "unbindable": {"outside mount seen inside": False, "inside mount seen outside": False,
                           "bind mount of it": "EINVAL"}}
    want["private"]["bind mount of it"] = "made"
    return [Expect("unshare", pid=rep.get("outside_pid"), flags=flag("mnt"), changed=["mnt"],
                   what="the \"outside\" mount namespace, all private: the host's mounts are never touched"),
            Expect("unshare", pid=rep.get("inside_pid"), flags=flag("mnt"), changed=["mnt"], proc=("match", "gone"),
                   what="the \"inside\" one: copy_mnt_ns copies the outside tree, propagation and all"),
            Expect("facts", inside=want, seen_inside=rep.get("facts"),
                   what="a tmpfs mounted on each side under a mount of each kind, and a bind of it")]


# --- inside: what runs in the namespaces (python -m nstrace.check.<this module> WHAT ARGS) ---------


def _mount(source, target, fstype=None, flags=0):
    """mount(2); 0 or the errno name."""
    if _libc.mount(source and str(source).encode(), str(target).encode(), fstype and fstype.encode(),
                   ctypes.c_ulong(flags), None) == 0:
        return "made"
    return errno.errorcode.get(ctypes.get_errno(), "?")


def propagation_outside(top):
    """In the "outside" mount namespace: one tmpfs per kind of propagation under `top`, then an
    inside namespace copied from this one; each side mounts under each kind and the other looks."""
    top = Path(top)
    _mount("nstrace", top, "tmpfs")  # private, like everything here: ours alone
    for target in ("bind-private", "bind-unbindable"):
        (top / target).mkdir()
    for kind in PROPAGATION:
        d = top / kind
        d.mkdir()
        _mount("nstrace-" + kind, d, "tmpfs")
        # a slave needs a master: shared here, made a slave inside
        _mount(None, d, None, {"shared": MS_SHARED, "slave": MS_SHARED, "private": MS_PRIVATE,
                               "unbindable": MS_UNBINDABLE}[kind])
        for sub in ("from-outside", "from-inside"):
            (d / sub).mkdir()  # the directories are the tmpfs's own: the same on both sides
    inside = subprocess.Popen(["unshare", "--mount", "--propagation", "unchanged", sys.executable, "-m", __spec__.name,
                               "propagation-inside"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(*command):
        inside.stdin.write(json.dumps([str(c) if isinstance(c, Path) else c for c in command]) + "\n")
        inside.stdin.flush()
        return json.loads(inside.stdout.readline() or "null")
    facts = {}
    for kind in PROPAGATION:
        d = top / kind
        if kind == "slave":
            ask("mount", None, d, None, MS_SLAVE)
        _mount("outside", d / "from-outside", "tmpfs")
        ask("mount", "inside", d / "from-inside", "tmpfs", 0)
        facts[kind] = {"outside mount seen inside": ask("ismount", d / "from-outside"),
                       "inside mount seen outside": os.path.ismount(d / "from-inside")}
        if kind in ("private", "unbindable"):
            # here, where it was made so: whether a copy in a new namespace stays unbindable
            # is not the same on every kernel (on this 6.18 host the copy could be bound)
            facts[kind]["bind mount of it"] = _mount(d, top / f"bind-{kind}", None, MS_BIND)
    inside.stdin.close()
    inside.wait()
    report({"outside_pid": os.getpid(), "inside_pid": inside.pid, "facts": facts})
    hold()


def propagation_inside():
    for line in sys.stdin:
        command, *args = json.loads(line)
        if command == "mount":
            answer = _mount(*args)
        else:  # ismount
            answer = os.path.ismount(args[0])
        report(answer)


def rootfs(how, root):
    """pid 1 of a new PID namespace, in a new mount namespace: enter the rootfs by `how`, then try
    the classic way out (chroot into a subdirectory, leaving the working directory outside the new
    root, and climb with chdir(..))."""
    from .inside import enter_rootfs
    facts = {"pid": os.getpid()}
    if how == "chroot":
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount("/usr", f"{root}/usr", None, MS_BIND | MS_REC)
        _mount("proc", f"{root}/proc", "proc")
        os.chroot(root)
        os.chdir("/")
    else:
        entered = enter_rootfs(root)
        facts["old root in the namespace"] = not entered["old_root_empty"]
    facts["root"] = sorted(p for p in os.listdir("/") if p != ".escape")
    os.mkdir("/.escape", 0o700)
    os.chroot("/.escape")  # the working directory, /, is now outside the root
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
    facts["escaped to the host's root"] = os.path.isdir("/etc") and os.path.isdir("/home")
    report({"pid": os.getpid(), **facts})
    hold()


INSIDE = {"propagation-outside": propagation_outside, "propagation-inside": propagation_inside, "rootfs": rootfs}

if __name__ == "__main__":
    run_inside_main(INSIDE)
