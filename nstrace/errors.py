"""What can go wrong, as exceptions that carry a one-line message and an exit code.

The CLI prints ``str(err)`` on one line and exits with ``err.exit_code``; no traceback reaches the
user for anything listed here. ExitCode is the one table of exit codes; the README's "Exit codes"
section is its text (tests/test_cli.py holds the two equal).
"""


class ExitCode:
    """Every exit code nstrace has. Plain ints, not an enum.IntEnum: this module is imported before
    watch's first probe is attached, and importing enum would delay that (bench: start-up)."""

    OK = 0              # success (for check and demo: every observable step matched)
    FAILED = 1          # a check or the lab suite failed
    USAGE = 2           # bad input: unknown option, flag, type, scenario or pid; a damaged session file
    PRIVILEGE = 3       # not privileged: needs root, or CAP_BPF + CAP_PERFMON
    KERNEL = 4          # the kernel lacks something: no BTF, tracefs not mountable
    LIBBPF = 5          # libbpf missing or too old, or a libbpf call or probe the kernel refused
    LAUNCHER = 6        # the launcher could not make or undo a resource
    UNSAFE_WRITE = 7    # a file could not be written safely: another user could redirect it, or it failed
    NOT_EXECUTABLE = 126  # watch -- COMMAND: COMMAND was found but could not be run (as env(1) says it)
    NOT_FOUND = 127       # watch -- COMMAND: no such COMMAND


class NstraceError(Exception):
    """Base of every error nstrace reports to the user."""

    exit_code = ExitCode.FAILED


class UsageError(NstraceError):
    """Bad command-line input: unknown flag names, bad pids, conflicting options."""

    exit_code = ExitCode.USAGE


class PrivilegeError(NstraceError):
    """Not root, or missing CAP_BPF/CAP_PERFMON (or CAP_SYS_ADMIN)."""

    exit_code = ExitCode.PRIVILEGE


class KernelSupportError(NstraceError):
    """The kernel lacks something nstrace needs: BTF, tracefs, a probe type."""

    exit_code = ExitCode.KERNEL


class LibbpfError(NstraceError):
    """libbpf is missing, too old, or one of its calls failed.

    ``errno`` holds the positive errno of the failed call, when there is one.
    """

    exit_code = ExitCode.LIBBPF

    def __init__(self, message, errno=0):
        super().__init__(message)
        self.errno = errno


class ProbeError(LibbpfError):
    """The kernel refused to load or attach one probe; ``probe`` names it."""

    def __init__(self, probe, message, errno=0):
        super().__init__(message, errno)
        self.probe = probe


class LauncherError(NstraceError):
    """The launcher could not make or undo a namespace, mount, netns or process."""

    exit_code = ExitCode.LAUNCHER


class UnsafePath(NstraceError):
    """A directory or file nstrace would use could be changed by another user."""

    exit_code = ExitCode.UNSAFE_WRITE


class WriteFailed(NstraceError):
    """Output could not be written: disk full, I/O error, stdout closed."""

    exit_code = ExitCode.UNSAFE_WRITE


class CommandNotRun(NstraceError):
    """`watch -- COMMAND` could not run COMMAND: 127 if it is not found, 126 otherwise (as env(1))."""

    exit_code = ExitCode.NOT_FOUND

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class CheckFailed(NstraceError):
    """A scenario of `nstrace check` (or the demo's operation) did not match the documented path."""


class RenderError(NstraceError):
    """A picture could not be made (dot missing or failing)."""


# --- the lab (nstrace/lab/) --------------------------------------------------------

class LabError(NstraceError):
    """Base of every error of the lab."""


class LabFailed(LabError):
    """The suite failed in a guest."""


class ToolMissing(LabError):
    """A program the lab runs on this machine (qemu, dpkg-deb, zstd) is not installed."""


class PackageNotFound(LabError):
    """No Debian package for the kernel asked for."""


class DownloadError(LabError):
    """apt could not fetch a kernel, or dpkg-deb could not unpack it."""


class GuestFailure(LabError):
    """A guest that ended without reporting its command's exit status.

    console: the kernel's console; output: the command's channel so far; began: the command had started.
    """

    def __init__(self, message, console="", output="", began=False):
        super().__init__(message)
        self.console, self.output, self.began = console, output, began


class BootError(GuestFailure):
    """The guest never reached the command, or died before reporting its exit status."""


class GuestTimeout(GuestFailure):
    """The guest outlived its timeout."""


class GuestInterrupted(GuestFailure):
    """The guest was stopped by a signal to nstrace (Ctrl-C)."""


class GuestLockup(BootError):
    """The guest kernel reported a soft lockup, hung task or panic; `console` holds its stacks."""
