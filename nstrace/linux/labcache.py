"""Where nstrace keeps what it fetched from Debian: the lab's kernels and apt lists
(nstrace/lab/, which fills it as root) and the kernel source the views show
(nstrace/linux/kernelsource.py, which reads it back for any user). One place for both."""

import os
from pathlib import Path

DEFAULT_CACHE = "/var/cache/nstrace/lab"


def cache_dir() -> Path:
    return Path(os.path.abspath(os.environ.get("NSTRACE_LAB_CACHE", DEFAULT_CACHE)))
