"""One function per figure. Each returns plain data (lists of per-repetition values).

Repetitions interleave the tracers (order rotated each time) so that a noisy
moment of the machine hits all of them alike, and every ratio is taken
against the untraced run of the same repetition.
"""

import os
import subprocess
import tempfile
import time

from . import hooks, kernel
from .tracers import BPFTRACE_FLOOR_SCRIPT, NSTRACE, Bpftrace, NstraceWatch, perf_prefix, strace_prefix
from .workload import COMM


def _shm_file(tag):
    # tmpfs, not disk: output the tracers must write to a readable file costs as little as /dev/null can
    fd, path = tempfile.mkstemp(prefix=f"nsbench-{tag}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    return path


def _nstrace(tool, out=os.devnull):
    """The watch of this build ("nstrace") or of the baseline build (NstraceWatch.BASELINE)."""
    return NstraceWatch(out, NstraceWatch.baseline if tool == NstraceWatch.BASELINE else None)


def run_traced(work, tool, mode, n):
    """The workload's own timing (ns) under one tool, plus what the tool reported."""
    if tool == "untraced":
        return work.run(mode, n)["ns"], {}
    if tool == "strace":
        return work.run(mode, n, prefix=strace_prefix())["ns"], {}
    if tool == "perf":
        return work.run(mode, n, prefix=perf_prefix())["ns"], {}
    if tool in ("nstrace", NstraceWatch.BASELINE):
        with _nstrace(tool) as w:
            ns = work.run(mode, n)["ns"]
            hwm = w.vm_hwm_kib()
        s = w.summary() or {}
        if tool != "nstrace":  # the figures of memory and loss are this build's
            return ns, {}
        return ns, {"vm_hwm_kib": hwm, "lost": sum((s.get("lost") or {}).values()), "hung": w.hung}
    if tool in ("bpftrace", "floor"):
        out = _shm_file("bt")
        try:
            with Bpftrace(out, **({"script": BPFTRACE_FLOOR_SCRIPT} if tool == "floor" else {})):
                ns = work.run(mode, n)["ns"]
        finally:
            os.unlink(out)
        return ns, {}
    raise ValueError(tool)


def slowdown(work, mode, n, tools, reps, log):
    """{tool: [ns per repetition]} and nstrace's side data, for one workload."""
    times = {t: [] for t in ["untraced", *tools]}
    side = []
    for rep in range(reps):
        order = ["untraced", *tools]
        order = order[rep % len(order):] + order[:rep % len(order)]
        for tool in order:
            ns, extra = run_traced(work, tool, mode, n)
            times[tool].append(ns)
            if extra:
                side.append(extra)
        log(f"{mode} rep {rep + 1}/{reps}: " + ", ".join(f"{t} {times[t][-1] / 1e6:.0f} ms" for t in times))
    return times, side


def startup_shutdown(work, tools, reps, log):
    """Exec -> live (as the tool says), exec -> first captured event, SIGINT -> probes gone.

    A pinger does unshare(CLONE_NEWUTS) 2000 times a second (every 0.5 ms)
    from before the tracer starts, so the first event captured marks the
    moment tracing went live to within 0.5 ms.
    """
    res = {t: {"live_s": [], "first_event_s": [], "stop_s": [], "detached_s": [], "hung": 0}
           for t in tools}
    for rep in range(reps):
        for tool in tools:
            out = _shm_file(tool)
            pinger = subprocess.Popen(work.argv("rate", 2000, 30), stdout=subprocess.DEVNULL)
            try:
                time.sleep(0.05)
                tracer = (Bpftrace(out) if tool == "bpftrace" else _nstrace(tool, out)).start()
                deadline = time.monotonic() + 10
                while tracer.first_event_s(COMM) is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                ids = [p["id"] for p in kernel.programs_of(tracer.proc.pid)]
                t = time.monotonic()
                tracer.stop()
                while any(kernel.prog_exists(i) for i in ids) and time.monotonic() - t < 30:
                    time.sleep(0.001)
                r = res[tool]
                r["detached_s"].append(time.monotonic() - t)
                r["live_s"].append(tracer.live_s)
                r["first_event_s"].append(tracer.first_event_s(COMM))
                r["stop_s"].append(tracer.stop_s)
                r["hung"] += tracer.hung
                r["programs"] = len(ids)
            finally:
                pinger.kill()
                pinger.wait()
                os.unlink(out)
        log(f"startup rep {rep + 1}/{reps}: " + ", ".join(
            f"{t} live {res[t]['first_event_s'][-1] * 1e3:.0f} ms, detached {res[t]['detached_s'][-1] * 1e3:.0f} ms"
            for t in tools))
    return res


# strace's habit: the command, and what it did to namespaces (its syscalls that make or join one)
STRACE_NS = ["strace", "-f", "-o", "/dev/null", "-e", "trace=clone,clone3,unshare,setns"]


def short_command(reps, log, baseline=None):
    """Wall time of a command that does nothing: `true`, `strace -f true`, `nstrace watch -- true`
    (exec to exit, as a shell waits for it), and of `unshare --uts --ipc true` under strace with a
    namespace filter and under `nstrace watch --json`, side by side, order rotated per repetition;
    and, for nstrace, how long after its exit its programs were still attached (the detach it leaves
    to a holder process, nstrace/bpf/teardown.py). With a baseline (another build's nstrace
    executable), the same two watches of it, in the same rotation.
    """
    ns_cmd = ["unshare", "--uts", "--ipc", "true"]
    runs = {"true": ["true"], "strace -f true": ["strace", "-f", "-o", "/dev/null", "true"],
            "nstrace watch -- true": [str(NSTRACE), "watch", "--", "true"],
            "strace -f -e trace=<ns syscalls> unshare --uts --ipc true": STRACE_NS + ns_cmd,
            "nstrace watch --json -- unshare --uts --ipc true": [str(NSTRACE), "watch", "--json", "--", *ns_cmd]}
    if baseline:
        runs["baseline watch -- true"] = [baseline, "watch", "--", "true"]
        runs["baseline watch --json -- unshare --uts --ipc true"] = [baseline, "watch", "--json", "--", *ns_cmd]
    res = {name: [] for name in runs}
    lingered = []
    for rep in range(reps):
        names = list(runs)
        names = names[rep % len(names):] + names[:rep % len(names)]
        for name in names:
            before = set(kernel.prog_ids_named(("sys_enter", "sys_exit"))) if name == "nstrace watch -- true" else None
            t = time.monotonic()
            subprocess.run(runs[name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            res[name].append(time.monotonic() - t)
            if before is not None:
                ended = time.monotonic()
                while set(kernel.prog_ids_named(("sys_enter", "sys_exit"))) - before and time.monotonic() - ended < 10:
                    time.sleep(0.005)
                lingered.append(time.monotonic() - ended)
        log(f"short command rep {rep + 1}/{reps}: " + ", ".join(f"{n} {res[n][-1] * 1e3:.0f} ms" for n in res))
    res["nstrace: programs still attached after it exited"] = lingered
    return res


def probe_cost(work, mode, n, tools, reps, log):
    """{tool: {program: [ns per hit, per repetition]}} from BPF run-time statistics.

    Fresh programs each repetition, so run_time_ns/run_cnt covers only this
    workload plus whatever else the machine did meanwhile (plain forks hit
    sys_enter_clone too, and are part of its cost).
    """
    out = {t: {} for t in tools}
    with kernel.bpf_stats():
        for rep in range(reps):
            for tool in tools:
                path = _shm_file(tool)
                try:
                    with (Bpftrace(path) if tool == "bpftrace" else _nstrace(tool)) as tracer:
                        work.run(mode, n)
                        costs = kernel.cost_per_hit(kernel.programs_of(tracer.proc.pid))
                finally:
                    os.unlink(path)
                for prog, c in costs.items():
                    if c["ns_per_hit"] is not None:
                        out[tool].setdefault(prog, []).append(c["ns_per_hit"])
            log(f"probe cost rep {rep + 1}/{reps}: " + "; ".join(
                f"{t} " + ", ".join(f"{k} {v[-1]:.0f} ns" for k, v in out[t].items()) for t in tools))
    return out


def sustained(work, seconds, probe_seconds, log):
    """The highest unshare rate nstrace decodes with zero loss for `seconds`, and a run above it.

    A rate search with short trials is fooled by the ring buffer, which
    absorbs a burst of tens of thousands of records whatever the reader's
    speed. So the first trial overloads nstrace at the generator's full speed
    (this is also the run "above it": loss must be counted and nstrace must
    stop), and nstrace's decode capacity is taken from it as records decoded
    over the time it was busy (the workload plus the drain after SIGINT).
    The full-length runs then start at 90% of that capacity and step down by
    a quarter until one holds with zero loss (at most 4 tries).
    """
    ceiling_s = min(1.0, probe_seconds)
    ceiling = work.run("rate", 0, ceiling_s)["ops"] / ceiling_s
    trials = []

    def trial(rate, secs):
        with NstraceWatch() as w:
            r = work.run("rate", rate, secs)
            hwm = w.vm_hwm_kib()
        s = w.summary() or {}
        lost = sum((s.get("lost") or {}).values())
        seen = (s.get("events") or {}).get("unshare", 0)
        t = {"rate": rate, "seconds": secs, "generated": r["ops"], "achieved_rate": r["ops"] * 1e9 / r["ns"],
             "decoded": seen, "lost": lost, "ok": lost == 0 and seen >= r["ops"], "vm_hwm_kib": hwm,
             "stop_s": w.stop_s, "hung": w.hung,
             "decode_rate": seen / (r["ns"] / 1e9 + w.stop_s)}
        trials.append(t)
        log(f"rate {rate:.0f}/s for {secs:g} s: generated {r['ops']} ({t['achieved_rate']:.0f}/s), "
            f"decoded {seen}, lost {lost}, stop {w.stop_s:.2f} s, VmHWM {hwm / 1024:.0f} MiB, "
            f"decoding ~{t['decode_rate']:.0f}/s")
        return t

    above = trial(0, probe_seconds)
    rate, confirmed = 0.9 * above["decode_rate"], None
    for _ in range(4):
        if trial(rate, seconds)["ok"]:
            confirmed = rate
            break
        rate *= 0.75
    return {"sustained_rate": confirmed, "seconds": seconds, "generator_ceiling": ceiling,
            "decode_capacity": above["decode_rate"], "above": above, "trials": trials}


def syscall_tax(work, n, tools, reps, log):
    """ns per getppid() untraced and with each tool's hooks attached (same repetition)."""
    times, _ = slowdown(work, "getppid", n, tools, reps, log)
    return {t: [ns / n for ns in v] for t, v in times.items()}


HOOK_CHUNKS = 3


def _best_of(work, mode, n):
    """ns per call of `mode`, the best of HOOK_CHUNKS runs of n / HOOK_CHUNKS calls.

    On a shared 2-CPU machine one run in a few is hit by another process; the
    fastest chunk is the loop's own cost, and the hooks add to every chunk.
    """
    k = max(1, n // HOOK_CHUNKS)
    return min(work.run(mode, k)["ns"] / k for _ in range(HOOK_CHUNKS))


def _hook_rep(work, obj, order, n_unshare, n_getppid):
    """One repetition of hook_sets: {set: {figure: value}}, sets in the given order."""
    n_u_stats, n_g_stats = max(1, n_unshare // 4), max(1, n_getppid // 4)
    one = {}
    for s in order:
        r = one[s] = {}
        if s == "untraced":
            r["unshare_ns"] = _best_of(work, "unshare", n_unshare)
            r["getppid_ns"] = _best_of(work, "getppid", n_getppid)
            continue
        with hooks.attached(obj, s) as h:
            before = h.hits()
            r["unshare_ns"] = _best_of(work, "unshare", n_unshare)
            after = h.hits()
            done = max(1, n_unshare // HOOK_CHUNKS) * HOOK_CHUNKS
            r["hits_per_unshare"] = min(after[k] - before[k] for k in hooks.SLOTS) / done
            r["getppid_ns"] = _best_of(work, "getppid", n_getppid)
            with kernel.bpf_stats():
                s0 = h.stats()
                work.run("unshare", n_u_stats)
                s1 = h.stats()
                work.run("getppid", n_g_stats)
                s2 = h.stats()
        runs = sum(s1[p][0] - s0[p][0] for p in s1)
        r["bpf_ns_per_run"] = sum(s1[p][1] - s0[p][1] for p in s1) / runs if runs else None
        r["bpf_runs_per_unshare"] = runs / n_u_stats
        r["bpf_ns_per_getppid"] = sum(s2[p][1] - s1[p][1] for p in s2) / n_g_stats
    return one


def hook_sets(work, obj, sets, n_unshare, n_getppid, reps, log, wait_budget_s=0.0):
    """Each hook set's own cost, with count-only programs (bench/hooks.bpf.c), side by side.

    Per repetition, in rotated order, untraced and each set attached in turn:
    the tight unshare loop and the getppid loop with statistics off, as ns
    per call, best of three chunks (they are what the slowdown and tax are
    taken from), then, still attached,
    a quarter-length run of each with kernel.bpf_stats_enabled on, for the
    BPF programs' own ns per run.

    Another process's BPF program on the syscall tracepoints makes "untraced"
    traced (the syscall-work flag is machine-wide), so while wait_budget_s
    lasts we wait for such programs to go before a repetition and run it
    again if one was there at its start or end. Once the budget is spent,
    repetitions are kept as they come and counted in "contaminated_reps".
    """
    keys = ("unshare_ns", "getppid_ns", "bpf_ns_per_run", "bpf_ns_per_getppid",
            "bpf_runs_per_unshare", "hits_per_unshare")
    res = {"untraced": {"unshare_ns": [], "getppid_ns": []}, **{s: {k: [] for k in keys} for s in sets}}
    deadline = time.monotonic() + wait_budget_s
    contaminated, discarded, others_seen, rep, attempt = 0, 0, set(), 0, 0
    while rep < reps:
        t_wait = time.monotonic()
        others = kernel.others_syscall_hooks()
        while others and time.monotonic() < deadline:
            time.sleep(0.5)
            others = kernel.others_syscall_hooks()
        if time.monotonic() - t_wait > 1:
            log(f"hook sets: waited {time.monotonic() - t_wait:.0f} s for other processes' syscall hooks to go")
        order = ["untraced", *sets]
        order = order[attempt % len(order):] + order[:attempt % len(order)]
        attempt += 1
        one = _hook_rep(work, obj, order, n_unshare, n_getppid)
        others += kernel.others_syscall_hooks()
        others_seen.update(others)
        if others and time.monotonic() < deadline:
            discarded += 1
            log("hook sets: repetition discarded, other processes' syscall hooks came meanwhile: " + others[0])
            continue
        contaminated += bool(others)
        for s, r in one.items():
            for k, v in r.items():
                res[s][k].append(v)
        rep += 1
        log(f"hook sets rep {rep}/{reps}: " + ", ".join(
            f"{s} unshare {one[s]['unshare_ns']:.0f} ns getppid {one[s]['getppid_ns']:.0f} ns"
            for s in ["untraced", *sets]) + (" (other processes' syscall hooks present)" if others else ""))
    res.update(contaminated_reps=contaminated, discarded_reps=discarded, others_seen=sorted(others_seen))
    return res
