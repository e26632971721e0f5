"""nstrace demo: one namespace operation on purpose, traced, and explained.

Builds a one-off scenario from --op and --flags, runs it through the same
launcher and checker as `nstrace check`, and keeps what the explanation
needs: the records, the /proc links, the inside view and the path verdicts.
"""

import os

from ..errors import KernelSupportError, UsageError
from ..kernel import flags as fl
from ..linux.comm import safe_comm
from . import checker, scenario


def build(op, flags):
    """A Scenario performing op with flags (setns: into new namespaces of those types)."""
    if op == "clone" and flags & fl.CLONE_FLAGS["CLONE_NEWTIME"]:
        raise UsageError("clone() cannot take NEWTIME (0x80 is its exit-signal byte): use --op clone3 or unshare")
    makers = fl.ns_flags(op)
    other = flags & ~sum(makers)
    if other:
        names = {bit: name for name, bit in fl.flag_table(op).items()}
        raise UsageError(f"demo takes namespace flags only, not {fl.short(fl.decode_flags(other, op))}: "
                         f"valid for {op} are {', '.join(fl.short([names[bit]]) for bit in makers)}")
    types = fl.requested_types(flags, op)
    lacking = scenario.lacks_empty_mntns(flags, op)
    if lacking:
        raise KernelSupportError(f"{lacking}; `nstrace lab --kernel sid -- demo --op {op} --flags EMPTY_MNTNS` "
                                 "runs it on Debian's newest kernel")
    if op == "setns" and not types:
        raise UsageError("setns needs at least one namespace type to join, e.g. --flags NEWUTS")

    def run(launcher):
        if op == "setns":
            holder = launcher.holder(types)
            spec = {"op": "setns", "flags": flags, "inside": True}
            if len(types) == 1:
                spec["ns_path"] = f"/proc/{holder}/ns/{types[0]}"
            else:
                spec["pidfd_of"] = holder
            targets = {t: os.stat(f"/proc/{holder}/ns/{t}").st_ino for t in types}
        else:
            spec = {"op": op, "flags": flags, "inside": True}
        h = launcher.nsop(spec)
        rep = h.report
        run.report = rep
        changed = sorted({e for t in types for e in scenario.changes(op, t)}, key=fl.NS_ENTRIES.index)
        want_inside = scenario.inside_for([t for t in types if not (op == "setns" and t == "user")],
                                            op in ("clone", "clone3"))
        expects = [scenario.Expect(op, pid=h.pid, flags=flags, changed=changed, inside=want_inside,
                                    seen_inside=rep.get("inside"), what=f"{op} {fl.short(fl.decode_flags(flags, op))}")]
        if op == "setns":
            expects[0].ns_after = {e: targets[fl.ns_type_of_entry(e)] for e in changed}
        if "fork_child" in rep:
            entered = [t for t in types if t in ("pid", "time")]
            expects.append(scenario.Expect("clone", pid=h.pid, changed=entered,
                                            inside={"pid": 1} if "pid" in entered and op == "unshare" else {},
                                            seen_inside=rep.get("fork_inside"),
                                            what="the next fork enters the new " + "/".join(entered) + " namespace"))
        return expects

    run.report = None
    return scenario.Scenario("demo", f"{op} {fl.short(fl.decode_flags(flags, op))}", run), run


def seen_inside(result):
    """What the demo's processes reported from inside their namespaces, for the session's end line
    (the page shows it as demo's report does): [{"what", "facts"}], text escaped as every name
    from outside is (a hostname is any bytes its namespace's root sets)."""
    def text(value):
        if isinstance(value, str):
            return safe_comm(value.encode("utf-8", "surrogateescape"))
        return [text(v) for v in value] if isinstance(value, list) else value
    return [{"what": verdict.expect.what, "facts": {k: text(v) for k, v in verdict.expect.seen_inside.items()}}
            for verdict in result.verdicts if verdict.expect.seen_inside]


def run_demo(op, flags, record_path=None):
    """Run the demo; return (ScenarioResult, nsop report, probe availability).

    With record_path, the run is also written as a session file (for
    `nstrace show` and `nstrace render`).
    """
    sc, fn = build(op, flags)
    with checker.tracer_for_check() as tracer:
        if not record_path:
            result = checker.run_scenario(sc, tracer)
        else:
            from ..session import writer
            with writer.Recorder(record_path, tracer) as recorder:
                result = checker.run_scenario(sc, writer.RecordingTracer(tracer, recorder))
                recorder.close(tracer.summary(), seen_inside=seen_inside(result))
        availability = tracer.availability()
        # The demo's stream ends with its scenario: the kernel's slow part of detaching (in a TCG
        # guest, most of the demo's time: bench --only lab) goes on after nstrace, as for
        # watch -- COMMAND (bpf/teardown.py).
        tracer.unfollow()
        tracer.close(background=True)
        return result, fn.report, availability
