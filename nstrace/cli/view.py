"""The viewing commands: ``nstrace ls``, ``nstrace show FILE``, ``nstrace render FILE``.

None of them loads BPF: ``show`` and
``render`` read a recorded session on any machine, without root; ``ls``
reads /proc and sees everything only as root (like lsns).
"""

import json
import os

import click
from tabulate import tabulate

from ..errors import UsageError
from ..kernel import flags as fl
from ..linux import nsmap
from ..record import jsonline
from ..record.filters import Filter
from ..session import reader, replay
from ..view import excerpts, render, reports, table, terminal
from .console import status
from .params import Pid, file_name, filter_options


def _types(values):
    return tuple(fl.parse_ns_types(",".join(values))) if values else ()


# --- ls ------------------------------------------------------------------------------

def _cell(value):
    return "-" if value is None else value


def _ls_row(n):
    who = n.command if n.nprocs else "(" + "; ".join(n.held_by[:2]) + (" ..." if len(n.held_by) > 2 else "") + ")"
    return [n.inode, n.type, _cell(n.ns_id), n.nprocs, _cell(n.pid), _cell(n.owner), _cell(n.parent),
            nsmap.owner_label(n), (who or "")[:60]]


def _label(n):
    procs = f"{n.nprocs} process{'es' if n.nprocs > 1 else ''}, pid {n.pid} {n.comm}" if n.nprocs else "; ".join(n.held_by) or "no process"
    ns_id = f" id {n.ns_id}" if n.ns_id else ""
    box = f" [{nsmap.container_label(n.container)}]" if n.container else ""
    return f"{n.type}:[{n.inode}]{ns_id} {procs}{box}"


def _tree_lines(forest):
    lines = []

    def walk(n, kids, prefix, connector):
        lines.append(prefix + connector + _label(n))
        inner = prefix + {"": "", "├─ ": "│  ", "└─ ": "   "}[connector]
        for i, (child, grandchildren) in enumerate(kids):
            walk(child, grandchildren, inner, "└─ " if i == len(kids) - 1 else "├─ ")
    for n, kids in forest:
        walk(n, kids, "", "")
    return lines


def _tree_json(forest):
    return [dict(n.to_json(), children=_tree_json(kids)) for n, kids in forest]


@click.command("ls")
@click.option("--tree", is_flag=True, help="Show user-namespace ownership and the PID-namespace hierarchy.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--type", "types", multiple=True, help="Only these namespace types (repeat or comma-separate).")
@click.option("--pid", type=Pid(), help="Only the namespaces of this process.")
def ls_command(tree, as_json, types, pid):
    """List every namespace on the system: type, inode, ns_id, processes, owner, parent, container."""
    snap = nsmap.snapshot()
    chosen = snap.select(_types(types), pid)
    if snap.unreadable and not nsmap.sees_everything():
        # Root sees every process the kernel shows to anyone; what it still cannot read a security
        # module hides (pid 1 on our build machines): the same on every run, so said only in --json's
        # "unreadable", as lsns says nothing. Without root, other users' processes are hidden: said.
        status(f"{len(snap.unreadable)} processes could not be read (pid {', '.join(map(str, snap.unreadable[:5]))}"
                f"{' ...' if len(snap.unreadable) > 5 else ''}): their namespaces are not counted; run as root "
                "to see them")
    if as_json:
        doc = {"namespaces": [n.to_json() for n in chosen], "unreadable": snap.unreadable, "taken": snap.taken}
        if tree:
            context = nsmap.with_ancestors(chosen, snap.namespaces)
            doc["user_tree"] = _tree_json(nsmap.tree(context, "owner"))
            doc["pid_tree"] = _tree_json(nsmap.tree(context, "parent"))
        click.echo(json.dumps(doc, indent=1))
        return
    if tree:
        context = nsmap.with_ancestors(chosen, snap.namespaces)
        click.echo("User namespaces and what they own:")
        click.echo(terminal.lines("\n".join(_tree_lines(nsmap.tree(context, "owner")))))
        click.echo("")
        click.echo("PID namespaces:")
        click.echo(terminal.lines("\n".join(_tree_lines(nsmap.tree(context, "parent")))) or "(none)")
        return
    click.echo(terminal.lines(tabulate([_ls_row(n) for n in chosen],
                                       headers=["NS", "TYPE", "NS_ID", "NPROCS", "PID", "OWNER", "PARENT", "CONTAINER",
                                                "COMMAND"], tablefmt="plain", disable_numparse=True)))


# --- show and render ---------------------------------------------------------------

def _load_selected(file, pid, comm, ops, types, container, ns):
    filt = Filter.parse(comm=comm, ops=ops, types=types, container=container, ns=ns)
    sess = reader.load(file)
    for warning in sess.warnings:
        status(f"{file}: {warning}")
    shown, filtered = replay.select(sess, filt, pid=pid)
    return sess, shown, filtered


@click.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line on stdout; status on stderr.")
@click.option("--source", "with_source", is_flag=True,
              help="Under each operation, its kernel path with each step's code: the line that called it and "
                   "its definition, the deciding test marked (Debian's source of the recorded kernel, "
                   "fetched once as root).")
@click.option("--explain", is_flag=True,
              help="Under each step of a kernel path, what the function does and the kernel-notes paragraph "
                   "that explains its concept (--json always carries them: `does`, `notes`).")
def show_command(file, pid, comm, ops, types, container, ns, as_json, with_source, explain):
    """Replay a recorded session (watch --record FILE) with watch's filters and formats."""
    if with_source and as_json:
        raise UsageError("--source is for the table, not --json")
    if explain and as_json:
        raise UsageError("--explain is for the table: --json always carries each step's `does` and `notes`")
    sess, shown, filtered = _load_selected(file, pid, comm, ops, types, container, ns)
    status(sess.describe())
    kernel = sess.kernel
    if with_source and not kernel.get("release"):
        status(f"{file}: no kernel named (no header): its source cannot be chosen; showing the path without it")
        with_source = False
    if with_source:
        _source_for(kernel.get("release"))
    stream = table.Table(containers=any(table.has_container(r) for r in shown), explain=explain)
    if not as_json:
        click.echo(stream.header())
        if with_source:
            click.echo(f"({excerpts.LEGEND})")
    for rec in shown:
        click.echo(jsonline.json_line(rec) if as_json else stream.row(rec))
        if with_source and rec.kernel_path:
            click.echo("\n".join(excerpts.path_lines(rec, kernel.get("release"), kernel.get("version"))))
    summary = replay.summary(sess, shown, filtered)
    if as_json:
        status("summary " + jsonline.json_summary(summary))
    else:
        click.echo("")
        click.echo(reports.summary_table(summary))


def _source_for(release):
    """The kernel source a view of release shows: fetched now if root can (a status line each step),
    else one line saying how to get it."""
    from ..linux import kernelsource
    if not kernelsource.missing(release):
        return
    why = ""
    if os.geteuid() == 0:
        from ..errors import LabError
        from .source import fetch
        try:
            for series in kernelsource.missing(release):
                fetch(series)
            return
        except LabError as e:  # offline, or the suite moved on: the view goes on without the code
            why = f" (fetching it failed: {e})"
    status(kernelsource.missing_line(release) + why)


@click.command("render")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(render.FORMATS), default="html", show_default=True,
              help="svg: the process/namespace graph; html: a self-contained page; perfetto: Trace Event JSON.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), callback=file_name,
              help="Write here (default: stdout).")
@filter_options
def render_command(file, fmt, out, pid, comm, ops, types, container, ns):
    """Draw a recorded session: SVG graph, HTML page with timeline and kernel paths, or a Perfetto trace."""
    sess, shown, _ = _load_selected(file, pid, comm, ops, types, container, ns)
    text = render.write(sess, fmt, out, shown, warn=status)
    if text is not None:
        click.echo(text, nl=False)
    else:
        status(f"wrote {fmt} of {len(shown)} operations to {out}")
