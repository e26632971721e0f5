"""Reading a session file back (its format: session/format.py), held to the schema, to strict JSON
and to the file's structure before any of it is used."""

import dataclasses
import gc
import json
import time

from ..errors import UsageError
from ..linux import nsmap
from ..record import model
from .format import VERSION

_RECORD_FIELDS = {f.name for f in dataclasses.fields(model.Record)}


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


def load(path, data=None):
    """Read a session file (or a ``watch --json`` capture). Raises UsageError on anything else.
    data: its bytes, read already (a lab guest's session, from the tar of its files); path names them."""
    # Each record is a few dicts and lists, none in a cycle: collections while they pile up only scan
    # them again and again (50,000 records: 4.4 s of CPU with the collector, 3.7 s without).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load(path, data)
    finally:
        if collecting:
            gc.enable()


def _load(path, data):
    from fastjsonschema import JsonSchemaValueException

    from ._schema import (
        validate,  # the schema compiled to Python (scripts/session-validator.py)
    )
    try:
        if data is None:
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
            records.append(model.Record(**{k: v for k, v in obj.items() if k in _RECORD_FIELDS}))
    header, end = structure.header, structure.end
    if header is None and not records:
        raise UsageError(f"{path} is not an nstrace session (no header, no records)")
    release = ((header or {}).get("kernel") or {}).get("release")
    for rec in records:
        if rec.kernel_path and release:  # a file from an older nstrace: its steps' lines and new/shared
            from ..study import callpath
            callpath.annotate(rec, release)
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
