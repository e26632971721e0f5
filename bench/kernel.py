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


def programs_of(pid):
    """bpftool's record (name, run_time_ns, run_cnt ...) of every BPF program a process holds."""
    ids = prog_ids_of(pid)
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                      text=True, check=True).stdout or "[]")
    return [p for p in progs if p["id"] in ids]


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


def tracing_prog_type_available():
    """fentry/fexit need BPF_PROG_TYPE_TRACING: bpftool's own feature probe says whether it loads."""
    r = subprocess.run(["bpftool", "-j", "feature", "probe", "kernel"], capture_output=True, text=True)
    try:
        return bool(json.loads(r.stdout)["program_types"].get("have_tracing_prog_type"))
    except (ValueError, KeyError):
        return False
