"""`nstrace compare`'s table: one scenario on several kernels as one path (study/compare.py), a row per
step of the union of the paths, a column per kernel, and what differs beside each row; every
difference in full at the end. Through the terminal filter: a session file says what it likes."""

import os

from ..kernel import flags as fl
from ..study.compare import ABSENT, KINDS, MATCHED_BY
from .table import tabulate
from .terminal import lines


def text(comparison):
    out = [f"Comparing {len(comparison.sides)} sessions; records matched by {MATCHED_BY}:"]
    out += [f"  {s.short}: {s.path}, {s.release or 'kernel not recorded'}, {len(s.records)} records"
            for s in comparison.sides]
    for m in comparison.matches:
        out += ["", f"== {m.title} (record #{m.ordinal} of its op and flags in each session)"]
        out += [f"  {s.short}: {_record(r)}" for s, r in zip(comparison.sides, m.records)]
        out += [f"  differs: {n.text.removeprefix(m.title + ': ')}" for n in m.notes]
        if m.rows:
            out += ["", *("  " + line.rstrip() for line in _steps(comparison.sides, m).split("\n"))]
    if comparison.findings:
        out += ["", "== What differs"]
    kind = None
    for n in comparison.findings:
        if n.kind != kind:
            kind = n.kind
            out.append(f"{KINDS[kind]}:")
        out.append(f"  {n.text}")
    return lines("\n".join(out))


def _record(rec):
    if rec is None:
        return "(no such record)"
    result = str(rec.ret) if rec.errno is None else rec.errno
    ids = "ns_id" if any((rec.ns_id_after or {}).values()) else "no ns_id"
    dropped = f", {rec.kernel_path_dropped} steps dropped" if rec.kernel_path_dropped else ""
    return (f"{rec.op} {fl.short(rec.flags or [])} = {result}, changed {', '.join(rec.changed) or 'nothing'}, {ids}, "
            f"{len(rec.kernel_path)} steps{dropped}")


def _steps(sides, m):
    headers = ["step"] + [h for s in sides for h in (s.label, "line")] + ["differs"]
    table = [["  " * row.depth + row.name] + [v for c in row.cells for v in (_value(c), _line(c))]
             + ["; ".join(n.text for n in row.notes)] for row in m.rows]
    return tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True, preserve_whitespace=True)


def _value(cell):
    if cell.call is None:
        return f"({ABSENT[cell.absent]})"
    return cell.values or "seen"


def _line(cell):
    if not cell.line:
        return ""
    return f"{os.path.basename(cell.file or '')}:{cell.line}" + (f" (as in {cell.line_from})" if cell.line_from else "")
