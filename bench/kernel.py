"""What the kernel says about BPF programs: bpftool's JSON and libbpf's id lookup."""

import contextlib
import ctypes
import ctypes.util
import json
import os
import subprocess
from pathlib import Path

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def prog_ids_of(pid):
    """Ids of the BPF programs a process holds open, from /proc/<pid>/fdinfo.

    Not bpftool's "pids" field: bpftool finds owners with a BPF iterator, a
    BPF_PROG_TYPE_TRACING program, which this kernel refuses.
    """
    ids = set()
    fddir = Path(f"/proc/{pid}/fd")
    for fd in fddir.iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            for line in Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def _bpftool(*args):
    return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True,
                                     text=True, check=True).stdout or "[]")


def programs_of(pid):
    """bpftool's record (name, run_time_ns, run_cnt ...) of every BPF program a process holds."""
    ids = prog_ids_of(pid)
    return [p for p in _bpftool("prog", "show") if p["id"] in ids]


def prog_ids_named(names):
    """Ids of the BPF programs loaded now whose name is one of names."""
    return [p["id"] for p in _bpftool("prog", "show") if p.get("name") in names]


def programs_by_id(ids):
    """{id: bpftool's record} of the given program ids that still exist."""
    return {p["id"]: p for p in _bpftool("prog", "show") if p["id"] in ids}


SYSCALL_TRACEPOINT_PREFIXES = ("sys_enter", "sys_exit")


def others_syscall_hooks(own_pid=None):
    """BPF programs of other processes on the syscall tracepoints, as short strings.

    Any of them sets the syscall-work flag on every thread (kernel/tracepoint.c,
    syscall_regfunc()), so an "untraced" run beside it is not untraced. Seen
    through bpftool's perf view (perf-event tracepoints, with their pid) and
    link view (raw tracepoints and tp_btf, by prog id). Not seen: perf trace
    and ftrace, which enable the events without BPF.
    """
    own_pid = own_pid or os.getpid()
    own = prog_ids_of(own_pid)
    out = []
    try:
        for e in _bpftool("perf", "show"):
            if e.get("pid") != own_pid and str(e.get("tracepoint", "")).startswith(SYSCALL_TRACEPOINT_PREFIXES):
                out.append(f"pid {e['pid']} {e['tracepoint']}")
        for link in _bpftool("link", "show"):
            if link.get("prog_id") not in own and str(link.get("tp_name", "")).startswith(SYSCALL_TRACEPOINT_PREFIXES):
                out.append(f"{link.get('type')} {link['tp_name']} (prog {link['prog_id']})")
    except (subprocess.CalledProcessError, ValueError):
        pass
    return out


@contextlib.contextmanager
def bpf_stats():
    """kernel.bpf_stats_enabled=1 for the duration, then the previous value.

    Off everywhere else: the statistics cost two clock reads per program run,
    which would be charged to the slowdown figures.
    """
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(before)


def cost_per_hit(progs):
    """{program name: {"ns_per_hit", "hits"}} from run_time_ns / run_cnt."""
    out = {}
    for p in progs:
        cnt = p.get("run_cnt", 0)
        out[p["name"]] = {"ns_per_hit": p.get("run_time_ns", 0) / cnt if cnt else None, "hits": cnt}
    return out


_lib = None


def prog_exists(prog_id):
    """Whether a BPF program id is still in the kernel (the fd is closed at once)."""
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    fd = _lib.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id))
    if fd >= 0:
        os.close(fd)
        return True
    return False

