"""The library's figure (issue 25): what entering and leaving `nstrace.trace()` cost a Python program,
beside what the command line costs to start.

Each repetition is a fresh interpreter (bench's own, which has nstrace installed) that times, with
CLOCK_MONOTONIC around the `with` statement's two halves:
- its first block's enter, `import nstrace` done: what a script's first block costs, the lazy
  imports of the tracer included;
- later blocks' enters, each once the previous block's holder is done: the tracer's own load and
  attach (on a machine where other tracers come and go, an attach may also queue behind their
  detaches: event_mutex, kernel/trace/trace_event_perf.c);
- later blocks' enters one right after another, as a test suite's blocks come: the previous block's
  holder may still hold the same tracepoints (then they are on already, and cheaper), or be
  detaching them (then the attach queues behind it: event_mutex, kernel/trace/trace_event_perf.c);
- every block's exit, and how long after it the block's programs were still loaded (the detach
  left to the holder, nstrace/bpf/teardown.py).
The comparison is the command line's exec to "tracing live" (figures.startup_shutdown) less the
interpreter's own start (`python -c pass`, exec to exit).
"""

import json
import subprocess
import sys
import time

# Prints one JSON object; runs as root with nstrace importable.
SCRIPT = r"""
import json, os, sys, time

def prog_ids():
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
        except OSError:
            pass
    return ids

import ctypes
libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)

def exists(prog_id):
    fd = libbpf.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id))
    if fd >= 0:
        os.close(fd)
        return True
    return False

import nstrace

def block():
    # (enter s, exit s, the block's program ids)
    t0 = time.monotonic()
    manager = nstrace.trace()
    manager.__enter__()
    t1 = time.monotonic()
    ids = prog_ids()
    t2 = time.monotonic()
    manager.__exit__(None, None, None)
    t3 = time.monotonic()
    return t1 - t0, t3 - t2, ids

def detached(ids, since):
    # Seconds from `since` until the programs are gone; then a moment more, unmeasured, in which the
    # holder finishes: a link's program goes before its attachment's last grace period (a perf
    # event's teardown holds event_mutex through it), and the next attach would wait for that.
    while any(exists(i) for i in ids) and time.monotonic() - since < 30:
        time.sleep(0.001)
    took = time.monotonic() - since
    time.sleep(0.3)
    return took

n = int(sys.argv[1])
first_enter, first_exit, ids = block()
left = time.monotonic()
out = {"first_enter": first_enter, "enter": [], "enter_back_to_back": [], "exit": [first_exit],
       "detached_after_exit": [detached(ids, left)]}
for _ in range(n):
    enter, leave, ids = block()
    left = time.monotonic()
    out["enter"].append(enter)
    out["exit"].append(leave)
    out["detached_after_exit"].append(detached(ids, left))
for _ in range(n):
    enter, leave, ids = block()
    out["enter_back_to_back"].append(enter)
    out["exit"].append(leave)
detached(ids, time.monotonic())  # the next repetition's first block starts cold too
print(json.dumps(out))
"""


def interpreter_start():
    """Wall seconds of `python -c pass`, exec to exit."""
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - t


def enter_exit(reps, blocks, log):
    """{"first_enter": [s per rep], "enter": [...], "enter_back_to_back": [...], "exit": [...],
    "detached_after_exit": [...]}: every block of every repetition; "interpreter": [s per rep], the
    interpreter's own start, measured right before each repetition's process."""
    res = {"first_enter": [], "enter": [], "enter_back_to_back": [], "exit": [], "detached_after_exit": [],
           "interpreter": []}
    for rep in range(reps):
        res["interpreter"].append(interpreter_start())
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(blocks)], capture_output=True, text=True,
                             cwd="/", timeout=600)
        if run.returncode:
            raise RuntimeError(f"the library's figure failed: {run.stderr.strip().splitlines()[-1:]}")
        one = json.loads(run.stdout)
        res["first_enter"].append(one.pop("first_enter"))
        for key, values in one.items():
            res[key] += values
        log(f"library rep {rep + 1}/{reps}: first enter {res['first_enter'][-1] * 1e3:.0f} ms, enters "
            f"{sorted(round(v * 1e3) for v in one['enter'])} ms, exits {sorted(round(v * 1e3) for v in one['exit'])} ms")
    return res
