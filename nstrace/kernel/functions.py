"""The kernel functions the BPF side can hook: the enum nstrace_func of probes/nstrace.h, mirrored
by value in FUNCTIONS (tests/test_layout.py holds the mirror to the compiled object's BTF), and
which of them are hooked how.

Plain tuples and sets, and nothing imported: the hook plan reads them on the way to the first load
(nstrace/bpf/preload.py), before anything else of nstrace is imported.
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
    "free_uts_ns", "mq_clear_sbinfo", "free_mnt_ns", "delayed_free_pidns", "__put_net", "retire_userns_sysctls",
    "free_cgroup_ns", "free_time_ns", "vfs_open_tree", "create_new_namespace", "alloc_mnt_ns",
)

# Hooked on entry only (probes/kfuncs.bpf.c): the namespace tree's insertion, and each death function,
# whose death record is made on the way in.
ENTRY_ONLY = frozenset({"__ns_tree_add_raw", "__ns_tree_remove", "free_uts_ns", "mq_clear_sbinfo", "free_mnt_ns",
                        "delayed_free_pidns", "__put_net", "retire_userns_sysctls", "free_cgroup_ns", "free_time_ns"})

# Where each type's namespaces die before the namespace tree (5.10 to 6.17), by type; the tree's removal sees
# every death where it exists (kernel/nstree.c, 6.18+), and then these are not hooked.
DEATH_OF = {"uts": "free_uts_ns", "ipc": "mq_clear_sbinfo", "mnt": "free_mnt_ns", "pid": "delayed_free_pidns",
            "net": "__put_net", "user": "retire_userns_sysctls", "cgroup": "free_cgroup_ns", "time": "free_time_ns"}
PER_TYPE_DEATHS = tuple(DEATH_OF.values())
TREE_DEATH = "__ns_tree_remove"


def types_seen_dying(attached):
    """The namespace types whose deaths are records, given the names of the functions attached."""
    return tuple(DEATH_OF) if TREE_DEATH in attached else tuple(t for t, f in DEATH_OF.items() if f in attached)
