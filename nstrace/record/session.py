"""Recorded sessions: what ``watch --record FILE`` writes and ``show``/``render`` read.

The file is JSON lines, one object per line, UTF-8:

- line 1, the header: ``{"nstrace_session": 1, "kind": "header", "nstrace", "started",
  "host", "kernel": {sysname, release, version, machine}, "options", "availability",
  "clock": {"monotonic_to_wall_ns"}, "snapshot"}``. ``availability`` is
  Tracer.availability() (which probe points ran, and why not), ``snapshot``
  the namespace map at the start (nstrace/linux/nsmap.py, with processes), the clock
  offset turns kernel-path step times (CLOCK_MONOTONIC) into wall-clock ones;
- one line per record: exactly a ``watch --json`` line (README: the JSON
  record), so a plain ``watch --json > FILE`` is a session too, only without
  header and end;
- last, the end: ``{"nstrace_session": 1, "kind": "end", "ended", "records", "summary", "snapshot"}``,
  ``records`` the number of record lines above it.
  A session whose recorder was killed has no end line; it still reads.

``nstrace_session`` is the format version: a reader refuses versions newer
than its own and ignores keys it does not know, so fields can be added
without a new version. Records are written as they arrive and flushed per
line, so a crash loses at most the line being written.

nstrace/session.schema.json (JSON Schema, draft-07) says what each line
may hold, for nstrace and for anyone else reading these files or ``watch
--json`` (log shippers). :func:`load` holds every line to it before any of
it is used, and to strict JSON (RFC 8259: no NaN or Infinity, no lone
surrogate, numbers that fit, no key twice in one object: Python's json would
keep the last of two, another reader the first): a file from elsewhere is
outside data, and one that fails gets one line naming the line number and the
field (exit 2).

What no schema of a single line can say, :func:`load` holds too (the file's
structure), refusing with the line number:

- a header is line 1 or nowhere: a header further down is a second session
  joined on, or records written before their header;
- an end line closes a session that has a header, at most once, and nothing
  but blank lines follows it;
- the end's ``records`` is the number of record lines read: a file with lines
  cut out of its middle, or joined from several, is refused;
- records alone, no header and no end, are a ``watch --json`` capture: read
  as a session whose host, kernel and snapshots are unknown.

A last line cut short (no newline after it: the recorder was killed while
writing it) is left out with a warning, and then there is no end line.
"""

import dataclasses
import gc
import json
import os
import time
from importlib import metadata

from ..errors import UsageError, WriteFailed
from ..linux import nsmap, trusted_paths
from ..linux.comm import safe_comm
from . import events

VERSION = 1
_RECORD_FIELDS = {f.name for f in dataclasses.fields(events.Record)}


def nstrace_version():
    try:
        return metadata.version("nstrace")
    except metadata.PackageNotFoundError:
        return "unknown"


def _options_json(options):
    f = options.filter
    return {"trace_all": options.trace_all, "pid": options.pid, "comms": list(f.comms), "ops": list(f.ops),
            "types": list(f.types), "raw_addresses": options.raw_addresses, "check_proc": options.check_proc,
            "kernel_path": options.kernel_path}


class Recorder:
    """Writes one session file. Create it after ``tracer.start()``; ``write`` each record; ``close(summary)``.

    ``tracer`` gives the options and the probe availability; without one (a
    record-less session, tests) both are left empty. ``snapshots=False``
    skips the namespace maps (they read all of /proc; root sees everything).
    """

    def __init__(self, path, tracer=None, snapshots=True):
        self.path = str(path)
        self.count = 0
        self._cut = False  # a write failed: the last line may be a part of one
        self._snapshots = snapshots
        fd = trusted_paths.create_output(self.path, "session file ")  # never through another user's symlink
        # line-buffered: every record reaches the file as soon as it is written
        self._file = open(fd, "w", encoding="utf-8", buffering=1)
        # sethostname() takes any bytes (a container's root picks the UTS name): escaped as comms are
        uname = os.uname()
        text = lambda s: safe_comm(s.encode("utf-8", "surrogateescape"))  # noqa: E731
        header = {
            "nstrace_session": VERSION, "kind": "header", "nstrace": nstrace_version(),
            "started": time.time(), "host": text(uname.nodename),
            "kernel": {"sysname": text(uname.sysname), "release": text(uname.release),
                       "version": text(uname.version), "machine": text(uname.machine)},
            "options": _options_json(tracer.options) if tracer else {},
            "availability": tracer.availability() if tracer else [],
            # what events.decode added to bpf_ktime_get_ns() in this process
            "clock": {"monotonic_to_wall_ns": events.WALL_OFFSET_NS},
            "snapshot": nsmap.snapshot().to_json() if snapshots else None,
        }
        try:
            self._line(header)
        except OSError as e:  # a full disk, an I/O error: said as for any record that cannot be written
            try:
                self._file.close()
            except OSError:
                pass  # the same error again, flushing what did not fit
            raise WriteFailed(f"cannot write session file {self.path}: {e.strerror}") from None

    def _line(self, obj):
        try:
            self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        except OSError:
            # part of the line may be in the file: nothing may follow it, or its end would make a
            # file the reader refuses (a line in the middle that is not JSON)
            self._cut = True
            raise

    def write(self, record):
        """Append one :class:`~nstrace.record.events.Record`."""
        self._line(record.to_json())
        self.count += 1

    def write_all(self, records):
        for rec in records:
            self.write(rec)
        return records

    def close(self, summary=None):
        """Write the end line (summary: Tracer.summary()) and close. Safe to call twice. A file a
        write failed in is closed as it is, without one: it reads as an interrupted recording."""
        if self._file is None:
            return
        if self._cut:
            try:
                self._file.close()
            except OSError:
                pass  # the same failure, flushing what did not fit
            self._file = None
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


class _NotJson(ValueError):
    pass


def _refuse_constant(name):
    raise _NotJson(f"{name} is not JSON")


def _finite(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotJson(f"{text[:20]} does not fit a double")
    return value


def _one_of_each(pairs):
    """An object whose keys are all different (RFC 8259 section 4: "SHOULD be unique"): a key given
    twice means one reader sees the first value and another the last."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _NotJson(f"key {_short(key)} twice in one object")
            seen.add(key)
    return obj


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite, object_pairs_hook=_one_of_each)


def _parse(line):
    """One line as strict JSON (RFC 8259): ValueError or RecursionError if it is not."""
    obj = _STRICT.decode(line)
    if _has_surrogate(line):
        _find_surrogate(obj)
    return obj


def _has_surrogate(line):
    # json.loads turns \ud800..\udfff escapes into lone surrogates: text no UTF-8 can hold
    return "\\ud" in line.lower()


def _find_surrogate(obj, where=""):
    if isinstance(obj, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in obj):
            raise _NotJson(f"field {where or '(line)'}: a lone surrogate is not text")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _find_surrogate(key, where)
            _find_surrogate(value, f"{where}.{key}" if where else key)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _find_surrogate(value, f"{where}[{i}]")


def _schema_error(e):
    """'field X: what is wrong' from fastjsonschema's JsonSchemaValueException."""
    field = e.name.removeprefix("data").lstrip(".") or "(line)"
    what = e.message.removeprefix(e.name).strip()
    if e.rule == "required" and isinstance(e.value, dict):
        missing = next((k for k in e.rule_definition if k not in e.value), None)
        if missing:
            field, what = (f"{field}.{missing}" if field != "(line)" else missing), "missing"
    elif e.rule == "pattern" and "\x00" in str(e.rule_definition):
        what = "holds a control character (nstrace writes them escaped)"
    if len(what) > 160:
        what = what[:157] + "..."
    return f"field {field}: {what}"


class _Structure:
    """Where each line may stand in a session file (the module's docstring: header first, end last,
    the end's count right). ``take`` says what is wrong with the next line, or None."""

    def __init__(self):
        self.header = self.end = None
        self.end_line = None
        self.records = 0

    def take(self, number, obj):
        record = "nstrace_session" not in obj
        kind = None if record else obj.get("kind")
        if self.end is not None:
            return self._after_end(record, kind)
        if record:
            self.records += 1
        elif kind == "header":
            if self.header is not None:
                return "a second header (the first is line 1): two sessions joined together?"
            if number != 1:
                return f"a header on line {number}: a session's header is its first line"
            self.header = obj
        elif kind == "end":
            if self.header is None:
                return "an end line, and no header on line 1"
            counted = obj.get("records")
            if counted is not None and counted != self.records:
                return f"the end line counts {counted} records, the file holds {self.records} before it"
            self.end, self.end_line = obj, number
        return None  # a kind this version does not know: ignored, as unknown keys are

    def _after_end(self, record, kind):
        if kind == "end":
            return f"a second end line (the first is line {self.end_line})"
        where = f"after the end line (line {self.end_line})"
        if kind == "header":
            return f"a header {where}: two sessions joined together?"
        return f"a {'record' if record else 'line'} {where}: a session ends there"


def load(path):
    """Read a session file (or a ``watch --json`` capture). Raises UsageError on anything else."""
    # Each record is a few dicts and lists, none in a cycle: collections while they pile up only scan
    # them again and again (50,000 records: 4.4 s of CPU with the collector, 3.7 s without).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load(path)
    finally:
        if collecting:
            gc.enable()


def _load(path):
    from fastjsonschema import JsonSchemaValueException

    from ._session_schema import validate  # the schema compiled to Python (scripts/session-validator.py)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read session file {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UsageError(f"{path}:{line}: not an nstrace session (not UTF-8 text)") from None
    del data
    structure, records, warnings = _Structure(), [], []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = _parse(line)
        except _NotJson as e:
            raise UsageError(f"{path}:{number}: not an nstrace session line ({e})") from None
        except RecursionError:
            raise UsageError(f"{path}:{number}: not an nstrace session line (nested too deeply)") from None
        except ValueError as e:
            if number == len(lines) and not text.endswith("\n"):
                warnings.append(f"line {number} is cut short (the recording was interrupted); ignored")
                continue
            why = "not JSON" if isinstance(e, json.JSONDecodeError) else "a number too long"
            raise UsageError(f"{path}:{number}: not an nstrace session line ({why})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path}:{number}: not an nstrace session line (not an object)")
        if "nstrace_session" in obj:
            _check_version(path, number, obj["nstrace_session"])
        try:
            validate(obj)
        except JsonSchemaValueException as e:
            raise UsageError(f"{path}:{number}: {_schema_error(e)}") from None
        except RecursionError:
            raise UsageError(f"{path}:{number}: not an nstrace session line (nested too deeply)") from None
        wrong = structure.take(number, obj)
        if wrong:
            raise UsageError(f"{path}:{number}: {wrong}")
        if "nstrace_session" not in obj:
            records.append(events.Record(**{k: v for k, v in obj.items() if k in _RECORD_FIELDS}))
    header, end = structure.header, structure.end
    if header is None and not records:
        raise UsageError(f"{path} is not an nstrace session (no header, no records)")
    release = ((header or {}).get("kernel") or {}).get("release")
    for rec in records:
        if rec.kernel_path and release:  # a file from an older nstrace: its steps' lines and new/shared
            from . import steps
            steps.annotate(rec, release)
    return Session(str(path), header, records, end, warnings)


def _check_version(path, number, version):
    if not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(f"{path}:{number}: session format {_short(version)} is not a format number")
    if version > VERSION:
        raise UsageError(f"{path}:{number}: session format {_short(version)} is newer than this nstrace reads "
                         f"({VERSION}): upgrade nstrace")


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 20 else text[:17] + "..."


# --- replay filters --------------------------------------------------------------

def select(session, filt, pid=None):
    """(records shown, number filtered out) with watch's filters: filt, a filters.Filter.

    ``pid`` keeps that process and its descendants, as watch --pid does in
    the kernel: the descendants known at the start (the start snapshot's
    process tree) and every process a kept record's caller forked later.
    """
    if pid is not None and pid <= 0:
        raise UsageError(f"--pid must be a positive process id, not {pid}")
    tracked = _descendants(session, pid) if pid is not None else None
    shown, filtered = [], 0
    for rec in sorted(session.records, key=lambda r: r.ts):
        if tracked is not None:
            if rec.pid not in tracked and rec.ppid not in tracked:
                continue  # watch --pid never sees these: not counted as filtered either
            tracked.add(rec.pid)
            if rec.child_pid:
                tracked.add(rec.child_pid)
        if filt.wanted(rec):
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
