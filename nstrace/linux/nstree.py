"""The kernel's own list of namespaces (6.19+): listns() and opening a namespace by its id.

Since 6.19 every namespace that is alive is in one tree (kernel/nstree.c,
7.2), and listns(2) hands out the ``ns_id`` of each *active* one: a
namespace is active while a task, an nsfs file (an open fd, a bind mount) or
an active child namespace holds it (include/linux/ns_common.h, fs/nsfs.c
nsfs_init_inode() takes an active reference for the file's inode, 7.2).
/proc only shows what processes show: an fd sent over a unix socket and not
received yet, or held by a process /proc will not show (another pid
namespace's, one a security module hides), keeps a namespace alive that no
/proc scan finds; listns() lists it, and an nsfs file handle (struct
nsfs_file_handle, FILEID_NSFS, opened at FD_NSFS_ROOT) opens it by that id
(fs/nsfs.c nsfs_fh_to_dentry(), 7.2). Root of the initial user namespace
may list and open them all (may_see_all_namespaces()).
"""

import ctypes
import errno
import fcntl
import os

SYS_LISTNS = 470            # arch/x86/entry/syscalls/syscall_64.tbl, 6.19+ (7.2)
FD_NSFS_ROOT = -10003       # include/uapi/linux/fcntl.h, 7.2
FILEID_NSFS = 0xF1          # include/linux/exportfs.h, 7.2
NS_GET_NSTYPE = 0xB703      # _IO(NSIO, 3), include/uapi/linux/nsfs.h: the CLONE_NEW* of an nsfs fd

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class NsIdReq(ctypes.Structure):
    """struct ns_id_req, include/uapi/linux/nsfs.h (NS_ID_REQ_SIZE_VER0 = 32 bytes)."""

    _fields_ = [("size", ctypes.c_uint32), ("spare", ctypes.c_uint32), ("ns_id", ctypes.c_uint64),
                ("ns_type", ctypes.c_uint32), ("spare2", ctypes.c_uint32), ("user_ns_id", ctypes.c_uint64)]


class _NsfsHandle(ctypes.Structure):
    # struct file_handle with a struct nsfs_file_handle inside (ns_id; ns_type and ns_inum 0: any)
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("ns_id", ctypes.c_uint64), ("ns_type", ctypes.c_uint32), ("ns_inum", ctypes.c_uint32)]


def list_ids(batch=256):
    """The ns_id of every active namespace listns() shows this caller, in id order; None where the
    kernel has no listns() (ENOSYS before 6.19)."""
    ids = []
    req = NsIdReq(size=ctypes.sizeof(NsIdReq))
    buf = (ctypes.c_uint64 * batch)()
    while True:
        n = _libc.syscall(ctypes.c_long(SYS_LISTNS), ctypes.byref(req), buf, ctypes.c_size_t(batch), ctypes.c_uint(0))
        if n < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                return None
            if err == errno.ENOENT and ids:
                return ids  # the last one listed went away meanwhile: nothing after it to start from
            raise OSError(err, os.strerror(err))
        ids += buf[:n]
        if n < batch:
            return ids
        req.ns_id = ids[-1]


def open_by_id(ns_id):
    """An O_RDONLY fd of the namespace with this id, or None (gone, or not ours to see)."""
    handle = _NsfsHandle(handle_bytes=16, handle_type=FILEID_NSFS, ns_id=ns_id)
    fd = _libc.open_by_handle_at(ctypes.c_int(FD_NSFS_ROOT), ctypes.byref(handle), os.O_RDONLY | os.O_CLOEXEC)
    return fd if fd >= 0 else None


def nstype(fd):
    """The CLONE_NEW* value of the namespace behind an nsfs fd."""
    return fcntl.ioctl(fd, NS_GET_NSTYPE)
