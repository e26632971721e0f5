"""What nstrace keeps for the rest of a boot, in /run/nstrace (a tmpfs: emptied at reboot).

Answers that cost a start tens of milliseconds to find again (whether the
kernel loads fentry programs, a minimal copy of its BTF) are kept under a
name carrying this boot's id, so a file of another boot is never read.
"""

import os

DIR = "/run/nstrace"


def boot_id():
    """/proc/sys/kernel/random/boot_id: new at every boot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def write(path, data):
    """Write bytes or text to path whole or not at all: a run starting meanwhile reads one or the other."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.replace(tmp, path)


def text(name, compute):
    """compute()'s text, kept as DIR/<name>-<boot id>.txt for the rest of this boot."""
    path = os.path.join(DIR, f"{name}-{boot_id()}.txt")
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        pass
    value = compute()
    try:
        write(path, value)
    except OSError:
        pass  # a read-only /run only costs the work again
    return value
