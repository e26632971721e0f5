"""The lab's figures (`python -m bench --only lab`): boot to command and `nstrace lab -- demo` end to end,
per kernel, for this build and side by side with a baseline build's lab.

This build runs the command a learner types, `nstrace lab --kernel K -- demo`, timed from exec to
exit; its boot is the "booted in" status line (qemu start to the command's start).  A baseline
older than the command form runs the same demo (this build's, so that only the lab differs) through
its own Python API, `nstrace.lab.guest.run_in_guest`, the way issue 15 measured it.  Repetitions
alternate between the two builds, so a machine that gets busier meanwhile slows both.  Each kernel
is booted once by each build before anything is timed (a first download or cache migration is not
a boot).
"""

import json
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NSTRACE = ROOT / ".venv" / "bin" / "nstrace"
PYTHON = ROOT / ".venv" / "bin" / "python"
KERNELS = ("bullseye", "6.1", "6.12", "sid")
# Older labs know no "bullseye" (nor "5.10"): the package names the same kernel.
BASELINE_NAMES = {"bullseye": "linux-image-amd64/bullseye"}
TIMEOUT_S = 600

_BASELINE_RUN = r"""
import json, sys, time
try:
    from nstrace.lab import guest
except ImportError:  # before the sub-packages: nstrace/lab.py
    from nstrace import lab as guest
start = time.monotonic()
r = guest.run_in_guest(sys.argv[1], sys.argv[3:], cwd=sys.argv[2], timeout=600)
print(json.dumps({"boot_s": r.boot_s, "guest_s": r.duration_s, "rc": r.returncode,
                  "python_s": time.monotonic() - start}))
"""


def this_build(kernel, command):
    """(end to end s, boot s, guest s, exit status) of `nstrace lab --kernel K -- COMMAND`."""
    start = time.monotonic()
    res = subprocess.run([str(NSTRACE), "lab", "--kernel", kernel, "--", *command], capture_output=True, text=True,
                         timeout=TIMEOUT_S, cwd="/tmp")
    took = time.monotonic() - start
    boot = re.search(r"booted in ([\d.]+) s", res.stderr)
    # nstrace/lab/runner.py: "exited N (B s boot, then C s running it and powering off)": qemu ran B + C s
    ran = re.search(r"exited -?\d+ \(([\d.]+) s boot, then ([\d.]+) s running it", res.stderr)
    guest = ran and float(ran.group(1)) + float(ran.group(2))
    return took, boot and float(boot.group(1)), guest, res.returncode, res.stderr


def baseline_build(nstrace, kernel, command):
    """The same for a baseline build's lab, through its Python API (it has no `lab -- ARGS`)."""
    python = Path(nstrace).with_name("python")
    start = time.monotonic()
    res = subprocess.run([str(python), "-c", _BASELINE_RUN, BASELINE_NAMES.get(kernel, kernel), str(ROOT),
                          str(PYTHON), "-m", "nstrace", *command], capture_output=True, text=True,
                         timeout=TIMEOUT_S, cwd="/tmp")
    took = time.monotonic() - start
    try:
        doc = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return took, None, None, res.returncode or 1, res.stderr
    return took, doc["boot_s"], doc["guest_s"], doc["rc"], res.stderr


def figures(rep, kernels, reps, baseline, log):
    command = ["demo"]
    builds = [("this build", lambda k: this_build(k, command))]
    if baseline:
        builds.append(("baseline", lambda k: baseline_build(baseline, k, command)))
    for kernel in kernels:
        for name, run in builds:
            log(f"lab: {kernel}: warm-up boot ({name})")
            _, _, _, rc, err = run(kernel)
            if rc != 0:
                rep.notes.append(f"lab: {kernel} ({name}): the demo exited {rc} in the warm-up: "
                                 f"{err.strip().splitlines()[-1] if err.strip() else ''}")
    runs = {(k, b): [] for k in kernels for b, _ in builds}
    failures = {(k, b): [] for k in kernels for b, _ in builds}
    for i in range(reps):
        for kernel in kernels:
            for name, run in builds:
                took, boot, guest, rc, err = run(kernel)
                log(f"lab: {kernel} ({name}) rep {i + 1}: {took:.1f} s end to end, boot {boot} s, exit {rc}")
                if rc == 0:
                    runs[(kernel, name)].append((took, boot, guest))
                else:  # a failed run's time is no demo's time
                    runs[(kernel, name)].append((None, None, None))
                    failures[(kernel, name)].append(err.strip().splitlines()[-1] if err.strip() else f"exit {rc}")
    for kernel in kernels:
        for name, _ in builds:
            rows = runs[(kernel, name)]
            rep.add("lab: boot to command (qemu start -> command starts)", f"{kernel}, {name}",
                    [r[1] for r in rows], "s", fmt="{:.2f}")
            rep.add("lab: `nstrace lab -- demo` end to end", f"{kernel}, {name}", [r[0] for r in rows], "s",
                    fmt="{:.1f}")
            rep.add("lab: the demo inside the guest (boot excluded)", f"{kernel}, {name}",
                    [r[2] - r[1] if r[1] is not None and r[2] is not None else None for r in rows], "s", fmt="{:.1f}")
            rep.add("lab: on the host, before qemu and after it", f"{kernel}, {name}",
                    [r[0] - r[2] if r[0] is not None and r[2] is not None else None for r in rows], "s", fmt="{:.2f}")
            for why in failures[(kernel, name)]:
                rep.notes.append(f"lab: {kernel} ({name}): a run failed, left out of the figures: {why}")
        if baseline:
            for figure, index in (("lab: boot to command (qemu start -> command starts)", 1),
                                  ("lab: `nstrace lab -- demo` end to end", 0)):
                pairs = zip(runs[(kernel, "this build")], runs[(kernel, "baseline")])  # the same repetition
                rep.add(figure, f"{kernel}, this build / baseline",
                        [a[index] / b[index] if a[index] and b[index] else None for a, b in pairs], "x", fmt="{:.2f}")
    from .report import stat
    for key, index, kernel in (("lab-boot", 1, "6.1"), ("lab-demo", 0, "6.1")):
        if kernel not in kernels:
            rep.target(key, None, f"{kernel} not measured (--lab-kernels)")
            continue
        values = [r[index] for r in runs[(kernel, "this build")]]
        s = stat(values)
        others = "; ".join(f"{k} {stat([r[index] for r in runs[(k, 'this build')]])['median']:.1f} s"
                           for k in kernels if k != kernel and stat([r[index] for r in runs[(k, 'this build')]])['n'])
        rep.target(key, s["median"], s["median"] is not None and
                   f"{kernel}: median {s['median']:.1f} s (min {s['min']:.1f}, max {s['max']:.1f})"
                   + (f"; {others}" if others else ""))


def main_lab(rep, a, log):
    kernels = [k.strip() for k in a.lab_kernels.split(",") if k.strip()]
    reps = a.lab_reps or (1 if a.quick else 3)
    rep.meta["lab"] = {"kernels": kernels, "reps": reps, "baseline": a.baseline}
    figures(rep, kernels, reps, a.baseline, log)
