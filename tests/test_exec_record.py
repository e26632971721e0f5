"""exec as a record: since 6.12 an execve moves a caller whose time_for_children differs from its time
namespace into it (kernel/nsproxy.c exec_task_namespaces(), called by fs/exec.c begin_new_exec()).
util-linux `unshare --time CMD` is the real client: unshare(CLONE_NEWTIME), then exec CMD."""

import os
import subprocess

import pytest

from nshelpers import wait_for

pytestmark = pytest.mark.root("loads BPF programs and makes time namespaces")


def test_unshare_time_then_exec(tracer):
    host_time = os.stat("/proc/self/ns/time").st_ino
    out = subprocess.run(["unshare", "--time", "readlink", "/proc/self/ns/time"], capture_output=True, text=True,
                         check=True).stdout
    inode = int(out.strip().removeprefix("time:[").removesuffix("]"))
    ours = lambda r: r.comm == "unshare" and (r.op == "exec" or r.flags == ["CLONE_NEWTIME"])  # noqa: E731
    records = wait_for(tracer, ours, count=1 if inode == host_time else 2)
    [unshare] = [r for r in records if r.op == "unshare"]
    assert unshare.changed == ["time_for_children"] and unshare.ns_after["time_for_children"] == inode
    # /proc was read after the exec had moved it: not a mismatch, the exec explains it
    assert unshare.proc_check["status"] in ("superseded", "gone", "match"), unshare.proc_check
    if inode == host_time:
        assert not [r for r in records + tracer.poll(100) if r.op == "exec" and r.pid == unshare.pid]
        pytest.skip("exec does not move into time_for_children before 6.12 (no exec_task_namespaces): no record")
    [exe] = [r for r in records if r.op == "exec"]
    assert exe.pid == unshare.pid
    assert exe.ret == 0 and exe.flags == [] and exe.changed == ["time"]
    assert exe.ns_before["time"] == host_time and exe.ns_after["time"] == exe.ns_after["time_for_children"] == inode
    assert exe.nsproxy["before"] != exe.nsproxy["after"]
    assert exe.ts >= unshare.ts
    assert exe.proc_check["status"] in ("match", "gone"), exe.proc_check
    # every exec's sched_process_exec returns at once while no exec record is pending: none is now
    assert tracer._obj.read_global(".bss", "exec_pending") == 0


def test_a_plain_exec_makes_no_record(tracer):
    subprocess.run(["true"], check=True)
    assert not [r for r in tracer.poll(100) + tracer.poll(100) if r.op == "exec" and r.comm == "python3"]
