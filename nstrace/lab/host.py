"""What the lab needs of this machine: its cache directory, kept root's alone, and its tools."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import ToolMissing
from ..linux import trusted_paths

DEFAULT_CACHE = "/var/cache/nstrace/lab"


def cache_dir() -> Path:
    return Path(os.path.abspath(os.environ.get("NSTRACE_LAB_CACHE", DEFAULT_CACHE)))


def trusted(path: Path) -> Path:
    """path, made if missing, checked to be root's alone (UnsafePath if not): root unpacks
    and boots what is in the cache, so no other user may be able to change any of it."""
    trusted_paths.trusted_dir(path, create=True)
    return path


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package = {"qemu-system-x86_64": "qemu-system-x86", "dpkg-deb": "dpkg"}.get(tool, tool)
        raise ToolMissing(f"{tool} not found: install the {package} package")
    return path


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
