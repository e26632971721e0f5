"""nstrace check: run scenarios under the tracer and judge the trace.

Each scenario runs inside its own Launcher (everything undone afterwards,
even when the scenario fails midway) under one Tracer restricted, in the
kernel, to nstrace's own descendants and keeping plain forks: the trace
holds exactly what the launcher did.
"""

import dataclasses
import os
import time

from ..bpf import privileges
from ..errors import NstraceError, PrivilegeError, UsageError
from ..kernel import flags as fl
from ..study import pathcheck
from ..tracing.tracer import Options, Tracer, section_of
from . import catalogue, scenario
from .launcher import Launcher


@dataclasses.dataclass
class Verdict:
    """One expectation judged: the matching record (if any) and every check made."""

    expect: scenario.Expect
    record: object = None
    checks: list = dataclasses.field(default_factory=list)   # [(what, ok, detail)]
    steps: list = dataclasses.field(default_factory=list)    # pathcheck.StepResult

    @property
    def ok(self):
        return all(ok for _, ok, _ in self.checks) and pathcheck.passed(self.steps)


@dataclasses.dataclass
class ScenarioResult:
    name: str
    summary: str
    verdicts: list
    error: str = ""
    duration_s: float = 0.0
    skipped: str = ""    # why this kernel cannot run it (scenario.Unsupported): neither passed nor failed

    @property
    def ok(self):
        return not self.error and not self.skipped and bool(self.verdicts) and all(v.ok for v in self.verdicts)


def tracer_for_check():
    """The tracer of `check` and `demo`; raises PrivilegeError unless this process may also make
    the namespaces they trace."""
    require_privileges()
    return Tracer(Options(trace_all=True, pid=os.getpid(), poll_ms=20))


def require_privileges():
    """Raise PrivilegeError unless this process may trace and make namespaces, as check and demo do."""
    privileges.check_privileges()
    if not privileges.effective_caps() >> privileges.CAP_SYS_ADMIN & 1:
        # CAP_BPF and CAP_PERFMON trace; making or joining a namespace of any type but user takes
        # CAP_SYS_ADMIN (kernel/nsproxy.c copy_namespaces(), unshare_nsproxy_namespaces() and each
        # type's ->install(), 6.18), and the launcher makes them all
        raise PrivilegeError("this needs root: it makes namespaces, which takes CAP_SYS_ADMIN, and this "
                             "process has only what tracing takes (CAP_BPF and CAP_PERFMON)")


def deaths_visible(tracer, ns_type=None):
    """True if a hook that makes death records of ns_type's namespaces is attached (the tree's, or that
    type's function of functions.DEATH_OF); without ns_type, of any type's."""
    from ..kernel.functions import types_seen_dying
    seen = types_seen_dying({h.func for h in tracer.hooks if h.attached})
    return ns_type in seen if ns_type else bool(seen)


def _type_of(exp):
    return (exp.ns or {}).get("type")


def _matches(exp, rec):
    if rec.op != exp.op:
        return False
    if exp.pid is not None and rec.pid != exp.pid:
        return False
    if exp.comm is not None and rec.comm != exp.comm:
        return False
    if exp.ns and (not rec.ns or rec.ns.get("inode") != exp.ns.get("inode")):
        return False
    if exp.flags is not None:
        raw = rec.raw_flags & ~fl.CSIGNAL if rec.op == "clone" else rec.raw_flags
        want = exp.flags & ~fl.CSIGNAL if rec.op == "clone" else exp.flags
        if raw != want:
            return False
    return True


def _subset(want, seen):
    """True if every key of want has that value in seen (recursively for dicts)."""
    if isinstance(want, dict):
        return isinstance(seen, dict) and all(_subset(v, seen.get(k)) for k, v in want.items())
    return want == seen


def judge(exp, rec, tracer):
    v = Verdict(exp, rec)
    if exp.op == "facts":
        v.checks.append(("inside", _subset(exp.inside, exp.seen_inside), f"saw {exp.seen_inside}"))
        return v
    if exp.needs == "deaths" and not deaths_visible(tracer, _type_of(exp)):
        v.checks.append(("visible", True, f"not checked: no hook sees {_type_of(exp) or 'namespace'} namespaces die "
                                          "on this kernel (nstrace doctor)"))
        return v
    if rec is None:
        v.checks.append(("traced", False, "no record of this operation"))
        return v
    v.checks.append(("traced", True, ""))
    v.checks.append(("result", rec.errno == exp.errno, f"ret {rec.ret} ({rec.errno or 'ok'})"))
    if exp.changed is not None:
        v.checks.append(("changed", rec.changed == exp.changed, f"changed {rec.changed}, expected {exp.changed}"))
    for entry, inode in (exp.ns_after or {}).items():
        got = (rec.ns_after or {}).get(entry)
        v.checks.append((f"{entry} inode", got == inode, f"{got} vs {inode}"))
    if rec.proc_check:
        status = rec.proc_check["status"]
        # unseen: what /proc shows agrees, and it cannot show the change yet (pid_for_children
        # before the first child): as good as a match for a trace, though not claimed as one
        v.checks.append(("/proc", status in exp.proc or (status == "unseen" and "match" in exp.proc), status))
    if exp.inside:
        v.checks.append(("inside", _subset(exp.inside, exp.seen_inside), f"saw {exp.seen_inside}"))
    if exp.ns:
        v.checks.append(("ns", _subset(exp.ns, rec.ns), f"ns {rec.ns}, expected {exp.ns}"))
    v.steps = pathcheck.compare(rec, {h.func: h for h in tracer.hooks}, set(map(section_of, tracer.attached)))
    return v


def run_scenario(sc, tracer, settle_s=5.0):
    """Run one scenario; return its ScenarioResult. Never leaves anything behind."""
    start = time.monotonic()
    verdicts, error, skipped = [], "", ""
    records = []
    try:
        with Launcher() as launcher:
            expects = sc.run(launcher)
            deadline = time.monotonic() + settle_s
            pending = [e for e in expects if e.op != "facts"
                       and (e.needs != "deaths" or deaths_visible(tracer, _type_of(e)))]
            while True:
                records += tracer.poll(20)
                matched = [next((r for r in records if _matches(e, r)), None) for e in pending]
                if all(matched) or time.monotonic() > deadline:
                    break
            by_exp = dict(zip(map(id, pending), matched))
            verdicts = [judge(e, by_exp.get(id(e)), tracer) for e in expects]
    except scenario.Unsupported as e:
        skipped = str(e)
    except NstraceError as e:
        error = str(e)
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    tracer.poll(0)  # drop what cleanup itself traced
    return ScenarioResult(sc.name, sc.summary, verdicts, error, time.monotonic() - start, skipped)


def select(names):
    if not names:
        return list(catalogue.CATALOGUE.values())
    unknown = [n for n in names if n not in catalogue.CATALOGUE]
    if unknown:
        raise UsageError(f"unknown scenario {unknown[0]!r}: `nstrace check --list` shows them")
    return [catalogue.CATALOGUE[n] for n in names]
