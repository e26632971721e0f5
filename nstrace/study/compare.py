"""The same scenario recorded on several kernels, read as one path.

Records are matched across the sessions by what the scenario asked for, in order: the op and its
flags (for clone, clone3, fork and vfork only the CLONE_NEW* flags: the others say how the C library
makes a process, not what the scenario does); the n-th such record of each session goes with the
n-th of every other. A session with fewer such records leaves its column empty, and says so.

Each matched group's kernel paths are aligned by call structure (callpath.tree): at each depth the
calls of every kernel are lined up by name, a renamed function (kernel.renames) under its one name,
as the longest common subsequence of the kernels' calls there (the first kernel's order first); the
calls made inside two lined-up calls are aligned the same way, one depth below. A call one kernel
did not hook (inlined there) leaves the calls it made one depth up on that kernel: they are gathered
under a stand-in for it first (StandIn), so that they line up with their namesakes below the call.
So a row is one step of the union of the paths, and a step one kernel shows and another does not says
why not there: not in that kernel's source (new or gone), inlined (in its source, not in its BTF or
symbols), not hooked for another reason, or hooked and not called.
"""

import dataclasses
import os

from ..kernel import flags as fl
from ..kernel import renames, sourcelines
from . import callpath, pathcheck

MATCHED_BY = "op and flags (for clone, clone3, fork and vfork only the CLONE_NEW* flags), the n-th with the n-th"

# What kernel.hooks says of a function the running kernel has neither in its BTF nor in kallsyms
# (nstrace/bpf/hookplan.py plan()): with the function in that kernel's source, it was inlined.
NO_SYMBOL = "not in this kernel's BTF or symbols"

# why a step is not in one kernel's path (Cell.absent): as its cell says it, and as the row's notes say it
ABSENT = {"no_record": "no such record", "no_layer": "no function hooked", "new": "not yet in this kernel",
          "gone": "no longer in this kernel", "not_in_kernel": "not in this kernel", "inlined": "inlined here",
          "not_hooked": "not hooked here", "not_run": "did not run", "unknown": "not known"}
# said once, of the record or of the kernel (_record_notes, _hook_findings), not on every row
SAID_ONCE = ("no_record", "no_layer")
ABSENT_ON = {"new": "new: not in {}", "gone": "gone: not in {}", "not_in_kernel": "not in {}",
             "inlined": "inlined on {}", "not_hooked": "not hooked on {}", "not_run": "not run on {}",
             "unknown": "not known on {}"}

# the kinds of Note, in the order the comparison lists them, each with its heading
KINDS = {
    "renamed": "renamed",
    "new": "new: not yet in an older kernel",
    "gone": "gone: no longer in a newer kernel",
    "not_in_kernel": "not in every kernel",
    "inlined": "inlined on one kernel, hooked on another",
    "not_hooked": "not hooked on one kernel, hooked on another",
    "not_run": "hooked on every kernel, run on some",
    "unknown": "not known",
    "counts": "counts (refs) on some kernels only",
    "ns_id": "ns_id on some kernels only",
    "missing_record": "records one session has and another not",
    "flags": "the records' flags differ",
    "ret": "the records' results differ",
    "changed": "the records changed different entries",
    "dropped": "steps lost (a record was full)",
    "no_path": "no kernel path",
    "no_layer": "no kernel function hooked",
    "moved_file": "moved to another file",
    "moved_line": "moved lines",
    "hooks": "how functions were hooked",
}


@dataclasses.dataclass
class Side:
    """One session: one kernel's column."""

    path: str
    release: str | None
    hooks: dict                 # {func: kernel.hooks.Hook} as the session's header recorded them
    records: list               # in time order
    label: str = ""             # the column's title: the release (and the file, where two share one)
    short: str = ""             # in notes: the release's series ("5.10"), where no other side has it
    no_layer: str = ""          # why no kernel function could be hooked, where none could

    @property
    def function_layer(self):
        """Whether any kernel function was hooked (none on a kernel without fentry and kprobes)."""
        return any(h.attached for h in self.hooks.values())

    @property
    def hook_kinds(self):
        """{"fentry": n, "kprobe": m, None: k}: how many functions each kind of hook took."""
        kinds = {}
        for h in self.hooks.values():
            kind = h.kind if h.attached else None
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


@dataclasses.dataclass(frozen=True)
class Note:
    kind: str       # a key of KINDS
    text: str


@dataclasses.dataclass
class Cell:
    """One step on one kernel: the call it made, or why there was none."""

    func: str | None                    # the function's name on this kernel
    call: callpath.Call | None = None
    values: str = ""                    # "= uts:[4026532155] new (count 1)"
    refs: int | None = None
    hook: str | None = None             # how it was hooked there: fentry, kprobe
    absent: str = ""                    # a key of ABSENT when the kernel did not show it
    reason: str = ""                    # why, in full
    file: str | None = None
    line: int | None = None
    line_from: str | None = None        # the line is this version's (the kernel's series is not covered)

    @property
    def source(self):
        if not self.line:
            return self.file or ""
        return f"{self.file}:{self.line}" + (f" (as in {self.line_from})" if self.line_from else "")


@dataclasses.dataclass
class Row:
    depth: int
    cells: list
    notes: list = dataclasses.field(default_factory=list)

    @property
    def name(self):
        """The step's name, both names where kernels call it differently: "free_nsproxy / nsproxy_free"."""
        return " / ".join(dict.fromkeys(c.func for c in self.cells if c.call)) or self.cells[0].func


@dataclasses.dataclass
class Match:
    """The records of one scenario step, one per session (None where a session has none)."""

    op: str
    flags: tuple            # the flags matched on (scenario_flags), as the first record has them
    ordinal: int            # the n-th record of its op and flags in each session, from 1
    records: list
    notes: list = dataclasses.field(default_factory=list)
    rows: list = dataclasses.field(default_factory=list)

    @property
    def title(self):
        flags = fl.short(self.flags) if self.flags else (
            "no CLONE_NEW* flag" if self.op in fl.CHILD_OPS else "0")
        return f"{self.op} {flags}"


@dataclasses.dataclass
class Comparison:
    sides: list
    matches: list
    findings: list          # Notes, each said once, in full, in the order of KINDS: what differs in all


def compare(sessions):
    """Compare sessions (session.reader.Session) of one scenario recorded on different kernels."""
    sides = [_side(s) for s in sessions]
    _label(sides)
    matches = match(sides)
    findings, absences = {}, {}
    for m in matches:
        m.notes = _record_notes(m, sides)
        m.rows = align(m, sides)
        for row in m.rows:
            row.notes = _row_notes(row, sides, findings, absences)
        for note in m.notes:
            findings.setdefault((note.kind, note.text), note)
    notes = (list(findings.values()) + _absence_findings(absences) + _ns_id_findings(sides)
             + _hook_findings(sides))
    return Comparison(sides, matches, sorted(notes, key=lambda n: list(KINDS).index(n.kind)))


def _side(session):
    hooks, _ = pathcheck.recorded_hooks(session.availability)
    return Side(session.path, session.kernel.get("release"), hooks, sorted(session.records, key=lambda r: r.ts),
                no_layer=pathcheck.common_reason(session.availability) or "")


def _label(sides):
    releases = [s.release for s in sides]
    series = [sourcelines.series_of(r) for r in releases]
    for s, its in zip(sides, series):
        name = os.path.basename(s.path)
        s.label = (s.release if releases.count(s.release) == 1 else f"{s.release} ({name})") if s.release else name
        s.short = its if its and series.count(its) == 1 else s.label


# --- matching records ------------------------------------------------------------------------------

def scenario_flags(rec):
    """The flags that say what the scenario asked for: a clone's CLONE_NEW* ones, any other op's all."""
    names = rec.flags or []
    return [n for n in names if n in fl.NS_TYPES.values()] if rec.op in fl.CHILD_OPS else list(names)


def key(rec):
    """What a record is matched on: its op and its scenario_flags, in any order."""
    return rec.op, tuple(sorted(scenario_flags(rec)))


def match(sides):
    """[Match] of the sides' records: by key, the n-th with the n-th; in the first session's order,
    then the records only later sessions have, in theirs."""
    found = {}
    for i, side in enumerate(sides):
        seen = {}
        for rec in side.records:
            k = key(rec)
            seen[k] = seen.get(k, 0) + 1
            group = found.setdefault((k, seen[k]), [None] * len(sides))
            group[i] = rec
    return [Match(op, tuple(scenario_flags(next(r for r in records if r))), n, records)
            for ((op, _), n), records in found.items()]


# --- aligning paths --------------------------------------------------------------------------------

def align(m, sides):
    """The rows of the union of the matched records' paths, aligned by call structure."""
    trees = [callpath.tree(rec.kernel_path) if rec else [] for rec in m.records]
    rows = []
    _rows(trees, 0, m, sides, rows)
    return rows


def _rows(levels, depth, m, sides, out):
    for slot in _line_up(_fold(levels, sides)):
        names = [c.func for c in slot if c and not isinstance(c, StandIn)]
        cells = [_cell(side, call, rec, names) for side, call, rec in zip(sides, slot, m.records)]
        out.append(Row(depth, cells))
        _rows([c.calls if c else [] for c in slot], depth + 1, m, sides, out)


@dataclasses.dataclass
class StandIn(callpath.Call):
    """A call one kernel shows and another did not hook (inlined there, say): on that other kernel the
    calls it made come one depth up, and are gathered back under this stand-in, to line up with their
    namesakes below the call."""


def _fold(levels, sides):
    """The calls of one depth, a list per kernel, with StandIns where a kernel that did not hook a call
    another kernel shows has, at this depth, the calls that kernel shows inside it."""
    levels = [list(calls) for calls in levels]
    for k, calls in enumerate(levels):
        here = {renames.canonical(c.func) for c in calls}
        for other in levels[:k] + levels[k + 1:]:
            for call in other:
                name = renames.canonical(call.func)
                if name in here or not sides[k].hooks or _hooked(sides[k], call.func):
                    continue
                inside = {renames.canonical(c.func) for c in call.calls}
                run = [i for i, c in enumerate(calls) if renames.canonical(c.func) in inside]
                if run:
                    start = run[0]
                    end = next((i for i in range(start, len(calls)) if i not in run), len(calls))
                    calls[start:end] = [StandIn(call.func, call.depth, calls=calls[start:end])]
                    here.add(name)
    return levels


def _hooked(side, func):
    return any(side.hooks.get(n) and side.hooks[n].attached for n in renames.names(func))


def _line_up(levels):
    """The calls of one depth, a list per kernel, as slots: [call or None per kernel], each slot one
    function (under its renames' one name)."""
    slots = []
    for k, calls in enumerate(levels):
        slots = _merge(slots, calls, k, len(levels))
    return slots


def _merge(slots, calls, k, n):
    """slots with kernel k's calls merged in: a call goes into the slot of the same function the
    longest common subsequence pairs it with, else into a slot of its own."""
    a = [renames.canonical(next(c for c in s if c).func) for s in slots]
    b = [renames.canonical(c.func) for c in calls]
    common = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            common[i][j] = common[i + 1][j + 1] + 1 if a[i] == b[j] else max(common[i + 1][j], common[i][j + 1])
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if i < len(a) and j < len(b) and a[i] == b[j]:
            slots[i][k] = calls[j]
            out.append(slots[i])
            i, j = i + 1, j + 1
        elif j == len(b) or (i < len(a) and common[i + 1][j] >= common[i][j + 1]):
            out.append(slots[i])
            i += 1
        else:
            slot = [None] * n
            slot[k] = calls[j]
            out.append(slot)
            j += 1
    return out


def _cell(side, call, rec, names):
    if rec is None:
        return Cell(names[0], absent="no_record")
    if call is None and side.hooks and not side.function_layer:
        return Cell(names[0], absent="no_layer", reason=side.no_layer)
    if call is not None and not isinstance(call, StandIn):
        step = call.step
        hook = side.hooks.get(call.func)
        return Cell(call.func, call, values=values(call, rec), refs=_refs(call), hook=hook.kind if hook else None,
                    file=step.get("file"), line=step.get("line"), line_from=step.get("line_from"))
    func = _name_here(side, names)
    absent, reason = _why_absent(side, func)
    spot = sourcelines.where(func, side.release) if side.release else None
    return Cell(func, absent=absent, reason=reason, file=spot.file if spot else None, line=spot.line if spot else None,
                line_from=None if not spot or spot.exact else spot.version)


def _name_here(side, names):
    """The name a function seen on other kernels under `names` has on this one: the one hooked here,
    else the one its source defines, else the first seen."""
    every = list(dict.fromkeys(n for name in names for n in renames.names(name)))
    hooked = [n for n in every if side.hooks.get(n) and side.hooks[n].attached]
    defined = [n for n in every if side.release and renames.defined(n, side.release)]
    return (hooked or defined or names)[0]


def _why_absent(side, func):
    """(a key of ABSENT, the reason in full) for a function this kernel's record does not show."""
    if not side.hooks:
        return "unknown", "the session does not say how functions were hooked (it has no header)"
    hook = side.hooks.get(func)
    if hook is None:
        return "not_hooked", "not probed by the nstrace that recorded this session"
    if hook.attached:
        return "not_run", f"hooked ({hook.kind}), and not called in this record"
    here = renames.defined(func, side.release) if side.release else None
    if here is False:
        history = renames.history(func)
        return (renames.came_or_went(func, side.release) or "not_in_kernel",
                "the kernel's source has no such function" + (f" ({history})" if history else ""))
    if here and (hook.reason or "").startswith(NO_SYMBOL):
        return "inlined", "inlined: in its source, not in its BTF or symbols"
    return "not_hooked", hook.reason or "not attached"


def values(call, rec):
    """What one call did, shortly: "= uts:[4026532155] new (count 1)". The arguments are left out where
    they are the syscall's own flags, passed down (the record's line says them)."""
    args = callpath.arguments(call, rec)
    if args == fl.short(rec.flags or []):
        args = ""
    if not args and call.enter and call.enter.get("inode"):
        args = f"inode {call.enter['inode']}"
    result = callpath.result(call, rec)
    text = (f"({args})" if args else "") + ("" if result in ("void", "(entry only)") else
                                           f" {result}" if result.startswith("(") else f" = {result}")
    counts = [f"count {c}" for c in (_refs(call),) if c is not None]
    if call.enter and isinstance(call.enter.get("old_refs"), int):
        counts.append(f"old count {call.enter['old_refs']}")
    return (text.strip() + (f" ({', '.join(counts)})" if counts else "")).strip()


def _refs(call):
    """The count a call's step carries (kernel_path[].refs): its result's, else its argument's."""
    for step in (call.exit, call.enter):
        if step and isinstance(step.get("refs"), int):
            return step["refs"]
    return None


# --- what differs ----------------------------------------------------------------------------------

def _row_notes(row, sides, findings, absences):
    """The row's differences, short (the lines are in the table's columns: a moved line is said in
    findings alone); each said in full once in findings ({key: Note}), a step missing on some kernels
    in absences ({(kind, func, reason): ([the kernels], where it was seen)})."""
    notes = []
    seen = [(s, c) for s, c in zip(sides, row.cells) if c.call]
    named = [(s, c) for s, c in zip(sides, row.cells) if c.absent not in SAID_ONCE]
    funcs = list(dict.fromkeys(c.func for _, c in named))
    if len(funcs) > 1 and renames.rename_of(funcs[0]):
        r = renames.rename_of(funcs[0])
        notes.append(Note("renamed", f"renamed {r.since}"))
        on = "; ".join(f"{f} on {', '.join(s.short for s, c in named if c.func == f)}" for f in funcs)
        findings.setdefault(("renamed", r.old), Note("renamed", f"{on}: {r.what}. Renamed {r.since}: {r.source}"))
    hooked = ", ".join(f"{s.short} ({c.hook})" if c.hook else s.short for s, c in seen)
    missing = {}
    for side, cell in zip(sides, row.cells):
        if not cell.call and cell.absent not in SAID_ONCE:
            missing.setdefault(cell.absent, []).append(side.short)
            on, _ = absences.setdefault((cell.absent, cell.func, cell.reason), ([], hooked))
            on.extend([side.short] if side.short not in on else [])
    notes += [Note(kind, ABSENT_ON[kind].format(", ".join(on))) for kind, on in missing.items()]
    notes += _moved(row, sides, findings)
    notes += _counts(row, sides, findings)
    return notes


def _moved(row, sides, findings):
    spots = [(s, c) for s, c in zip(sides, row.cells) if c.line]
    if len({c.file for _, c in spots}) > 1:
        kind = "moved_file"
    elif len({c.line for _, c in spots}) > 1:
        kind = "moved_line"
    else:
        return []
    if kind == "moved_line":
        where = f"{spots[0][1].file} " + ", ".join(f"{c.line} ({s.short})" for s, c in spots)
    else:
        where = ", ".join(f"{c.source} ({s.short})" for s, c in spots)
    findings.setdefault((kind, row.name), Note(kind, f"{row.name}: {where}"))
    return [Note(kind, "moved to another file")] if kind == "moved_file" else []


def _counts(row, sides, findings):
    seen = [(s, c) for s, c in zip(sides, row.cells) if c.call]
    counted = [s.short for s, c in seen if c.refs is not None]
    if not counted or len(counted) == len(seen):
        return []
    some = ", ".join(f"{s.short} ({c.refs})" for s, c in seen if c.refs is not None)
    none = ", ".join(s.short + (f" ({why})" if (why := _no_count(s, c)) else "") for s, c in seen if c.refs is None)
    findings.setdefault(("counts", row.name), Note("counts", f"{row.name}: a count (refs) on {some}; none on {none}"))
    return [Note("counts", f"count on {', '.join(counted)} only")]


# The initial namespaces' fixed inode numbers, MNT_NS_INIT_INO 0xEFFFFFF8 to IPC_NS_INIT_INO 0xEFFFFFFF
# (include/uapi/linux/nsfs.h, 6.17+; 7.2): 7.x keeps their count fixed at 1 (include/linux/ns_common.h
# __ns_ref_get(), 7.2), so the probes do not read it (probes/kfuncs.bpf.c is_initial_inum()).
INITIAL_INODES = range(0xEFFFFFF8, 0xF0000000)


def _no_count(side, cell):
    """Why a call a count was read for on another kernel has none on this one, or ""."""
    if (cell.call.exit or {}).get("inode") in INITIAL_INODES:
        return "an initial namespace: its count, fixed at 1 on 7.x, is not read"
    series = sourcelines.series_of(side.release)
    if series and tuple(map(int, series.split("."))) < (6, 1):
        # include/linux/ns_common.h: the count is there from 6.1 (count; __ns_ref from 6.18); 5.10 keeps
        # it in each type's own struct (probes/core.h), which the probes do not read
        return "its namespaces keep their count outside ns_common, not read"
    return ""


def _record_notes(m, sides):
    notes = []
    present = [(s, r) for s, r in zip(sides, m.records) if r]
    for s, r in zip(sides, m.records):
        if r is None:
            notes.append(Note("missing_record", f"{m.title}: no record #{m.ordinal} of it on {s.short}"))

    def differ(kind, what, shown):
        if len({shown(r) for _, r in present}) > 1:
            notes.append(Note(kind, f"{m.title}: {what} " + "; ".join(f"{shown(r)} on {s.short}" for s, r in present)))
    differ("flags", "flags", lambda r: fl.short(r.flags or []))
    differ("ret", "result", lambda r: "success" if r.errno is None else r.errno)
    differ("changed", "changed", lambda r: ", ".join(r.changed) or "nothing")
    for s, r in present:
        if r.kernel_path_dropped:
            notes.append(Note("dropped", f"{m.title}: {r.kernel_path_dropped} steps dropped on {s.short} (the record "
                                         "was full): its path there is cut short"))
        if not r.kernel_path and s.function_layer and any(o.kernel_path for _, o in present):
            notes.append(Note("no_path", f"{m.title}: no kernel path on {s.short} (its function layer saw none)"))
    return notes


def _absence_findings(absences):
    return [Note(kind, f"{func} on {', '.join(on)}: {reason}; hooked and seen on {seen}")
            for (kind, func, reason), (on, seen) in absences.items()]


def _ns_id_findings(sides):
    """Which kernels' records carry the namespaces' ns_id (the kernel's 64-bit id, 6.18+)."""
    has = [any(any((r.ns_id_after or {}).values()) for r in s.records) for s in sides]
    if all(has) or not any(has):
        return []
    return [Note("ns_id", f"ns_id (the kernel's 64-bit namespace id, never reused: 6.18+) in the records of "
                          f"{', '.join(s.short for s, h in zip(sides, has) if h)}, not "
                          f"{', '.join(s.short for s, h in zip(sides, has) if not h)}")]


def _hook_findings(sides):
    """How each kernel hooked its functions, where they differ; a kernel that could hook none, why."""
    notes = [Note("no_layer", f"{s.short}: {s.no_layer}") for s in sides if s.hooks and not s.function_layer]
    kinds = [tuple(sorted((k or "", n) for k, n in s.hook_kinds.items())) for s in sides]
    if len(set(kinds)) > 1:
        said = "; ".join(f"{s.short}: " + ", ".join(f"{n} by {k}" if k else f"{n} not hooked" for k, n in
                                                    sorted(s.hook_kinds.items(), key=lambda kv: kv[0] or "~"))
                         for s in sides)
        notes.append(Note("hooks", f"functions hooked: {said}"))
    return notes


def to_json(comparison):
    """The comparison as one JSON-ready object (nstrace compare --json)."""
    return {
        "matched_by": MATCHED_BY,
        "kernels": [{"session": s.path, "release": s.release, "label": s.label, "short": s.short,
                     "records": len(s.records),
                     "hooks": {k or "none": n for k, n in s.hook_kinds.items()}} for s in comparison.sides],
        "records": [{
            "op": m.op, "flags": list(m.flags), "ordinal": m.ordinal,
            "sides": [_record_json(r) for r in m.records],
            "differences": [dataclasses.asdict(n) for n in m.notes],
            "steps": [{"depth": row.depth, "name": row.name, "cells": [_cell_json(c) for c in row.cells],
                       "differences": [dataclasses.asdict(n) for n in row.notes]} for row in m.rows],
        } for m in comparison.matches],
        "findings": [dataclasses.asdict(n) for n in comparison.findings],
    }


def _record_json(rec):
    if rec is None:
        return None
    return {"flags": rec.flags, "ret": rec.ret, "errno": rec.errno, "changed": rec.changed,
            "ns_id": any((rec.ns_id_after or {}).values()), "kernel_path_dropped": rec.kernel_path_dropped}


def _cell_json(cell):
    return {"func": cell.func, "seen": cell.call is not None, "values": cell.values, "refs": cell.refs,
            "hook": cell.hook, "absent": cell.absent or None, "reason": cell.reason or None,
            "file": cell.file, "line": cell.line, "line_from": cell.line_from}
