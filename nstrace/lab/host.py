"""What the lab needs of this machine: its cache directory, kept root's alone, and its tools."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from ..errors import ToolMissing
from ..linux import trusted_paths
from ..linux.labcache import DEFAULT_CACHE, cache_dir  # noqa: F401 (the lab's names for them)


def trusted(path: Path) -> Path:
    """path, made if missing, checked to be root's alone (UnsafePath if not): root unpacks
    and boots what is in the cache, so no other user may be able to change any of it."""
    trusted_paths.trusted_dir(path, create=True)
    return path


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package = {"qemu-system-x86_64": "qemu-system-x86", "dpkg-deb": "dpkg", "xz": "xz-utils"}.get(tool, tool)
        raise ToolMissing(f"{tool} not found: install the {package} package")
    return path


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def locked(path: Path):
    """An open file holding an exclusive flock on path (a trusted file, made if missing), to use in a
    `with`: flock conflicts between open files, so it also parts two threads of one process."""
    trusted(path.parent)
    trusted_paths.check_file(str(path))
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle
