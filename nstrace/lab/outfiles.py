"""The files a guest command wrote in its working directory, written here the way nstrace writes any output.

The guest sends them as a tar of its overlay's upper layer (initramfs.py).  The tar came from a
guest, so it is read as outside input: only regular files with plain relative names are taken,
each is written through trusted_paths.create_output (never through another user's symlink, never
over another user's file in a directory others can write), and only into directories that exist
here.  What the guest deleted or renamed stays as it is here: an overlay records those as
whiteouts, which are not files and are skipped, so a guest command can add and change files, never
remove one.
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
    failed: list[str] = dataclasses.field(default_factory=list)  # "path: why"
    skipped: list[str] = dataclasses.field(default_factory=list)  # not regular files (links, devices)


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
    with archive:
        for member in archive:
            name = posixpath.normpath(member.name)
            if name == ".":
                continue
            if member.isdir():
                continue  # a directory is made by nobody here: its files need it to exist (below)
            if name.startswith(("/", "../")) or name == ".." or "\0" in name:
                result.failed.append(f"{name!r}: not a name inside the working directory")
                continue
            if not member.isreg():
                result.skipped.append(name)
                continue
            content = archive.extractfile(member).read()
            target = renamed(name, label) if label else name
            path = os.path.join(cwd, target)
            if label is None and _same(path, content):
                result.unchanged.append(target)
                continue
            try:
                _write(path, content)
            except NstraceError as e:
                result.failed.append(f"{target}: {e}")
                continue
            result.written.append((target, len(content)))
    return result


def _same(path: str, content: bytes) -> bool:
    """True if path already holds content: the overlay copies a file up when it is opened for writing."""
    try:  # not through a symlink, and a FIFO planted there must not block the read
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return stat.S_ISREG(os.fstat(fd).st_mode) and f.read(len(content) + 1) == content


def _write(path: str, content: bytes) -> None:
    fd = trusted_paths.create_output(path)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise WriteFailed(f"cannot write {path}: {e.strerror}") from None
    finally:
        os.close(fd)
