"""Observed against documented: a record's kernel path beside kernel-notes/paths.toml.

For every step of the documented path of an operation this says whether it
was expected for these flags, whether this kernel lets nstrace observe it
(and why not), and whether it was observed, in the documented order and
called from where the notes say. Each result also carries what a reader
needs to see both at once: the step's depth in the documented call tree and,
when observed, its values (arguments, result, new or shared, duration) and
its source line in the recorded kernel's version. Calls observed that the
notes do not list for the operation follow, marked "undocumented".
"""

import dataclasses

from ..kernel import documented, sourcelines
from ..kernel import flags as fl
from ..kernel.functions import FUNCTIONS
from . import callpath

# Functions of the documented path that nstrace does not probe on purpose:
# they run on every fork or every credential change, so a probe there taxes
# the whole machine for little insight.
NOT_PROBED = {
    "kernel_clone": "runs on every fork: not probed (the syscall tracepoints bracket it)",
    "copy_process": "runs on every fork: not probed (task:task_newtask fires inside it)",
    "copy_creds": "runs on every fork: not probed (create_user_ns shows the NEWUSER case)",
    "prepare_creds": "runs on every credential change: not probed",
    "commit_creds": "runs on every credential change: not probed",
    "copy_clone_args_from_user": "argument copy only: not probed (sys_enter_clone3 reads the same args)",
}


@dataclasses.dataclass
class StepResult:
    name: str
    kind: str            # "tracepoint" or "function"
    file: str
    expected: bool
    status: str          # observed | not observed | not observable | not expected | unexpected | not reached
                         # | out of order | out of place | undocumented
    reason: str = ""
    depth: int = 0       # in the documented call tree (paths.toml `in`)
    values: str = ""     # observed: "(arguments) = result", the learner's reading of the step
    note: str = ""       # observed: why it did what it did, where that is not obvious (callpath.why)
    duration_us: float | None = None
    source: str = ""     # observed: file:line in the recorded kernel's version
    does: str = ""       # what the function does (paths.toml), for --explain and --json
    notes: str = ""      # the kernel-notes paragraph of the concept the step teaches ("kernel-notes/F.md#A")

    @property
    def failed(self):
        return self.status in ("not observed", "unexpected", "out of order", "out of place")


def effective_flags(rec):
    """The CLONE_NEW* names the documented `when` conditions test (without CLONE_)."""
    value = rec.raw_flags  # decode_flags drops clone()'s signal byte itself
    if rec.op == "setns" and not value and rec.target and rec.target.get("type"):
        value = fl.CLONE_FLAGS[fl.NS_TYPES[rec.target["type"]]]
    names = {name.removeprefix("CLONE_") for name in fl.decode_flags(value, rec.op)}
    if rec.op == "setns" and rec.target:
        names.add({"pidfd": "PIDFD", "nsfs": "NSFS"}.get(rec.target.get("kind"), "FD"))  # pseudo-flags too
    # an EMPTY_MNTNS flag (7.1+) is CLONE_NEWNS to the path: kernel_clone() and ksys_unshare() add it
    # first thing (kernel/fork.c, 7.2.13)
    names |= {fl.NS_TYPES[ns].removeprefix("CLONE_") for ns in fl.requested_types(value, rec.op)}
    before = rec.ns_before or {}
    if rec.op in ("clone", "clone3") and "VM" not in names and before.get("time") != before.get("time_for_children"):
        names.add("TIMENS_PENDING")  # a pseudo-flag of kernel-notes/paths.toml: see its key list
    return names


def _expected(step, flags):
    when, unless = set(step.get("when", [])), set(step.get("unless", []))
    return (not when or bool(when & flags)) and not (unless & flags)


def _not_on_this_kernel(step, release):
    """Why a step is not on the path of `release`'s kernel, or None: its `kernels` (the step's, else
    its function's in paths.toml) leave out that series, one the notes measured."""
    if step["kind"] != "function" or not release:
        return None
    notes = documented.notes()
    own = step.get("kernels")
    function = notes.get("function", {}).get(step["name"], {})
    kernels = own or function.get("kernels")
    series = sourcelines.series_of(release)
    if not kernels or series not in notes.get("measured", ()) or series in kernels:
        return None
    if own:  # the function exists there, but this is not its path on that kernel
        return f"not on {series}'s path: on {', '.join(kernels)} only" + (f" ({step['why']})" if step.get("why") else "")
    # `kernels` is where the BTF has it: elsewhere it is gone, renamed or inlined, never probed
    since = f"; since {function['since']}" if function.get("since") else ""
    return f"not in {series}: a function of {', '.join(kernels)} only (their BTF){since}"


def _observability(step, hooks, tracepoints):
    """None if nstrace can observe this step here, else why not."""
    name = step["name"]
    if step["kind"] == "tracepoint":
        return None if name in tracepoints else "tracepoint not attached"
    if step.get("inlined"):
        return "inlined: no symbol to probe"
    if name in NOT_PROBED:
        return NOT_PROBED[name]
    if name not in FUNCTIONS:
        return "not probed by nstrace"
    hook = hooks.get(name)
    if hook is None:
        return "kernel-function layer off"
    if not hook.attached:
        return hook.reason or "not attached"
    return None


def _observed_index(step, rec):
    """Position of the step in the record's path, or None if it was not seen."""
    name = step["name"]
    if step["kind"] == "tracepoint":
        if name.startswith("syscalls:sys_enter_"):
            return -1
        if name.startswith("syscalls:sys_exit_"):
            return len(rec.kernel_path) + 1
        if name == "task:task_newtask":
            # fires after copy_namespaces returned: place it after the last namespace step
            if not rec.child_pid:
                return None
            done = [i for i, s in enumerate(rec.kernel_path)
                    if s["func"] in ("copy_namespaces", "timens_on_fork") and s["kind"] == "exit"]
            return (done[-1] if done else 0) + 0.5
        return None
    for i, s in enumerate(rec.kernel_path):
        if s["func"] == name and s["kind"] == "enter":
            return i
    return None


def _callers(step):
    value = step.get("in", [])
    return [value] if isinstance(value, str) else list(value)


def _depths(doc):
    """Each documented step's depth in the call tree the `in` keys draw (by name: the first)."""
    by_name = {s["name"]: s for s in doc}
    depth = {}

    def of(name, seen=()):
        if name not in depth:
            up = [c for c in _callers(by_name[name]) if c in by_name and c not in seen] if name in by_name else []
            depth[name] = of(up[0], seen + (name,)) + 1 if up else 0
        return depth[name]
    for s in doc:
        of(s["name"])
    return depth


def _expected_caller(step, by_name, observable):
    """The nearest documented caller nstrace can observe here, or None (the outermost level): an
    observed call's parent must be that one (a caller that is inlined or not probed is skipped)."""
    todo, seen = _callers(step), set()
    while todo:
        name = todo.pop(0)
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        if observable(by_name[name]):
            return name
        todo = _callers(by_name[name]) + todo
    return None


def _other_callers(step):
    """The callers besides `in`'s that are in place as they are (`or_in`; "" for none: a death
    freed by an RCU callback, or by a kworker's work itself)."""
    return {name or None for name in step.get("or_in", ())}


def _tracepoint_values(step, rec):
    name = step["name"]
    if name.startswith("syscalls:sys_enter_"):
        if rec.op == "setns":
            return "(" + callpath.setns_arguments(rec) + ")"
        return f"(flags {fl.short(rec.flags) if rec.flags else '0'})"
    if name.startswith("syscalls:sys_exit_"):
        return f"= {rec.ret}" + (f" {rec.errno}" if rec.errno else "")
    if name == "task:task_newtask" and rec.child_pid:
        return f"child pid {rec.child_pid}"
    return ""


def _values(call, rec):
    counts = callpath.counts(call.exit or {})
    return f"({callpath.arguments(call, rec)}) = {callpath.result(call, rec)}" + (f" ({counts})" if counts else "")


def compare(rec, hooks, tracepoints, release=None):
    """StepResults for one record. hooks: {func: nstrace.kernel.hooks.Hook}; tracepoints: attached names;
    release: the recorded kernel's (default: the running one), for the source lines."""
    doc = documented.notes()["op"].get(rec.op, {}).get("step", [])
    flags = effective_flags(rec)
    if rec.kernel_path and release:
        callpath.annotate(rec, release)
    results, seen_order = [], []
    by_name = {s["name"]: s for s in doc}
    depth = _depths(doc)
    observed, parent = {}, {}
    for top in callpath.tree(rec.kernel_path):
        for call in top.walk():
            observed.setdefault(call.func, call)
            for inner in call.calls:
                parent.setdefault(id(inner), call.func)
    observable = lambda s: _observability(s, hooks, tracepoints) is None and s["kind"] == "function"
    for step in doc:
        file = step.get("file") or documented.source_file(step["name"])
        if step["kind"] == "tracepoint":
            file = "include/trace/events/" + ("task.h" if step["name"].startswith("task:") else "syscalls.h")
        absent = _not_on_this_kernel(step, release or sourcelines.running_release())
        expected = _expected(step, flags) and not absent
        why_not = _observability(step, hooks, tracepoints)
        index = None if why_not else _observed_index(step, rec)
        if why_not and not expected:
            status, reason = "not expected", absent or step.get("note", "")
        elif why_not:
            status, reason = "not observable", why_not
        elif index is not None:
            status = "observed" if expected else "unexpected"
            reason = "" if expected else step.get("also_when", "")
            if not expected and step.get("also_when"):
                status = "observed"
            seen_order.append((index, len(results)))
        elif not expected:
            status, reason = "not expected", absent or step.get("note", "")
        elif rec.ret < 0:
            status, reason = "not reached", f"the call failed with {rec.errno}"
        elif step.get("optional"):
            status, reason = "not expected", step.get("why", "optional")
        else:
            status = "not observed"
            reason = f"the record was full: {rec.kernel_path_dropped} steps dropped" if rec.kernel_path_dropped else ""
        result = StepResult(step["name"], step["kind"], file, expected, status, reason, depth=depth[step["name"]])
        result.does, result.notes, _ = callpath.explanation(step["name"])
        call = observed.get(step["name"]) if step["kind"] == "function" and index is not None else None
        if call is not None:
            result.values = _values(call, rec)
            result.note = callpath.why(call, rec, hooks)
            result.duration_us = call.duration_us
            result.source = callpath.source_text(call.step)
            want = _expected_caller(step, by_name, observable)
            got = parent.get(id(call))
            if got != want and got not in _other_callers(step) and status == "observed":
                result.status = "out of place"
                result.reason = f"called from {got or 'the syscall itself'}, the notes say {want or 'the syscall itself'}"
        elif index is not None:
            result.values = _tracepoint_values(step, rec)
        if step["kind"] == "function" and not result.source:
            # where to read a step that did not happen, in the recorded kernel's version
            spot = sourcelines.where(step["name"], release or sourcelines.running_release())
            result.source = spot.text if spot else file
        results.append(result)
    # Documented order: observed steps must appear in the order the notes list them.
    last = None
    for index, pos in seen_order:
        if last is not None and index < last[0]:
            results[pos].status = "out of order"
            results[pos].reason = f"seen before {results[last[1]].name}"
        else:
            last = (index, pos)
    seen_at = {id(results[pos]): index for index, pos in seen_order}
    for func, call in observed.items():
        if func not in by_name:
            does, pointer, _ = callpath.explanation(func)
            row = StepResult(func, "function", documented.source_file(func), False, "undocumented",
                             f"not in the documented path of {rec.op} (kernel-notes/paths.toml)",
                             values=_values(call, rec), note=callpath.why(call, rec, hooks),
                             duration_us=call.duration_us, source=callpath.source_text(call.step),
                             does=does, notes=pointer)
            _place(results, row, parent.get(id(call)), rec.kernel_path.index(call.step), seen_at)
    return results


def _place(results, row, caller, index, seen_at):
    """Put an undocumented call's row under its observed caller, after the rows already nested there,
    one level in; one called from the syscall itself goes where its time puts it among the rows
    observed (seen_at: a row's position in the record's path)."""
    # the caller's row as seen: values read, or a documented entry-only step (a dropper) observed
    at = next((i for i, r in enumerate(results) if r.name == caller
               and (r.values or r.status in ("observed", "undocumented"))), None)
    if at is None:
        later = [i for i, r in enumerate(results) if seen_at.get(id(r), -1) > index]
        at = later[0] if later else len(results)
        row.depth = 0
    else:
        row.depth = results[at].depth + 1
        at += 1
        while at < len(results) and results[at].depth >= row.depth:
            at += 1
    seen_at[id(row)] = index
    results.insert(at, row)


def passed(results):
    return not any(r.failed for r in results)


def recorded_hooks(availability):
    """({func: Hook}, attached tracepoint names) as a session's availability recorded them: documented
    steps are judged as the kernel let them be probed when the record was made."""
    from ..kernel.hooks import Hook
    hooks = {a["probe"]: Hook(a["probe"], a["hook"], a["reason"], a["attached"])
             for a in availability if a.get("layer") == "function"}
    tracepoints = {a["probe"] for a in availability if a.get("layer") == "syscall" and a["attached"]}
    return hooks, tracepoints


def common_reason(availability):
    """The one reason every kernel function was unavailable, if it is the same for all (said once)."""
    functions = [a for a in availability if a.get("layer") == "function"]
    reasons = {a["reason"] for a in functions if not a["attached"]}
    return reasons.pop() if functions and len(reasons) == 1 and not any(a["attached"] for a in functions) else None
