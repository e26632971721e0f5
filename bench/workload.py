"""The load generator: bench/workload.c, compiled with the system cc at run time.

Compiled per run into a temporary directory so that no binary is committed
and the code matches the machine's own libc and kernel headers.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "workload.c"
COMM = "nsbench"  # the workload's comm (prctl in workload.c), to find its records


class Workload:
    def __init__(self):
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if not cc:
            raise SystemExit("bench: no C compiler (cc) on PATH: install gcc")
        self._dir = tempfile.mkdtemp(prefix="nsbench-")
        self.path = os.path.join(self._dir, "nsbench")
        subprocess.run([cc, "-O2", "-Wall", "-o", self.path, str(SOURCE)], check=True)

    def argv(self, mode, *args):
        return [self.path, mode, *map(str, args)]

    def run(self, mode, *args, prefix=(), timeout=600):
        """Run one mode, optionally under a tracer command (prefix); return its JSON line."""
        out = subprocess.run([*prefix, *self.argv(mode, *args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"workload {mode} failed under {' '.join(prefix) or 'nothing'}: {out.stderr.strip()[-300:]}")
        # strace/perf may print to stdout too: ours is the last JSON line
        line = [l for l in out.stdout.splitlines() if l.startswith('{"mode"')][-1]
        return json.loads(line)

    def calibrate(self, mode, seconds, start=1000):
        """Iterations of `mode` that take about `seconds` untraced (its own cost, measured first)."""
        n = start
        while True:
            ns = self.run(mode, n)["ns"]
            if ns >= 0.2e9 or ns >= seconds * 1e9 * 0.5:
                return max(1, int(n * seconds * 1e9 / ns))
            n *= 4

    def close(self):
        shutil.rmtree(self._dir, ignore_errors=True)
