"""mount(2) and umount2(2), raw, through libc: the launcher's bind mounts and the tracefs mount that
libbpf needs. Each raises OSError(errno) naming what failed."""

import ctypes
import os

MS_BIND = 4096      # include/uapi/linux/mount.h
MNT_DETACH = 2      # include/linux/fs.h: unmount now, let go of it once its last user does

_libc = ctypes.CDLL(None, use_errno=True)


def mount(source, target, fstype=None, flags=0, data=None):
    enc = lambda s: s.encode() if s else None  # noqa: E731
    if _libc.mount(enc(source), enc(str(target)), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def umount(target, flags=MNT_DETACH):
    if _libc.umount2(str(target).encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")
