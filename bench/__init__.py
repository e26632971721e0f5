"""nstrace's benchmark (issue 5): run as root with ``.venv/bin/python -m bench``.

Every figure is measured side by side with its peers in the same run, as the
median of several repetitions with their spread, because the machines are
noisy 2-core VMs. Modules: workload (the compiled load generator),
tracers (nstrace, strace, perf trace, bpftrace as a user runs them),
kernel (bpftool: BPF run-time statistics, program lifetimes, other tracers'
syscall hooks), hooks (count-only programs of our own on each hook set that
could carry the syscall layer, bench/hooks.bpf.c, to price the hook itself),
figures (one function per measured figure), report (targets, table, JSON).
"""

import os as _os
import sys as _sys

# Measure nstrace as installed in .venv (the wheel scripts/setup.sh builds, with its compiled BPF
# object), not this checkout's files, which `python -m bench` puts first on sys.path: the checkout
# goes behind site-packages, as tests/conftest.py does for the tests.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
_sys.path[:] = ([p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _checkout]
                + [p for p in _sys.path if _os.path.abspath(p or _os.curdir) == _checkout])
