"""The files a guest command wrote in its working directory, written here the way nstrace writes any output.

The guest sends them as a tar of its overlay's upper layer (initramfs.py).  The tar came from a
guest, so it is read as outside input: only regular files with plain relative names are taken,
each is written through trusted_paths.open_beneath (no symlink here followed on the way, not even
root's: the guest chose the name; never over another user's file in a directory others can write;
never into a FIFO, socket or device), and only into directories that exist here.  What the guest
deleted or renamed stays as it is here: an overlay records those as whiteouts, which are not files
and are skipped, so a guest command can add and change files, never remove one.  A second name of a
file (a hard link in the tar) comes back as a file of its own with the same content.  Every entry
that does not come back is listed with why (Brought.failed, Brought.skipped).
"""

from __future__ import annotations

import dataclasses
import io
import os
import posixpath
import stat
import tarfile

from ..errors import NstraceError, WriteFailed
from ..linux import trusted_paths


@dataclasses.dataclass
class Brought:
    written: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (path, bytes)
    unchanged: list[str] = dataclasses.field(default_factory=list)  # copied up in the guest, same bytes
    failed: list[str] = dataclasses.field(default_factory=list)  # "path: why": refused or could not be written
    skipped: list[str] = dataclasses.field(default_factory=list)  # "name: why": no file (symlinks, whiteouts...)


def renamed(path: str, label: str) -> str:
    """path with label before its extension: demo.html, "6.1" -> demo-6.1.html (several kernels)."""
    head, tail = posixpath.split(path)
    stem, dot, ext = tail.rpartition(".")
    name = f"{stem}-{label}.{ext}" if dot and stem else f"{tail}-{label}"
    return posixpath.join(head, name)


def bring_back(data: bytes, cwd: str, label: str | None = None) -> Brought:
    """Write each regular file of the tar `data` under directory cwd (renamed with `label` if given)."""
    result = Brought()
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except tarfile.TarError as e:
        result.failed.append(f"(the guest's files): not a tar: {e}")
        return result
    files: dict[str, tarfile.TarInfo] = {}  # the regular files so far, by name: what a hard link names
    with archive:
        for member in archive:
            name = posixpath.normpath(member.name)
            if name == ".":
                continue
            if name.startswith(("/", "../")) or name == ".." or "\0" in name:
                result.failed.append(f"{name!r}: not a name inside the working directory")
                continue
            if member.isreg():
                files[name] = source = member
            elif member.islnk() and posixpath.normpath(member.linkname) in files:
                source = files[posixpath.normpath(member.linkname)]  # one file, two names: both come back
            else:
                why = _no_file(member, cwd, name)
                if why:
                    result.skipped.append(f"{name}: {why}")
                continue
            content = archive.extractfile(source).read()
            target = renamed(name, label) if label else name
            try:
                changed = _write(cwd, target, content, compare=label is None)
            except NstraceError as e:
                result.failed.append(f"{target}: {e}")
                continue
            if changed:
                result.written.append((target, len(content)))
            else:
                result.unchanged.append(target)
    return result


def _no_file(member: tarfile.TarInfo, cwd: str, name: str) -> str | None:
    """Why a member that is no regular file does not come back; None for a directory that is here."""
    if member.isdir():
        return None if _directory_here(cwd, name) else "a directory in the guest that is none here (none is made)"
    if member.islnk():
        return "a second name of a file that did not come back"
    if member.issym():
        return "a symlink (none is made here)"
    if member.ischr() and (member.devmajor, member.devminor) == (0, 0):  # an overlay whiteout
        return "removed or renamed in the guest (nothing is removed here)"
    if member.isfifo():
        return "a FIFO (none is made here)"
    if member.ischr() or member.isblk():
        return "a device (none is made here)"
    return f"not a regular file (tar type {member.type!r})"


def _directory_here(cwd: str, name: str) -> bool:
    """Whether name is a directory below cwd, no symlink on the way (as open_beneath goes)."""
    path = cwd
    for part in name.split("/"):
        path = os.path.join(path, part)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    return True


def _write(cwd: str, target: str, content: bytes, compare: bool) -> bool:
    """Write content to cwd/target; with compare, False if the file here holds it already (the
    overlay copies a file up as soon as it is opened for writing)."""
    fd, made = trusted_paths.open_beneath(cwd, target)
    try:
        if compare and not made and _holds(fd, content):
            return False
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise WriteFailed(f"cannot write {os.path.join(cwd, target)}: {e.strerror}") from None
    finally:
        os.close(fd)
    return True


def _holds(fd: int, content: bytes) -> bool:
    with open(fd, "rb", closefd=False) as f:
        return f.read(len(content) + 1) == content
