"""What the kernel-function layer adds to records, on kernels that have it (run inside QEMU guests by
`nstrace lab --kernel K tests/test_kernelpath.py tests/test_kernelpath_records.py`): reference counts
of the namespaces and nsproxies a path passes.

Skipped, saying why, where no function can be hooked (this project's build machines).
"""

import subprocess
import sys

import pytest

from nshelpers import flag, nsop, wait_for

pytestmark = [pytest.mark.kernelpath, pytest.mark.root("attaches the kernel-function layer")]


@pytest.fixture(autouse=True)
def function_layer(tracer):
    if not any(h.kind for h in tracer.hooks):
        why = tracer.hooks[0].reason if tracer.hooks else "no function hooks planned"
        pytest.skip(f"this kernel has neither fentry nor kprobes ({why}): `nstrace lab` runs these in QEMU guests")


def step(rec, func, kind):
    return next(s for s in rec.kernel_path if s["func"] == func and s["kind"] == kind)


def has_common_count(tracer):
    """ns_common has a count from 6.1 (5.10 keeps one per type): copy_* exits then carry refs."""
    from nstrace.bpf.btf import KernelBtf
    with KernelBtf() as btf:
        return btf.has_member("ns_common", "count") or btf.has_member("ns_common", "__ns_ref")


def test_copy_refs_tell_new_from_shared(tracer):
    with nsop({"op": "clone", "flags": flag("uts")}) as rep:
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "clone")
    new, shared = step(rec, "copy_utsname", "exit"), step(rec, "copy_ipcs", "exit")
    if not has_common_count(tracer):
        assert "refs" not in new and "refs" not in shared
        pytest.skip("this kernel's ns_common has no count (5.10): copy_* exits carry no refs")
    assert new["refs"] == 1, new           # made by this clone, held by the new nsproxy alone
    assert shared["refs"] >= 2, shared     # the caller's, one more reference taken


UNSHARE_TWICE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x04000000) == 0    # CLONE_NEWUTS: a new nsproxy, this process's alone
assert libc.unshare(0x04000000) == 0    # again: the switch drops that nsproxy's last reference
"""


def test_switch_old_refs_say_whether_the_old_nsproxy_is_freed(tracer):
    proc = subprocess.run([sys.executable, "-c", UNSHARE_TWICE], check=True)
    first, second = wait_for(tracer, lambda r: r.comm == "python3" and r.op == "unshare" and r.ok, count=2)
    del proc
    s1, s2 = step(first, "switch_task_namespaces", "enter"), step(second, "switch_task_namespaces", "enter")
    assert s1["old_refs"] >= 2, s1   # the nsproxy this process shared with its parent lives on
    assert s2["old_refs"] == 1, s2   # its own: freed by the switch
    assert s2["old_nsproxy"] == first.nsproxy["after"]
    freed = [s for s in second.kernel_path if s["func"] in ("free_nsproxy", "nsproxy_free") and s["kind"] == "enter"]
    assert [s["nsproxy"] for s in freed] == [first.nsproxy["after"]], second.kernel_path
