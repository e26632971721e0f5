"""Namespace deaths (op `free`) of every type, where the kernel-function layer runs (inside `nstrace lab`
guests: tests/test_lab.py runs every kernelpath test on each kernel), and what doctor says of them.

`watch -- COMMAND` follows COMMAND's processes only. A process leaves the followed set at
sched_process_exit, before its exit drops its namespaces (kernel/exit.c do_exit(), 5.10.262 and
6.1.192), and pid and user namespaces are freed later still, from RCU callbacks: a death is a record
there only because the trace saw the namespace born. Issue 22: on 5.10, whose ns_common has no count
to tell a new namespace from a shared one, no death of any type was a record, and the summary said
nothing was missing.
"""

import json
import subprocess

import pytest
from nshelpers import NSTRACE

# type -> util-linux unshare's options for it, and the entry of the caller's that its new namespace takes
UNSHARE = {"uts": (["--uts"], "uts"), "ipc": (["--ipc"], "ipc"), "mnt": (["--mount"], "mnt"),
           "pid": (["--pid", "--fork"], "pid_for_children"), "net": (["--net"], "net"),
           "user": (["--user"], "user"), "cgroup": (["--cgroup"], "cgroup"),
           "time": (["--time", "--fork"], "time_for_children")}


def watch(*command):
    """`nstrace watch --json -o /dev/stdout -- COMMAND`: its records, and its summary."""
    res = subprocess.run([str(NSTRACE), "watch", "--json", "-o", "-", "--", *command],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    [summary] = [json.loads(line.split(" ", 2)[2]) for line in res.stderr.splitlines()
                 if line.startswith("nstrace: summary ")]
    return [json.loads(line) for line in res.stdout.splitlines()], summary


# A namespace dies a grace period or two (and a workqueue item, for a user namespace: kernel/user_namespace.c
# __put_user_ns() schedules free_user_ns()) after its last process: milliseconds, but under a busy TCG guest
# more than watch's bounded wait at COMMAND's end. A COMMAND that lives on this long after making them
# sees them die inside its trace whatever the load.
LINGER_S = 5


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
def test_a_followed_command_sees_each_namespace_it_made_die(tracer):
    """`watch -- sh -c 'unshare --TYPE true; ...'`: each namespace unshare made dies when its last
    process is gone, and that is a record of the trace, whichever task or callback the kernel frees it
    in; with its lifetime (its birth was seen: that is what let the death through)."""
    from nstrace.check.checker import deaths_visible
    types = [t for t in UNSHARE if deaths_visible(tracer, t)]
    if not types:
        pytest.skip("no hook sees namespaces die on this kernel (nstrace doctor says why)")
    script = "; ".join(f"unshare {' '.join(UNSHARE[t][0])} true" for t in types) + f"; sleep {LINGER_S}"
    records, summary = watch("sh", "-c", script)
    made = [r for r in records if r["op"] == "unshare"]
    assert [r["changed"] for r in made] == [[UNSHARE[t][1]] for t in types], records
    for t, rec in zip(types, made):
        # an inode number is free for the next namespace of any type as soon as one dies
        # (kernel-notes/lifetime-and-identity.md): a death is its type's and inode's
        inode = rec["ns_after"][UNSHARE[t][1]]
        died = [r for r in records if r["op"] == "free" and (r["ns"]["type"], r["ns"]["inode"]) == (t, inode)]
        assert len(died) == 1, (t, records, summary)
        assert records.index(died[0]) > records.index(rec)
        assert died[0]["ns"]["lived_ns"] > 0, died
    assert summary["outlived"] == 0, summary
    assert not sum(summary["lost"].values()), summary


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
@pytest.mark.parametrize("ns_type", list(UNSHARE))
def test_each_namespace_born_is_a_death_or_counted_once(tracer, ns_type):
    """`watch -- unshare --TYPE true`, which ends as soon as unshare does: the namespace it made is
    either a death record of the trace or counted as outlived in the summary, once, never neither (on
    5.10 it was neither, and the summary said nothing was missing)."""
    from nstrace.check.checker import deaths_visible
    if not deaths_visible(tracer, ns_type):
        pytest.skip(f"no hook sees {ns_type} namespaces die on this kernel (nstrace doctor says why)")
    options, entry = UNSHARE[ns_type]
    records, summary = watch("unshare", *options, "true")
    [made] = [r for r in records if r["op"] == "unshare"]
    assert made["changed"] == [entry], made
    died = [r for r in records if r["op"] == "free" and r["ns"]["inode"] == made["ns_after"][entry]]
    assert len(died) + summary["outlived"] == 1, (records, summary)
    assert not sum(summary["lost"].values()), summary


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
def test_a_user_namespace_and_the_parent_it_held_die(tracer):
    """`unshare --user --map-root-user unshare --user true`: the inner namespace holds the last reference
    to the outer one (the cred that held it is gone since the exec), so freeing the inner frees the outer
    in the same loop (kernel/user_namespace.c free_user_ns(), 5.10.262 to 6.12.118), where put_user_ns()
    is never called for it. Both deaths are records."""
    from nstrace.check.checker import deaths_visible
    if not deaths_visible(tracer, "user"):
        pytest.skip("no hook sees user namespaces die on this kernel (nstrace doctor says why)")
    records, summary = watch("sh", "-c", f"unshare --user --map-root-user unshare --user true; sleep {LINGER_S}")
    made = [r["ns_after"]["user"] for r in records if r["op"] == "unshare"]
    assert len(set(made)) == 2, records
    died = [r["ns"]["inode"] for r in records if r["op"] == "free" and r["ns"]["type"] == "user"]
    assert sorted(died) == sorted(made), (made, died, summary)
    assert summary["outlived"] == 0, summary


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
def test_a_namespace_that_outlives_the_command_is_counted(tracer, tmp_path):
    """A namespace whose death the trace does not see is said in the summary: here a bind mount of its
    ns file holds it past the command's exit, until the test unmounts it."""
    from nstrace.check.checker import deaths_visible
    if not deaths_visible(tracer, "uts"):
        pytest.skip("no hook sees uts namespaces die on this kernel (nstrace doctor says why)")
    keep = tmp_path / "uts"
    keep.touch()
    try:
        records, summary = watch("unshare", "--uts", "mount", "--bind", "/proc/self/ns/uts", str(keep))
    finally:
        subprocess.run(["umount", str(keep)], check=False)
    [made] = [r for r in records if r["op"] == "unshare"]
    assert not [r for r in records if r["op"] == "free" and r["ns"]["inode"] == made["ns_after"]["uts"]]
    assert summary["outlived"] == 1, summary


ROWS = [{"probe": f, "layer": "function", "attached": True, "reason": ""}
        for f in ("free_uts_ns", "mq_clear_sbinfo", "delayed_free_pidns", "__put_net", "retire_userns_sysctls",
                  "free_cgroup_ns", "free_time_ns")]


def test_doctor_names_the_types_whose_deaths_it_cannot_see():
    from nstrace.view.reports import deaths_verdict
    missing = {"probe": "free_mnt_ns", "layer": "function", "attached": False,
               "reason": "not in this kernel's BTF or symbols: inlined or renamed"}
    assert deaths_verdict(ROWS + [missing]) == (
        "recorded (op free) through free_uts_ns, mq_clear_sbinfo, delayed_free_pidns, __put_net, "
        "retire_userns_sysctls, free_cgroup_ns, free_time_ns; not visible for mnt (free_mnt_ns: not in this "
        "kernel's BTF or symbols: inlined or renamed)")
    tree = {"probe": "__ns_tree_remove", "layer": "function", "attached": True, "reason": ""}
    assert deaths_verdict([tree, missing]) == "recorded (op free) through __ns_tree_remove"
    assert deaths_verdict([missing]).startswith("not visible on this kernel")


# --- what a death says of itself (issue 24: lifetimes are first-class) ------------------------------

def deaths_of(records, ns_type, inode):
    return [r for r in records if r["op"] == "free" and (r["ns"]["type"], r["ns"]["inode"]) == (ns_type, inode)]


def made_inode(records, entry):
    [made] = [r for r in records if r["op"] == "unshare" and entry in r["changed"]]
    return made["ns_after"][entry]


def funcs(rec):
    return [s["func"] for s in rec["kernel_path"]]


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
def test_an_rcu_free_is_credited_to_no_task(tracer):
    """A pid namespace is freed a grace period after its last process, by an RCU callback in a softirq
    (kernel/pid_namespace.c destroy_pid_ns() -> call_rcu(delayed_free_pidns), 5.10.262 and 6.1.192), or by a
    kworker (7.2). The softirq runs on whatever task it interrupted (swapper/0, a kworker, sleep): the
    record says softirq and names no task, instead of crediting that one."""
    from nstrace.check.checker import deaths_visible
    if not deaths_visible(tracer, "pid"):
        pytest.skip("no hook sees pid namespaces die on this kernel (nstrace doctor says why)")
    records, _ = watch("sh", "-c", f"unshare --pid --fork true; sleep {LINGER_S}")
    [death] = deaths_of(records, "pid", made_inode(records, "pid_for_children"))
    assert death["ns"]["context"] in ("softirq", "kworker", "kthread"), death
    if death["ns"]["context"] == "softirq":
        assert (death["pid"], death["tid"], death["comm"]) == (0, 0, ""), death
        assert death["ns"]["held_by"] is None and funcs(death)[:-1] == [], death
    assert death["ns"]["lived_ns"] > 0, death


EXITS = ("exit_task_namespaces", "exit_nsproxy_namespaces")  # 7.x renamed it (kernel/nsproxy.c, 7.2.13)
FREE_NSPROXY = ("free_nsproxy", "nsproxy_free")


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
def test_a_death_at_exit_shows_the_exit_path(tracer):
    """`unshare --ipc sleep`: the namespace dies as sleep exits, inside do_exit()'s exit_task_namespaces()
    and free_nsproxy(): the record's path shows both, its task is sleep, and it says the exit held it."""
    from nstrace.check.checker import deaths_visible
    if not deaths_visible(tracer, "ipc"):
        pytest.skip("no hook sees ipc namespaces die on this kernel (nstrace doctor says why)")
    records, _ = watch("sh", "-c", f"unshare --ipc sleep 0.1; sleep {LINGER_S}")
    [death] = deaths_of(records, "ipc", made_inode(records, "ipc"))
    assert (death["comm"], death["ns"]["context"], death["ns"]["held_by"]) == ("sleep", "task", "exit"), death
    assert funcs(death)[0] in EXITS and funcs(death)[1] in FREE_NSPROXY, death


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
def test_a_bind_mount_held_namespace_dies_at_its_umount(tracer, tmp_path):
    """`unshare --uts=FILE true` bind-mounts the new namespace's ns file on FILE: it outlives unshare,
    and dies at `umount FILE`, in umount's task work (fs/namespace.c cleanup_mnt() -> fs/nsfs.c
    nsfs_evict(), 6.1.192 and 7.2.13), which the record shows, held by the umount."""
    from nstrace.check.checker import deaths_visible
    if not deaths_visible(tracer, "uts"):
        pytest.skip("no hook sees uts namespaces die on this kernel (nstrace doctor says why)")
    keep = tmp_path / "uts"
    keep.touch()
    records, _ = watch("sh", "-c", f"unshare --uts={keep} true; sleep 0.2; umount {keep}; sleep 1")
    [death] = deaths_of(records, "uts", made_inode(records, "uts"))
    assert (death["comm"], death["ns"]["context"], death["ns"]["held_by"]) == ("umount", "task", "umount"), death
    assert funcs(death)[:2] == ["cleanup_mnt", "nsfs_evict"], death


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
def test_an_fd_held_namespace_dies_at_its_close(tracer):
    """A shell holds the ns file of a process that has exited: the namespace dies when the shell closes
    that fd (fs/nsfs.c nsfs_evict()), in the shell, held by the close."""
    from nstrace.check.checker import deaths_visible
    if not deaths_visible(tracer, "uts"):
        pytest.skip("no hook sees uts namespaces die on this kernel (nstrace doctor says why)")
    script = ("unshare --uts sleep 0.5 & P=$!; sleep 0.2; exec 3</proc/$P/ns/uts; wait $P; sleep 0.2; "
              "exec 3<&-; sleep 1")
    records, _ = watch("sh", "-c", script)
    [death] = deaths_of(records, "uts", made_inode(records, "uts"))
    assert (death["comm"], death["ns"]["context"], death["ns"]["held_by"]) == ("sh", "task", "close"), death
    assert funcs(death)[0] == "nsfs_evict", death


@pytest.mark.kernelpath
@pytest.mark.root("attaches the kernel-function layer")
@pytest.mark.usefixtures("function_layer")
def test_an_nsproxy_address_reused_gets_a_new_id(tracer):
    """Twenty `unshare --uts true` in a row: each makes an nsproxy that its exit frees, and the slab
    hands the next one the same address (kernel/nsproxy.c nsproxy_cachep). Each is another nsproxy,
    under another short id."""
    records, _ = watch("sh", "-c", "for i in $(seq 20); do unshare --uts true; done")
    ids = [r["nsproxy"]["after"] for r in records if r["op"] == "unshare"]
    assert len(ids) == 20 and None not in ids, ids
    assert len(set(ids)) == 20, ids
