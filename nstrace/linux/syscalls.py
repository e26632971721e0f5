"""The namespace system calls, raw, through libc's syscall(2).

glibc has no clone3() wrapper and its clone() wants a child function and
stack; the launcher and the tests need the bare calls with exact flags, so
they go through syscall(2) with x86-64 numbers (arch/x86/entry/syscalls/
syscall_64.tbl). Each returns the raw result or raises OSError(errno).
"""

import ctypes
import os

# arch/x86/include/uapi/asm/signal.h: x86-64, as the syscall numbers are. Not `signal`: it imports enum,
# and mountns (this module's user) is asked on the way to watch's first load (tests/test_startup.py).
SIGCHLD = 17

SYS_CLONE = 56
SYS_UNSHARE = 272
SYS_SETNS = 308
SYS_PIDFD_OPEN = 434
SYS_CLONE3 = 435
SYS_MEMBARRIER = 324
MEMBARRIER_CMD_GLOBAL = 1   # include/uapi/linux/membarrier.h

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class CloneArgs(ctypes.Structure):
    """struct clone_args, include/uapi/linux/sched.h (CLONE_ARGS_SIZE_VER2 = 88 bytes)."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def call(nr, *args):
    """syscall(2) nr with args (ctypes values); the raw result, or OSError(errno)."""
    ret = _libc.syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def unshare(flags):
    return call(SYS_UNSHARE, ctypes.c_ulong(flags))


def setns(fd, nstype=0):
    return call(SYS_SETNS, ctypes.c_int(fd), ctypes.c_int(nstype))


def pidfd_open(pid):
    return call(SYS_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(0))


def rcu_grace_period():
    """Wait for an RCU grace period: membarrier(MEMBARRIER_CMD_GLOBAL) is synchronize_rcu() where more
    than one CPU is online, and returns at once on one (kernel/sched/membarrier.c, 5.10.262 and
    6.1.192). False where the kernel refuses it (EINVAL with nohz_full CPUs)."""
    try:
        call(SYS_MEMBARRIER, ctypes.c_int(MEMBARRIER_CMD_GLOBAL), ctypes.c_uint(0), ctypes.c_int(0))
    except OSError:
        return False
    return True


def clone(flags, exit_signal=SIGCHLD):
    """fork()-like clone: child stack 0 (a copy of ours). Returns 0 in the child."""
    return call(SYS_CLONE, ctypes.c_ulong(flags | exit_signal), ctypes.c_ulong(0),
                 ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def clone3(flags, exit_signal=SIGCHLD):
    """fork()-like clone3. Returns 0 in the child."""
    args = CloneArgs(flags=flags, exit_signal=exit_signal)
    return call(SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
