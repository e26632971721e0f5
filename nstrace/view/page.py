"""The session as a self-contained HTML page: its timeline, its graph (view/graph.py) and each
operation's kernel path beside the documented one.

The HTML page embeds everything (CSS, the SVG, a few lines of script): it
fetches nothing, so it opens from a file, offline. Kernel paths link to the
recorded kernel's source on elixir.bootlin.com (a source browser).

The page writes each different kernel-path table once (operations with the same path link to it), at
most PAGE_PATHS_MAX of them, so past those it grows by an operation's row and timeline mark alone, and
past GRAPH_MAX nodes and edges it goes without the graph, saying so (README: render and large sessions).
"""

import functools
import html
import re
import time

from ..kernel import flags as fl
from ..kernel import sourcelines
from ..study import pathcheck
from . import reports
from .graph import (
    NARROW,
    OP_COLOURS,
    TYPE_COLOURS,
    dot_of,
    graph,
    run_dot,
    snapshots_of,
    too_large,
)
from .terminal import printable

ELIXIR = "https://elixir.bootlin.com/linux"
# The HTML page writes each distinct kernel-path table once (operations whose path reads the same
# link to it), and at most this many: past them, a row says its path is not shown (README: render and
# large sessions)
PAGE_PATHS_MAX = 500



# --- kernel source links -------------------------------------------------------

def kernel_tag(release, version=""):
    """The elixir.bootlin.com tag of a kernel: v6.1.76 for Debian's 6.1.0-18-amd64 (#1 SMP ... Debian 6.1.76-1).

    Distribution kernels name the upstream stable release in uname -v
    (Debian, Ubuntu's "Ubuntu 5.15.0-91.101" is not upstream and is not used);
    otherwise uname -r's x.y.z; a .0 patch level is the mainline tag vX.Y.
    """
    m = re.search(r"Debian (\d+\.\d+(?:\.\d+)?)", version or "")
    numbers = m.group(1) if m else (re.match(r"(\d+\.\d+(?:\.\d+)?)", release or "") or [None])[0]
    if not numbers:
        return None
    parts = numbers.split(".")
    if len(parts) == 3 and parts[2] == "0":
        parts = parts[:2]
    return "v" + ".".join(parts)


def source_url(tag, file):
    return f"{ELIXIR}/{tag}/source/{file}" if tag and file and file != "?" else None


def ident_url(tag, func):
    """Elixir's identifier search: the definition, with its line, whatever the file."""
    name = func.split(":")[-1]
    name = re.sub(r"^__x64_sys_", "sys_", name)
    return f"{ELIXIR}/{tag}/A/ident/{name}" if tag else None


# --- HTML ------------------------------------------------------------------------

def _e(text):
    """Any value as HTML text or attribute: escaped, and with control characters as \\xNN text."""
    return html.escape(printable(str(text)), quote=True)


@functools.lru_cache(maxsize=4096)  # the same few dozen steps on every row of a large session
def _step_link(name, kind, file, tag, release):
    """A step's name linked to its definition: file#Lline at the version the line was read from
    (nstrace/record/sourcelines.py: the recorded kernel's own, or the nearest covered one), and
    elixir's identifier search at the recorded kernel's tag."""
    spot = sourcelines.where(name, release) if kind == "function" and release else None
    if spot:
        url = f"{ELIXIR}/v{spot.version}/source/{spot.file}#L{spot.line}"
        title = f"{spot.file}:{spot.line} in {spot.version}" + ("" if spot.exact else ", the nearest version nstrace has lines for")
    else:
        url, title = source_url(tag, file), f"{file} at {tag}"
    text = f'<a href="{_e(url)}" title="{_e(title)}">{_e(name)}</a>' if url else _e(name)
    ident = ident_url(tag, name) if kind == "function" else None
    return text + (f' <a class="def" href="{_e(ident)}" title="definition at {_e(tag)}">def</a>' if ident else "")


def _path_html(rec, tag, hooks, tracepoints, common=None, release=None):
    """The record's kernel path in one view: the documented steps nested by their documented caller,
    each with what was observed of it (arguments, result, new or shared, µs, source line) or why it
    was not; then calls the notes do not list."""
    try:
        results = pathcheck.compare(rec, hooks, tracepoints, release)
    except (KeyError, TypeError, ValueError):
        return "<p class=\"path\">no documented path</p>"
    if not results:
        return "<p class=\"path\">no documented path</p>"
    rows, said = [], set()
    for s in results:
        if not (s.expected or s.status in reports.SHOWN):
            continue
        why_not = "function layer off here (see top)" if common and s.reason == common else s.reason
        shown = s.values or why_not
        note = s.note or (s.reason if s.values and s.reason else "")
        note, said = ("" if note in said else note), said | {note}  # each why once: seven copies say it seven times
        klass = s.status.replace(" ", "-") + (" created" if re.search(r" new( \(count \d+\))?$", s.values) else "")
        rows.append(f'<tr class="{_e(klass)}"><td class="step d{min(s.depth, 7)}">'
                    f'{_step_link(s.name, s.kind, s.file, tag, release)}</td><td class="status">{_e(s.status)}</td>'
                    f'<td class="values">{_e(shown)}'
                    + (f'<div class="why">/* {_e(note)} */</div>' if note else "")
                    + f'</td><td class="us">{"" if s.duration_us is None else f"{s.duration_us:.1f}"}</td>'
                    f'<td class="src">{_e(s.source)}</td></tr>')
    return ('<table class="path"><thead><tr><th>step (kernel-notes/paths.toml)</th><th>on this kernel</th>'
            '<th>observed, or why not</th><th>&micro;s</th><th>source</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def timeline_svg(records, started, width=960):
    """One lane per process, one mark per operation at its time; each mark links to its row."""
    records = sorted(records, key=lambda r: r.ts)
    lanes = {}
    for r in records:
        lanes.setdefault(r.pid, len(lanes))
    t0 = min([started] + [r.ts - r.duration_us / 1e6 for r in records]) if records else started
    t1 = max([r.ts for r in records] + [t0 + 1e-3])
    span = t1 - t0
    left, lane_h, top = 150, 22, 24
    height = top + lane_h * max(len(lanes), 1) + 10
    x = lambda t: left + (t - t0) / span * (width - left - 10)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="operations over time">']
    for i in range(6):
        tx = left + i * (width - left - 10) / 5
        out.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{height}" class="tick"/>'
                   f'<text x="{tx:.1f}" y="{top - 10}" class="axis">+{span * i / 5:.3f}s</text>')
    comm = {r.pid: r.comm for r in records}
    for pid, lane in lanes.items():
        y = top + lane * lane_h
        out.append(f'<text x="4" y="{y + 15}" class="lane">{_e(comm[pid])} {_e(pid)}</text>')
    for n, r in enumerate(records, 1):
        y = top + lanes[r.pid] * lane_h
        start = r.ts - r.duration_us / 1e6
        w = max(x(r.ts) - x(start), 4)
        what = f"{n}. {r.op} {fl.short(r.flags)} ret {r.errno or r.ret} (+{r.ts - t0:.6f}s)"
        klass = "op failed" if not r.ok else "op"
        out.append(f'<a href="#op-{n}"><rect id="mark-{n}" class="{klass}" x="{x(start):.1f}" y="{y + 4}" width="{w:.1f}" '
                   f'height="{lane_h - 8}" fill="{_e(OP_COLOURS.get(r.op, "#777"))}"><title>{_e(what)}</title></rect></a>')
    out.append("</svg>")
    return "".join(out)


_CSS = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3}tr:target{background:#fff6bf}tr.failed td.ret{color:#b00}
.timeline .tick{stroke:#eee}.timeline .axis,.timeline .lane{font-size:11px;fill:#555}
.timeline rect.op{opacity:.85}.timeline rect.failed{opacity:.4}
table.path{font-size:1em;border:none}table.path td,table.path th{border:none;border-bottom:1px solid #eee;padding:1px 5px}
table.path td.step{white-space:nowrap;font-family:monospace}table.path td.us{text-align:right}
.path .status,.path .why,.path .src{color:#666;font-size:.9em}.path .why{font-family:monospace}
tr.observed .status{color:#080}tr.not-observed .status,tr.unexpected .status,tr.out-of-order .status,tr.out-of-place .status{color:#b00}
tr.created td.values{font-weight:bold}
""" + "".join(f"table.path td.d{d}{{padding-left:{0.3 + 1.2 * d:.1f}em}}" for d in range(8)) + """
a.def{font-size:.8em;color:#888}#graph svg{max-width:100%;height:auto}
.legend span{display:inline-block;padding:1px 6px;margin-right:4px;border-radius:3px}
#filter{margin:.4em 0}p.note{color:#666}
""" + "".join(f".legend .t-{t}{{background:{c}}}" for t, c in TYPE_COLOURS.items()) + \
    "".join(f".legend .o-{o}{{background:{c};color:#fff}}" for o, c in OP_COLOURS.items()) + "\n"


def _csp_hash(text):
    """A CSP source for one inline <style> or <script>: the page runs no other inline code, and
    none an attacker could slip into a field (no 'unsafe-inline')."""
    import base64
    import hashlib  # here: ls and show import this module too, and need no hash
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

# The only script: a filter box for the operations table. It marks the page
# ready when it ran, which the tests check in the rendered DOM.
_JS = """
(function () {
  var box = document.getElementById("filter");
  var rows = document.querySelectorAll("#operations tbody tr");
  box.addEventListener("input", function () {
    var want = box.value.toLowerCase();
    rows.forEach(function (row) {
      row.style.display = row.textContent.toLowerCase().indexOf(want) >= 0 ? "" : "none";
    });
  });
  document.body.setAttribute("data-ready", "1");
})();
"""


def _graph_html(session, records, warn):
    """The graph as inline SVG, or a note saying why the page goes without it."""
    g = graph(records, snapshots_of(session))
    why = too_large(g)
    if why:
        warn(f"the page goes without the graph: {why}")
        return f'<p class="note">Not drawn: {_e(why)}.</p>'
    drawn = run_dot(dot_of(g, records, session.started))
    return drawn[drawn.index("<svg"):]  # drop the XML prolog and doctype: inline SVG


class _PathTables:
    """Each operation's kernel-path cell: a distinct table is written once, at its first operation;
    later operations with the same table link to it; past PAGE_PATHS_MAX tables, none is written."""

    def __init__(self):
        self.first = {}  # table HTML -> the operation it is written at
        self.left_out = 0

    def cell(self, n, table):
        first = self.first.get(table)
        if first is not None:
            return f'<p class="path">as for <a href="#op-{first}">{first}</a></p>'
        if len(self.first) >= PAGE_PATHS_MAX:
            self.left_out += 1
            return f'<p class="path">not shown: the page holds {PAGE_PATHS_MAX} different kernel paths</p>'
        self.first[table] = n
        return table


def html_page(session, records=None, warn=None):
    """The whole page as text: summary, timeline, graph (inline SVG), operations with their kernel paths.

    warn(message): what the page leaves out (the graph of a large session, kernel paths past
    PAGE_PATHS_MAX); the page says it too."""
    warn = warn or (lambda message: None)
    records = sorted(session.records if records is None else records, key=lambda r: r.ts)
    k = session.kernel
    tag = kernel_tag(k.get("release"), k.get("version")) if k else None
    hooks, tracepoints = pathcheck.recorded_hooks(session.availability)
    graph_html = _graph_html(session, records, warn)
    t0 = session.started
    functions = [a for a in session.availability if a.get("layer") == "function"]
    common = pathcheck.common_reason(session.availability)
    attached = sum(1 for a in functions if a["attached"])
    head = [("recorded on", (session.header or {}).get("host", "?")),
            ("kernel", f"{k.get('release', '?')} ({k.get('version', '')})" if k else "unknown (no header)"),
            ("kernel source", f'<a href="{_e(ELIXIR)}/{_e(tag)}/source">{_e(tag)} on elixir.bootlin.com</a>' if tag else "-"),
            ("nstrace", (session.header or {}).get("nstrace", "?")),
            ("from", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))),
            ("duration", f"{session.ended - t0:.3f} s"),
            ("operations", str(len(records))),
            ("kernel-function layer", (f"{attached} of {len(functions)} functions attached" if functions else "unknown")
             + (f": {common}" if common else ""))]
    rows, paths, release = [], _PathTables(), k.get("release") if k else None
    for n, r in enumerate(records, 1):
        changed = "<br>".join(f"{_e(e)} {_e((r.ns_before or {}).get(e))} &rarr; {_e((r.ns_after or {}).get(e))}"
                              for e in r.changed) or "-"
        proc = r.proc_check["status"] if r.proc_check else "-"
        rows.append(
            f'<tr id="op-{n}" class="{"failed" if not r.ok else "ok"}"><td><a href="#mark-{n}">{n}</a></td>'
            f"<td>+{r.ts - t0:.6f}s</td><td>{_e(r.comm)}</td><td>{_e(r.pid)}/{_e(r.tid)}</td><td>{_e(r.op)}</td>"
            f"<td>{_e(fl.short(r.flags))}</td><td class=\"ret\">{_e(r.errno or r.ret)}</td>"
            f"<td>{_e(r.child_pid or '-')}</td><td>{changed}</td><td>{_e(proc)}</td>"
            f"<td>{paths.cell(n, _path_html(r, tag, hooks, tracepoints, common, release))}</td></tr>")
    if paths.left_out:
        warn(f"the page shows {PAGE_PATHS_MAX} different kernel paths; those of {paths.left_out} more operations "
             "are left out (`nstrace show --json` has every record's kernel_path; or narrow the session with "
             f"{NARROW})")
    legend = "".join(f'<span class="t-{t}">{t}</span>' for t in TYPE_COLOURS)
    ops_legend = "".join(f'<span class="o-{o}">{o}</span>' for o in OP_COLOURS)
    title = f"nstrace session: {(session.header or {}).get('host', '')} {k.get('release', '')}".strip()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; img-src data:">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<table class="session">{"".join(f"<tr><th>{_e(a)}</th><td>{b if a == 'kernel source' else _e(b)}</td></tr>" for a, b in head)}</table>
<section id="timeline"><h2>Timeline</h2><p class="legend">{ops_legend}</p>{timeline_svg(records, t0)}</section>
<section id="graph"><h2>Processes and namespaces</h2><p class="legend">{legend}</p>{graph_html}</section>
<section id="operations"><h2>Operations</h2>
<input id="filter" type="search" placeholder="filter rows" aria-label="filter rows">
<table><thead><tr><th>#</th><th>time</th><th>comm</th><th>pid/tid</th><th>op</th><th>flags</th><th>ret</th><th>child</th>
<th>changed</th><th>/proc</th><th>kernel path</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></section>
<script>{_JS}</script>
</body></html>
"""
