"""The reports: watch's summary, doctor's probe table, check's results, demo's report, the lab's
table. Each is made once, at the end of its command; the streaming table is view/table.py."""

import dataclasses

from ..kernel import flags as fl
from ..study import callpath, pathcheck
from .table import explained, fit, header, row, tabulate
from .terminal import lines


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


# why a trace ended before its COMMAND did (nstrace.tracing.watch.Watch.ended)
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
    # no number parsing: a kernel named 5.10 is not the number 5.1
    return tabulate(rows, headers=["kernel", "release", "kernel-layer tests and nstrace check", "seconds"],
                    tablefmt="simple", disable_numparse=True)


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
            rows.append([r.name, "-", "SKIP", "-", fit(r.skipped, 70)])
            continue
        rows.append([r.name, ops, "PASS" if r.ok else "FAIL", paths, fit(_first_problem(r), 70)])
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
                             "record": v.record.as_dict() if v.record else None,
                             "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in v.checks],
                             "kernel_path": [dataclasses.asdict(s) for s in v.steps]} for v in r.verdicts]}
            for r in results]


SHOWN = ("observed", "unexpected", "out of order", "out of place", "undocumented")


def documented_and_observed(results, common=None, explain=False):
    """The documented path and the observed one as one table: each documented step nested by its
    documented caller, with what was observed of it (arguments, result, new or shared, µs, source
    line) or why it was not; calls the notes do not list under their caller. A why under a step that
    has one; with `explain`, what the step does and the kernel-notes paragraph of its concept."""
    shown = [s for s in results if s.expected or s.status in SHOWN]
    table = []
    for s in shown:
        why_not = "no fentry or kprobes here (below)" if common and s.reason == common else s.reason
        table.append(["  " * s.depth + s.name, s.status, s.values or why_not,
                      "" if s.duration_us is None else f"{s.duration_us:.1f}", s.source or s.file])
    text = tabulate(table, headers=["step", "on this kernel", "observed, or why not", "µs", "source"],
                    tablefmt="simple", disable_numparse=True, colalign=("left", "left", "left", "right", "left"),
                    preserve_whitespace=True).split("\n")
    out, said, read = [line.rstrip() for line in text[:2]], set(), set()
    for line, s in zip(text[2:], shown):
        out.append(line.rstrip())
        note = s.note or (s.reason if s.values else "")
        if note and note not in said:  # once: the seven copy_* of one call may all have the same
            out.append("  " * (s.depth + 1) + f"/* {note} */")
            said.add(note)
        if explain:
            out += explained(callpath.explain_lines(s.name, read), "  " * (s.depth + 1) + "| ")
    return out


def lab_command(expect):
    """The command that runs this demo where the kernel functions can be seen: a Debian kernel in
    `nstrace lab` (its `-- ARGS` form runs any nstrace command in the guest)."""
    flags = fl.short(fl.decode_flags(expect.flags or 0, expect.op))
    op = "" if expect.op == "clone" else f" --op {expect.op}"
    return f"nstrace lab --kernel 6.1 -- demo{op} --flags '{flags}'"


def _switch_note(rec, availability):
    """What became of the old nsproxy, where the kernel path shows the switch."""
    if not rec.kernel_path:
        return ""
    hooks, _ = pathcheck.recorded_hooks(availability)
    for top in callpath.tree(rec.kernel_path):
        for call in top.walk():
            if call.func == "switch_task_namespaces":
                return "\n  " + callpath.switch_summary(call, hooks)
    return ""


def nsproxy_line(rec):
    """The record's two nsproxy ids, said for what they are: a clone switches no one's, its two are
    the parent's (unchanged) and the child's (kernel/nsproxy.c copy_namespaces, 5.10 to 7.2)."""
    before, after = rec.nsproxy["before"], rec.nsproxy["after"] or "-"
    if rec.op in fl.CHILD_OPS:
        return f"nsproxy: the parent's {before}, the child's {after} (short ids, not addresses)"
    return f"task->nsproxy: {before} -> {after} (short ids, not addresses)"


def demo_report(result, report, availability, explain=False):
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
            out.append(nsproxy_line(main) + _switch_note(main, availability))
            out.append("")
    seen = [(v.expect.what, v.expect.seen_inside) for v in result.verdicts if v.expect.seen_inside]
    if seen:
        out.append("== Seen from inside")
        for what, facts in seen:
            shown = {k: v for k, v in facts.items() if k != "monotonic_s" or "time" in what}
            out.append(f"  {what}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        out.append("")
    common = pathcheck.common_reason(availability)
    for v in result.verdicts:
        if not v.steps:
            continue
        what = v.expect.what or v.expect.op
        out.append(f"== Kernel path of {what}: documented (kernel-notes/paths.toml) and observed")
        out += documented_and_observed(v.steps, common, explain)
        out.append("")
    functions = [a for a in availability if a["layer"] == "function"]
    if functions and not any(a["attached"] for a in functions) and result.verdicts:
        out.append("kernel functions: not observable here (" + functions[0]["reason"] +
                   f"); `{lab_command(result.verdicts[0].expect)}` shows them on a Debian kernel")
    problem = _first_problem(result)
    out.append("result: " + ("trace matches the documented path" if result.ok else f"MISMATCH: {problem}"))
    return "\n".join(out)
