"""A trace, a record and a kernel path as a notebook (Jupyter) shows them: HTML with the escaping and
the look of the HTML page (view/page.py: its _e and its style sheet, not copies of them).

A notebook puts every output into one document, so the page's style sheet is nested under the class
of an element of ours (CSS nesting): its rules reach only what is inside that element, never the
notebook around it (the page styles `body`, `table`, `h1`...). Each output carries it: an output is
shown, saved and exported on its own.

The kernel path shown is what was observed, call by call (study/callpath.py, as `nstrace watch`'s
table shows it); the documented path beside it is the HTML page's (`nstrace render`), which needs
the probes' availability a record alone does not carry.
"""

import time

from ..kernel import flags as fl
from ..study import callpath, pathcheck
from .page import _CSS, _e

_STYLE = "<style>.nstrace{" + _CSS + "}</style>"
_COLUMNS = ("#", "time", "comm", "pid/tid", "op", "flags", "ret", "child", "changed", "/proc", "kernel path")


def trace_html(records, *, lost, exit_status, availability, kernel):
    """A trace (nstrace/api.py Trace) as HTML: what was traced where, then the operations as the page's
    table has them. lost: None where unknown; availability: the probes, as Tracer.availability() or
    a session's header has them; kernel: {"release", ...}."""
    t0 = min((r.ts - r.duration_us / 1e6 for r in records), default=0.0)
    rows = "".join(_row(n, r, f"+{r.ts - t0:.6f}s") for n, r in enumerate(records, 1))
    head = [("kernel", kernel.get("release", "unknown")), ("kernel-function layer", _function_layer(availability)),
            ("operations", str(len(records))),
            ("lost", "unknown (the recording was not closed)" if lost is None else str(lost))]
    if exit_status is not None:
        head.append(("exit status", str(exit_status)))
    return _wrap('<table class="session">' + "".join(f"<tr><th>{_e(a)}</th><td>{_e(b)}</td></tr>" for a, b in head)
                 + "</table>" + _table(rows))


def record_html(record):
    """One Record as HTML: its row of the page's operations table, its kernel path in the last cell."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.ts)) + f".{int(record.ts * 1e6) % 1000000:06d}"
    return _wrap(_table(_row(1, record, stamp)))


def path_html(record):
    """A record's kernel path as HTML, call by call."""
    return _wrap(_path(record))


def _wrap(body):
    return f'<div class="nstrace">{_STYLE}{body}</div>'


def _table(rows):
    return ("<table><thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in _COLUMNS) + "</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _function_layer(availability):
    functions = [a for a in availability if a.get("layer") == "function"]
    if not functions:
        return "off" if availability else "unknown"
    attached = sum(1 for a in functions if a["attached"])
    common = pathcheck.common_reason(availability)
    return f"{attached} of {len(functions)} functions attached" + (f": {common}" if common else "")


def _row(n, r, when):
    changed = "<br>".join(f"{_e(e)} {_e((r.ns_before or {}).get(e))} &rarr; {_e((r.ns_after or {}).get(e))}"
                          for e in r.changed) or "-"
    proc = r.proc_check["status"] if r.proc_check else "-"
    return (f'<tr class="{"ok" if r.ok else "failed"}"><td>{n}</td><td>{_e(when)}</td><td>{_e(r.comm)}</td>'
            f"<td>{_e(r.pid)}/{_e(r.tid)}</td><td>{_e(r.op)}</td><td>{_e(fl.short(r.flags))}</td>"
            f'<td class="ret">{_e(r.errno or r.ret)}</td><td>{_e(r.child_pid or "-")}</td><td>{changed}</td>'
            f"<td>{_e(proc)}</td><td>{_path(r)}</td></tr>")


def _path(r):
    rows = callpath.path_rows(r)
    if not rows:
        why = ("seen at task_newtask alone" if r.op in ("fork", "vfork") else
               "the kernel-function layer was off, or saw none of its functions")
        return f'<p class="path">no kernel path ({_e(why)})</p>'
    out, said = [], set()
    for depth, _, why, source, us, call in rows:
        refs = callpath.counts(call.exit or {}) if call.func != "switch_task_namespaces" else ""
        values = f"({callpath.arguments(call, r)}) = {callpath.result(call, r)}" + (f" ({refs})" if refs else "")
        note, said = ("" if why in said else why), said | {why}  # each why once, as the page says it
        created = " created" if (call.exit or {}).get("created") else ""
        out.append(f'<tr class="observed{created}"><td class="step d{min(depth, 7)}">{_e(call.func)}</td>'
                   f'<td class="values">{_e(values)}' + (f'<div class="why">/* {_e(note)} */</div>' if note else "")
                   + f'</td><td class="us">{"" if us is None else f"{us:.1f}"}</td><td class="src">{_e(source)}</td></tr>')
    return ('<table class="path"><thead><tr><th>kernel function</th><th>(arguments) = result</th><th>&micro;s</th>'
            "<th>source</th></tr></thead><tbody>" + "".join(out) + "</tbody></table>")
