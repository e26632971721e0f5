"""The mount-namespace births of 7.x outside clone and unshare: open_tree(OPEN_TREE_NAMESPACE) and
fsmount(FSMOUNT_NAMESPACE), raw, and whether this kernel has them.

Both return an nsfs fd of a new mount namespace (fs/namespace.c open_new_namespace() ->
open_namespace_file(), 7.2), a copy of the tree at the path, or of the new superblock's root, on
top of a copy of the rootfs. x86-64 numbers from arch/x86/entry/syscalls/syscall_64.tbl.
"""

import ctypes
import errno
import os

from ..once import once
from .syscalls import call

SYS_OPEN_TREE = 428
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432

# include/uapi/linux/mount.h (7.2) and include/uapi/linux/fcntl.h
OPEN_TREE_CLONE = 1
OPEN_TREE_NAMESPACE = 1 << 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
FSMOUNT_CLOEXEC = 1
FSMOUNT_NAMESPACE = 2
FSCONFIG_CMD_CREATE = 6
AT_FDCWD = -100
AT_RECURSIVE = 0x8000

def open_tree(path, flags, dfd=AT_FDCWD):
    return call(SYS_OPEN_TREE, ctypes.c_int(dfd), os.fsencode(path), ctypes.c_uint(flags))


def fsopen(fstype, flags=0):
    return call(SYS_FSOPEN, fstype.encode(), ctypes.c_uint(flags))


def fsconfig_create(fs_fd):
    return call(SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None, ctypes.c_int(0))


def fsmount(fs_fd, flags, attr_flags=0):
    return call(SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(flags), ctypes.c_uint(attr_flags))


def _refuses_flag(call):
    """True if the kernel answers the call EINVAL: it checks unknown flags first, before anything else
    (fs/namespace.c vfs_open_tree() and SYSCALL_DEFINE3(fsmount), 5.2 to 7.2)."""
    try:
        call()
    except OSError as e:
        return e.errno in (errno.EINVAL, errno.ENOSYS)
    return False  # cannot happen with the arguments given: a namespace would have been made


@once
def has_open_tree_namespace():
    """open_tree() takes OPEN_TREE_NAMESPACE (7.x). Asked with an empty path and no AT_EMPTY_PATH, which
    a kernel that knows the flag refuses (ENOENT) before it makes anything."""
    return not _refuses_flag(lambda: open_tree("", OPEN_TREE_NAMESPACE))


@once
def has_fsmount_namespace():
    """fsmount() takes FSMOUNT_NAMESPACE (7.x). Asked with fd -1: EBADF (or EPERM, unprivileged) where it
    knows the flag, before anything is made."""
    return not _refuses_flag(lambda: fsmount(-1, FSMOUNT_NAMESPACE))
