"""What the kernel-function layer adds to records, on kernels that have it (run inside QEMU guests by
`nstrace lab --kernel K tests/test_kernelpath.py tests/test_kernelpath_records.py`): reference counts
of the namespaces and nsproxies a path passes.

Skipped, saying why, where no function can be hooked (this project's build machines).
"""

import subprocess
import sys

import pytest

from nshelpers import flag, nsop, wait_for

pytestmark = [pytest.mark.kernelpath, pytest.mark.root("attaches the kernel-function layer"),
              pytest.mark.usefixtures("function_layer")]


def step(rec, func, kind):
    return next(s for s in rec.kernel_path if s["func"] == func and s["kind"] == kind)


def has_common_count(tracer):
    """ns_common has a count from 6.1: copy_* exits then carry refs. 5.10 keeps one per type (uts_namespace's
    own kref, include/linux/utsname.h, 5.10), which is how it is told apart (7.x nests the count in an
    anonymous struct of ns_common, so its name is no test)."""
    from nstrace.bpf.btf import KernelBtf
    with KernelBtf() as btf:
        return not btf.has_member("uts_namespace", "kref")


def test_copy_refs_tell_new_from_shared(tracer):
    with nsop({"op": "clone", "flags": flag("uts")}) as rep:
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "clone")
    new, shared = step(rec, "copy_utsname", "exit"), step(rec, "copy_ipcs", "exit")
    if not has_common_count(tracer):
        assert "refs" not in new and "refs" not in shared
        pytest.skip("this kernel's ns_common has no count (5.11+, include/linux/ns_common.h): copy_* exits carry no refs")
    assert new["refs"] == 1, new           # made by this clone, held by the new nsproxy alone
    # the caller's, one more reference taken; an initial namespace's count is not read (7.x keeps none)
    assert "refs" not in shared if shared["inode"] >= 0xEFFFFFF8 else shared["refs"] >= 2, shared


UNSHARE_TWICE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x04000000) == 0    # CLONE_NEWUTS: a new nsproxy, this process's alone
assert libc.unshare(0x04000000) == 0    # again: the switch drops that nsproxy's last reference
"""


def test_switch_old_refs_say_whether_the_old_nsproxy_is_freed(tracer):
    proc = subprocess.run([sys.executable, "-c", UNSHARE_TWICE], check=True)
    del proc
    first, second = wait_for(tracer, lambda r: r.op == "unshare" and r.ok and r.raw_flags == flag("uts")
                             and r.comm.startswith("python"), count=2)[:2]
    s1, s2 = step(first, "switch_task_namespaces", "enter"), step(second, "switch_task_namespaces", "enter")
    assert s1["old_refs"] >= 2, s1   # the nsproxy this process shared with its parent lives on
    assert s2["old_refs"] == 1, s2   # its own: freed by the switch
    assert s2["old_nsproxy"] == first.nsproxy["after"]
    freed = [s for s in second.kernel_path if s["func"] in ("free_nsproxy", "nsproxy_free") and s["kind"] == "enter"]
    assert [s["nsproxy"] for s in freed] == [first.nsproxy["after"]], second.kernel_path


def deaths_hook(tracer):
    from nstrace.check.checker import deaths_visible
    if not deaths_visible(tracer):
        pytest.skip("no hook sees namespaces die on this kernel (nstrace doctor says which functions are missing)")


def test_a_namespace_dies_with_its_last_process(tracer):
    """`unshare --uts true` (util-linux): the unshare makes a uts namespace, its exit frees it; the free
    record names it, says how long it lived, and its path starts where the exit dropped the nsproxy."""
    deaths_hook(tracer)
    res = subprocess.run(["unshare", "--uts", "true"], check=True)
    del res
    records = wait_for(tracer, lambda r: (r.op == "unshare" and r.comm == "unshare" and r.changed == ["uts"])
                       or (r.op == "free" and r.ns and r.ns["type"] == "uts"), count=2)
    [made] = [r for r in records if r.op == "unshare"]
    inode = made.ns_after["uts"]
    [free] = [r for r in records if r.op == "free" and r.ns["inode"] == inode]
    assert free.ns["type"] == "uts" and free.flags == ["CLONE_NEWUTS"]
    assert free.ns["ns_id"] == made.ns_id_after["uts"]  # both null before 6.18
    assert free.pid == made.pid and free.ts >= made.ts
    if free.ns["lived_ns"] is not None:  # births are seen where copy_* refs are read (6.1+) or the tree is
        assert 0 < free.ns["lived_ns"] < 10e9
    funcs = [s["func"] for s in free.kernel_path]
    # the exit path first: the exit drops the nsproxy, whose free drops the namespace
    assert funcs[:2] in (["exit_task_namespaces", "free_nsproxy"], ["exit_nsproxy_namespaces", "nsproxy_free"]), \
        free.kernel_path
    assert free.ns["held_by"] == "exit" and free.ns["context"] == "task", free.ns
    assert funcs[-1] in ("__ns_tree_remove", "free_uts_ns"), free.kernel_path


def test_every_namespace_entering_the_tree_has_a_record(tracer):
    """On 6.18+ every namespace enters the namespace tree at one point (kernel/nstree.c
    __ns_tree_add_raw()). Through the whole scenario catalogue, no birth there happens outside an
    operation nstrace records (births_untraced stays 0), and each is in its operation's record."""
    hook = next(h for h in tracer.hooks if h.func == "__ns_tree_add_raw")
    if not hook.attached:
        pytest.skip(f"this kernel has no namespace tree to watch (6.18+): __ns_tree_add_raw {hook.reason or 'not attached'}")
    obj = tracer.probes.obj
    before = obj.read_global(".bss", "births_untraced")
    from nshelpers import NSTRACE, ROOT
    check = subprocess.Popen([str(NSTRACE), "check"], cwd=ROOT, stdout=subprocess.DEVNULL)
    records = []
    while check.poll() is None:
        records += tracer.poll(50)
    records += tracer.poll(50)
    assert check.returncode == 0
    assert obj.read_global(".bss", "births_untraced") == before, "a namespace was born outside any recorded operation"
    assert not sum(tracer.lost.values()), tracer.lost
    births = [(r, s["inode"]) for r in records for s in r.kernel_path if s["func"] == "__ns_tree_add_raw"]
    assert len(births) > 40, len(births)
    for rec, inode in births:
        seen = set((rec.ns_after or {}).values()) | ({rec.ns["inode"]} if rec.ns else set())
        assert inode in seen, (rec.op, rec.comm, inode, rec.ns_after, rec.ns)
