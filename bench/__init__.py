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
