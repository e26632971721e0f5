"""nstrace as a Python library: the functions and classes ``import nstrace`` gives (nstrace/__init__.py
imports them from here when first asked for). The top of the package: nothing imports this module but
the package face (tests/test_layout.py), and the command line is a client of the same layers below it.

Everything here does what the command of the same name does, and says what went wrong the same
way: as an exception of nstrace.errors carrying the message the command prints. It never prints
and never exits; what the command would say on a status line (records lost, an --op that matches
nothing on this kernel, a session not closed) is a warning (``warnings.warn``, RuntimeWarning).
"""

from __future__ import annotations  # ls()'s Namespace is imported when asked for

import contextlib
import os
import select
import warnings
from collections.abc import Iterable, Iterator, Sequence

from .errors import UsageError

__all__ = ["trace", "run", "ls", "load", "Trace", "Record", "Step", "KernelPath", "Namespace"]

# A filter argument: one value or several, as watch's repeated option takes them
Values = str | Iterable[str] | None

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .linux.nsmap import Namespace
    from .record.model import KernelPath, Record, Step


def __getattr__(name):
    # Namespace is ls()'s, and needs psutil: imported when asked for, not by every trace()
    if name == "Namespace":
        from .linux.nsmap import Namespace
        return Namespace
    if name in ("Record", "Step", "KernelPath"):
        return getattr(_model(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _notebook():
    """nstrace.view.notebook: imported when a notebook first shows something, not by every trace()."""
    from .view import notebook
    return notebook


def _model():
    """nstrace.record.model, its records shown in a notebook from now on. Imported by the first trace(),
    run() or load(), not with this module: a trace() imports it (dataclasses, inspect behind it) while
    its probes load, not before the load begins (bench --only library)."""
    from .record import model
    model.html_view = _notebook
    return model


class Trace:
    """What a block, a command or a session file traced.

    records: every Record, in the order the kernel handed them over (each thread's in the order it
    made them). lost: records the kernel could not hand over (the ring buffer, the in-flight table or
    the table of followed processes was full), or None where unknown (a session file that was not
    closed); a trace with losses also warns. exit_status: the command's (run(), a session of
    `watch -- COMMAND`), as a shell gives it: 128 + N when signal N killed it; None otherwise.
    function_layer: whether any kernel function was probed, so that records can have a kernel path.
    """

    records: list[Record]
    lost: int | None
    exit_status: int | None

    def __init__(self, records: Iterable[Record] = (), *, lost: int | None = 0, exit_status: int | None = None,
                 availability: Iterable[dict] = (), kernel: dict | None = None) -> None:
        self.records = list(records)
        self.lost = lost
        self.exit_status = exit_status
        self._availability = list(availability)
        self._kernel = kernel or {}

    @property
    def function_layer(self) -> bool:
        return any(a.get("layer") == "function" and a.get("attached") for a in self._availability)

    def created(self, ns_type: str | None = None) -> bool:
        """True if an operation of the trace made a new namespace of `ns_type` (None: of any type);
        see Record.created."""
        return _model()._any_of(ns_type, {t for r in self.records for t in r._created_types()})

    def joined(self, ns_type: str | None = None) -> bool:
        """True if an operation of the trace moved its caller into a namespace of `ns_type` that
        existed before it (None: of any type); see Record.joined."""
        return _model()._any_of(ns_type, {t for r in self.records for t in r._joined_types()})

    def __repr__(self) -> str:
        status = "" if self.exit_status is None else f", exit_status={self.exit_status}"
        return f"<nstrace.Trace: {len(self.records)} records, lost={self.lost}{status}>"

    def __str__(self) -> str:
        """The records as `nstrace watch` shows them: the table, each kernel path under its row."""
        from .view import table
        rows = table.Table(containers=any(table.has_container(r) for r in self.records))
        lines = [rows.header(), *(rows.row(r) for r in self.records)]
        if self.lost:
            lines.append(f"lost {self.lost} records")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return _notebook().trace_html(self.records, lost=self.lost, exit_status=self.exit_status,
                                   availability=self._availability, kernel=self._kernel)


@contextlib.contextmanager
def trace(*, pid: int | None = None, ops: Values = None, types: Values = None, containers: Values = None,
          namespaces: str | int | Iterable[str | int] | None = None, function_layer: bool = True) -> Iterator[Trace]:
    """Trace the namespace operations of a block of code: ``with nstrace.trace() as t: ...``; once the
    block has ended (however it ended), ``t.records`` holds every record of it.

    By default the process that runs the block and its descendants are traced: every thread of it
    (the kernel follows a process, its thread group), every process it forks while the block runs,
    and those it had forked before; with `pid`, that process and its descendants instead (a thread
    id means its process). The probes are attached when the ``with`` statement enters: the block's
    first line is traced. Leaving the block forgets the processes followed (nothing begins to be
    recorded after that), reads what the kernel already handed over and returns at once: the
    kernel's slow detaching of the probes is left to a holder process (nstrace/bpf/teardown.py).
    nstrace runs no code of its own in the block, and no thread of its own runs there (the one
    that loads the probes at entry has ended): what is traced is the caller's doing. Records wait
    in the kernel until the block ends (a 4 MiB ring buffer: a few thousand records); what does not
    fit is counted in ``lost``.

    ops, types, containers, namespaces: as watch's --op, --type, --container and --ns, each a value
    or a list of values (``ops="setns"``, ``types=["net", "uts"]``, ``namespaces="net:4026531840"``).
    function_layer: False leaves the kernel-function probes out (no kernel paths).

    Raises nstrace.errors.PrivilegeError (not root), KernelSupportError (no BTF), LibbpfError (no
    libbpf, or a probe the kernel refused) or UsageError (a bad value) when the block is entered.
    """
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        raise UsageError(f"pid must be a process id (an int), not {pid!r}")
    tracer = _started(pid=os.getpid() if pid is None else pid, kernel_path=bool(function_layer),
                      filter_=lambda: _filter(ops, types, containers, namespaces))
    _warn_unseen(tracer, stacklevel=4)
    result = Trace()
    try:
        yield result
    finally:
        tracer.unfollow()
        _finish(tracer, result, stacklevel=4)


def _started(pid, kernel_path, filter_):
    """A started Tracer following pid. Its object loads in a thread (nstrace.bpf.preload) while the
    tracer's modules import, as watch's does: bench --only library. filter_(): the Filter, made once
    they are imported."""
    from .bpf import preload
    preload.start({"pid": pid, "kernel_path": kernel_path})
    try:
        from .tracing.tracer import Options, Tracer
        _model()
        tracer = Tracer(Options(pid=pid, kernel_path=kernel_path, filter=filter_()))
        tracer.start()  # takes the preloaded probes, if they are the ones it needs
    finally:
        preload.discard()  # ones it did not take
    return tracer


def run(argv: Sequence[str | bytes | os.PathLike], *, user: str | int | None = None, ops: Values = None,
        types: Values = None, containers: Values = None, namespaces: str | int | Iterable[str | int] | None = None,
        function_layer: bool = True) -> Trace:
    """Run a command and trace it and its descendants from its first instruction until it exits, as
    `nstrace watch -- COMMAND` does; return the Trace, with the command's ``exit_status``.

    argv: the command and its arguments (a list; the command is searched for in PATH). user: run it
    as this user (a name or a uid), with its groups, as `watch --user`. The command inherits this
    process's stdin, stdout and stderr. Its descendants still running when it exits are no longer
    followed. The other arguments are trace()'s.

    Raises what trace() raises, and nstrace.errors.CommandNotRun when the command could not be run:
    ``exit_code`` 127 when it is not found, 126 otherwise (as env(1)). If this process is
    interrupted meanwhile (KeyboardInterrupt), the command is killed and waited for, and the
    exception goes on (as subprocess.run does).
    """
    from .linux.heldcommand import HeldCommand, User
    from .tracing.tracer import Options, Tracer
    _model()
    if isinstance(argv, (str, bytes)) or not argv:
        raise UsageError("give the command as a list of words, e.g. ['unshare', '--uts', 'true']")
    argv = [os.fsdecode(a) for a in argv]
    options = Options(kernel_path=bool(function_layer), filter=_filter(ops, types, containers, namespaces))
    run_as = User(str(user)) if user is not None else None
    held = HeldCommand()  # forked before the probes load: it inherits none of their fds
    try:
        options.pid = held.pid
        tracer = Tracer(options)
        tracer.start()
    except BaseException:
        held.cancel()
        raise
    result = Trace()
    try:
        _warn_unseen(tracer, stacklevel=3)
        held.release(argv, run_as)
        while not held.exited():
            _wait(held, tracer)
            result.records += tracer.poll(0)
    except BaseException:
        import signal  # (signal imports enum: not before a trace()'s load begins)
        held.signal(signal.SIGKILL)
        held.cancel()
        tracer.unfollow()
        _finish(tracer, result, stacklevel=3)
        raise
    untraced = [p for p in tracer.unfollow() if p != held.pid]
    # the namespaces the command made die after it, if at all: waited for as watch -- COMMAND waits
    tracer.end_deaths(wait=not untraced)
    result.exit_status = held.status
    _finish(tracer, result, stacklevel=3)
    return result


def ls() -> list[Namespace]:
    """Every namespace on this system now, as `nstrace ls --json` lists them: a list of Namespace
    (type, inode, ns_id, nprocs, pid, comm, command, owner, parent, container, held_by...).

    Reads /proc; without root, other users' processes cannot be read: their namespaces are not
    counted, and a warning says how many processes that was."""
    from .linux import nsmap
    snap = nsmap.snapshot()
    if snap.unreadable and not nsmap.sees_everything():
        warnings.warn(f"{len(snap.unreadable)} processes could not be read: their namespaces are not counted; "
                      "run as root to see them", RuntimeWarning, stacklevel=2)
    return snap.namespaces


def load(path: str | os.PathLike) -> Trace:
    """A session file (`nstrace watch --record FILE`) or a `watch --json` capture, as a Trace, held to the
    schema and the file's structure first, as `nstrace show` holds it (UsageError naming the line).
    Reading it needs no privilege."""
    from .session import reader
    _model()
    session = reader.load(os.fspath(path))
    for warning in session.warnings:
        warnings.warn(f"{session.path}: {warning}", RuntimeWarning, stacklevel=2)
    summary = (session.end or {}).get("summary") or {}
    lost = sum(summary["lost"].values()) if "lost" in summary else None
    return Trace(session.records, lost=lost, exit_status=(summary.get("command") or {}).get("exit_status"),
                 availability=session.availability, kernel=session.kernel)


# --- the pieces ---------------------------------------------------------------------------

def _words(value):
    """A filter value: None, one value, or an iterable of them, as watch's repeated option gets them."""
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        return (str(value),)
    return tuple(str(v) for v in value)


def _filter(ops, types, containers, namespaces):
    from .record.filters import Filter
    return Filter.parse(ops=_words(ops), types=_words(types), container=_words(containers), ns=_words(namespaces))


def _warn_unseen(tracer, stacklevel):
    for op, why in tracer.unseen_ops().items():
        warnings.warn(f"ops={op!r} matches nothing here: {why}", RuntimeWarning, stacklevel=stacklevel)


def _wait(held, tracer):
    """Until the command exits, the ring buffer wakes its reader, or the reader's interval passes."""
    poller = select.poll()
    poller.register(held.fileno(), select.POLLIN)
    poller.register(tracer.fileno(), select.POLLIN)
    poller.poll(tracer.options.poll_ms)


def _finish(tracer, result, stacklevel):
    """The end of a trace whose followed processes are forgotten: the records the kernel handed over,
    read to the end; the counts; the probes closed, their detaching left to a holder."""
    try:
        tracer.end_deaths()  # a death after this makes no record: the drain below reads every one before it
        while True:
            result.records += tracer.poll(0)
            if not tracer.last_read:
                break
        lost = tracer.lost
        result.lost = sum(lost.values())
        result._availability = tracer.availability()
        result._kernel = {"sysname": os.uname().sysname, "release": os.uname().release}
    finally:
        tracer.close(background=True)
    if result.lost:
        detail = ", ".join(f"{n} {why}" for why, n in lost.items() if n)
        warnings.warn(f"{result.lost} records lost ({detail}): the ring buffer, the in-flight table or the table "
                      "of followed processes was full", RuntimeWarning, stacklevel=stacklevel)
