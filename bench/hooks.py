"""The hook sets that could carry nstrace's syscall layer, priced with count-only programs of our own.

bench/hooks.bpf.c is compiled at bench time (clang -target bpf -O2 -g, as
probes/Makefile does) and loaded through nstrace.bpf.loader.BpfObject, one hook
set at a time: the other sets' programs are switched off before load, so a
set the kernel refuses (fentry here) cannot stop the others from loading.

Why the hook matters, beyond what a program does in it:
- The first probe on the sys_enter/sys_exit tracepoints, whoever adds it (the
  per-syscall events included), runs the tracepoint's regfunc,
  syscall_regfunc() (kernel/tracepoint.c, from tracepoint_add_func()), which
  sets SYSCALL_WORK_SYSCALL_TRACEPOINT on every thread of the machine: from
  then on every syscall of every process takes the syscall-work path and calls
  the tracepoint (syscall_trace_enter() and syscall_exit_work(), in
  kernel/entry/syscall-common.c; kernel/entry/common.c in older kernels).
- With the per-syscall events, the probe on that tracepoint is the kernel's
  perf_syscall_enter()/perf_syscall_exit() (kernel/trace/trace_syscalls.c),
  which returns early for a syscall whose bit is clear; for one of ours it
  fills a perf buffer with the arguments before the BPF program runs.
- A raw tracepoint (or tp_btf) on sys_enter/sys_exit registers the BPF
  program itself as the probe (kernel/trace/bpf_trace.c, bpf_probe_register()):
  no buffer, but the program runs on every syscall of the machine.
- fentry/fexit patch a trampoline into the one function (kernel/bpf/trampoline.c):
  nothing else on the machine pays.
Read in torvalds/linux master (post-6.18); the figures are measured on the running kernel.
"""

import contextlib
import ctypes
import errno
import os
import platform
import shutil
import subprocess
from pathlib import Path

from nstrace.bpf import libbpf
from nstrace.errors import LibbpfError, ProbeError
from nstrace.bpf.loader import BpfObject

from .kernel import programs_by_id

SOURCE = Path(__file__).resolve().parent / "hooks.bpf.c"

# (key, label shown in the table, program name prefixes in hooks.bpf.c)
HOOK_SETS = (
    ("tracepoints", "syscalls:sys_{enter,exit}_{clone,clone3,unshare,setns} (nstrace today)", ("tp_",)),
    ("raw_syscalls", "raw_tp raw_syscalls:sys_{enter,exit}, early return on the number", ("raw_",)),
    ("tp_btf", "tp_btf sys_{enter,exit}, early return on the number", ("btf_",)),
    ("fentry", "fentry/fexit __x64_sys_{clone,clone3,unshare,setns}", ("fentry_", "fexit_")),
)
LABELS = {k: label for k, label, _ in HOOK_SETS}
SLOTS = ("enter", "exit")   # the counters of hooks.bpf.c (enum SLOT_*)


def build(outdir):
    """Compile hooks.bpf.c into outdir; return (path, None) or (None, why not)."""
    if platform.machine() != "x86_64":
        return None, f"hooks.bpf.c has x86_64 syscall numbers and __x64_sys_* names; this is {platform.machine()}"
    clang = shutil.which("clang")
    if not clang:
        return None, "clang not installed (Debian package clang)"
    out = os.path.join(outdir, "hooks.bpf.o")
    r = subprocess.run([clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror",
                        "-c", str(SOURCE), "-o", out], capture_output=True, text=True)
    if r.returncode:
        return None, f"clang failed on hooks.bpf.c: {r.stderr.strip()[-300:]}"
    return out, None


def _prog_id(fd):
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    return None


def _possible_cpus():
    # "0-1" or "0,2-3": per-CPU map values have one slot per possible CPU
    n = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class Attached:
    """One hook set's programs, loaded and attached; stats() and hits() read them."""

    def __init__(self, obj, names):
        self.obj = obj
        self.ids = {_prog_id(obj.program_fd(n)): n for n in names}

    def stats(self):
        """{program: (run_cnt, run_time_ns)} now (kernel.bpf_stats_enabled must be on to move)."""
        progs = programs_by_id(self.ids)
        return {self.ids[i]: (p.get("run_cnt", 0), p.get("run_time_ns", 0)) for i, p in progs.items()}

    def hits(self):
        """{slot: count} summed over CPUs: what the programs counted (only syscalls of ours)."""
        fd, ncpu, out = self.obj.map_fd("hits"), _possible_cpus(), {}
        for key, slot in enumerate(SLOTS):
            k, v = ctypes.c_uint32(key), (ctypes.c_uint64 * ncpu)()
            ret = libbpf.lib().bpf_map_lookup_elem(ctypes.c_int(fd), ctypes.byref(k), ctypes.byref(v))
            out[slot] = sum(v) if ret == 0 else None
        return out


@contextlib.contextmanager
def attached(path, key):
    """Load and attach hook set `key` from the compiled object; raises nstrace's LibbpfError/ProbeError."""
    prefixes = next(p for k, _, p in HOOK_SETS if k == key)
    obj = BpfObject(path)
    try:
        names = [n for n in obj.program_names() if n.startswith(prefixes)]
        for name in obj.program_names():
            obj.set_autoload(name, name in names)
        obj.load()
        for name in names:
            obj.attach(name)
        yield Attached(obj, names)
    finally:
        obj.close()


def refusal(exc):
    """'refused: EPERM (load)' from a LibbpfError / ProbeError."""
    err = getattr(exc, "errno", 0)
    name = errno.errorcode.get(err, str(err)) if err else "error"
    where = "attach" if isinstance(exc, ProbeError) else "load"
    return f"refused: {name} ({where})"


def probe(path):
    """{key: None if the set loads and attaches here, else 'refused: ...'} and the full messages."""
    status, messages = {}, {}
    for key, _, _ in HOOK_SETS:
        try:
            with attached(path, key):
                status[key] = None
        except LibbpfError as exc:
            status[key], messages[key] = refusal(exc), str(exc)
    return status, messages


# (id, figure, unit, format): the rows each hook set gets, in this order
FIGURES = (
    ("slowdown", "hook set: unshare loop slowdown", "x", "{:.3f}"),
    ("tax", "hook set: getppid tax (ns per unrelated syscall)", "ns", "{:.0f}"),
    ("bpf_run", "hook set: BPF ns per program run (unshare loop)", "ns", "{:.0f}"),
    ("bpf_getppid", "hook set: BPF ns per getppid (its early returns)", "ns", "{:.1f}"),
)


def values(fig_id, r, base):
    """One hook set's per-repetition values for one figure; ratios and differences within a repetition.

    r and base hold ns per call (figures.hook_sets).
    """
    if fig_id == "slowdown":
        return [h / u for h, u in zip(r["unshare_ns"], base["unshare_ns"])]
    if fig_id == "tax":
        return [h - u for h, u in zip(r["getppid_ns"], base["getppid_ns"])]
    if fig_id == "bpf_run":
        return r["bpf_ns_per_run"]
    if fig_id == "bpf_getppid":
        return r["bpf_ns_per_getppid"]
    raise ValueError(fig_id)


def _cheapest(summary, fig_id):
    """(best key, its stat, runner-up key or None, whether their spreads overlap)."""
    ranked = sorted((s[fig_id]["median"], k) for k, s in summary.items() if s[fig_id]["median"] is not None)
    if not ranked:
        return None, None, None, False
    best, second = ranked[0][1], (ranked[1][1] if len(ranked) > 1 else None)
    overlap = second is not None and summary[second][fig_id]["min"] <= summary[best][fig_id]["max"]
    return best, summary[best][fig_id], second, overlap


def reading(summary, status, untraced_unshare_ns, limit=1.25):
    """The notes that say, from the medians, which hook set is cheapest where.

    summary: {set: {fig_id: stat}} of the measured sets; status: {set: None or 'refused: ...'}.
    """
    notes = []
    if not summary:
        return ["hook sets: none could be measured here: " + ", ".join(f"{k} {v}" for k, v in status.items())]

    def added(k):   # ns a traced unshare() pays for the hook, from the slowdown
        m = summary[k]["slowdown"]["median"]
        return (m - 1) * untraced_unshare_ns if untraced_unshare_ns else float("nan")

    best, s, second, overlap = _cheapest(summary, "slowdown")
    line = (f"hook set cheapest for the traced syscalls (tight unshare loop, count-only programs): {best} "
            f"{s['median']:.2f}x ({added(best):+.0f} ns per unshare)")
    if second:
        line += (f"; next {second} {summary[second]['slowdown']['median']:.2f}x ({added(second):+.0f} ns)"
                 + (" - spreads overlap, no clear difference at this noise" if overlap else ""))
    notes.append(line)
    best, s, second, overlap = _cheapest(summary, "tax")
    line = (f"hook set cheapest for the rest of the machine (getppid tax): {best} {s['median']:+.0f} ns per "
            f"unrelated syscall")
    others = [f"{k} {summary[k]['tax']['median']:+.0f} ns" for k in summary if k != best]
    if others:
        line += "; " + ", ".join(others) + (" - spreads overlap" if overlap else "")
    on_tp = [k for k in summary if k != "fentry"]
    if on_tp:
        line += (f". {', '.join(on_tp)} hook the sys_enter/sys_exit tracepoints, which put every syscall of the "
                 "machine on the syscall-work path (syscall_regfunc(), kernel/tracepoint.c)")
    notes.append(line)
    # what the target leaves for the tracer's own work once the bare hook is paid
    room = []
    for k in sorted(summary, key=lambda k: summary[k]["slowdown"]["median"]):
        m = summary[k]["slowdown"]["median"]
        left = (limit - m) * untraced_unshare_ns if untraced_unshare_ns else float("nan")
        room.append(f"{k} {m:.3f}x leaves " + (f"~{left:.0f} ns" if left > 0 else "nothing"))
    notes.append(f"unshare-loop target (<= {limit:g}x) against the bare hook, per traced unshare() for everything "
                 f"the tracer's programs do: {', '.join(room)}")
    for k, why in status.items():
        if why:
            notes.append(f"hook set {k} ({LABELS[k]}): {why} on this kernel"
                         + ("; a trampoline is patched into those four functions only (kernel/bpf/trampoline.c), "
                            "so the rest of the machine would pay nothing; it loads in Debian's kernels "
                            "(nstrace lab)" if k == "fentry" else ""))
    return notes
