"""Where `nstrace watch`'s start-up goes: one figure per step, so the next regression is a number.

Each repetition runs, in fresh interpreters of the build measured (the python its nstrace
executable starts with, so a --baseline build is measured by its own code):
- interpreter: `python -c pass`, exec to exit;
- imports, probes: what the preload thread imports before it opens the object
  (nstrace.bpf.preload, nstrace.bpf.probeset, features, privileges);
- imports, command line: nstrace.cli.main and nstrace.cli.watch, which the main thread imports
  while the thread loads (beside the load, not before it);
- object open (libbpf opens the ELF, the options are set), load (the bpf() calls, the verifier
  most of it) and attach of the probe set watch loads (no COMMAND: every process);
- the verifier per program: the kernel's own "verification time" of each program (log level 4,
  stats only), from a second load of the same probe set, so the timed load carries no log.
"""

import json
import subprocess
import time

# Prints one JSON object; runs as root in the measured build's interpreter.
SCRIPT = r"""
import json, sys, time
import re
t_re = time.perf_counter()
from nstrace.bpf import preload, features, privileges, probeset
t_probes = time.perf_counter()
import ctypes
from nstrace.bpf import libbpf
privileges.check_privileges()
features.check_btf()
ps = probeset.ProbeSet()
ps.hooks = ps.plan()
t0 = time.perf_counter()
obj = ps.obj = ps._open()
t1 = time.perf_counter()
obj.load()
t2 = time.perf_counter()
for slot, name in enumerate(probeset.BODY_PROGRAMS):
    obj.map_update("bodies", ctypes.c_uint32(slot), ctypes.c_uint32(obj.program_fd(name)))
ps.attach()
t3 = time.perf_counter()
ps.close()
t4 = time.perf_counter()
import nstrace.cli.main, nstrace.cli.watch
t5 = time.perf_counter()

# the second load, with the verifier's statistics in a buffer per program
obj = ps._open()
lib = obj._lib
lib.bpf_program__set_log_buf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
lib.bpf_program__set_log_level.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
bufs = {}
for name in obj.program_names():
    prog = obj._prog(name)
    bufs[name] = ctypes.create_string_buffer(4096)
    lib.bpf_program__set_log_buf(prog, bufs[name], 4096)
    lib.bpf_program__set_log_level(prog, 4)
obj.load()
verifier = {}
for name, buf in bufs.items():
    m = re.search(rb"verification time (\d+) usec", buf.value)
    if m:
        verifier[name] = int(m.group(1)) / 1e6
obj.close()
print(json.dumps({"imports_probes": t_probes - t_re, "open": t1 - t0, "load": t2 - t1,
                  "attach": t3 - t2, "imports_cli": t5 - t4, "verifier": verifier}))
"""

STEPS = (("interpreter", "interpreter: python -c pass (exec -> exit)"),
         ("imports_probes", "imports before the load (preload, probeset)"),
         ("open", "object open"),
         ("load", "object load (bpf(), the verifier)"),
         ("verifier_total", "  of which the verifier, all programs"),
         ("attach", "attach"),
         ("imports_cli", "imports of the command line (beside the load)"))


def python_of(nstrace_executable):
    """The interpreter a console script runs with: its #! line."""
    with open(nstrace_executable) as f:
        return f.readline()[2:].strip()


def measure(builds, reps, log):
    """{build: {step: [seconds per repetition]}, verifier per program as "verifier: NAME"}, builds
    ({name: nstrace executable}) interleaved per repetition."""
    res = {b: {} for b in builds}
    for rep in range(reps):
        for build, exe in builds.items():
            if build not in res:
                continue
            python = python_of(exe)
            t = time.monotonic()
            subprocess.run([python, "-c", "pass"], check=True, cwd="/")
            out = res[build]
            out.setdefault("interpreter", []).append(time.monotonic() - t)
            r = subprocess.run([python, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                               cwd="/")  # not bench's directory: its nstrace/ is a checkout, not the build
            if r.returncode:  # a build whose modules are not these (one from before the restructure)
                log(f"start-up breakdown: {build} not measured: "
                    f"{(r.stderr.strip().splitlines() or ['exit %d' % r.returncode])[-1]}")
                del res[build]
                continue
            doc = json.loads(r.stdout)
            for key, value in doc.items():
                if key != "verifier":
                    out.setdefault(key, []).append(value)
            out.setdefault("verifier_total", []).append(sum(doc["verifier"].values()))
            for prog, value in doc["verifier"].items():
                out.setdefault(f"verifier: {prog}", []).append(value)
        log(f"start-up breakdown rep {rep + 1}/{reps}: " + "; ".join(
            f"{b} load {res[b]['load'][-1] * 1e3:.0f} ms (verifier {res[b]['verifier_total'][-1] * 1e3:.0f})"
            for b in res))
    return res


def add_rows(rep, res):
    """The table's rows: each step per build, then each program's verification time."""
    for build, steps in res.items():
        for key, label in STEPS:
            rep.add("start-up breakdown", f"{build}: {label}", steps.get(key, []), "ms", scale=1e3, fmt="{:.1f}")
    for build, steps in res.items():
        for key in sorted(k for k in steps if k.startswith("verifier: ")):
            values = steps[key]
            if max(values) >= 0.0002:  # the one-line tail-call stubs: 0.0 ms each
                rep.add("start-up breakdown: verifier per program", f"{build}: {key[len('verifier: '):]}", values,
                        "ms", scale=1e3, fmt="{:.1f}")
