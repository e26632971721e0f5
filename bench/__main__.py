"""Run the benchmark: `sudo .venv/bin/python -m bench [--quick] [--sustain-seconds 60] [--json PATH]`.

Prints progress on stderr, then the table of figures and targets on stdout,
and writes the same as JSON (default ./nstrace-bench.json).
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

from . import breakdown, figures, hooks, lab, library, tracers
from .report import Report, stat
from .workload import Workload


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny durations, one repetition: checks the benchmark runs (the smoke test)")
    p.add_argument("--reps", type=int, help="repetitions per figure (default 5, quick 1)")
    p.add_argument("--workload-seconds", type=float,
                   help="untraced duration of a churn run; unshare runs a quarter, getppid half of it (default 2, quick 0.1)")
    p.add_argument("--sustain-seconds", type=float,
                   help="how long the best event rate must hold with zero loss (default 60, quick 1)")
    p.add_argument("--probe-seconds", type=float,
                   help="duration of each rate-search trial (default 5, quick 0.5)")
    p.add_argument("--tools", default="strace,perf,bpftrace",
                   help="tools to compare nstrace with, comma-separated (default: %(default)s)")
    p.add_argument("--json", default="nstrace-bench.json", help="where to write the JSON document")
    p.add_argument("--wait-quiet", type=float,
                   help="seconds the hook-set figure may wait, in all, for other processes' BPF programs on the "
                        "syscall tracepoints to go (default 60, quick 0)")
    p.add_argument("--only", choices=["hooks", "startup", "command", "library", "lab"],
                   help="hooks: only the hook-set figure (a minute or two), e.g. to repeat it when the machine is "
                        "quiet; startup: only start-up and shutdown; command: only `nstrace watch -- true` beside "
                        "`true` and `strace -f true`; library: only nstrace.trace()'s enter and exit beside the "
                        "command line's start-up; lab: only the lab's boot and demo per kernel (QEMU guests, "
                        "one at a time; about 15 s a run; not part of the whole benchmark)")
    p.add_argument("--lab-kernels", default=",".join(lab.KERNELS),
                   help="--only lab: the kernels, comma-separated (default: %(default)s)")
    p.add_argument("--lab-reps", type=int, help="--only lab: repetitions per kernel and build (default 3, quick 1)")
    p.add_argument("--baseline", metavar="NSTRACE",
                   help="another build's nstrace executable, measured side by side with this one in the start-up "
                        "and lab figures (e.g. a checkout of the last release: its .venv/bin/nstrace)")
    a = p.parse_args(argv)
    q = a.quick
    a.reps = a.reps or (1 if q else 5)
    a.workload_seconds = a.workload_seconds or (0.1 if q else 2.0)
    a.sustain_seconds = a.sustain_seconds or (1.0 if q else 60.0)
    a.probe_seconds = a.probe_seconds or (0.2 if q else 5.0)
    a.wait_quiet = a.wait_quiet if a.wait_quiet is not None else (0.0 if q else 60.0)
    return a


def startup(rep, work, background, a):
    """Start-up and shutdown of each background tracer, side by side (figures.startup_shutdown)."""
    st = figures.startup_shutdown(work, background, a.reps, log)
    for tool in background:
        r = st[tool]
        rep.add("start: exec -> says live", tool, r["live_s"], "ms", scale=1e3, fmt="{:.0f}")
        rep.add("start: exec -> first event captured", tool, r["first_event_s"], "ms", scale=1e3, fmt="{:.0f}")
        rep.add("stop: SIGINT -> exited", tool, r["stop_s"], "ms", scale=1e3, fmt="{:.0f}")
        rep.add("stop: SIGINT -> all programs gone", tool, r["detached_s"], "ms", scale=1e3, fmt="{:.0f}")
    if tracers.NstraceWatch.BASELINE in st:
        ratio = [x / b for x, b in zip(st["nstrace"]["first_event_s"], st[tracers.NstraceWatch.BASELINE]["first_event_s"])
                 if x is not None and b]
        rep.add("start: exec -> first event captured", "nstrace / baseline", ratio, "x", fmt="{:.3f}")
    if "bpftrace" in st:
        ratio = [x / b for x, b in zip(st["nstrace"]["first_event_s"], st["bpftrace"]["first_event_s"]) if x and b]
        rep.add("start: exec -> first event captured", "nstrace / bpftrace", ratio, "x", fmt="{:.3f}")
    s = stat(st["nstrace"]["first_event_s"])
    rep.target("live", s["median"], s["median"] is not None and f"{s['median'] * 1e3:.0f} ms")
    rep.target("live-26", s["median"], s["median"] is not None and f"{s['median'] * 1e3:.0f} ms")
    if "bpftrace" in st:
        r = stat([x / b for x, b in zip(st["nstrace"]["first_event_s"], st["bpftrace"]["first_event_s"]) if x and b])
        rep.target("live-bpftrace", r["median"], r["median"] is not None and f"{r['median']:.3f}x")
    else:
        rep.target("live-bpftrace", None, "bpftrace was not measured")
    builds = {"nstrace": str(tracers.NSTRACE), **({"baseline": a.baseline} if a.baseline else {})}
    breakdown.add_rows(rep, breakdown.measure(builds, a.reps, log))
    s = stat(st["nstrace"]["detached_s"])
    rep.target("shutdown", s["median"], f"{s['median'] * 1e3:.0f} ms (max {s['max'] * 1e3:.0f} ms)"
               + (f", {st['nstrace']['hung']} hung" if st["nstrace"]["hung"] else ""))
    return st


def library_figure(rep, a, st):
    """nstrace.trace()'s enter and exit (bench/library.py), beside the command line's start-up less the
    interpreter's own (st: startup's figures, measured in the same run)."""
    res = library.enter_exit(a.reps, 5 if a.quick else 20, log)
    interpreter = res["interpreter"]
    variants = (("first_enter", "trace() enter: a process's first block (imports included), cold"),
                ("enter", "trace() enter: a later block, cold (the last block's holder done)"),
                ("enter_back_to_back", "trace() enter: a later block, right after the last"),
                ("exit", "trace() exit"),
                ("detached_after_exit", "trace() exit -> its programs gone (the holder's detach)"))
    for key, label in variants:
        rep.add("library: nstrace.trace()", label, res[key], "ms", scale=1e3, fmt="{:.0f}")
    rep.add("library: nstrace.trace()", "python -c pass (exec -> exit)", interpreter, "ms", scale=1e3, fmt="{:.0f}")
    live, first, python = (stat(v)["median"] for v in (st["nstrace"]["first_event_s"], res["first_enter"], interpreter))
    if live is None or live <= python:
        rep.target("library", None, "the command line's start-up was not measured")
        return
    budget = live - python
    rep.target("library", first / budget, f"first enter {first * 1e3:.0f} ms; the command line's exec -> first event "
               f"{live * 1e3:.0f} ms less the interpreter's {python * 1e3:.0f} ms = {budget * 1e3:.0f} ms")


def short_command(rep, a):
    """`nstrace watch -- true` beside `true` and `strace -f true`: wall time, side by side."""
    res = figures.short_command(max(a.reps, 5), log, baseline=a.baseline)
    for name, values in res.items():
        rep.add("short command: exec -> exit (wall)" if "after it exited" not in name else
                "short command: detach left to the holder", name, values, "ms", scale=1e3, fmt="{:.0f}")
    pairs = (("nstrace / strace -f", "nstrace watch -- true", "strace -f true"),
             ("nstrace --json / strace -e (unshare --uts --ipc true)",
              "nstrace watch --json -- unshare --uts --ipc true",
              "strace -f -e trace=<ns syscalls> unshare --uts --ipc true"),
             ("baseline / strace -f", "baseline watch -- true", "strace -f true"),
             ("baseline --json / strace -e (unshare --uts --ipc true)",
              "baseline watch --json -- unshare --uts --ipc true",
              "strace -f -e trace=<ns syscalls> unshare --uts --ipc true"))
    for label, num, den in pairs:
        if res.get(num) and res.get(den):
            rep.add("short command: exec -> exit (wall)", label, [n / s for n, s in zip(res[num], res[den])],
                    "x", fmt="{:.1f}")
    for key, (label, num, den) in zip(("command", "command-ns"), pairs):
        r = stat([n / s for n, s in zip(res[num], res[den])])
        rep.target(key, r["median"], r["median"] is not None and f"{r['median']:.1f}x (spread {r['min']:.1f}-{r['max']:.1f})")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def version(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def hook_sets(rep, work, n, a, log):
    """Rows "hook set: ..." for every set of bench/hooks.py, the refused ones included, and the reading note."""
    with tempfile.TemporaryDirectory(prefix="nsbench-hooks-") as tmp:
        obj, why = hooks.build(tmp)
        if obj is None:
            rep.notes.append(f"hook sets not measured: {why}")
            return
        status, messages = hooks.probe(obj)
        usable = [k for k, _, _ in hooks.HOOK_SETS if status[k] is None]
        res = figures.hook_sets(work, obj, usable, n["unshare"], n["getppid"], a.reps, log,
                                wait_budget_s=a.wait_quiet)
    base = res["untraced"]
    rep.add("hook set: untraced baseline", "unshare()", base["unshare_ns"], "us", scale=1e-3)
    rep.add("hook set: untraced baseline", "getppid()", base["getppid_ns"], "ns", fmt="{:.0f}")
    summary = {}
    for fig_id, figure, unit, fmt in hooks.FIGURES:
        for key, label, _ in hooks.HOOK_SETS:
            if status[key]:
                rep.add(figure, f"{label}: {status[key]}", [], unit, fmt=fmt)
                continue
            values = hooks.values(fig_id, res[key], base)
            summary.setdefault(key, {})[fig_id] = rep.add(figure, label, values, unit, fmt=fmt)
    rep.meta["hook_sets"] = {
        key: {"label": label, "status": "measured" if status[key] is None else status[key],
              **({"error": messages[key]} if key in messages else {}),
              **({k: res[key][k] for k in ("bpf_runs_per_unshare", "hits_per_unshare")} if key in res else {})}
        for key, label, _ in hooks.HOOK_SETS}
    rep.meta["hook_sets_contaminated_reps"] = res["contaminated_reps"]
    rep.meta["hook_sets_discarded_reps"] = res["discarded_reps"]
    rep.notes += hooks.reading(summary, status, stat(base["unshare_ns"])["median"])
    if res["contaminated_reps"]:
        rep.notes.append(f"hook sets: {res['contaminated_reps']} of {a.reps} repetition(s) ran while other processes "
                         f"had BPF programs on the syscall tracepoints ({', '.join(res['others_seen'][:4])}...): "
                         "their 'untraced' runs already paid the syscall-work path, so those hook-set slowdowns and taxes "
                         "are understated")


def main(argv=None):
    a = parse(argv)
    if os.geteuid() != 0:
        sys.exit("bench: run as root: it loads BPF programs and sets kernel.bpf_stats_enabled")
    t_start = time.monotonic()
    avail = tracers.availability()
    if avail["nstrace"]:
        sys.exit(f"bench: {avail['nstrace']}")
    rep = Report({
        "kernel": platform.release(), "cpus": os.cpu_count(), "quick": a.quick, "only": a.only, "reps": a.reps,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {"strace": version(["strace", "-V"]), "perf": version(["perf", "--version"]),
                     "bpftrace": version(["bpftrace", "--version"])},
        "tools": {t: ("available" if why is None else why) for t, why in avail.items()},
    })
    wanted = {t.strip() for t in a.tools.split(",") if t.strip()}
    for tool in ("strace", "perf", "bpftrace"):
        if tool not in wanted and not avail[tool]:
            avail[tool] = "not asked for (--tools)"
    rep.meta["tools"] = {t: ("available" if why is None else why) for t, why in avail.items()}
    for tool, why in avail.items():
        if why:
            rep.notes.append(f"{tool} not measured: {why}")
    side_by_side = ["nstrace", *(t for t in ("strace", "perf", "bpftrace") if not avail[t])]
    if not avail["bpftrace"] and not a.only:
        side_by_side.append("floor")
        rep.notes.append("'floor' = bpftrace with count-only programs on the same nine tracepoints: "
                         "the least any tracer on this hook set costs")
    load_before = os.getloadavg()[0]
    if a.only == "lab":
        lab.main_lab(rep, a, log)
        return finish(rep, a, t_start, load_before)
    background = [t for t in ("nstrace", "bpftrace") if not avail[t]]
    hwm = []  # every VmHWM sample of nstrace, KiB

    if a.quick:
        tracers.NstraceWatch.extra_args = ("--buffer-kib", "256")
        rep.notes.append("--quick: tiny durations" + ("" if a.only else ", nstrace ran with --buffer-kib 256") +
                         "; the figures only show that the benchmark works")
    if a.only == "command":
        short_command(rep, a)
        return finish(rep, a, t_start, load_before)
    if a.only == "library":
        work = Workload()
        try:
            library_figure(rep, a, startup(rep, work, ["nstrace"], a))
        finally:
            work.close()
        return finish(rep, a, t_start, load_before)
    work = Workload()
    try:
        # the unshare loop is slowed 10x or more by strace and perf: a quarter of the time keeps the run short
        share = {"churn": 1.0, "unshare": 0.25, "getppid": 0.5}
        if a.only:
            del share["churn"]
        n = {m: work.calibrate(m, a.workload_seconds * f) for m, f in share.items()}
        log(f"calibrated untraced to ~{a.workload_seconds:g} s: {n}")
        if a.only == "hooks":
            hook_sets(rep, work, n, a, log)
            return finish(rep, a, t_start, load_before)
        if a.baseline:
            tracers.NstraceWatch.baseline = a.baseline
            background.insert(1, tracers.NstraceWatch.BASELINE)
            side_by_side.insert(1, tracers.NstraceWatch.BASELINE)
        if a.only == "startup":
            startup(rep, work, background, a)
            return finish(rep, a, t_start, load_before)

        # 1. slowdown, side by side, and nstrace/strace
        ratios = {}
        for mode, unit_name in (("churn", "round (4 ns ops + 2 plain forks)"), ("unshare", "unshare()")):
            times, side = figures.slowdown(work, mode, n[mode], side_by_side, a.reps, log)
            hwm += [s["vm_hwm_kib"] for s in side if s.get("vm_hwm_kib")]
            rep.add(f"{mode}: untraced cost", f"per {unit_name}", [t / n[mode] for t in times["untraced"]],
                    "us", scale=1e-3)
            for tool in side_by_side:
                r = [t / u for t, u in zip(times[tool], times["untraced"])]
                ratios[(mode, tool)] = rep.add(f"{mode}: slowdown", f"{tool} / untraced", r, "x", fmt="{:.3f}")
            if "strace" in times:
                rep.add(f"{mode}: nstrace vs strace", "nstrace / strace",
                        [x / s for x, s in zip(times["nstrace"], times["strace"])], "x", fmt="{:.3f}")
            lost = sum(s.get("lost", 0) for s in side)
            if lost:
                rep.notes.append(f"{mode}: nstrace lost {lost} events during the slowdown runs")
        for mode in ("churn", "unshare"):
            s = ratios[(mode, "nstrace")]
            rep.target(mode, s["median"], f"{s['median']:.3f}x (spread {s['min']:.3f}-{s['max']:.3f})")
        s = ratios[("unshare", "nstrace")]
        rep.target("unshare-26", s["median"], f"{s['median']:.3f}x (spread {s['min']:.3f}-{s['max']:.3f})")

        # 2. start-up and shutdown; a short command under watch -- COMMAND; the library's enter and exit
        st = startup(rep, work, background, a)
        short_command(rep, a)
        library_figure(rep, a, st)

        # 3. kernel-side cost per probe hit: in the churn (fresh processes, namespaces other CPUs
        # keep writing: the verdict) and in the tight loop (the same task again: the programs alone)
        costs = figures.probe_cost(work, "churn", n["churn"], background, a.reps, log)
        for tool in background:
            for prog, v in sorted(costs[tool].items()):
                rep.add("kernel ns per probe hit", f"{tool} {prog}", v, "ns", fmt="{:.0f}")
        worst = max(((stat(v)["median"], p) for p, v in costs["nstrace"].items()), default=(None, None))
        nstraces = [t for t in background if t != "bpftrace"]
        tights = figures.probe_cost(work, "unshare", n["unshare"], nstraces, a.reps, log)
        for tool in nstraces:
            for prog, v in sorted(tights[tool].items()):
                rep.add("kernel ns per probe hit, tight unshare loop", f"{tool} {prog}", v, "ns", fmt="{:.0f}")
        # exec: every exec of the machine runs the exec programs, which record only one that moves
        execs = figures.probe_cost(work, "exec", 50 if a.quick else 1000, nstraces, a.reps, log)
        for tool in nstraces:
            for prog, v in sorted(execs[tool].items()):
                if "exec" in prog:
                    rep.add("kernel ns per probe hit, exec loop", f"{tool} {prog}", v, "ns", fmt="{:.0f}")
        tight = tights["nstrace"]
        tight_worst = max(((stat(v)["median"], p) for p, v in tight.items() if "unshare" in p), default=(None, None))
        detail = worst[1] and f"churn: worst {worst[1]} {worst[0]:.0f} ns" + (
            f"; tight unshare loop: worst {tight_worst[1]} {tight_worst[0]:.0f} ns" if tight_worst[1] else "")
        rep.target("probe", worst[0], detail)
        rep.target("probe-26", None if worst[0] is None else max(worst[0], tight_worst[0] or 0), detail)

        # 4. the tax on unrelated syscalls, per hook set
        tax = figures.syscall_tax(work, n["getppid"], background, a.reps, log)
        rep.add("getppid()", "untraced", tax["untraced"], "ns", fmt="{:.0f}")
        for tool in background:
            rep.add("getppid() tax: syscall tracepoints", f"{tool} attached",
                    [t - u for t, u in zip(tax[tool], tax["untraced"])], "ns", fmt="{:.0f}")

        # 4b. the hook itself, per hook set that could carry the syscall layer (count-only programs of ours)
        hook_sets(rep, work, n, a, log)

        # 5. sustained event rate, and what happens above it
        sus = figures.sustained(work, a.sustain_seconds, a.probe_seconds, log)
        hwm += [t["vm_hwm_kib"] for t in sus["trials"] if t["vm_hwm_kib"]]
        best, above = sus["sustained_rate"], sus["above"]
        rep.add(f"rate: highest zero-loss for {a.sustain_seconds:g} s", "nstrace (full decoding)",
                [best or 0], "events/s", fmt="{:.0f}")
        rep.add("rate: generator ceiling (untraced)", "unshare()", [sus["generator_ceiling"]], "events/s", fmt="{:.0f}")
        rep.add("rate: nstrace decode capacity (overloaded)", "decoded / busy time", [sus["decode_capacity"]],
                "events/s", fmt="{:.0f}")
        rep.add("rate: above it (generator at full speed)", "lost events (counted)", [above["lost"]], "events",
                fmt="{:.0f}")
        rep.add("rate: above it (generator at full speed)", "SIGINT -> exited", [above["stop_s"]], "ms",
                scale=1e3, fmt="{:.0f}")
        rep.notes.append(f"above the sustained rate: generator at full speed, it reached "
                         f"{above['achieved_rate']:.0f}/s, nstrace decoded {above['decoded']}, lost {above['lost']} "
                         f"(counted), {'HUNG (killed)' if above['hung'] else 'stopped'} in {above['stop_s']:.2f} s")
        foreign = [t for t in sus["trials"] if t["rate"] and t["decoded"] > t["generated"]]
        if foreign:
            rep.notes.append(f"{len(foreign)} rate trial(s) saw more records than the workload made: other processes "
                             "on the machine created namespaces meanwhile, and their records share the ring buffer")
        detail = f"{best or 0:.0f}/s for {a.sustain_seconds:g} s"
        rep.target("rate", (best or 0) if a.sustain_seconds >= 60 else None,
                   detail if a.sustain_seconds >= 60 else detail + " (needs --sustain-seconds >= 60 to check)")

        # 6. memory
        rep.add("nstrace VmHWM while watching", "every nstrace run", [k / 1024 for k in hwm], "MiB", fmt="{:.1f}")
        peak = max(hwm) * 1024 if hwm else None
        rep.target("memory", peak, peak and f"max {peak / 1e6:.1f} MB over {len(hwm)} runs")
    finally:
        work.close()
    finish(rep, a, t_start, load_before)


def finish(rep, a, t_start, load_before):
    """Print the table and write the JSON."""
    rep.meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    rep.meta["loadavg_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
    if max(load_before, os.getloadavg()[0]) > 0.5:
        rep.notes.append(f"the machine was busy with other work (1-min load {load_before:.2f} at start, "
                         f"{os.getloadavg()[0]:.2f} at end): absolute figures are noisy, ratios less so")
    print(rep.table())
    rep.write_json(a.json)
    log(f"done in {rep.meta['elapsed_s']} s; JSON in {os.path.abspath(a.json)}")


if __name__ == "__main__":
    main()
