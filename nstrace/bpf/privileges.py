"""Whether this process may load and attach tracing BPF: its capabilities, in the initial user namespace."""

import os

from ..errors import PrivilegeError

# include/uapi/linux/capability.h
CAP_SYS_NICE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 23, 21, 38, 39


def effective_caps(pid="self"):
    """The CapEff bitmask of a process, from /proc/<pid>/status (bytes: its Name: line is whatever
    file the process was run as)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        lines = f.read().split(b"\n")
    for line in lines:
        if line.startswith(b"CapEff:"):
            return int(line.split()[1], 16)
    return 0


def in_initial_user_ns():
    """True unless this process runs in a user namespace other than the initial one.

    The initial user namespace maps every uid to itself, and only it can
    (kernel/user_namespace.c; /proc/self/uid_map is "0 0 4294967295" there, 5.10-7.2).
    """
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True  # no /proc: nothing to tell, and the kernel will answer at load


def check_privileges():
    """Raise PrivilegeError unless this process may load and attach tracing BPF."""
    caps = effective_caps()
    has = lambda cap: bool(caps >> cap & 1)  # noqa: E731
    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        if not in_initial_user_ns():
            # capabilities in a user namespace are only over it; the kernel checks CAP_BPF and
            # CAP_PERFMON in the initial one (kernel/bpf/syscall.c bpf_capable(), 6.18)
            raise PrivilegeError("nstrace needs root of the initial user namespace: this process runs in "
                                 "another user namespace, whose capabilities do not reach the kernel's BPF")
        return
    who = "not root" if os.geteuid() else "root without the needed capabilities"
    raise PrivilegeError(f"nstrace needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): running as {who}; try sudo")
