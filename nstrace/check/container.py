"""The seeds' docker-like container (articles 000 and 003): UTS|IPC|PID|NS, its own /proc, a rootfs
with bind mounts, pivot_root.
"""

import os
from pathlib import Path

from .scenario import Expect, flag, scenario


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
