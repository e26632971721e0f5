"""tracefs, where libbpf looks a tracepoint's id up when it attaches one: mounted for the attach if it
is not, and unmounted after."""

import errno
import os
import stat

from ..errors import KernelSupportError, PrivilegeError
from ..linux import mounts

TRACEFS = "/sys/kernel/tracing"


def ensure_tracefs(path=TRACEFS):
    """Make tracefs available for attaching tracepoints; return True if we mounted it.

    libbpf resolves a tracepoint's id through tracefs at attach time only; our
    machines do not mount it by default (kernel-notes/build-machines.md). Mounted,
    tracefs is root's alone (mode 0700, fs/tracefs/inode.c, 6.18): with
    CAP_BPF and CAP_PERFMON but not root, it is there and cannot be read.
    """
    try:
        if stat.S_ISDIR(os.stat(os.path.join(path, "events")).st_mode):
            return False
    except PermissionError as e:
        raise PrivilegeError(f"tracefs at {path} is mounted, but this user may not read it ({e.strerror}): "
                             "libbpf looks tracepoints up there; run as root") from None
    except OSError:
        pass  # not mounted (or not there at all): mount it
    try:
        mounts.mount("nodev", path, "tracefs")
    except OSError as e:
        if e.errno == errno.EPERM:
            raise PrivilegeError(f"tracefs is not mounted at {path}, and mounting it needs CAP_SYS_ADMIN: "
                                 "run as root, or mount it first") from None
        raise KernelSupportError(f"tracefs is not mounted at {path} and mounting it failed: {os.strerror(e.errno)}") \
            from None
    return True


def unmount(path=TRACEFS):
    try:
        mounts.umount(path)  # detached: a reader may still hold a file
    except OSError:
        pass
