"""Medians, spreads, the targets of issue 5, the printed table and the JSON document."""

import json
import statistics

from tabulate import tabulate

TARGETS = (  # (key, what, limit, unit): the issues' numbers (5, and 15 for the lab), never relaxed here
    ("live", "tracing live (first event captured) within 150 ms of exec", 0.150, "s"),
    ("shutdown", "shutdown (all probes detached) within 0.5 s", 0.5, "s"),
    ("churn", "churn workload slowdown at most 5%", 1.05, "x"),
    ("unshare", "tight in-process unshare loop slowdown at most 25%", 1.25, "x"),
    ("rate", "at least 200,000 events/s for 60 s, full decoding, zero loss", 200_000, "events/s"),
    ("memory", "peak resident memory (VmHWM) under 40 MB", 40e6, "bytes"),
    ("probe", "under 1 microsecond kernel-side per probe hit (every program)", 1000, "ns"),
    ("lab-boot", "lab guest under TCG: boot to command at most 4 s (6.1)", 4.0, "s"),
    ("lab-demo", "`nstrace lab --kernel 6.1 -- demo` end to end at most 12 s (TCG)", 12.0, "s"),
    ("live-26", "exec -> first event captured at most 45 ms (issue 26)", 0.045, "s"),
    ("live-bpftrace", "exec -> first event captured at most 0.2x bpftrace's, same run (issue 26)", 0.2, "x"),
    ("command", "`watch -- true` at most 5x `strace -f true`, wall (issue 26)", 5.0, "x"),
    ("command-ns", "`watch --json -- unshare --uts --ipc true` at most 5x strace with a namespace filter (issue 26)",
     5.0, "x"),
    ("probe-26", "no program over 500 ns per hit in the churn, nor an unshare one in the tight loop (issue 26)",
     500, "ns"),
    ("unshare-26", "tight in-process unshare loop slowdown at most 1.30x (issue 26)", 1.30, "x"),
    ("library", "nstrace.trace()'s first enter within the command line's start-up less the interpreter's "
                "(issue 25)", 1.0, "x"),
)


def stat(values):
    """{"median", "min", "max", "n"} of the non-None values."""
    v = [x for x in values if x is not None]
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


class Report:
    def __init__(self, meta):
        self.meta = meta
        self.figures = []    # rows of the table
        self.targets = []
        self.notes = []

    def add(self, figure, variant, values, unit, scale=1.0, fmt="{:.3g}"):
        """One row; values times scale are in unit (table and JSON alike). Returns the unscaled stat."""
        s = stat(values)
        scaled = [x * scale if x is not None else None for x in values]
        row = {"figure": figure, "variant": variant, "unit": unit, **stat(scaled), "values": scaled}
        row["_shown"] = [fmt.format(row[k]) if row[k] is not None else "-" for k in ("median", "min", "max")]
        self.figures.append(row)
        return s

    def target(self, key, measured, detail=""):
        """measured None: could not be measured (the reason goes in detail)."""
        what, limit, unit = next((w, l, u) for k, w, l, u in TARGETS if k == key)
        if measured is None:
            holds = None
        elif key == "rate":
            holds = measured >= limit
        else:
            holds = measured <= limit if key not in ("memory", "probe", "probe-26") else measured < limit
        self.targets.append({"target": key, "what": what, "limit": limit, "unit": unit,
                             "measured": measured, "holds": holds, "detail": detail})

    def table(self):
        rows = [[f["figure"], f["variant"], *f["_shown"], f["unit"], f["n"]] for f in self.figures]
        out = [tabulate(rows, headers=["figure", "variant", "median", "min", "max", "unit", "n"],
                        tablefmt="github", disable_numparse=True)]
        trows = [[{True: "HOLDS", False: "MISSED", None: "NOT MEASURED"}[t["holds"]], t["what"],
                  t["detail"]] for t in self.targets]
        if trows:   # none with --only
            out += ["", tabulate(trows, headers=["target", "what", "measured"], tablefmt="github")]
        if self.notes:
            out += [""] + [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def document(self):
        figs = [{k: v for k, v in f.items() if not k.startswith("_")} for f in self.figures]
        return {**self.meta, "figures": figs, "targets": self.targets, "notes": self.notes}

    def write_json(self, path):
        with open(path, "w") as f:
            json.dump(self.document(), f, indent=1, default=str)
            f.write("\n")
