"""The steps of a record's kernel path: which function, entered or returned, with what.

The functions the BPF side can hook are the enum nstrace_func of probes/nstrace.h; FUNCTIONS mirrors it
by value, and tests/test_layout.py holds the mirror to the compiled object's BTF.
"""


# enum nstrace_func of probes/nstrace.h, by value
FUNCTIONS = (
    None, "copy_namespaces", "create_new_namespaces", "copy_mnt_ns", "copy_utsname", "copy_ipcs",
    "copy_pid_ns", "copy_cgroup_ns", "copy_net_ns", "copy_time_ns", "timens_on_fork", "create_user_ns",
    "unshare_userns", "unshare_nsproxy_namespaces", "switch_task_namespaces", "__x64_sys_setns",
    "validate_nsset", "commit_nsset", "free_nsproxy", "ksys_unshare", "put_nsset", "timens_commit",
    "mntns_install", "utsns_install", "ipcns_install", "pidns_install", "cgroupns_install",
    "netns_install", "userns_install", "timens_install",
    "exec_task_namespaces", "nsproxy_free", "cleanup_net", "__ns_tree_add_raw", "__ns_tree_remove",
    "free_uts_ns", "mq_clear_sbinfo", "free_mnt_ns", "delayed_free_pidns", "__put_net", "__put_user_ns",
    "free_cgroup_ns", "free_time_ns", "vfs_open_tree", "create_new_namespace", "alloc_mnt_ns",
)

# Hooked on entry only (probes/kfuncs.bpf.c): the namespace tree's insertion, and each death function,
# whose death record is made on the way in.
ENTRY_ONLY = frozenset({"__ns_tree_add_raw", "__ns_tree_remove", "free_uts_ns", "mq_clear_sbinfo", "free_mnt_ns",
                        "delayed_free_pidns", "__put_net", "__put_user_ns", "free_cgroup_ns", "free_time_ns"})

# Where each type's namespaces die before the namespace tree (5.10 to 6.17); the tree's removal sees every
# death where it exists (kernel/nstree.c, 6.18+), and then these are not hooked.
PER_TYPE_DEATHS = ("free_uts_ns", "mq_clear_sbinfo", "free_mnt_ns", "delayed_free_pidns", "__put_net",
                   "__put_user_ns", "free_cgroup_ns", "free_time_ns")
TREE_DEATH = "__ns_tree_remove"


def decode_step(step, raw_addresses=False):
    """One struct nstrace_step as a dict (JSON-ready)."""
    from ..linux import flags as fl
    from . import events, paths
    func = FUNCTIONS[step.func] if step.func < len(FUNCTIONS) else f"fn{step.func}"
    what = events.STEP_VALUES.get(step.what, "none")
    out = {"func": func, "file": paths.source_file(func), "kind": events.STEP_KINDS.get(step.kind, "?"),
           "ts_ns": step.ts_ns}
    if what == "flags":
        out["flags"] = fl.decode_flags(step.arg, "unshare")
    elif what in ("nsproxy", "switch"):
        out["nsproxy"] = events.format_id(step.nsproxy_id, raw_addresses)
        out["refs"] = step.refs
        if what == "switch":
            out["old_nsproxy"] = events.format_id(step.arg, raw_addresses)
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
            from ..linux import flags as fl
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


def calls(steps):
    """The path as calls in entry order, each with its result: ["copy_utsname(NEWUTS)=4026532177", ...]."""
    out, open_calls = [], {}
    for s in steps:
        if s["kind"] == "enter":
            open_calls.setdefault(s["func"], []).append(len(out))
            out.append(s["short"])
        elif open_calls.get(s["func"]):
            out[open_calls[s["func"]].pop()] += s["short"]
        else:
            out.append(s["func"] + s["short"])  # entered before we attached
    return out
