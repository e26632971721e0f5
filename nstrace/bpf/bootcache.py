"""What nstrace keeps for the rest of a boot, in /run/nstrace (a tmpfs: emptied at reboot).

Answers that cost a start tens of milliseconds to find again (whether the
kernel loads fentry programs, a minimal copy of its BTF) are kept under a
name carrying this boot's id, so a file of another boot is never read.

The directory and every file read from it are root's alone (nstrace/linux/trusted_paths.py):
made 0755 and 0644 whatever the umask, and refused with one line
(UnsafePath) when another user could have written them, because
what is read here steers what root loads into the kernel.
"""

import os

from ..linux import trusted_paths

DIR = "/run/nstrace"

_checked = set()  # directories found trusted by this process: only root can change them after that


def boot_id():
    """/proc/sys/kernel/random/boot_id: new at every boot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def directory(create=True):
    """DIR, checked (and made) once per process: raises UnsafePath, or OSError if it cannot be made."""
    if DIR not in _checked:
        trusted_paths.trusted_dir(DIR, create=create)
        _checked.add(DIR)
    return DIR


def write(path, data):
    """Write bytes or text to path in DIR whole or not at all: a run starting meanwhile reads one or the other."""
    directory()
    trusted_paths.write_whole(path, data)


def text(name, compute):
    """compute()'s text, kept as DIR/<name>-<boot id>.txt for the rest of this boot."""
    path = os.path.join(DIR, f"{name}-{boot_id()}.txt")
    try:
        directory()
        cached = trusted_paths.read_file(path)
    except OSError:
        cached = None  # no /run/nstrace and none can be made: the answer is only not kept
    if cached is not None:
        return cached
    value = compute()
    try:
        write(path, value)
    except OSError:
        pass  # a read-only /run only costs the work again
    return value
