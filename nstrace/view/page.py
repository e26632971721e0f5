"""The session as a self-contained HTML page for a learner: what the demo's process saw from inside,
the timeline, the graph of processes and namespaces (view/graph.py) and each operation with its
kernel path beside the documented one.

The page embeds everything (its style and script, view/pagestyle.py; the SVG): it fetches nothing,
so it opens from a file, offline, and its Content-Security-Policy allows no other code. Kernel paths
link to the recorded kernel's source on elixir.bootlin.com (a source browser).

The page writes each different kernel-path table once (operations with the same path link to it), at
most PAGE_PATHS_MAX of them, so past those it grows by an operation's row and timeline mark alone, and
past GRAPH_MAX nodes and edges it goes without the graph, saying so (README: render and large sessions).
"""

import collections
import functools
import html
import math
import re
import time

from ..kernel import documented, sourcelines
from ..kernel import flags as fl
from ..linux import kernelsource
from ..record.layout import OPS
from ..study import callpath, pathcheck
from . import pagestyle, reports
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
# A session of up to this many operations (a demo, a check scenario) shows every kernel path open;
# a larger one shows them folded, each opened by a click or by following its operation's link.
PATHS_OPEN_MAX = 20
# Past this many processes the timeline has a lane per command name, not per process, and past this
# many command names the rarest share one lane: a busy machine's session stays a picture.
LANES_MAX = 30

# A graph wider than this (CSS px; dot gives points) would be scaled to under half its size to fit a
# 1400 px window, its labels too small to read: the page shows it at its size, in a pane that scrolls.
GRAPH_FIT_PX = 2700

# Every op a record can carry (record/layout.py OPS), in the graph's colour where it has one.
_MORE_OP_COLOURS = {"exec": "#9467bd", "open_tree": "#8c564b", "fsmount": "#bcbd22", "free": "#555555",
                    "fork": "#7f7f7f", "vfork": "#e377c2"}
OP_COLOUR = {op: OP_COLOURS.get(op) or _MORE_OP_COLOURS[op] for op in OPS.values()}
# What each op is (README: the JSON record, `op`), and what a failed call's mark looks like: the
# legend's tooltips
OP_MEANING = {
    "clone": "a new process, in new namespaces for each CLONE_NEW* flag",
    "clone3": "clone with its arguments in a struct clone_args",
    "unshare": "the caller moves into new namespaces",
    "setns": "the caller joins a namespace that exists (an nsfs file or a pidfd)",
    "exec": "an execve that moved its caller into its pending time namespace",
    "open_tree": "open_tree(OPEN_TREE_NAMESPACE) made a mount namespace (7.x)",
    "fsmount": "fsmount(FSMOUNT_NAMESPACE) made a mount namespace (7.x)",
    "free": "a namespace was freed: its last reference was dropped",
    "fork": "fork(2): a child that entered a pid or time namespace its parent is not in",
    "vfork": "vfork(2): as fork, the parent waiting for the child's exec or exit",
    "failed call": "the call returned an error: a pale mark, dashed",
}
# What each fact seen from inside shows (check/inside.py view, check/container.py)
INSIDE_MEANING = {
    "pid": "its pid, as the PID namespace it is in numbers it (1: that namespace's first process, its init)",
    "uid": "its uid, as the user namespace it is in maps it",
    "hostname": "the hostname it set in its own UTS namespace; the host's did not change",
    "proc_pids": "the pids in a /proc it mounted for its PID namespace: only that namespace's",
    "interfaces": "the network interfaces its network namespace has (a new one has only lo, down)",
    "msg_queues": "the System V message queues it sees (a new IPC namespace has none)",
    "cgroup_paths": "its cgroup, as a path from the root of its cgroup namespace",
    "monotonic_s": "CLOCK_MONOTONIC in seconds, as its time namespace offsets it",
    "root": "what / holds after pivot_root into its own root",
    "old_root_empty": "the host's tree, unmounted from its view",
}


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


def _flags(rec):
    """The flags as text that may wrap after each |."""
    return "|<wbr>".join(_e(name) for name in fl.short(rec.flags).split("|"))


def _op(op):
    return f'<span class="op o-{_e(op)}">{_e(op)}</span>' if op in OP_COLOUR else _e(op)


@functools.lru_cache(maxsize=4096)  # the same few dozen steps on every row of a large session
def _step_link(name, kind, file, tag, release):
    """A step's name linked to its definition: file#Lline at the version the line was read from
    (nstrace/kernel/sourcelines.py: the recorded kernel's own, or the nearest covered one), and
    elixir's identifier search at the recorded kernel's tag."""
    spot = sourcelines.where(name, release) if kind == "function" and release else None
    if spot:
        url = f"{ELIXIR}/v{spot.version}/source/{spot.file}#L{spot.line}"
        title = f"{spot.file}:{spot.line} in {spot.version}" + ("" if spot.exact else ", the nearest version nstrace has lines for")
    else:
        url, title = source_url(tag, file), f"{file} at {tag}"
    text = f'<a href="{_e(url)}" title="{_e(title)}">{_e(name)}</a>' if url else _e(name)
    ident = ident_url(tag, name) if kind == "function" else None
    return text + (f'<a class="def" href="{_e(ident)}" title="definition at {_e(tag)}">def</a>' if ident else "")


_STEPS_HEAD = ('<div class="row head"><span>step (kernel-notes/paths.toml)</span><span>on this kernel</span>'
               '<span>observed, or why not</span><span>&micro;s</span><span>source</span></div>')


def _step_html(s, tag, release, shown, note, more=""):
    """One step of the kernel path as a row: its name linked to its source, its status, what was
    observed of it or why not (and why it did so), its duration and source line. With `more`
    (HTML), the row opens to show it."""
    klass = f"step d{min(s.depth, pagestyle.DEPTHS - 1)} {s.status.replace(' ', '-')}"
    if re.search(r" new( \(count \d+\))?$", s.values):
        klass += " created"
    cells = (f'<span class="name">{_step_link(s.name, s.kind, s.file, tag, release)}</span>'
             f'<span class="status">{_e(s.status)}</span>'
             f'<span class="values">{_e(shown)}' + (f'<span class="why">/* {_e(note)} */</span>' if note else "")
             + f'</span><span class="us">{"" if s.duration_us is None else f"{s.duration_us:.1f}"}</span>'
             f'<span class="src">{_e(s.source)}</span>')
    if not more:
        return f'<div class="{klass} row">{cells}</div>'
    return f'<details class="{klass}"><summary class="row">{cells}</summary><div class="more">{more}</div></details>'


@functools.lru_cache(maxsize=256)
def _explain_html(func):
    """What the step does and the kernel-notes paragraph of the concept it teaches, with its gist
    (paths.toml, shipped with nstrace: the page needs no network for it); "" where the notes say
    nothing of func."""
    does, pointer, gist = callpath.explanation(func)
    parts = [f'<p class="does"><b>does</b> {_e(does)}</p>'] if does else []
    if pointer:
        parts.append(f'<p class="notes"><b>why it matters</b> <code>{_e(pointer)}</code>'
                     + (f": {_e(gist)}" if gist else "") + "</p>")
    return f'<div class="explain">{"".join(parts)}</div>' if parts else ""


def _callers(rec):
    """Who called each function of rec's path: the caller a probe saw (its first call), else the one
    paths.toml documents (its first `in`)."""
    out = {}
    for step in documented.notes()["op"].get(rec.op, {}).get("step", []):
        where = step.get("in")
        if where:
            out[step["name"]] = where if isinstance(where, str) else where[0]
    seen = {}
    for top in callpath.tree(rec.kernel_path):
        for call in top.walk():
            for inner in call.calls:
                seen.setdefault(inner.func, call.func)
    return out | seen


def excerpt_html(e, what):
    """An Excerpt (linux/kernelsource.py) as a head linking to its place at that version and its
    numbered lines, the call and the deciding test marked; a call made through a helper (put_nsproxy
    on the way to free_nsproxy), the helper's lines below."""
    url = f"{ELIXIR}/v{e.version.split('-')[0]}/source/{e.file}" + (f"#L{e.line}" if e.line else "")
    lines, last = [], None
    for number, text, mark in e.lines:
        if last is not None and number != last + 1:
            lines.append('<span class="gap">\u2026</span>')
        klass = f' class="{_e(mark)}"' if mark else ""
        lines.append(f"<span{klass}><i>{number}</i>{_e(text.expandtabs(8))}</span>")
        last = number
    return (f'<p class="where">{what} <a href="{_e(url)}">{_e(e.text)}</a></p><pre>{"".join(lines)}</pre>'
            + (excerpt_html(e.via, f"through {_e(e.via.func)},") if e.via else ""))


@functools.lru_cache(maxsize=4096)  # a step's code is the same on every row of a session
def _code(func, caller, release, version):
    """The step's code from the kernel source this machine fetched: the line of its caller that
    called it, then its definition with the test that decided marked; "" where there is none here
    (the page says once how to fetch it)."""
    parts = []
    called = kernelsource.excerpt(func, release, "call", caller, version) if caller else None
    if called is not None and called.lines:
        parts.append(excerpt_html(called, f"called in <b>{_e(called.func)}</b>,"))
    defined = kernelsource.excerpt(func, release, kernel_version=version)
    if defined is not None and defined.lines:
        parts.append(excerpt_html(defined, "defined at"))
    return f'<div class="code">{"".join(parts)}</div>' if parts else ""


def _path_summary(results):
    """The path in one line: how much of the documented path was seen, and what differs."""
    expected = [s for s in results if s.expected]
    seen = sum(s.status == "observed" for s in expected)
    hidden = sum(s.status == "not observable" for s in expected)
    wrong = sum(s.failed for s in results)
    text = f"kernel path: {seen} of {len(expected)} documented steps observed"
    if hidden:
        text += f", {hidden} not observable here"
    return text + (f"; {wrong} differ{'s' if wrong == 1 else ''} from the notes" if wrong else "; as the notes say")


def _path_html(rec, tag, hooks, tracepoints, common=None, release=None, opened=True, version=None):
    """The record's kernel path in one view: the documented steps nested by their documented caller,
    each with what was observed of it (arguments, result, new or shared, µs, source line) or why it
    was not, and its code to open; then calls the notes do not list. None where the notes document
    no path for it. version: the recorded kernel's uname -v (its Debian revision)."""
    try:
        results = pathcheck.compare(rec, hooks, tracepoints, release)
    except (KeyError, TypeError, ValueError):
        return None
    rows, said, callers = [], set(), _callers(rec)
    for s in results:
        if not (s.expected or s.status in reports.SHOWN):
            continue
        why_not = "function layer off here (see top)" if common and s.reason == common else s.reason
        note = s.note or (s.reason if s.values and s.reason else "")
        note, said = ("" if note in said else note), said | {note}  # each why once: seven copies say it seven times
        code = _code(s.name, callers.get(s.name), release, version) if s.kind == "function" and release else ""
        rows.append(_step_html(s, tag, release, s.values or why_not, note, _explain_html(s.name) + code))
    if not rows:
        return None
    return (f'<details class="path"{" open" if opened else ""}><summary>{_e(_path_summary(results))}</summary>'
            f'<div class="steps">{_STEPS_HEAD}{"".join(rows)}</div></details>')


class _PathTables:
    """Each operation's kernel path: a distinct one is written once, at its first operation; later
    operations with the same path link to it; past PAGE_PATHS_MAX paths, none is written.
    cell(n, path) -> (what the operation's row says of its path, the path to write below it or "")."""

    def __init__(self):
        self.first = {}  # path HTML -> the operation it is written at
        self.left_out = 0

    def cell(self, n, path):
        if path is None:
            return "none documented", ""
        first = self.first.get(path)
        if first is not None:
            return f'as for <a href="#op-{first}">{first}</a>', ""
        if len(self.first) >= PAGE_PATHS_MAX:
            self.left_out += 1
            return f"not shown: the page holds {PAGE_PATHS_MAX} different kernel paths", ""
        self.first[path] = n
        return "below", path


# --- the timeline ------------------------------------------------------------------

def _tick_step(span, most=8):
    """A round step (1, 2 or 5 times a power of ten seconds) giving at most `most` ticks over span."""
    raw = span / most
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _tick_text(t, span):
    """A tick's time in the unit the whole axis reads best in: "+0.4 s", "+250 ms", "+20 \u00b5s"."""
    unit, scale = next((u, s) for u, s in (("s", 1), ("ms", 1e3), ("\u00b5s", 1e6)) if span * s >= 1 or u == "\u00b5s")
    return f"+{round(t * scale, 6):g} {unit}" if t else "0"


def _lanes(records):
    """(lane key of a record, [(key, label)] in order of first appearance): a lane per process, or
    past LANES_MAX processes per command name, the rarest past LANES_MAX names sharing one."""
    pids = {}
    for r in records:
        pids.setdefault(r.pid, r.comm)
    if len(pids) <= LANES_MAX:
        return (lambda r: r.pid), [(pid, f"{comm} {pid}") for pid, comm in pids.items()]
    counts = collections.Counter(r.comm for r in records)
    per_comm = collections.Counter()
    for pid, comm in pids.items():
        per_comm[comm] += 1
    kept = {c for c, _ in counts.most_common(LANES_MAX - 1)} if len(counts) > LANES_MAX else set(counts)
    other = f"{len(counts) - len(kept)} other commands"
    key = lambda r: r.comm if r.comm in kept else other  # noqa: E731
    order = list(dict.fromkeys(key(r) for r in records))
    return key, [(k, other if k == other else f"{k} ({per_comm[k]} process{'es' if per_comm[k] > 1 else ''})")
                 for k in order]


def timeline_svg(records, started, width=pagestyle.TIMELINE_WIDTH):
    """One lane per process, one mark per operation from its entry to its exit, each numbered as
    its row and linked to it; a round time axis from the session's start."""
    records = sorted(records, key=lambda r: r.ts)
    key, lanes = _lanes(records)
    row = {k: i for i, (k, _) in enumerate(lanes)}
    t0 = min([started] + [r.ts - r.duration_us / 1e6 for r in records]) if records else started
    span = max([r.ts - t0 for r in records] + [1e-3])
    step = _tick_step(span)
    span = math.ceil(span / step - 1e-9) * step  # the axis ends on a tick
    longest = max([len(label) for _, label in lanes] + [8])
    left, right, top, lane_h, bar_h = min(14 + 7 * longest, width // 3), 24, 26, 30, 20
    height = top + lane_h * max(len(lanes), 1) + 6
    scale = (width - left - right) / span
    x = lambda t: left + (t - t0) * scale  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="the operations over time, one lane per process">']
    for i, (_, label) in enumerate(lanes):
        y = top + i * lane_h
        if i % 2:
            out.append(f'<rect class="band" x="0" y="{y}" width="{width}" height="{lane_h}"/>')
        out.append(f'<text class="lane" x="4" y="{y + lane_h / 2 + 4:.0f}">{_e(label)}</text>')
    ticks = round(span / step)
    for i in range(ticks + 1):
        tx = left + i * step * scale
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"
        out.append(f'<line class="tick" x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height}"/>'
                   f'<text class="axis" x="{tx:.1f}" y="{top - 9}" text-anchor="{anchor}">{_tick_text(i * step, span)}</text>')
    marks = []  # (n, record, lane, x, width, y)
    for n, r in enumerate(records, 1):
        lane = row[key(r)]
        x0 = x(r.ts - r.duration_us / 1e6)
        marks.append((n, r, lane, x0, max(x(r.ts) - x0, 6), top + lane * lane_h + (lane_h - bar_h) / 2))
    following, after = {}, {}  # mark -> where the next mark of its lane starts
    for n, _, lane, x0, _, _ in reversed(marks):
        following[n] = after.get(lane, width)
        after[lane] = x0
    free = {}  # lane -> where its last mark or label ends: a label goes only where it overlaps nothing
    for n, r, lane, x0, w, y in marks:
        what = f"{n}. {r.comm} {r.pid}: {r.op} {fl.short(r.flags)} = {r.errno or r.ret} (+{r.ts - t0:.6f} s)"
        text = f"{n} {r.op}"
        room = 7 * len(text)  # 11px text: under 7 units a character
        label, end = "", x0 + w
        if x0 + w + 6 + room <= following[n]:
            label, end = f'<text class="num" x="{x0 + w + 3:.1f}" y="{y + bar_h - 6:.1f}">{_e(text)}</text>', end + 3 + room
        elif x0 - 6 - room >= max(free.get(lane, left), left):
            label = f'<text class="num" x="{x0 - 3:.1f}" y="{y + bar_h - 6:.1f}" text-anchor="end">{_e(text)}</text>'
        free[lane] = end
        out.append(f'<a href="#op-{n}"><rect id="mark-{n}" class="{"mark" if r.ok else "mark failed"}" x="{x0:.1f}" '
                   f'y="{y:.1f}" width="{w:.1f}" height="{bar_h}" rx="3" fill="{OP_COLOUR.get(r.op, "#777777")}">'
                   f'<title>{_e(what)}</title></rect>{label}</a>')
    out.append("</svg>")
    return "".join(out)


# --- the sections ------------------------------------------------------------------

def _csp_hash(text):
    """A CSP source for one inline <style> or <script>: the page runs no other inline code, and
    none an attacker could slip into a field (no 'unsafe-inline')."""
    import base64
    import hashlib  # here: ls and show import this module too, and need no hash
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSS = pagestyle.css(TYPE_COLOURS, OP_COLOUR)
_JS = pagestyle.SCRIPT


def _legend(classes, meanings=None):
    return '<ul class="legend">' + "".join(
        f'<li class="{k}"' + (f' title="{_e(meanings[name])}"' if meanings and name in meanings else "") + f">{_e(name)}</li>"
        for k, name in classes) + "</ul>"


def _graph_html(session, records, warn):
    """The graph as inline SVG, or a note saying why the page goes without it."""
    g = graph(records, snapshots_of(session))
    why = too_large(g)
    if why:
        warn(f"the page goes without the graph: {why}")
        return f'<p class="note">Not drawn: {_e(why)}.</p>'
    drawn = run_dot(dot_of(g, records, session.started))
    drawn = drawn[drawn.index("<svg"):]  # drop the XML prolog and doctype: inline SVG
    size = re.match(r'<svg width="([\d.]+)pt"', drawn)
    if size and float(size.group(1)) * 4 / 3 > GRAPH_FIT_PX:
        return ('<p class="note">This graph is wider than the page can show it at a readable size: it keeps its '
                'size and scrolls sideways.</p><div class="pane wide" tabindex="0" role="region" '
                f'aria-label="the graph, scrolling sideways">{drawn}</div>')
    return f'<div class="pane">{drawn}</div>'



def _inside_value(value):
    if isinstance(value, list):
        return ", ".join(_e(v) for v in value) or "(none)"
    return _e(str(value).lower() if isinstance(value, bool) else value)


def _inside_html(session):
    """What the demo's processes reported from inside their new namespaces (the end line's
    seen_inside, check/demo.py), or "" for a session that has none."""
    seen = (session.end or {}).get("seen_inside") or []
    if not seen:
        return ""
    views = []
    for view in seen:
        facts = "".join(f'<dt>{_e(k)}</dt><dd>{_inside_value(v)}'
                        + (f'<span class="gloss">{_e(INSIDE_MEANING[k])}</span>' if k in INSIDE_MEANING else "")
                        + "</dd>" for k, v in view["facts"].items())
        views.append(f'<div class="view"><h3>{_e(view["what"])}</h3><dl>{facts}</dl></div>')
    return ('<section id="inside"><h2>Seen from inside</h2><p class="note">What the process reported from inside '
            'its namespaces once the call returned: the proof, from where it stands, that they are new.</p>'
            f'<div class="views">{"".join(views)}</div></section>')


def _changed(r):
    """The namespaces an operation changed, made (open_tree, fsmount) or freed, one per line."""
    if r.ns and r.op == "free":
        lived = r.ns.get("lived_ns")
        return (f'<span>{_e(r.ns.get("type"))}:[{_e(r.ns.get("inode"))}] freed'
                + (f", lived {lived / 1e6:.3f} ms" if isinstance(lived, int) else "") + "</span>")
    if r.ns:
        return f'<span>{_e(r.ns.get("type"))}:[{_e(r.ns.get("inode"))}] made</span>'
    return "".join(f'<span><span class="t-{fl.ns_type_of_entry(e)}">{_e(e)}</span> {_e((r.ns_before or {}).get(e))} '
                   f"&rarr; {_e((r.ns_after or {}).get(e))}</span>" for e in r.changed) or "-"


def _operations(records, t0, session, warn):
    """The operations table: a row per operation (tbody id="op-N"), its kernel path below it."""
    k = session.kernel
    release, version = k.get("release"), k.get("version")
    tag = kernel_tag(release, version) if k else None
    hooks, tracepoints = pathcheck.recorded_hooks(session.availability)
    common = pathcheck.common_reason(session.availability)
    opened = len(records) <= PATHS_OPEN_MAX
    rows, paths = [], _PathTables()
    for n, r in enumerate(records, 1):
        said, path = paths.cell(n, _path_html(r, tag, hooks, tracepoints, common, release, opened, version))
        proc = r.proc_check["status"] if r.proc_check else "-"
        failed = "" if r.ok else ' class="failed"'
        rows.append(
            f'<tbody id="op-{n}"{failed}><tr><td><a href="#mark-{n}">{n}</a></td>'
            f"<td>+{r.ts - t0:.6f} s</td><td>{_e(r.comm)}<br>{_e(r.pid)}/{_e(r.tid)}</td><td>{_op(r.op)}</td>"
            f"<td>{_flags(r)}</td><td>{_e(r.errno or r.ret)}</td><td>{_e(r.child_pid or '-')}</td>"
            f"<td>{_changed(r)}</td><td>{_e(proc)}</td><td>{said}</td></tr>"
            + (f'<tr class="path"><td colspan="10">{path}</td></tr>' if path else "") + "</tbody>")
    if paths.left_out:
        warn(f"the page shows {PAGE_PATHS_MAX} different kernel paths; those of {paths.left_out} more operations "
             "are left out (`nstrace show --json` has every record's kernel_path; or narrow the session with "
             f"{NARROW})")
    return ('<table class="ops"><thead><tr><th>#</th><th>time</th><th>process</th><th>op</th><th>flags</th>'
            '<th>ret</th><th>child</th><th>namespaces changed</th><th>/proc</th><th>kernel path</th></tr></thead>'
            + "".join(rows) + "</table>")


def _head(session, records):
    """The session's facts: where, when, what kernel, how much of it nstrace could see."""
    k = session.kernel
    tag = kernel_tag(k.get("release"), k.get("version")) if k else None
    functions = [a for a in session.availability if a.get("layer") == "function"]
    common = pathcheck.common_reason(session.availability)
    attached = sum(1 for a in functions if a["attached"])
    t0 = session.started
    facts = [("recorded on", _e((session.header or {}).get("host", "?"))),
             ("kernel", _e(f"{k.get('release', '?')} ({k.get('version', '')})" if k else "unknown (no header)")),
             ("kernel source", f'<a href="{_e(ELIXIR)}/{_e(tag)}/source">{_e(tag)} on elixir.bootlin.com</a>' if tag else "-"),
             ("nstrace", _e((session.header or {}).get("nstrace", "?"))),
             ("from", _e(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)))),
             ("duration", _e(f"{session.ended - t0:.3f} s")),
             ("operations", _e(len(records))),
             ("kernel-function layer", _e((f"{attached} of {len(functions)} functions attached" if functions else "unknown")
                                          + (f": {common}" if common else "")))]
    return '<dl class="session">' + "".join(f"<dt>{a}</dt><dd>{b}</dd>" for a, b in facts) + "</dl>"


def html_page(session, records=None, warn=None):
    """The whole page as text: the session's facts, what the demo saw from inside, the timeline, the
    graph (inline SVG), the operations with their kernel paths.

    warn(message): what the page leaves out (the graph of a large session, kernel paths past
    PAGE_PATHS_MAX); the page says it too."""
    warn = warn or (lambda message: None)
    records = sorted(session.records if records is None else records, key=lambda r: r.ts)
    k = session.kernel
    graph_html = _graph_html(session, records, warn)
    inside = _inside_html(session)
    no_source = kernelsource.missing_line(k["release"]) if k.get("release") else ""
    if no_source:
        warn(no_source)
    title = f"nstrace session: {(session.header or {}).get('host', '')} {k.get('release', '')}".strip()
    ops_legend = _legend([(f"o-{op}", op) for op in OP_COLOUR] + [("failed", "failed call")], OP_MEANING)
    types_legend = _legend((f"t-{t}", t) for t in TYPE_COLOURS)
    toc = "".join(f'<a href="#{i}">{t}</a>' for i, t in (("inside", "Seen from inside"), ("timeline", "Timeline"),
                                                          ("graph", "Processes and namespaces"),
                                                          ("operations", "Operations")) if i != "inside" or inside)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; img-src data:">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<header><h1>{_e(title)}</h1>{_head(session, records)}<nav class="toc">{toc}</nav></header>
{inside}
<section id="timeline"><h2>Timeline</h2>
<p class="note">Each operation from its call to its return, numbered as in the table below (follow a mark to its row).</p>
{ops_legend}{timeline_svg(records, session.started)}</section>
<section id="graph"><h2>Processes and namespaces</h2>
<p class="note edges">Each edge is numbered by its operation: <b>created</b>, a namespace born of the call (its
CLONE_NEW* flag); <b>entered</b>, a child born into a namespace its parent made for its children;
<b>joined</b>, a namespace that existed, by setns; <b>died</b> (grey, ending in a bar), a namespace to the
dashed box of its death, which says how long it lived; a bold edge joins a parent to the child its clone made;
a dotted one, a namespace to the user namespace that owns it. A namespace box says the edges of its birth and
death; an inode the kernel gave again after a death is a new box.</p>
{types_legend}{graph_html}</section>
<section id="operations"><h2>Operations</h2>
<p class="note">Each operation, the namespaces it changed, what /proc showed of it, and its kernel path: the
steps kernel-notes/paths.toml documents, each with what this kernel let nstrace see of it. A step opens
(&#9656;) on its code: the line of its caller that called it (<span class="call">&gt;</span>), and its
definition, the test that decided what it did marked (<span class="decides">*</span>).</p>
{f'<p class="note">{_e(no_source)}.</p>' if no_source else ""}
<input id="filter" type="search" placeholder="filter operations" aria-label="filter operations">
{_operations(records, session.started, session, warn)}</section>
<script>{_JS}</script>
</body></html>
"""
