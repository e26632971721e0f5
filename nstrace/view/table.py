"""The streaming table: one record a line, as watch and show print them, the record's kernel path
under it where it has one.

Every line for a terminal goes through :func:`printable` (view/terminal.py) on its way out: a
record's comm is escaped where it is decoded (linux.comm.safe_comm), but a table
also shows what a session file from elsewhere says, and no control byte
(C0, C1, ESC, DEL) or bidirectional override may reach the terminal whatever
field it came in. JSON output escapes them itself (json.dumps: \\uNNNN).
"""

import time

from ..kernel import flags as fl
from .terminal import printable

# (header, width): fixed so that rows streamed one at a time line up.
COLUMNS = (
    ("TIME", 12), ("COMM", 15), ("PID", 7), ("TID", 7), ("OP", 7), ("FLAGS", 32),
    ("RET", 6), ("CHILD", 7), ("NSPROXY", 17), ("PROC", 10),
)


def tabulate(*args, **kw):
    # Imported on first use: it is heavy to import, and `watch --json` never needs it.
    from tabulate import tabulate as _tabulate
    return _tabulate(*args, **kw)


def fit(text, width):
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "~"


FLAGS_COLUMN = 5
GAP = "  "  # between columns, as tabulate's "plain" format has it


def wrap(text, width):
    """text in lines of at most width characters, broken after a '|' or at a space where it can
    be (flag names stay whole), else hard."""
    text = str(text)
    out = []
    while len(text) > width:
        cut = max(text.rfind("|", 0, width) + 1, text.rfind(" ", 0, width + 1))
        if cut <= 0:
            cut = width
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip(" ")
    return out + [text]


def _row(cells):
    """One table row: every cell cut to its column's width, but the flags, which are never cut:
    what does not fit goes on in the same column on the lines below."""
    fitted = [fit(c, w) for c, (_, w) in zip(cells, COLUMNS)]
    flags = wrap(cells[FLAGS_COLUMN], COLUMNS[FLAGS_COLUMN][1]) if len(cells) > FLAGS_COLUMN else [""]
    if len(cells) > FLAGS_COLUMN:
        fitted[FLAGS_COLUMN] = flags[0]
    lines = [GAP.join(c.ljust(w) for c, (_, w) in zip(fitted, COLUMNS)).rstrip()]
    indent = sum(w + len(GAP) for _, w in COLUMNS[:FLAGS_COLUMN])
    lines += [" " * indent + more for more in flags[1:]]
    return "\n".join(lines)


def header(containers=False):
    return _row([h for h, _ in COLUMNS]) + (GAP + "CONTAINER" if containers else "")


def flags_cell(rec):
    if rec.op == "setns":
        nstype = fl.short(rec.flags) if rec.raw_flags else "0"
        target = rec.target or {}
        if target.get("kind") == "nsfs":
            return f"{nstype} fd={target.get('fd')}:{target.get('type')}"
        if target.get("kind") == "pidfd":
            return f"{nstype} pidfd={target.get('pid')}"
        return f"{nstype} fd={target.get('fd')}:{target.get('kind')}"
    return fl.short(rec.flags)


def ret_cell(rec):
    return rec.errno if rec.errno else str(rec.ret)


def nsproxy_cell(rec):
    before, after = rec.nsproxy.get("before"), rec.nsproxy.get("after")
    if not after or before == after:
        return before or "-"
    return f"{before}>{after}"


# --- a death (op free) ------------------------------------------------------------------------

# What a free ran in (the record's ns.context), after the task where it has one.
CONTEXTS = {"task": "its own call", "softirq": "an RCU callback (softirq): no task is its caller",
            "kworker": "a workqueue worker: deferred work, no caller",
            "kthread": "a kernel thread (RCU callbacks offloaded): no caller"}
# What held it last (ns.held_by), best effort: what the freeing task was inside when it dropped it.
HOLDERS = {"exit": "{task}, which exited",
           "switch": "an nsproxy that {task} replaced or discarded (setns, unshare, a failed clone)",
           "umount": "a bind mount of its ns file, released by the umount of {task}",
           "close": "an open ns file, closed by {task}"}


def lifetime(ns_):
    """How long a namespace lived, as text: "lived 2.071 s", or that its birth was before the trace
    (or unseen: the function layer's table of births forgot it, or cannot see births here)."""
    lived = ns_.get("lived_ns")
    if not isinstance(lived, int):
        return "born before the trace (or its birth was not seen)"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if lived >= scale:
            return f"lived {lived / scale:.3f} {unit}"
    return f"lived {lived} ns"


def death_lines(rec):
    """A free record's death in plain text lines (no escaping): which namespace, how long it lived,
    what the free ran in, and what held it last where nstrace saw that. Empty for other records."""
    ns_ = rec.ns or {}
    if rec.op != "free" or not ns_:
        return []
    what = f"died: {ns_.get('type')}:[{ns_.get('inode')}]" + (f" ns_id {ns_['ns_id']}" if ns_.get("ns_id") else "")
    lines = [f"{what}, {lifetime(ns_)}"]
    context = ns_.get("context")
    task = f"{rec.comm} (pid {rec.pid})"
    if context:
        where = CONTEXTS.get(context, context)
        lines.append(f"ran in {where}" if context == "softirq" else f"ran in {task}, {where}")
    holder = ns_.get("held_by")
    if holder:
        said = HOLDERS.get(holder, f"{holder}: {{task}}").replace("{task}", task)
        lines.append(f"held last by {said} (best effort: as nstrace saw it)")
    elif context:
        lines.append("held last by: not seen (its last reference was dropped before this free, out of nstrace's view)")
    return lines


def caller_cells(rec):
    """COMM, PID and TID: a free in a softirq ran in no task of its own (the one it interrupted is not
    the record's)."""
    if rec.op == "free" and (rec.ns or {}).get("context") == "softirq":
        return "(softirq)", "-", "-"
    return rec.comm, rec.pid, rec.tid


# --- the nsproxy ----------------------------------------------------------------------------------

# The members of struct nsproxy, by the /proc/<pid>/ns entry each fills (include/linux/nsproxy.h,
# 5.10.262 to 7.2.13): pid is the task's own (task_active_pid_ns), user its cred's.
NSPROXY_ENTRIES = ("mnt", "uts", "ipc", "pid_for_children", "net", "cgroup", "time", "time_for_children")


def nsproxy_members(rec):
    """The nsproxy's members before and after as one text line, or None: which namespace each slot
    points to, "old -> new" where the operation changed it (a clone: the parent's, then the child's)."""
    before, after = rec.ns_before or {}, rec.ns_after or {}
    ids = rec.nsproxy or {}
    if not (before or after) or not (ids.get("before") or ids.get("after")):
        return None
    slots = []
    for entry in NSPROXY_ENTRIES:
        old, new = before.get(entry), after.get(entry)
        if old is None and new is None:
            continue
        slots.append(f"{entry} {old}" if not after or old == new or new is None else f"{entry} {old} -> {new}")
    head = ids.get("before") or "-"
    if ids.get("after") and ids.get("after") != ids.get("before"):
        head += f" -> {ids['after']}"
    return f"nsproxy {head}: " + ", ".join(slots)


def proc_cell(rec):
    return rec.proc_check["status"] if rec.proc_check else "-"


def has_container(rec):
    return bool(rec.container or (rec.target or {}).get("container"))


def container_cell(rec):
    """The caller's container; a setns into another container's namespace adds it: "-" > docker:..."""
    from ..linux.containers import container_label
    caller = container_label(rec.container)
    target = (rec.target or {}).get("container")
    return caller if not target or target == rec.container else f"{caller}>{container_label(target)}"


class Table:
    """The streaming table, with a CONTAINER column (last, never cut) once any record has one:
    from the start if asked (show knows all its records), else from the first such record on,
    under a header line of its own."""

    def __init__(self, containers=False, explain=False):
        self.containers = containers
        self.explain = explain

    def header(self):
        return header(self.containers)

    def row(self, rec):
        if self.containers or not has_container(rec):
            return row(rec, containers=self.containers, explain=self.explain)
        self.containers = True
        return self.header() + "\n" + row(rec, containers=True, explain=self.explain)


EXPLAIN_WIDTH = 100  # an explanation's lines, wrapped: a terminal's width, not the table's


def explained(lines, indent):
    """--explain's lines under a row (callpath.explain_lines), each wrapped under its label."""
    import textwrap
    out = []
    for line in lines:
        label = line.split(": ", 1)[0] + ": "
        out += textwrap.wrap(line, EXPLAIN_WIDTH, initial_indent=indent, subsequent_indent=indent + " " * len(label),
                             break_on_hyphens=False)
    return out


def path_table(rec, indent="    ", explain=False):
    """The record's kernel path, one call a line, nested by call depth: arguments, result (new or
    shared for a copy_*), µs and source line; a why under a call that needs one, and with `explain`
    what the function does and the kernel-notes paragraph of its concept."""
    from ..study import callpath  # only records from the function layer get here
    rows = callpath.path_rows(rec)
    table = [["  " * depth + text, "-" if us is None else f"{us:.1f}", source] for depth, text, _, source, us, _ in rows]
    text = tabulate(table, headers=["kernel path", "µs", "source"], tablefmt="plain", disable_numparse=True,
                    colalign=("left", "right", "left"), preserve_whitespace=True).split("\n")
    out, said, read = [indent + text[0].rstrip()], set(), set()
    for line, (depth, _, why, _, _, call) in zip(text[1:], rows):
        out.append(indent + line.rstrip())
        under = indent + "  " * (depth + 1)
        if why and why not in said:  # under its call, outside the table: a long why must not widen every row
            out.append(under + f"/* {why} */")
            said.add(why)  # once: the seven copy_* of one call may all have the same
        if explain:
            out += explained(callpath.explain_lines(call.func, read), under + "| ")
    return out


def row(rec, path=True, containers=False, explain=False):
    """The record as one table line plus indented detail lines (its kernel path with `path`, each
    step explained with `explain`); the CONTAINER cell last with `containers`."""
    stamp = time.strftime("%H:%M:%S", time.localtime(rec.ts)) + f".{int(rec.ts * 1000) % 1000:03d}"
    line = _row([stamp, *caller_cells(rec), rec.op, flags_cell(rec), ret_cell(rec),
                 rec.child_pid or "-", nsproxy_cell(rec), proc_cell(rec)])
    if containers:
        first, _, rest = line.partition("\n")
        first = first.ljust(sum(w + len(GAP) for _, w in COLUMNS)) + container_cell(rec)
        line = first + ("\n" + rest if rest else "")
    details = ["    " + text for text in death_lines(rec)]
    for entry in rec.changed:
        details.append(f"    {entry:<17} {(rec.ns_before or {}).get(entry)} -> {(rec.ns_after or {}).get(entry)}")
    members = nsproxy_members(rec)
    if members and rec.changed:
        details.append("    " + members)
    if rec.kernel_path and path:
        details += path_table(rec, explain=explain)
    if rec.proc_check and rec.proc_check["status"] == "mismatch":
        for entry, d in (rec.proc_check.get("diff") or {}).items():
            details.append(f"    /proc differs: {entry} kernel {d['kernel']} /proc {d['proc']}")
    return "\n".join(printable(text) for text in line.split("\n") + details)
