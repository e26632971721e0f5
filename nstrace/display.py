"""How records look: the streaming table, JSON lines and the closing summary."""

import json
import time

from tabulate import tabulate

from . import flags as fl
from . import kernelpath

# (header, width): fixed so that rows streamed one at a time line up.
COLUMNS = (
    ("TIME", 12), ("COMM", 15), ("PID", 7), ("TID", 7), ("OP", 7), ("FLAGS", 32),
    ("RET", 6), ("CHILD", 7), ("NSPROXY", 17), ("PROC", 10),
)


def _fit(text, width):
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "~"


def _row(cells):
    fitted = [_fit(c, w).ljust(w) for c, (_, w) in zip(cells, COLUMNS)]
    return tabulate([fitted], tablefmt="plain", disable_numparse=True, preserve_whitespace=True)


def header():
    return _row([h for h, _ in COLUMNS])


def flags_cell(rec):
    if rec.op == "setns":
        nstype = fl.short(rec.flags) if rec.raw_flags else "0"
        target = rec.target or {}
        if target.get("kind") == "nsfs":
            return f"{nstype} fd={target['fd']}:{target['type']}"
        if target.get("kind") == "pidfd":
            return f"{nstype} pidfd={target['pid']}"
        return f"{nstype} fd={target.get('fd')}:{target.get('kind')}"
    return fl.short(rec.flags)


def ret_cell(rec):
    return rec.errno if rec.errno else str(rec.ret)


def nsproxy_cell(rec):
    before, after = rec.nsproxy["before"], rec.nsproxy["after"]
    if not after or before == after:
        return before or "-"
    return f"{before}>{after}"


def proc_cell(rec):
    return rec.proc_check["status"] if rec.proc_check else "-"


def row(rec):
    """The record as one table line plus indented detail lines."""
    stamp = time.strftime("%H:%M:%S", time.localtime(rec.ts)) + f".{int(rec.ts * 1000) % 1000:03d}"
    line = _row([stamp, rec.comm, rec.pid, rec.tid, rec.op, flags_cell(rec), ret_cell(rec),
                 rec.child_pid or "-", nsproxy_cell(rec), proc_cell(rec)])
    details = []
    for entry in rec.changed:
        details.append(f"    {entry:<17} {rec.ns_before[entry]} -> {rec.ns_after[entry]}")
    if rec.kernel_path:
        details.append("    path  " + " > ".join(kernelpath.calls(rec.kernel_path)))
    if rec.proc_check and rec.proc_check["status"] == "mismatch":
        for entry, d in rec.proc_check["diff"].items():
            details.append(f"    /proc differs: {entry} kernel {d['kernel']} /proc {d['proc']}")
    return "\n".join([line] + details)


def json_line(rec):
    return json.dumps(rec.to_json(), separators=(",", ":"))


def summary_table(summary):
    rows = [[op, n] for op, n in sorted(summary["events"].items())]
    rows.append(["total", summary["total"]])
    out = [tabulate(rows, headers=["op", "events"], tablefmt="simple")]
    checks = ", ".join(f"{k} {v}" for k, v in sorted(summary["proc_check"].items())) or "none"
    lost = summary["lost"]
    out.append(f"/proc check: {checks}")
    out.append(f"lost events: {lost['ringbuf']} (ring buffer full), {lost['inflight']} (in-flight table full)")
    if summary["filtered"]:
        out.append(f"filtered out by --comm/--op/--type: {summary['filtered']}")
    return "\n".join(out)


def json_summary(summary):
    return json.dumps(summary, separators=(",", ":"), sort_keys=True)


def availability_table(rows):
    table = [[r["probe"], r["layer"], r.get("file", "-"), r["hook"] or "-",
              "attached" if r["attached"] else "unavailable", r["reason"]] for r in rows]
    return tabulate(table, headers=["probe point", "layer", "source", "hook", "status", "why not"],
                    tablefmt="simple")


def availability_verdict(rows):
    functions = [r for r in rows if r["layer"] == "function"]
    attached = [r for r in functions if r["attached"]]
    syscalls_ok = all(r["attached"] for r in rows if r["layer"] == "syscall")
    head = "syscall/tracepoint layer: " + ("available" if syscalls_ok else "INCOMPLETE")
    if not attached:
        reasons = sorted({r["reason"] for r in functions})
        return (f"{head}\nkernel-function layer: unavailable on this kernel, only the syscall/tracepoint "
                f"layer runs: {'; '.join(reasons)}")
    return f"{head}\nkernel-function layer: {len(attached)} of {len(functions)} functions attached"


def lab_table(results):
    rows = [[r["kernel"], r["release"], r["summary"], f"{r['duration_s']:.0f}"] for r in results]
    return tabulate(rows, headers=["kernel", "release", "kernel-layer suite", "seconds"], tablefmt="simple")
