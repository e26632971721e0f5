"""The session as a graph of processes and namespaces, laid out by Graphviz ``dot``: the SVG of
`render --format svg`, and the picture in the HTML page.

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

Large sessions (a watch --record of a busy machine): dot is given at most GRAPH_MAX nodes and edges
and DOT_TIMEOUT_S seconds; past GRAPH_MAX the SVG is refused (README: render and large sessions).
"""

import shutil
import subprocess

from ..errors import RenderError, UsageError
from ..kernel import flags as fl
from .table import death_lines, lifetime
from .terminal import printable

# dot's layout time grows faster than linearly with the graph (rank assignment and crossing
# minimisation; edge labels are nodes to it). Measured on a 2-core build machine shared with other
# work: 4,000 nodes and edges took 1.1-1.3 s (one process unsharing uts 2,000 times) and 1.8-2.3 s
# (800 forked children each unsharing uts and ipc); 8,000 took 3.8-5.4 s and 11-37 s. Above this the
# SVG is refused and the HTML page goes without the graph (about 3 MB of SVG at this size); a
# learner's session is far below it (a demo: a dozen nodes and edges).
GRAPH_MAX = 4000
NARROW = "--pid, --comm, --op, --type, --container or --ns"
# dot is stopped after this long in any case: a graph under GRAPH_MAX takes a few seconds at most
DOT_TIMEOUT_S = 30

# one colour per namespace type and per op, shared by the graph, the timeline and the page
TYPE_COLOURS = {"mnt": "#8dd3c7", "uts": "#ffffb3", "ipc": "#bebada", "pid": "#fb8072",
                "net": "#80b1d3", "user": "#fdb462", "cgroup": "#b3de69", "time": "#fccde5"}
OP_COLOURS = {"clone": "#1f77b4", "clone3": "#17becf", "unshare": "#2ca02c", "setns": "#d62728"}
DEATH_COLOUR = "#555555"




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
    """The session as {"processes": {id: {...}}, "namespaces": {id: {...}}, "deaths": {id: {...}},
    "edges": [...]}, edges in time order. A namespace born in the session has "born" (the edge number
    that made it), one that died "died" (the death's)."""
    procs = _Processes()
    namespaces, deaths, edges = {}, {}, []

    current = {}  # (type, inode, ns_id) -> the node of the namespace that has it now

    def ns(ns_type, inode, ns_id):
        """The node of the namespace with this identity now: after a death, an inode (where there is no
        ns_id, before 6.18) is the next namespace's, another node (kernel-notes/lifetime-and-identity.md)."""
        key = (ns_type, inode, ns_id)
        node = current.get(key)
        if node is None or namespaces[node].get("died"):
            base = ns_node_id(ns_type, inode, ns_id)
            node = base if base not in namespaces else f"{base}-{sum(k == key for k in _keys(namespaces)) + 1}"
            namespaces[node] = {"type": ns_type, "inode": inode, "ns_id": ns_id}
            current[key] = node
        return node

    for n, rec in enumerate(sorted(records, key=lambda r: r.ts), 1):
        if rec.op == "free":
            if rec.ns and rec.ns.get("type") in fl.NS_TYPES:
                _death(n, rec, ns(rec.ns["type"], rec.ns["inode"], rec.ns.get("ns_id")), namespaces, deaths, edges)
            continue  # its task is not a mover: no process node for a kworker or an interrupted task
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
            if kind == "created":
                namespaces[node].setdefault("born", n)
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
    return {"processes": procs.nodes, "namespaces": namespaces, "deaths": deaths, "edges": edges}


# A death node says in a few words what the table says in lines (table.death_lines: its tooltip).
_HELD = {"exit": "exit of {task}", "switch": "nsproxy switch of {task}", "umount": "umount by {task}",
         "close": "fd close by {task}"}


def _death_label(rec):
    context, holder = rec.ns.get("context"), rec.ns.get("held_by")
    task = f"{rec.comm} {rec.pid}"
    lines = ["freed"]
    if context == "softirq":
        lines.append("in an RCU callback (softirq)")
    elif context in ("kworker", "kthread"):
        lines.append(f"in {rec.comm} (pid {rec.pid})")
    if holder:
        lines.append("held last: " + _HELD.get(holder, holder).replace("{task}", task))
    elif context:
        lines.append("held last: not seen")
    return "\n".join(lines)


def _keys(namespaces):
    return ((n["type"], n["inode"], n["ns_id"]) for n in namespaces.values())


def _death(n, rec, node, namespaces, deaths, edges):
    """A free record: the namespace's death node and its "died" edge."""
    death = f"death-{node}-{n}"
    namespaces[node]["died"] = n
    context = rec.ns.get("context")
    deaths[death] = {"ns": node, "lived_ns": rec.ns.get("lived_ns"), "context": context,
                     "held_by": rec.ns.get("held_by"), "label": _death_label(rec), "text": death_lines(rec)}
    edges.append({"n": n, "from": node, "to": death, "kind": "died", "op": "free", "ts": rec.ts,
                  "lived_ns": rec.ns.get("lived_ns")})


def _q(text):
    """A DOT double-quoted string, shown as it is: dot reads backslash escapes (\\N, \\G ...) and
    HTML entities (&#27; would put a raw ESC into the SVG) in labels, so both are escaped, and
    control characters arrive as \\xNN text. A newline stays a line break."""
    lines = (printable(line) for line in str(text).split("\n"))
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;")
                            for line in lines) + '"'


def dot_source(records, snapshots=(), started=None):
    """The DOT text of :func:`graph` (dot lays it out top to bottom, in time order)."""
    return dot_of(graph(records, snapshots), records, started)


def graph_size(g):
    """What dot's time grows with: the graph's nodes and edges (each edge label is a node to dot too)."""
    return len(g["processes"]) + len(g["namespaces"]) + len(g.get("deaths", ())) + len(g["edges"])


def too_large(g):
    """Why dot will not be given this graph, or None: it is over GRAPH_MAX."""
    size = graph_size(g)
    if size <= GRAPH_MAX:
        return None
    return (f"the graph has {size} nodes and edges, more than render lays out ({GRAPH_MAX}): "
            f"narrow the session with {NARROW}")


def dot_of(g, records, started):
    t0 = started if started is not None else min((r.ts for r in records), default=0.0)
    out = ["digraph nstrace {", '  graph [rankdir=TB, fontname="Helvetica", fontsize=10, nodesep=0.3, ranksep=0.45];',
           '  node [fontname="Helvetica", fontsize=10];', '  edge [fontname="Helvetica", fontsize=9];']
    for node, p in g["processes"].items():
        label = f"{p['comm']}\npid {p['pid']}"
        out.append(f"  {_q(node)} [id={_q(node)}, shape=box, style=rounded, "
                   f"label={_q(label)}, tooltip={_q('process ' + str(p['pid']))}];")
    for node, n in g["namespaces"].items():
        label = f"{n['type']}:[{n['inode']}]" + (f"\nns_id {n['ns_id']}" if n["ns_id"] else "")
        life = [f"born ({n['born']})" if n.get("born") else "", f"died ({n['died']})" if n.get("died") else ""]
        label += "\n" + ", ".join(x for x in life if x) if any(life) else ""
        out.append(f"  {_q(node)} [id={_q(node)}, shape=ellipse, style=filled, fillcolor={_q(TYPE_COLOURS.get(n['type'], '#dddddd'))}, "
                   f"label={_q(label)}, tooltip={_q(n['type'] + ' namespace ' + str(n['inode']))}];")
    for node, d in g.get("deaths", {}).items():
        out.append(f"  {_q(node)} [id={_q(node)}, shape=box, style=\"dashed,rounded\", color={_q(DEATH_COLOUR)}, "
                   f"fontcolor={_q(DEATH_COLOUR)}, label={_q(d['label'])}, tooltip={_q(chr(10).join(d['text']))}];")
    styles = {"clone": 'style=bold, color="#555555"', "died": f'color="{DEATH_COLOUR}", arrowhead=tee', "created": 'color="#2ca02c"', "joined": 'color="#d62728", style=dashed',
              "entered": 'color="#1f77b4", style=dashed', "failed": 'color="#999999", style=dotted',
              "owner": 'color="#bbbbbb", style=dotted, arrowhead=empty, constraint=false'}
    for i, e in enumerate(g["edges"]):
        if e["kind"] == "owner":
            out.append(f"  {_q(e['from'])} -> {_q(e['to'])} [id={_q(f'edge-owner-{i}')}, {styles['owner']}, tooltip=\"owned by\"];")
            continue
        what = e["kind"] if e["kind"] != "failed" else f"{e['op']} {e['errno']}"
        label = f"{e['n']}. {what} ({e['op']}) +{e['ts'] - t0:.3f}s" if e["kind"] != "failed" else f"{e['n']}. {what}"
        if e["kind"] == "died":
            label = f"{e['n']}. died +{e['ts'] - t0:.3f}s, " + lifetime({"lived_ns": e.get("lived_ns")})
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


def snapshots_of(session):
    return [s for s in (session.snapshot("end"), session.snapshot("start")) if s]


def svg(session, records=None):
    """The session graph as an SVG document (text); UsageError if it is over GRAPH_MAX."""
    records = session.records if records is None else records
    g = graph(records, snapshots_of(session))
    why = too_large(g)
    if why:
        raise UsageError(f"{why}; or render it --format html (without the graph) or perfetto")
    return run_dot(dot_of(g, records, session.started))
