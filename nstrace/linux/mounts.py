"""mount(2) and umount2(2), raw, through libc: the launcher's bind mounts and the tracefs mount that
libbpf needs. Each raises OSError(errno) naming what failed. And what /proc/<pid>/mountinfo says."""

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


def mountinfo(pid="self"):
    """[(device, root, mount point, fstype)] of /proc/<pid>/mountinfo; OSError if it cannot be read.

    Paths are whatever their makers chose: read as bytes and given as str with undecodable bytes
    kept as surrogates (os.fsdecode), never a UnicodeDecodeError. The kernel escapes space, tab,
    newline and backslash as octal (fs/proc_namespace.c show_mountinfo() -> mangle(), 5.10-7.2):
    undone here. Each line is "ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE ..."
    (Documentation/filesystems/proc.rst).
    """
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        data = f.read()
    out = []
    for line in data.split(b"\n"):
        left, _, right = line.partition(b" - ")
        fields = left.split(b" ")
        if len(fields) < 5 or not right:
            continue
        device, root, point = fields[2], _unmangle(fields[3]), _unmangle(fields[4])
        out.append((device.decode("ascii", "replace"), root, point, os.fsdecode(right.split(b" ", 1)[0])))
    return out


def _unmangle(field):
    # the kernel escapes every backslash too (as \134): each one here starts an escape
    head, *escaped = field.split(b"\\")
    out = bytearray(head)
    for part in escaped:
        octal = len(part) >= 3 and part[0] in b"0123" and not part[1:3].strip(b"01234567")
        out += bytes([int(part[:3], 8)]) + part[3:] if octal else b"\\" + part
    return os.fsdecode(bytes(out))
