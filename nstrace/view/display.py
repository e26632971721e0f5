"""How records look: the streaming table, JSON lines, summaries, check and demo reports.

Every line for a terminal goes through :func:`printable` (view/terminal.py) on its way out: a
record's comm is escaped where it is decoded (linux.comm.safe_comm), but a table
also shows what a session file from elsewhere says, and no control byte
(C0, C1, ESC, DEL) or bidirectional override may reach the terminal whatever
field it came in. JSON output escapes them itself (json.dumps: \\uNNNN).
"""

import dataclasses
import time

from ..kernel import flags as fl
from .terminal import lines, printable

# (header, width): fixed so that rows streamed one at a time line up.
COLUMNS = (
    ("TIME", 12), ("COMM", 15), ("PID", 7), ("TID", 7), ("OP", 7), ("FLAGS", 32),
    ("RET", 6), ("CHILD", 7), ("NSPROXY", 17), ("PROC", 10),
)


def tabulate(*args, **kw):
    # Imported on first use: it is heavy to import, and `watch --json` never needs it.
    from tabulate import tabulate as _tabulate
    return _tabulate(*args, **kw)


def _fit(text, width):
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
    fitted = [_fit(c, w) for c, (_, w) in zip(cells, COLUMNS)]
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

    def __init__(self, containers=False):
        self.containers = containers

    def header(self):
        return header(self.containers)

    def row(self, rec):
        if self.containers or not has_container(rec):
            return row(rec, containers=self.containers)
        self.containers = True
        return self.header() + "\n" + row(rec, containers=True)


def path_table(rec, indent="    "):
    """The record's kernel path, one call a line, nested by call depth: arguments, result (new or
    shared for a copy_*), µs and source line; a why under a call that needs one."""
    from ..study import callpath  # only records from the function layer get here
    rows = callpath.path_rows(rec)
    table = [["  " * depth + text, "-" if us is None else f"{us:.1f}", source] for depth, text, _, source, us, _ in rows]
    text = tabulate(table, headers=["kernel path", "µs", "source"], tablefmt="plain", disable_numparse=True,
                    colalign=("left", "right", "left"), preserve_whitespace=True).split("\n")
    out, said = [indent + text[0].rstrip()], set()
    for line, (depth, _, why, _, _, _) in zip(text[1:], rows):
        out.append(indent + line.rstrip())
        if why and why not in said:  # under its call, outside the table: a long why must not widen every row
            out.append(indent + "  " * (depth + 1) + f"/* {why} */")
            said.add(why)  # once: the seven copy_* of one call may all have the same
    return out


def row(rec, path=True, containers=False):
    """The record as one table line plus indented detail lines (its kernel path with `path`); the
    CONTAINER cell last with `containers`."""
    stamp = time.strftime("%H:%M:%S", time.localtime(rec.ts)) + f".{int(rec.ts * 1000) % 1000:03d}"
    line = _row([stamp, rec.comm, rec.pid, rec.tid, rec.op, flags_cell(rec), ret_cell(rec),
                 rec.child_pid or "-", nsproxy_cell(rec), proc_cell(rec)])
    if containers:
        first, _, rest = line.partition("\n")
        first = first.ljust(sum(w + len(GAP) for _, w in COLUMNS)) + container_cell(rec)
        line = first + ("\n" + rest if rest else "")
    details = []
    for entry in rec.changed:
        details.append(f"    {entry:<17} {(rec.ns_before or {}).get(entry)} -> {(rec.ns_after or {}).get(entry)}")
    if rec.kernel_path and path:
        details += path_table(rec)
    if rec.proc_check and rec.proc_check["status"] == "mismatch":
        for entry, d in (rec.proc_check.get("diff") or {}).items():
            details.append(f"    /proc differs: {entry} kernel {d['kernel']} /proc {d['proc']}")
    return "\n".join(printable(text) for text in line.split("\n") + details)


def counts_table(rows, headers):
    """[[name, count]] as tabulate's "simple" format lays it out (names left, counts right, each
    column two wider than its header at least), without importing tabulate: importing it imports
    importlib.metadata, ~50 ms of the summary a short `watch -- COMMAND` ends with."""
    wide = [max([len(headers[0]) + 2] + [len(str(r[0])) for r in rows]),
            max([len(headers[1]) + 2] + [len(str(r[1])) for r in rows])]
    lines = [f"{headers[0].ljust(wide[0])}  {headers[1].rjust(wide[1])}", f"{'-' * wide[0]}  {'-' * wide[1]}"]
    lines += [f"{str(name).ljust(wide[0])}  {str(n).rjust(wide[1])}" for name, n in rows]
    return "\n".join(line.rstrip() for line in lines)


def summary_table(summary):
    rows = [[op, n] for op, n in sorted(summary["events"].items())]
    rows.append(["total", summary["total"]])
    out = [counts_table(rows, ["op", "events"])]
    checks = ", ".join(f"{k} {v}" for k, v in sorted(summary["proc_check"].items())) or "none"
    lost = summary["lost"]
    out.append(f"/proc check: {checks}")
    out.append(f"lost events: {lost.get('ringbuf', 0)} (ring buffer full), {lost.get('inflight', 0)} (in-flight table full)"
               + (f", {lost['untracked']} processes not followed (--pid table full)" if "untracked" in lost else ""))
    if summary["filtered"]:
        out.append(f"filtered out by --comm/--op/--type/--container/--ns: {summary['filtered']}")
    if summary.get("unshown"):
        out.append(f"read after --count was reached, not shown: {summary['unshown']}")
    if summary.get("outlived"):
        out.append(f"namespaces born in the trace and not seen to die: {summary['outlived']} "
                   "(alive when it ended, or freed after)")
    if summary.get("command"):
        out.append(_command_line(summary["command"]))
    return lines("\n".join(out))


# why a trace ended before its COMMAND did (nstrace.trace.watch.Watch.ended)
_ENDED_BY = {"count": "--count reached", "duration": "--duration passed", "signal": "a second signal to nstrace",
             "output": "the output was closed"}


def _command_line(command):
    """watch -- COMMAND's line of the summary: how COMMAND ended, or that it runs on."""
    left = command.get("untraced") or 0
    if command.get("running"):
        why = _ENDED_BY.get(command.get("ended_by"), "the trace ended")
        return (f"command: pid {command['pid']}, still running when the trace ended ({why}), not followed from then on"
                + (f"; {left} of its descendants too" if left else ""))
    status, signal = command["exit_status"], command.get("signal")
    how = f"killed by {signal} (exit status {status})" if signal else f"exit status {status}"
    return (f"command: pid {command['pid']}, {how}" +
            (f"; {left} of its descendants still ran when it exited, no longer followed" if left else ""))


def availability_table(rows):
    """One row per probe point: the hook it got and why (a function's choice of fentry or kprobe),
    or why it has none."""
    table = [[r["probe"], r["layer"], r.get("file", "-"), r["hook"] or "-",
              "attached" if r["attached"] else "unavailable",
              r["reason"] or r.get("why", "")] for r in rows]
    return tabulate(table, headers=["probe point", "layer", "source", "hook", "status", "why"],
                    tablefmt="simple")


def deaths_verdict(functions):
    """Which types' deaths are records here, through which functions, and why not the others'."""
    from ..kernel.functions import (
        DEATH_OF,
        PER_TYPE_DEATHS,
        TREE_DEATH,
        types_seen_dying,
    )
    attached = {r["probe"]: r for r in functions if r["attached"]}
    seen = types_seen_dying(attached)
    if not seen:
        return "not visible on this kernel: no hook on any function that frees a namespace, so no free records"
    through = [f for f in (TREE_DEATH, *PER_TYPE_DEATHS) if f in attached]
    unseen = [f"{t} ({DEATH_OF[t]}: {next((r['reason'] for r in functions if r['probe'] == DEATH_OF[t]), '')})"
              for t in DEATH_OF if t not in seen]
    return (f"recorded (op free) through {', '.join(through)}" +
            (f"; not visible for {', '.join(unseen)}" if unseen else ""))


def availability_verdict(rows):
    functions = [r for r in rows if r["layer"] == "function"]
    attached = [r for r in functions if r["attached"]]
    syscalls_ok = all(r["attached"] or r["reason"] for r in rows if r["layer"] == "syscall")  # reason: not here
    head = "syscall/tracepoint layer: " + ("available" if syscalls_ok else "INCOMPLETE")
    head += "\nnamespace deaths: " + deaths_verdict(functions)
    if not attached:
        reasons = sorted({r["reason"] for r in functions})
        return (f"{head}\nkernel-function layer: unavailable on this kernel, only the syscall/tracepoint "
                f"layer runs: {'; '.join(reasons)}")
    kinds = ", ".join(f"{n} by {kind}" for kind, n in sorted(
        {k: sum(r["hook"] == k for r in attached) for k in {r["hook"] for r in attached}}.items()))
    return f"{head}\nkernel-function layer: {len(attached)} of {len(functions)} functions attached ({kinds})"


def lab_table(results):
    rows = [[r["kernel"], r["release"], r["summary"], f"{r['duration_s']:.0f}"] for r in results]
    return tabulate(rows, headers=["kernel", "release", "kernel-layer tests and nstrace check", "seconds"], tablefmt="simple")


# --- check and demo ----------------------------------------------------------------

def _path_counts(verdict):
    steps = verdict.steps
    observable = [s for s in steps if s.status != "not observable"]
    observed = [s for s in steps if s.status == "observed"]
    return f"{len(observed)}/{len(observable)}/{len(steps)}"


def _first_problem(result):
    if result.error:
        return result.error
    for v in result.verdicts:
        for what, ok, detail in v.checks:
            if not ok:
                return f"{v.expect.op}: {what}: {detail}"
        for s in v.steps:
            if s.failed:
                return f"{v.expect.op}: {s.name} {s.status} {s.reason}".strip()
    return ""


def check_table(results):
    rows = []
    for r in results:
        ops = ", ".join(v.expect.op for v in r.verdicts if v.expect.op != "facts") or "-"
        paths = " ".join(_path_counts(v) for v in r.verdicts if v.steps) or "-"
        if getattr(r, "skipped", ""):
            rows.append([r.name, "-", "SKIP", "-", _fit(r.skipped, 70)])
            continue
        rows.append([r.name, ops, "PASS" if r.ok else "FAIL", paths, _fit(_first_problem(r), 70)])
    out = tabulate(rows, headers=["scenario", "operations", "result", "path seen/observable/documented", "problem"],
                   tablefmt="simple")
    skipped = [r for r in results if getattr(r, "skipped", "")]
    passed = sum(r.ok for r in results)
    out += f"\n\n{passed} passed, {len(results) - passed - len(skipped)} failed"
    if skipped:
        out += f"\n{len(skipped)} skipped: this kernel cannot run them (the problem column says why)"
    return out


def check_json(results):
    return [{"scenario": r.name, "ok": r.ok, "error": r.error, "skipped": getattr(r, "skipped", ""),
             "duration_s": round(r.duration_s, 3),
             "operations": [{"op": v.expect.op, "ok": v.ok, "what": v.expect.what,
                             "record": v.record.to_json() if v.record else None,
                             "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in v.checks],
                             "kernel_path": [dataclasses.asdict(s) for s in v.steps]} for v in r.verdicts]}
            for r in results]


def _common_reason(availability):
    """The one reason every kernel function is unavailable, if it is the same for all."""
    reasons = {a["reason"] for a in availability if a["layer"] == "function" and not a["attached"]}
    attached = any(a["attached"] for a in availability if a["layer"] == "function")
    return reasons.pop() if len(reasons) == 1 and not attached else None


SHOWN = ("observed", "unexpected", "out of order", "out of place", "undocumented")


def documented_and_observed(results, common=None):
    """The documented path and the observed one as one table: each documented step nested by its
    documented caller, with what was observed of it (arguments, result, new or shared, µs, source
    line) or why it was not; calls the notes do not list follow. A why under a step that has one."""
    shown = [s for s in results if s.expected or s.status in SHOWN]
    table = []
    for s in shown:
        why_not = "no fentry or kprobes here (below)" if common and s.reason == common else s.reason
        table.append(["  " * s.depth + s.name, s.status, s.values or why_not,
                      "" if s.duration_us is None else f"{s.duration_us:.1f}", s.source or s.file])
    text = tabulate(table, headers=["step", "on this kernel", "observed, or why not", "µs", "source"],
                    tablefmt="simple", disable_numparse=True, colalign=("left", "left", "left", "right", "left"),
                    preserve_whitespace=True).split("\n")
    out, said = [line.rstrip() for line in text[:2]], set()
    for line, s in zip(text[2:], shown):
        out.append(line.rstrip())
        note = s.note or (s.reason if s.values else "")
        if note and note not in said:  # once: the seven copy_* of one call may all have the same
            out.append("  " * (s.depth + 1) + f"/* {note} */")
            said.add(note)
    return out


def lab_command(expect):
    """The command that runs this demo where the kernel functions can be seen: a Debian kernel in
    `nstrace lab` (its `-- ARGS` form runs any nstrace command in the guest)."""
    flags = fl.short(fl.decode_flags(expect.flags or 0, expect.op))
    op = "" if expect.op == "clone" else f" --op {expect.op}"
    return f"nstrace lab --kernel 6.1 -- demo{op} --flags '{flags}'"


def _switch_note(rec, availability):
    """What became of the old nsproxy, where the kernel path shows the switch."""
    from ..kernel.hooks import Hook
    from ..study import callpath
    if not rec.kernel_path:
        return ""
    hooks = {a["probe"]: Hook(a["probe"], a["hook"], a["reason"], a["attached"])
             for a in availability if a.get("layer") == "function"}
    for top in callpath.tree(rec.kernel_path):
        for call in top.walk():
            if call.func == "switch_task_namespaces":
                return "\n  " + callpath.switch_summary(call, hooks)
    return ""


def demo_report(result, report, availability):
    out = [f"nstrace demo: {result.summary}", ""]
    records = [v.record for v in result.verdicts if v.record]
    if result.error:
        out.append(f"error: {result.error}")
    if records:
        # the kernel functions come below, in one view with the documented path
        out += ["== What the kernel did (syscall layer)", header()] + [row(r, path=False) for r in records] + [""]
    main = records[0] if records else None
    if main and main.ns_before:
        proc_now = (report or {}).get("child_ns") or (report or {}).get("ns") or {}
        rows = []
        for entry in fl.NS_ENTRIES:
            before, after = main.ns_before.get(entry), (main.ns_after or {}).get(entry)
            rows.append([entry, before, after, proc_now.get(entry, "(hidden)"),
                         "changed" if entry in main.changed else ""])
        who = "child" if main.op in fl.CHILD_OPS else "caller"
        out += [f"== Namespaces: kernel before/after beside /proc/<{who}>/ns now",
                tabulate(rows, headers=["entry", "kernel before", "kernel after", "/proc now", ""],
                         tablefmt="simple"), ""]
        if main.nsproxy:
            out.append(f"task->nsproxy: {main.nsproxy['before']} -> {main.nsproxy['after'] or '-'} "
                       "(short ids, not addresses)" + _switch_note(main, availability))
            out.append("")
    seen = [(v.expect.what, v.expect.seen_inside) for v in result.verdicts if v.expect.seen_inside]
    if seen:
        out.append("== Seen from inside")
        for what, facts in seen:
            shown = {k: v for k, v in facts.items() if k != "monotonic_s" or "time" in what}
            out.append(f"  {what}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        out.append("")
    common = _common_reason(availability)
    for v in result.verdicts:
        if not v.steps:
            continue
        what = v.expect.what or v.expect.op
        out.append(f"== Kernel path of {what}: documented (kernel-notes/paths.toml) and observed")
        out += documented_and_observed(v.steps, common)
        out.append("")
    functions = [a for a in availability if a["layer"] == "function"]
    if functions and not any(a["attached"] for a in functions) and result.verdicts:
        out.append("kernel functions: not observable here (" + functions[0]["reason"] +
                   f"); `{lab_command(result.verdicts[0].expect)}` shows them on a Debian kernel")
    problem = _first_problem(result)
    out.append("result: " + ("trace matches the documented path" if result.ok else f"MISMATCH: {problem}"))
    return "\n".join(out)
