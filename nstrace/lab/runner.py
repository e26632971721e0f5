"""`nstrace lab --kernel K -- ARGS`: this nstrace, run as `nstrace ARGS` inside each lab kernel.

The guest runs the same interpreter and package as this process (the host's root is the guest's),
in the same working directory.  Its stdout and stderr stream here as they come, to this process's
stdout and stderr; with several kernels each line carries its kernel's name.  What it writes in the
working directory comes back (outfiles.py), named per kernel when there are several.  Guests run
two at a time: each TCG guest is one host thread, and the build machines have two cores.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import posixpath
import sys
import tarfile
import threading
from typing import Callable

from ..errors import ExitCode, LabError, NstraceError
from . import outfiles
from .guest import GuestResult, run_in_guest
from .initramfs import can_bring_back, scratch_mounts
from .status import Status

GUEST_PARALLEL = 2
# One vCPU for a command, where the suite's guests have two (guest.GUEST_CPUS) to run its tests on SMP:
# under single-threaded TCG a second vCPU adds no speed, only IPIs and time slices between the two.
# Measured side by side here (TCG, busy 2-core host, 4 runs each): `demo` end to end 11.7 s with one
# vCPU, 13.3 s with two; boot 2.5 s and 2.9 s.
COMMAND_CPUS = 1


@dataclasses.dataclass
class Outcome:
    kernel: str  # as the user named it
    result: GuestResult | None = None
    error: NstraceError | None = None  # the guest failed: download, boot, lockup, timeout
    brought: outfiles.Brought | None = None
    kept: bytes | None = None  # the file run(keep=NAME) asked for, as the guest wrote it (None: it wrote none)


class LineWriter:
    """One stream of one guest, written whole lines at a time with its kernel's name in front (several
    kernels side by side), or passed through as it comes (one kernel)."""

    def __init__(self, sink, lock: threading.Lock, prefix: bytes | None):
        self.sink, self.lock, self.prefix = sink, lock, prefix
        self.partial = b""

    def __call__(self, chunk: bytes) -> None:
        if self.prefix is None:
            with self.lock:
                self.sink.write(chunk)
                self.sink.flush()
            return
        *whole, self.partial = (self.partial + chunk).split(b"\n")
        if whole:
            with self.lock:
                self.sink.write(b"".join(self.prefix + line + b"\n" for line in whole))
                self.sink.flush()

    def close(self) -> None:
        if self.partial:
            self("\n".encode())


def run(kernels: list[str], args: list[str], *, timeout: float, status: Status,
        should_stop: Callable[[], bool], stdout=None, stderr=None, keep: str | None = None) -> list[Outcome]:
    """Run `nstrace ARGS` in each kernel (two guests at a time); one Outcome per kernel, in order.
    keep: a file the command writes in the working directory, whose bytes each Outcome keeps (`lab
    --compare` reads the sessions as the guests wrote them, whatever becomes of the copies here)."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    cwd = os.getcwd()
    several = len(kernels) > 1
    lock = threading.Lock()
    # -P: the installed nstrace, even where cwd is a checkout whose files would shadow it
    argv = [sys.executable, "-P", "-m", "nstrace", *args]
    bring_back = can_bring_back(cwd, scratch_mounts(cwd, (sys.executable,)))
    if not bring_back:
        status(f"files the command writes in {cwd} will not come back: run it from a directory of your own")
    # Python writes to a port, not a terminal: unbuffered, so that lines arrive as they are printed.
    env = {"PYTHONUNBUFFERED": "1"}

    def one(kernel: str) -> Outcome:
        def say(message: str) -> None:
            status(f"{kernel}: {message}")

        prefix = f"[{kernel}] ".encode() if several else None
        out, err = LineWriter(stdout, lock, prefix), LineWriter(stderr, lock, prefix)
        outcome = Outcome(kernel)
        try:
            outcome.result = run_in_guest(kernel, argv, cwd=cwd, env=env, timeout=timeout, stdout=out, stderr=err,
                                          bring_back=bring_back, status=say, should_stop=should_stop,
                                          cpus=COMMAND_CPUS)
        except LabError as e:  # this kernel's guest failed (a download, the boot, a lockup, the timeout)
            outcome.error = e
        finally:
            out.close()
            err.close()
        if outcome.result is not None:
            say(f"nstrace {' '.join(args[:1])} exited {outcome.result.returncode} "
                f"({outcome.result.boot_s:.1f} s boot, then "
                f"{outcome.result.duration_s - outcome.result.boot_s:.1f} s running it and powering off)")
            if outcome.result.files:
                if keep:
                    outcome.kept = file_in(outcome.result.files, keep)
                outcome.brought = outfiles.bring_back(outcome.result.files, cwd, kernel if several else None)
                for path, size in outcome.brought.written:
                    say(f"wrote {path} ({size} bytes) here")
                for problem in outcome.brought.failed:
                    say(f"not written here: {problem}")
                for entry in outcome.brought.skipped:
                    say(f"not brought back: {entry}")
        return outcome

    with concurrent.futures.ThreadPoolExecutor(min(GUEST_PARALLEL, len(kernels))) as pool:
        futures = [pool.submit(one, k) for k in kernels]
        return [f.result() for f in futures]


def file_in(data: bytes, name: str) -> bytes | None:
    """The regular file `name` of a guest's tar of its working directory (outfiles.py), or None. A tar
    that is none is outfiles.bring_back's to report."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                if member.isreg() and posixpath.normpath(member.name) == name:
                    return archive.extractfile(member).read()
    except tarfile.TarError:
        pass
    return None


def exit_code(outcome: Outcome) -> int:
    """The command's own exit status; a guest that failed is the lab's error code; files that could
    not be written make a successful command's status that of a failed write."""
    if outcome.error is not None:
        return outcome.error.exit_code
    code = outcome.result.returncode
    if code == 0 and outcome.brought is not None and outcome.brought.failed:
        return ExitCode.UNSAFE_WRITE
    return code
