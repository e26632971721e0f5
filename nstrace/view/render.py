"""Pictures of a recorded session: an SVG graph, a self-contained HTML page, a Perfetto trace.

The graph is laid out by Graphviz ``dot`` (Debian package ``graphviz``),
run as a program on DOT text we write. Why dot and not a Python library:
laying out a directed graph with ranked, labelled, non-crossing edges is
the one thing dot has done well for thirty years; the Python packages for
it either wrap the same C library (pygraphviz: a compiler and headers at
install time) or only write DOT and call the same binary (graphviz on
PyPI). Calling ``dot -Tsvg`` directly adds no Python dependency, and the
DOT text stays inspectable (:func:`dot_source`).

What the graph holds (:func:`graph`): a node per process of the session
(every caller and every clone child) and per namespace the session moved a
process into (each entry a record shows changing, by its "after" inode and
ns_id, and every setns target); edges in time order, numbered: parent ->
child for clones, process -> namespace "created" (the op had that type's
CLONE_NEW* flag), "joined" (setns) or "entered" (a child born into a
pending pid/time namespace). The process on an edge is the one that ends up
in the namespace: the child for clone, the caller for unshare and setns.
Owner edges (dotted) join a namespace to its user namespace where a
snapshot of the session knows it.

The HTML page embeds everything (CSS, the SVG, a few lines of script): it
fetches nothing, so it opens from a file, offline. Kernel paths link to the
recorded kernel's source on elixir.bootlin.com (a source browser).

Large sessions (a watch --record of a busy machine): dot is given at most
GRAPH_MAX nodes and edges and DOT_TIMEOUT_S seconds; past GRAPH_MAX the SVG is
refused and the page goes without the graph, saying so. The page writes each
different kernel-path table once (operations with the same path link to it),
at most PAGE_PATHS_MAX of them, so past those it grows by an operation's row
and timeline mark alone (README: render and large sessions).

The Perfetto output is the Chrome Trace Event Format ({"traceEvents": [...]}
with ph "X" complete events per operation and per kernel function, "i"
instant events per namespace created or joined, "M" metadata naming
processes and threads; ts/dur in microseconds from the session start),
which ui.perfetto.dev and chrome://tracing open.
"""

import functools
import html
import json
import re
import shutil
import subprocess
import time

from ..errors import RenderError, UsageError, WriteFailed
from ..kernel import flags as fl
from ..kernel import sourcelines
from ..kernel.hooks import Hook
from ..linux import trusted_paths
from ..study import callpath, pathcheck
from . import display

FORMATS = ("svg", "html", "perfetto")
ELIXIR = "https://elixir.bootlin.com/linux"

# dot's layout time grows faster than linearly with the graph (rank assignment and crossing
# minimisation; edge labels are nodes to it). Measured on a 2-core build machine shared with other
# work: 4,000 nodes and edges took 1.1-1.3 s (one process unsharing uts 2,000 times) and 1.8-2.3 s
# (800 forked children each unsharing uts and ipc); 8,000 took 3.8-5.4 s and 11-37 s. Above this the
# SVG is refused and the HTML page goes without the graph (about 3 MB of SVG at this size); a
# learner's session is far below it (a demo: a dozen nodes and edges).
GRAPH_MAX = 4000
# dot is stopped after this long in any case: a graph under GRAPH_MAX takes a few seconds at most
DOT_TIMEOUT_S = 30
# The HTML page writes each distinct kernel-path table once (operations whose path reads the same
# link to it), and at most this many: past them, a row says its path is not shown (README: render and
# large sessions)
PAGE_PATHS_MAX = 500
NARROW = "--pid, --comm, --op, --type, --container or --ns"

# one colour per namespace type and per op, shared by the graph, the timeline and the page
TYPE_COLOURS = {"mnt": "#8dd3c7", "uts": "#ffffb3", "ipc": "#bebada", "pid": "#fb8072",
                "net": "#80b1d3", "user": "#fdb462", "cgroup": "#b3de69", "time": "#fccde5"}
OP_COLOURS = {"clone": "#1f77b4", "clone3": "#17becf", "unshare": "#2ca02c", "setns": "#d62728"}


# --- the graph model -------------------------------------------------------------

class _Processes:
    """Process identity across the session: a pid, told apart by start time when it was reused."""

    def __init__(self):
        self.nodes = {}      # node id -> {"pid", "comm"}
        self._by_pid = {}    # pid -> [(start_ns or None, node id)]

    def node(self, pid, comm, start_ns=None):
        known = self._by_pid.setdefault(pid, [])
        for start, node in known:
            if start_ns is None or start is None or start == start_ns:
                if start is None and start_ns is not None:
                    known[known.index((start, node))] = (start_ns, node)
                return node
        node = f"pid-{pid}" + (f"-{len(known)}" if known else "")
        known.append((start_ns, node))
        self.nodes[node] = {"pid": pid, "comm": comm}
        return node


def ns_node_id(ns_type, inode, ns_id=None):
    """The graph node (and SVG element) id of a namespace: ns-<type>-<inode>[-<ns_id>]."""
    return f"ns-{ns_type}-{inode}" + (f"-{ns_id}" if ns_id else "")


def graph(records, snapshots=()):
    """The session as {"processes": {id: {...}}, "namespaces": {id: {...}}, "edges": [...]}, edges in time order."""
    procs = _Processes()
    namespaces, edges = {}, []

    def ns(ns_type, inode, ns_id):
        node = ns_node_id(ns_type, inode, ns_id)
        namespaces.setdefault(node, {"type": ns_type, "inode": inode, "ns_id": ns_id})
        return node

    for n, rec in enumerate(sorted(records, key=lambda r: r.ts), 1):
        caller = procs.node(rec.pid, rec.comm, rec.start_time_ns if rec.tid == rec.pid else None)
        mover = caller
        is_clone = rec.op in fl.CHILD_OPS
        if is_clone and rec.child_pid and rec.child_pid != rec.pid:
            mover = procs.node(rec.child_pid, rec.comm, rec.child_start_ns if rec.child_tid == rec.child_pid else None)
            edges.append({"n": n, "from": caller, "to": mover, "kind": "clone", "op": rec.op, "ts": rec.ts})
        made = set(fl.requested_types(rec.raw_flags, rec.op))
        done = set()
        for entry in rec.changed:
            ns_type = fl.ns_type_of_entry(entry)
            after = (rec.ns_after or {}).get(entry)
            if not after:
                continue
            node = ns(ns_type, after, (rec.ns_id_after or {}).get(entry))
            if (mover, node) in done:
                continue  # pid and pid_for_children: one edge
            done.add((mover, node))
            kind = "joined" if rec.op == "setns" else "created" if ns_type in made else "entered"
            edges.append({"n": n, "from": mover, "to": node, "kind": kind, "op": rec.op, "ts": rec.ts,
                          "entry": entry})
        target = rec.target or {}
        if target.get("kind") == "nsfs" and target.get("inode") and target.get("type") in fl.NS_TYPES:
            node = ns(target["type"], target["inode"], target.get("ns_id"))
            if not rec.ok:
                edges.append({"n": n, "from": caller, "to": node, "kind": "failed", "op": rec.op,
                              "ts": rec.ts, "errno": rec.errno})
    # ownership, where a snapshot knows it
    users = {}
    for node, info in namespaces.items():
        if info["type"] == "user":
            users.setdefault(info["inode"], node)
    for node, info in list(namespaces.items()):
        for snap in snapshots:
            known = snap.get(info["type"], info["inode"]) if snap else None
            if known and known.owner and (not info["ns_id"] or known.ns_id == info["ns_id"]):
                owner = users.get(known.owner)
                if owner and owner != node:
                    edges.append({"n": None, "from": node, "to": owner, "kind": "owner"})
                break
    return {"processes": procs.nodes, "namespaces": namespaces, "edges": edges}


def _q(text):
    """A DOT double-quoted string, shown as it is: dot reads backslash escapes (\\N, \\G ...) and
    HTML entities (&#27; would put a raw ESC into the SVG) in labels, so both are escaped, and
    control characters arrive as \\xNN text. A newline stays a line break."""
    lines = (display.printable(line) for line in str(text).split("\n"))
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;")
                            for line in lines) + '"'


def dot_source(records, snapshots=(), started=None):
    """The DOT text of :func:`graph` (dot lays it out top to bottom, in time order)."""
    return _dot(graph(records, snapshots), records, started)


def graph_size(g):
    """What dot's time grows with: the graph's nodes and edges (each edge label is a node to dot too)."""
    return len(g["processes"]) + len(g["namespaces"]) + len(g["edges"])


def too_large(g):
    """Why dot will not be given this graph, or None: it is over GRAPH_MAX."""
    size = graph_size(g)
    if size <= GRAPH_MAX:
        return None
    return (f"the graph has {size} nodes and edges, more than render lays out ({GRAPH_MAX}): "
            f"narrow the session with {NARROW}")


def _dot(g, records, started):
    t0 = started if started is not None else min((r.ts for r in records), default=0.0)
    out = ["digraph nstrace {", '  graph [rankdir=TB, fontname="Helvetica", fontsize=10, nodesep=0.3, ranksep=0.45];',
           '  node [fontname="Helvetica", fontsize=10];', '  edge [fontname="Helvetica", fontsize=9];']
    for node, p in g["processes"].items():
        label = f"{p['comm']}\npid {p['pid']}"
        out.append(f"  {_q(node)} [id={_q(node)}, shape=box, style=rounded, "
                   f"label={_q(label)}, tooltip={_q('process ' + str(p['pid']))}];")
    for node, n in g["namespaces"].items():
        label = f"{n['type']}:[{n['inode']}]" + (f"\nns_id {n['ns_id']}" if n["ns_id"] else "")
        out.append(f"  {_q(node)} [id={_q(node)}, shape=ellipse, style=filled, fillcolor={_q(TYPE_COLOURS.get(n['type'], '#dddddd'))}, "
                   f"label={_q(label)}, tooltip={_q(n['type'] + ' namespace ' + str(n['inode']))}];")
    styles = {"clone": 'style=bold, color="#555555"', "created": 'color="#2ca02c"', "joined": 'color="#d62728", style=dashed',
              "entered": 'color="#1f77b4", style=dashed', "failed": 'color="#999999", style=dotted',
              "owner": 'color="#bbbbbb", style=dotted, arrowhead=empty, constraint=false'}
    for i, e in enumerate(g["edges"]):
        if e["kind"] == "owner":
            out.append(f"  {_q(e['from'])} -> {_q(e['to'])} [id={_q(f'edge-owner-{i}')}, {styles['owner']}, tooltip=\"owned by\"];")
            continue
        what = e["kind"] if e["kind"] != "failed" else f"{e['op']} {e['errno']}"
        label = f"{e['n']}. {what} ({e['op']}) +{e['ts'] - t0:.3f}s" if e["kind"] != "failed" else f"{e['n']}. {what}"
        edge_id = f"edge-{e['n']}-{i}"
        out.append(f"  {_q(e['from'])} -> {_q(e['to'])} [id={_q(edge_id)}, {styles[e['kind']]}, "
                   f"label={_q(label)}, tooltip={_q(label)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def run_dot(source, timeout=None):
    """SVG text laid out by Graphviz dot, which is killed after timeout seconds (DOT_TIMEOUT_S)."""
    timeout = DOT_TIMEOUT_S if timeout is None else timeout
    dot = shutil.which("dot")
    if not dot:
        raise RenderError("graphviz `dot` not found: install the graphviz package (apt-get install graphviz)")
    try:
        done = subprocess.run([dot, "-Tsvg"], input=source, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RenderError(f"graphviz dot did not lay out this graph within {timeout:g} s (stopped); "
                          f"narrow the session with {NARROW}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RenderError(f"graphviz dot failed (exit {done.returncode}): {last}")
    return done.stdout


def _snapshots(session):
    return [s for s in (session.snapshot("end"), session.snapshot("start")) if s]


def svg(session, records=None):
    """The session graph as an SVG document (text); UsageError if it is over GRAPH_MAX."""
    records = session.records if records is None else records
    g = graph(records, _snapshots(session))
    why = too_large(g)
    if why:
        raise UsageError(f"{why}; or render it --format html (without the graph) or perfetto")
    return run_dot(_dot(g, records, session.started))


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
    return html.escape(display.printable(str(text)), quote=True)


def _hooks_from(availability):
    """Hook per function as recorded, so documented steps are judged as at record time."""
    hooks = {a["probe"]: Hook(a["probe"], a["hook"], a["reason"], a["attached"])
             for a in availability if a.get("layer") == "function"}
    tracepoints = {a["probe"] for a in availability if a.get("layer") == "syscall" and a["attached"]}
    return hooks, tracepoints


def _common_reason(availability):
    """The one reason every kernel function was unavailable, if it is the same for all (said once, on top)."""
    functions = [a for a in availability if a.get("layer") == "function"]
    reasons = {a["reason"] for a in functions if not a["attached"]}
    return reasons.pop() if functions and len(reasons) == 1 and not any(a["attached"] for a in functions) else None


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
        if not (s.expected or s.status in display.SHOWN):
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
    g = graph(records, _snapshots(session))
    why = too_large(g)
    if why:
        warn(f"the page goes without the graph: {why}")
        return f'<p class="note">Not drawn: {_e(why)}.</p>'
    drawn = run_dot(_dot(g, records, session.started))
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
    hooks, tracepoints = _hooks_from(session.availability)
    graph_html = _graph_html(session, records, warn)
    t0 = session.started
    functions = [a for a in session.availability if a.get("layer") == "function"]
    common = _common_reason(session.availability)
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


# --- Perfetto / Chrome trace events -----------------------------------------------

def perfetto(session, records=None):
    """The session as a Trace Event Format object: {"traceEvents": [...], "displayTimeUnit", "otherData"}."""
    records = sorted(session.records if records is None else records, key=lambda r: r.ts)
    base = min([session.started] + [r.ts - r.duration_us / 1e6 for r in records])
    us = lambda wall_s: round((wall_s - base) * 1e6, 3)
    offset = session.wall_offset_ns
    out, named = [], set()

    def name_task(pid, tid, comm):
        if (pid, None) not in named:
            named.add((pid, None))
            out.append({"ph": "M", "name": "process_name", "pid": pid, "tid": pid, "args": {"name": f"{comm} ({pid})"}})
        if (pid, tid) not in named:
            named.add((pid, tid))
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"{comm} ({tid})"}})

    for n, r in enumerate(records, 1):
        name_task(r.pid, r.tid, r.comm)
        start = r.ts - r.duration_us / 1e6
        args = {"n": n, "flags": r.flags, "ret": r.ret, "errno": r.errno, "child_pid": r.child_pid,
                "changed": {e: [(r.ns_before or {}).get(e), (r.ns_after or {}).get(e)] for e in r.changed},
                "target": r.target, "nsproxy": r.nsproxy,
                "proc_check": r.proc_check["status"] if r.proc_check else None}
        out.append({"ph": "X", "name": f"{r.op} {fl.short(r.flags)}", "cat": f"namespace,{r.op}", "pid": r.pid,
                    "tid": r.tid, "ts": us(start), "dur": round(r.duration_us, 3), "args": args})
        if offset is not None:
            out += _step_events(r, offset, us)
        mover = (r.child_pid, r.child_tid) if r.op in fl.CHILD_OPS and r.child_pid else (r.pid, r.tid)
        if mover != (r.pid, r.tid):
            name_task(mover[0], mover[1], r.comm)
        for entry in r.changed:
            out.append({"ph": "i", "s": "t", "name": f"{'joined' if r.op == 'setns' else 'in'} "
                        f"{fl.ns_type_of_entry(entry)}:[{(r.ns_after or {}).get(entry)}]",
                        "cat": "namespace", "pid": mover[0], "tid": mover[1], "ts": us(r.ts),
                        "args": {"n": n, "entry": entry, "before": (r.ns_before or {}).get(entry),
                                 "after": (r.ns_after or {}).get(entry),
                                 "ns_id": (r.ns_id_after or {}).get(entry)}})
    k = session.kernel
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"source": "nstrace", "host": (session.header or {}).get("host"),
                          "kernel": k.get("release"), "nstrace": (session.header or {}).get("nstrace"),
                          "started": base}}


def _step_events(rec, offset_ns, us):
    """Kernel-function steps as nested complete events (enter..exit) on the caller's thread."""
    out, open_steps = [], {}
    for s in rec.kernel_path:
        ts_ns = s.get("ts_ns")
        if not ts_ns:
            continue
        wall = (ts_ns + offset_ns) / 1e9
        if s["kind"] == "enter":
            open_steps.setdefault(s["func"], []).append((wall, s))
        elif open_steps.get(s["func"]):
            start, enter = open_steps[s["func"]].pop()
            out.append({"ph": "X", "name": s["func"], "cat": "kernel", "pid": rec.pid, "tid": rec.tid,
                        "ts": us(start), "dur": round((wall - start) * 1e6, 3),
                        "args": {"file": s.get("file"), "source": callpath.source_text(s), "enter": enter.get("short"),
                                 "exit": s.get("short"), **({"created": s["created"]} if "created" in s else {})}})
    for stack in open_steps.values():
        for start, enter in stack:
            out.append({"ph": "i", "s": "t", "name": enter["func"], "cat": "kernel", "pid": rec.pid, "tid": rec.tid,
                        "ts": us(start), "args": {"file": enter.get("file"), "enter": enter.get("short")}})
    return out


# --- one entry point ----------------------------------------------------------------

def render(session, fmt, records=None, warn=None):
    """The session in one of FORMATS, as text ready to write; warn(message): what the HTML page leaves out."""
    if fmt == "svg":
        return svg(session, records)
    if fmt == "html":
        return html_page(session, records, warn)
    if fmt == "perfetto":
        return json.dumps(perfetto(session, records), separators=(",", ":")) + "\n"
    raise UsageError(f"unknown format {fmt!r}: valid are {', '.join(FORMATS)}")


def write(session, fmt, out_path, records=None, warn=None, fd=None):
    """Render and write to out_path ("-" or None: returns the text instead); to fd instead, where the
    caller opened out_path already (trusted_paths.create_output), before the work it draws."""
    text = render(session, fmt, records, warn)
    if fd is None:
        if out_path in (None, "-"):
            return text
        fd = trusted_paths.create_output(out_path)  # never through another user's symlink
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise WriteFailed(f"cannot write {out_path}: {e.strerror}") from None
    return None
