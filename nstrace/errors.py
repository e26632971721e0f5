"""What can go wrong, as exceptions that carry a one-line message and an exit code.

The CLI prints ``str(err)`` on one line and exits with ``err.exit_code``; no
traceback reaches the user for anything listed here. The exit codes are
documented in the README.
"""


class NstraceError(Exception):
    """Base of every error nstrace reports to the user."""

    exit_code = 1


class UsageError(NstraceError):
    """Bad command-line input: unknown flag names, bad pids, conflicting options."""

    exit_code = 2


class PrivilegeError(NstraceError):
    """Not root, or missing CAP_BPF/CAP_PERFMON (or CAP_SYS_ADMIN)."""

    exit_code = 3


class KernelSupportError(NstraceError):
    """The kernel lacks something nstrace needs: BTF, tracefs, a probe type."""

    exit_code = 4


class LibbpfError(NstraceError):
    """libbpf is missing, too old, or one of its calls failed.

    ``errno`` holds the positive errno of the failed call, when there is one.
    """

    exit_code = 5

    def __init__(self, message, errno=0):
        super().__init__(message)
        self.errno = errno


class ProbeError(LibbpfError):
    """The kernel refused to load or attach one probe; ``probe`` names it."""

    def __init__(self, probe, message, errno=0):
        super().__init__(message, errno)
        self.probe = probe
