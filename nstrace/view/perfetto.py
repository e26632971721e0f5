"""The session as a Perfetto trace: the Chrome Trace Event Format ({"traceEvents": [...]}
with ph "X" complete events per operation and per kernel function, "i"
instant events per namespace created or joined, "M" metadata naming
processes and threads; ts/dur in microseconds from the session start),
which ui.perfetto.dev and chrome://tracing open.
"""


from ..kernel import flags as fl
from ..study import callpath

# --- Perfetto / Chrome trace events -----------------------------------------------

def perfetto(session, records=None):
    """The session as a Trace Event Format object: {"traceEvents": [...], "displayTimeUnit", "otherData"}."""
    records = sorted(session.records if records is None else records, key=lambda r: r.ts)
    base = min([session.started] + [r.ts - r.duration_us / 1e6 for r in records])
    us = lambda wall_s: round((wall_s - base) * 1e6, 3)
    offset = session.wall_offset_ns
    out, named = [], set()

    def name_task(pid, tid, comm):
        if (pid, None) not in named:
            named.add((pid, None))
            out.append({"ph": "M", "name": "process_name", "pid": pid, "tid": pid, "args": {"name": f"{comm} ({pid})"}})
        if (pid, tid) not in named:
            named.add((pid, tid))
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"{comm} ({tid})"}})

    for n, r in enumerate(records, 1):
        name_task(r.pid, r.tid, r.comm)
        start = r.ts - r.duration_us / 1e6
        args = {"n": n, "flags": r.flags, "ret": r.ret, "errno": r.errno, "child_pid": r.child_pid,
                "changed": {e: [(r.ns_before or {}).get(e), (r.ns_after or {}).get(e)] for e in r.changed},
                "target": r.target, "nsproxy": r.nsproxy,
                "proc_check": r.proc_check["status"] if r.proc_check else None}
        out.append({"ph": "X", "name": f"{r.op} {fl.short(r.flags)}", "cat": f"namespace,{r.op}", "pid": r.pid,
                    "tid": r.tid, "ts": us(start), "dur": round(r.duration_us, 3), "args": args})
        if offset is not None:
            out += _step_events(r, offset, us)
        mover = (r.child_pid, r.child_tid) if r.op in fl.CHILD_OPS and r.child_pid else (r.pid, r.tid)
        if mover != (r.pid, r.tid):
            name_task(mover[0], mover[1], r.comm)
        for entry in r.changed:
            out.append({"ph": "i", "s": "t", "name": f"{'joined' if r.op == 'setns' else 'in'} "
                        f"{fl.ns_type_of_entry(entry)}:[{(r.ns_after or {}).get(entry)}]",
                        "cat": "namespace", "pid": mover[0], "tid": mover[1], "ts": us(r.ts),
                        "args": {"n": n, "entry": entry, "before": (r.ns_before or {}).get(entry),
                                 "after": (r.ns_after or {}).get(entry),
                                 "ns_id": (r.ns_id_after or {}).get(entry)}})
    k = session.kernel
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"source": "nstrace", "host": (session.header or {}).get("host"),
                          "kernel": k.get("release"), "nstrace": (session.header or {}).get("nstrace"),
                          "started": base}}


def _step_events(rec, offset_ns, us):
    """Kernel-function steps as nested complete events (enter..exit) on the caller's thread."""
    out, open_steps = [], {}
    for s in rec.kernel_path:
        ts_ns = s.get("ts_ns")
        if not ts_ns:
            continue
        wall = (ts_ns + offset_ns) / 1e9
        if s["kind"] == "enter":
            open_steps.setdefault(s["func"], []).append((wall, s))
        elif open_steps.get(s["func"]):
            start, enter = open_steps[s["func"]].pop()
            out.append({"ph": "X", "name": s["func"], "cat": "kernel", "pid": rec.pid, "tid": rec.tid,
                        "ts": us(start), "dur": round((wall - start) * 1e6, 3),
                        "args": {"file": s.get("file"), "source": callpath.source_text(s), "enter": enter.get("short"),
                                 "exit": s.get("short"), **({"created": s["created"]} if "created" in s else {})}})
    for stack in open_steps.values():
        for start, enter in stack:
            out.append({"ph": "i", "s": "t", "name": enter["func"], "cat": "kernel", "pid": rec.pid, "tid": rec.tid,
                        "ts": us(start), "args": {"file": enter.get("file"), "enter": enter.get("short")}})
    return out
