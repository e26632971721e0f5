"""A ring-buffer record (bytes) decoded into a Record (record/model.py), its kernel path with it: the
reference decoder, which native/batch.c's JSON writer is held to byte for byte (tests/test_batch.py)."""

import ctypes
import errno as errno_mod
import time

from ..kernel import documented
from ..kernel import flags as fl
from ..kernel.functions import FUNCTIONS
from ..linux.comm import safe_comm
from .layout import (
    CONTEXTS,
    HEAD_SIZE,
    HOLDERS,
    MAX_STEPS,
    NS_OPS,
    OPS,
    STEP_KINDS,
    STEP_VALUES,
    TARGET_KINDS,
    EventHead,
    Step,
)
from .model import Record

# CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall clock, fixed once per run.
WALL_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def _ns_map(ns_set, field):
    if not ns_set.valid:
        return None
    values = getattr(ns_set, field)
    return {name: (values[i] or None) for i, name in enumerate(fl.NS_ENTRIES)}


def format_id(value, raw_addresses=False):
    """A short nsproxy id as text: 8 hex digits, or the address when asked for."""
    if not value:
        return None
    return hex(value) if raw_addresses else f"{value:08x}"


def decode(raw, raw_addresses=False):
    """One ring-buffer record (bytes) as a :class:`Record`, with its kernel path's steps (decode_step)."""
    ev = EventHead.from_buffer_copy(raw)
    op = OPS.get(ev.op, f"op{ev.op}")
    is_clone = op in fl.CHILD_OPS
    before = _ns_map(ev.before, "inum")
    after = _ns_map(ev.after, "inum")
    changed = []
    if before and after:
        id_before, id_after = _ns_map(ev.before, "ns_id"), _ns_map(ev.after, "ns_id")
        changed = [n for n in fl.NS_ENTRIES if before[n] != after[n] or id_before[n] != id_after[n]]

    target = None
    if op == "setns":
        kind = TARGET_KINDS.get(ev.target_kind, "other")
        target = {"fd": ev.setns_fd, "kind": kind}
        if kind == "nsfs":
            target.update(type=fl.NS_FLAG_VALUES.get(ev.target_nstype, hex(ev.target_nstype)),
                          inode=ev.target_inum, ns_id=ev.target_ns_id or None)
        elif kind == "pidfd":
            target["pid"] = ev.target_pid

    ns = None
    if op in NS_OPS and (op == "free" or ev.target_kind == 1):  # open_tree, fsmount: the fd is nsfs
        ns = {"type": fl.NS_FLAG_VALUES.get(ev.target_nstype, hex(ev.target_nstype)),
              "inode": ev.target_inum, "ns_id": ev.target_ns_id or None}
        if op == "free":
            ns["lived_ns"] = ev.lived_ns or None
            ns["context"] = CONTEXTS.get(ev.context)
            ns["held_by"] = HOLDERS.get(ev.holder)

    ret = ev.ret
    steps = []
    if ev.nsteps:
        n = min(ev.nsteps, MAX_STEPS, (len(raw) - HEAD_SIZE) // ctypes.sizeof(Step))
        steps = [decode_step(Step.from_buffer_copy(raw, HEAD_SIZE + i * ctypes.sizeof(Step)), raw_addresses)
                 for i in range(n)]
    rec = Record(
        # whole microseconds: the float then prints as its 6 decimals (native/batch.c prints the same)
        ts=((ev.exit_ns + WALL_OFFSET_NS + 500) // 1000) / 1e6,
        duration_us=max(ev.exit_ns - ev.enter_ns, 0) / 1e3,
        op=op,
        pid=ev.pid,
        tid=ev.tid,
        ppid=ev.ppid,
        uid=ev.uid,
        comm=safe_comm(ev.comm),
        raw_flags=ev.raw_flags,
        flags=fl.decode_flags(ev.raw_flags, op),
        ret=ret,
        errno=errno_mod.errorcode.get(-ret, str(-ret)) if ret < 0 else None,
        exit_signal=fl.exit_signal_name(ev.exit_signal) if is_clone else None,
        child_pid=(ev.child_pid or None) if is_clone else None,
        child_tid=(ev.child_tid or None) if is_clone else None,
        target=target,
        ns_before=before,
        ns_after=after,
        ns_id_before=_ns_map(ev.before, "ns_id"),
        ns_id_after=_ns_map(ev.after, "ns_id"),
        changed=changed,
        nsproxy={"before": format_id(ev.before.nsproxy_id, raw_addresses),
                 "after": format_id(ev.after.nsproxy_id, raw_addresses)},
        start_time_ns=ev.start_time_ns,
        child_start_ns=ev.child_start_ns or None if is_clone else None,
        cgroup_id=ev.cgroup_id,
        ns=ns,
        kernel_path=steps,
        kernel_path_dropped=ev.steps_dropped,
    )
    return rec


# The hooked functions handed unshare()'s flags as the caller gave them (UNSHARE_EMPTY_MNTNS among
# them); unshare_nsproxy_namespaces() turns that into CLONE_EMPTY_MNTNS before create_new_namespaces(),
# and every other flags argument is the clone flags' (kernel/fork.c ksys_unshare(), kernel/nsproxy.c, 7.2.13).
_TAKE_UNSHARE_FLAGS = frozenset(("ksys_unshare", "unshare_userns", "unshare_nsproxy_namespaces"))


def decode_step(step, raw_addresses=False):
    """One struct nstrace_step as a dict (JSON-ready)."""
    func = FUNCTIONS[step.func] if step.func < len(FUNCTIONS) else f"fn{step.func}"
    what = STEP_VALUES.get(step.what, "none")
    out = {"func": func, "file": documented.source_file(func), "kind": STEP_KINDS.get(step.kind, "?"),
           "ts_ns": step.ts_ns}
    if what == "flags":
        out["flags"] = fl.decode_flags(step.arg, "unshare" if func in _TAKE_UNSHARE_FLAGS else "clone3")
    elif what in ("nsproxy", "switch"):
        out["nsproxy"] = format_id(step.nsproxy_id, raw_addresses)
        out["refs"] = step.refs
        if what == "switch":
            out["old_nsproxy"] = format_id(step.arg, raw_addresses)
            out["old_refs"] = step.old_refs
    elif what == "int" or (what == "ns" and step.ret < 0):
        out["ret"] = step.ret
    if what in ("ns", "ns_arg") and step.inum:
        out["inode"] = step.inum
        if what == "ns" and step.refs:  # the kernel keeps no common count before 6.1
            out["refs"] = step.refs
    out["short"] = _short(out)
    return out


def _short(s):
    if s["kind"] == "enter":
        if "flags" in s:
            return f"{s['func']}({fl.short(s['flags'])})"
        if "old_nsproxy" in s:
            return f"{s['func']}({s['old_nsproxy']}->{s['nsproxy']})"
        if "inode" in s:
            return f"{s['func']}({s['inode']})"
        return f"{s['func']}()"
    if "ret" in s and s["ret"] < 0:
        return f"={s['ret']}"
    if "inode" in s:
        return f"={s['inode']}"
    if "nsproxy" in s:
        return f"={s['nsproxy']}"
    return ""
