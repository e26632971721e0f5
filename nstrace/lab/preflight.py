"""What the host can tell of a guest's files before it boots one.

The guest's root is the host's, read-only over 9p (guest.py), with its own tmpfs over the scratch
directories (initramfs.scratch_mounts: /tmp, /run, ... unless the command's directory is there) and
its own /proc, /sys and /dev. So a path outside those is in the guest exactly when it is here, and a
path under a scratch directory is in no guest at boot. The guest runs its command as root on the same
interpreter: what root cannot read or run here, it cannot there.
"""

from __future__ import annotations

import os
import stat
import sys

from .guest import GUEST_BASE_ENV
from .initramfs import GUEST_MOUNTS, scratch_mounts, under


def _where(path: str, cwd: str) -> str | None:
    """"host": the guest sees this path as the host has it; "scratch": on a tmpfs that is empty at boot;
    None: on a mount of the guest's own (/proc, /sys, /dev), which the host cannot speak for."""
    path = os.path.normpath(os.path.join(cwd, path))
    if any(under(path, m) for m in GUEST_MOUNTS):
        return None
    if any(under(path, m) for m in scratch_mounts(cwd, (sys.executable,))):
        return "scratch"
    return "host"


def missing_program(name: str, cwd: str) -> str | None:
    """Why the guest cannot find `name` to exec as execvp() there would (a name with a slash is a path
    from cwd; else each directory of the guest's PATH), or None if it can or the host cannot tell."""
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in GUEST_BASE_ENV["PATH"].split(":")]
    for path in candidates:
        where = _where(path, cwd)
        if where is None:
            return None
        if where == "host" and _runnable(os.path.join(cwd, path)):
            return None
    searched = "" if "/" in name else f" in the guest's PATH ({GUEST_BASE_ENV['PATH']})"
    return f"{name}: not found{searched}"


def _runnable(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def unreadable_file(path: str, cwd: str) -> str | None:
    """Why the guest cannot read the file `path`, or None if it can or the host cannot tell."""
    where = _where(path, cwd)
    if where is None:
        return None
    if where == "scratch":
        return f"{path}: not in the guest: {_scratch_of(path, cwd)} is a tmpfs of its own there"
    try:
        fd = os.open(os.path.join(cwd, path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return f"{path}: {e.strerror}"
    os.close(fd)
    return None


def _scratch_of(path: str, cwd: str) -> str:
    full = os.path.normpath(os.path.join(cwd, path))
    return next(m for m in scratch_mounts(cwd, (sys.executable,)) if under(full, m))
