"""What a process sees from inside new namespaces: the learner's proof that something changed.

Each probe touches only what the new namespace makes private: a hostname set
in a new UTS namespace, /proc remounted in a new mount + PID namespace, and
so on. Called in the launcher's children, never in nstrace itself.
"""

import os
import socket
import time

from ..linux.mounts import mount

MS_REC, MS_PRIVATE = 0x4000, 0x40000
DEMO_HOSTNAME = "nstrace-demo"


def view(types):
    """Facts as seen by this process, for the namespace types it is in anew."""
    facts = {"pid": os.getpid(), "uid": os.getuid()}
    if "uts" in types:
        socket.sethostname(DEMO_HOSTNAME)
        facts["hostname"] = socket.gethostname()
    if "mnt" in types:
        # Never let a mount made here reach the host: make every mount private first.
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        if "pid" in types and os.getpid() == 1:
            mount("proc", "/proc", "proc")
            facts["proc_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    if "net" in types:
        facts["interfaces"] = [name for _, name in socket.if_nameindex()]
    if "ipc" in types:
        with open("/proc/sysvipc/msg") as f:
            facts["msg_queues"] = len(f.readlines()) - 1
    if "cgroup" in types:
        # Every hierarchy's path is relative to the cgroup ns root: "/" right after the change.
        with open("/proc/self/cgroup") as f:
            facts["cgroup_paths"] = sorted({line.rstrip("\n").split(":", 2)[2] for line in f})
    if "time" in types:
        facts["monotonic_s"] = round(time.clock_gettime(time.CLOCK_MONOTONIC), 3)
    return facts


def leave_empty_root(proc_fd, old_root):
    """In an empty mount namespace (7.1+), which has no /proc: how many mounts it holds, read through a
    /proc opened before; then back to the old root (chroot: the mount namespace stays the new one), so
    that /proc and the rest of the inside view are reached through the old tree."""
    with open("self/mountinfo", "rb", opener=lambda path, flags: os.open(path, flags, dir_fd=proc_fd)) as f:
        mounts = len(f.readlines())
    os.fchdir(old_root)
    os.chroot(".")
    return mounts


def write_id_maps(pid, outside_uid, outside_gid):
    """Map root inside pid's user namespace to one id outside, as the seeds' parent does.

    setgroups must be denied before an unprivileged gid_map write
    (kernel/user_namespace.c, since 3.19).
    """
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {outside_uid} 1")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {outside_gid} 1")


def enter_rootfs(rootfs):
    """The seeds' docker-like container: a rootfs of bind mounts, private /proc, pivot_root.

    Called by a child already in new mount and PID namespaces. /usr is
    bind-mounted read-only (Debian 12 is merged-/usr: /bin, /lib are links
    into it, made by the launcher), /proc is this PID namespace's own.
    """
    import ctypes
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount(rootfs, rootfs, None, MS_BIND | MS_REC)  # pivot_root needs new_root to be a mount point
    mount("/usr", f"{rootfs}/usr", None, MS_BIND | MS_REC)
    mount(None, f"{rootfs}/usr", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    mount("proc", f"{rootfs}/proc", "proc")
    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir(rootfs)
    if libc.syscall(155, b".", b"old_root") != 0:  # SYS_pivot_root, x86-64
        raise OSError(ctypes.get_errno(), "pivot_root")
    os.chdir("/")
    if libc.umount2(b"/old_root", 2) != 0:  # MNT_DETACH: the host's tree leaves our view
        raise OSError(ctypes.get_errno(), "umount old root")
    return {"root": sorted(os.listdir("/")), "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "old_root_empty": not os.listdir("/old_root")}


MS_BIND, MS_REMOUNT, MS_RDONLY = 4096, 32, 1
