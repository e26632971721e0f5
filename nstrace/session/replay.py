"""Replaying a session: watch's filters over its records, and their summary."""

from ..errors import UsageError


def select(session, filt, pid=None):
    """(records shown, number filtered out) with watch's filters: filt, a filters.Filter.

    ``pid`` keeps that process and its descendants, as watch --pid does in
    the kernel: the descendants known at the start (the start snapshot's
    process tree) and every process a kept record's caller forked later.
    """
    if pid is not None and pid <= 0:
        raise UsageError(f"--pid must be a positive process id, not {pid}")
    tracked = _descendants(session, pid) if pid is not None else None
    shown, filtered = [], 0
    for rec in sorted(session.records, key=lambda r: r.ts):
        if tracked is not None:
            if rec.pid not in tracked and rec.ppid not in tracked:
                continue  # watch --pid never sees these: not counted as filtered either
            tracked.add(rec.pid)
            if rec.child_pid:
                tracked.add(rec.child_pid)
        if filt.wanted(rec):
            shown.append(rec)
        else:
            filtered += 1
    return shown, filtered


def _descendants(session, pid):
    snap = session.snapshot("start")
    tracked = {pid}
    if snap:
        children = {}
        for p in snap.processes:
            children.setdefault(p.ppid, []).append(p.pid)
        todo = [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in tracked:
                    tracked.add(child)
                    todo.append(child)
    return tracked


def summary(session, shown, filtered):
    """A Tracer.summary()-shaped dict for the replayed records (reports.summary_table prints it)."""
    by_op, by_check = {}, {}
    for rec in shown:
        by_op[rec.op] = by_op.get(rec.op, 0) + 1
        if rec.proc_check:
            status = rec.proc_check["status"]
            by_check[status] = by_check.get(status, 0) + 1
    recorded = (session.end or {}).get("summary") or {}
    return {"events": by_op, "total": len(shown), "proc_check": by_check, "filtered": filtered,
            "lost": recorded.get("lost") or {"ringbuf": 0, "inflight": 0}}
