"""Recorded sessions: what ``watch --record FILE`` writes and ``show``/``render`` read.

The file is JSON lines, one object per line, UTF-8:

- line 1, the header: ``{"nstrace_session": 1, "kind": "header", "nstrace", "started",
  "host", "kernel": {sysname, release, version, machine}, "options", "availability",
  "clock": {"monotonic_to_wall_ns"}, "snapshot"}``. ``availability`` is
  Tracer.availability() (which probe points ran, and why not), ``snapshot``
  the namespace map at the start (nstrace/nsmap.py, with processes), the clock
  offset turns kernel-path step times (CLOCK_MONOTONIC) into wall-clock ones;
- one line per record: exactly a ``watch --json`` line (README: the JSON
  record), so a plain ``watch --json > FILE`` is a session too, only without
  header and end;
- last, the end: ``{"nstrace_session": 1, "kind": "end", "ended", "summary", "snapshot"}``.
  A session whose recorder was killed has no end line; it still reads.

``nstrace_session`` is the format version: a reader refuses versions newer
than its own and ignores keys it does not know, so fields can be added
without a new version. Records are written as they arrive and flushed per
line, so a crash loses at most the line being written.
"""

import dataclasses
import json
import os
import time
from importlib import metadata

from . import events, nsmap
from .errors import UsageError

VERSION = 1
_RECORD_FIELDS = {f.name for f in dataclasses.fields(events.Record)}
_REQUIRED = {f.name for f in dataclasses.fields(events.Record)
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def nstrace_version():
    try:
        return metadata.version("nstrace")
    except metadata.PackageNotFoundError:
        return "unknown"


def _options_json(options):
    keep = ("trace_all", "pid", "comms", "ops", "types", "raw_addresses", "check_proc", "kernel_path")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items() if k in keep}


class Recorder:
    """Writes one session file. Create it after ``tracer.start()``; ``write`` each record; ``close(summary)``.

    ``tracer`` gives the options and the probe availability; without one (a
    record-less session, tests) both are left empty. ``snapshots=False``
    skips the namespace maps (they read all of /proc; root sees everything).
    """

    def __init__(self, path, tracer=None, snapshots=True):
        self.path = str(path)
        self.count = 0
        self._snapshots = snapshots
        try:
            # line-buffered: every record reaches the file as soon as it is written
            self._file = open(self.path, "w", encoding="utf-8", buffering=1)
        except OSError as e:
            raise UsageError(f"cannot write session file {self.path}: {e.strerror}") from None
        uname = os.uname()
        header = {
            "nstrace_session": VERSION, "kind": "header", "nstrace": nstrace_version(),
            "started": time.time(), "host": uname.nodename,
            "kernel": {"sysname": uname.sysname, "release": uname.release, "version": uname.version,
                       "machine": uname.machine},
            "options": _options_json(tracer.options) if tracer else {},
            "availability": tracer.availability() if tracer else [],
            # what events.decode added to bpf_ktime_get_ns() in this process
            "clock": {"monotonic_to_wall_ns": events.WALL_OFFSET_NS},
            "snapshot": nsmap.snapshot().to_json() if snapshots else None,
        }
        self._line(header)

    def _line(self, obj):
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def write(self, record):
        """Append one :class:`~nstrace.events.Record`."""
        self._line(record.to_json())
        self.count += 1

    def write_all(self, records):
        for rec in records:
            self.write(rec)
        return records

    def close(self, summary=None):
        """Write the end line (summary: Tracer.summary()) and close. Safe to call twice."""
        if self._file is None:
            return
        try:
            self._line({"nstrace_session": VERSION, "kind": "end", "ended": time.time(), "records": self.count,
                        "summary": summary,
                        "snapshot": nsmap.snapshot().to_json() if self._snapshots else None})
        finally:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RecordingTracer:
    """A tracer whose every poll() is also written to a recorder.

    For code that polls a tracer it does not own (checker.run_scenario, demo):
    pass this in place of the tracer; everything else is the tracer's own.
    """

    def __init__(self, tracer, recorder):
        self._tracer, self._recorder = tracer, recorder

    def poll(self, *args, **kwargs):
        return self._recorder.write_all(self._tracer.poll(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._tracer, name)


@dataclasses.dataclass
class Session:
    """A session file read back."""

    path: str
    header: dict | None
    records: list
    end: dict | None
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def kernel(self):
        return (self.header or {}).get("kernel") or {}

    @property
    def availability(self):
        return (self.header or {}).get("availability") or []

    @property
    def started(self):
        if self.header:
            return self.header["started"]
        return min((r.ts - r.duration_us / 1e6 for r in self.records), default=0.0)

    @property
    def ended(self):
        if self.end:
            return self.end["ended"]
        return max((r.ts for r in self.records), default=self.started)

    @property
    def wall_offset_ns(self):
        """CLOCK_MONOTONIC to wall clock at recording time, or None (a plain watch --json file)."""
        return ((self.header or {}).get("clock") or {}).get("monotonic_to_wall_ns")

    def snapshot(self, which="start"):
        """The namespace map at "start" or "end", or None if the file has none."""
        obj = (self.header if which == "start" else self.end) or {}
        return nsmap.NsMap.from_json(obj["snapshot"]) if obj.get("snapshot") else None

    def describe(self):
        """One line: where and when it was recorded."""
        k = self.kernel
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        where = f"{self.header.get('host')}, {k.get('sysname', 'Linux')} {k.get('release')}, " \
                f"nstrace {self.header.get('nstrace')}" if self.header else "no header (a watch --json file)"
        closed = "" if self.end or not self.header else "; not closed (the recording was interrupted)"
        return f"session {self.path}: {where}, from {when}, {len(self.records)} records{closed}"


def load(path):
    """Read a session file (or a ``watch --json`` capture). Raises UsageError on anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read session file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not an nstrace session (not UTF-8 text)") from None
    header, end, records, warnings = None, None, [], []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                warnings.append(f"line {number} is cut short (the recording was interrupted); ignored")
                continue
            raise UsageError(f"{path}:{number}: not an nstrace session line (not JSON)") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path}:{number}: not an nstrace session line (not an object)")
        version = obj.get("nstrace_session")
        if version is not None:
            if not isinstance(version, int) or version > VERSION:
                raise UsageError(f"{path}: session format {version} is newer than this nstrace reads "
                                 f"({VERSION}): upgrade nstrace")
            if obj.get("kind") == "header":
                header = obj
            elif obj.get("kind") == "end":
                end = obj
            continue
        missing = _REQUIRED - obj.keys()
        if missing:
            raise UsageError(f"{path}:{number}: not an nstrace record (no {sorted(missing)[0]!r})")
        records.append(events.Record(**{k: v for k, v in obj.items() if k in _RECORD_FIELDS}))
    if header is None and not records:
        raise UsageError(f"{path} is not an nstrace session (no header, no records)")
    return Session(str(path), header, records, end, warnings)


# --- replay filters --------------------------------------------------------------

def _wanted(options):
    """watch's user-space filter (--comm, --op, --type) for these options, as a predicate."""
    from . import filters
    options.validate()
    return lambda rec: filters.wanted(rec, options)


def select(session, pid=None, comms=(), ops=(), types=()):
    """(records shown, number filtered out) with watch's filters.

    ``pid`` keeps that process and its descendants, as watch --pid does in
    the kernel: the descendants known at the start (the start snapshot's
    process tree) and every process a kept record's caller forked later.
    """
    from .tracer import Options
    keep = _wanted(Options(pid=pid, comms=tuple(comms), ops=tuple(ops), types=tuple(types)))
    tracked = _descendants(session, pid) if pid is not None else None
    shown, filtered = [], 0
    for rec in sorted(session.records, key=lambda r: r.ts):
        if tracked is not None:
            if rec.pid not in tracked and rec.ppid not in tracked:
                continue  # watch --pid never sees these: not counted as filtered either
            tracked.add(rec.pid)
            if rec.child_pid:
                tracked.add(rec.child_pid)
        if keep(rec):
            shown.append(rec)
        else:
            filtered += 1
    return shown, filtered


def _descendants(session, pid):
    snap = session.snapshot("start")
    tracked = {pid}
    if snap:
        children = {}
        for p in snap.processes:
            children.setdefault(p.ppid, []).append(p.pid)
        todo = [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in tracked:
                    tracked.add(child)
                    todo.append(child)
    return tracked


def summary(session, shown, filtered):
    """A Tracer.summary()-shaped dict for the replayed records (display.summary_table prints it)."""
    by_op, by_check = {}, {}
    for rec in shown:
        by_op[rec.op] = by_op.get(rec.op, 0) + 1
        if rec.proc_check:
            status = rec.proc_check["status"]
            by_check[status] = by_check.get(status, 0) + 1
    recorded = (session.end or {}).get("summary") or {}
    return {"events": by_op, "total": len(shown), "proc_check": by_check, "filtered": filtered,
            "lost": recorded.get("lost") or {"ringbuf": 0, "inflight": 0}}
