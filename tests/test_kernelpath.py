"""The kernel-function layer on a kernel that allows it: order, flags and results.

These need fentry/fexit or kprobes. Our build machines have neither (see
kernel-notes/build-machines.md), so on them this module is skipped with that reason
and tests/test_lab.py runs it inside Debian kernels booted under QEMU, where
it must pass.
"""


import pytest
from nshelpers import flag, nsop, wait_for

from nstrace.bpf import loader
from nstrace.study import pathcheck

pytestmark = [pytest.mark.kernelpath, pytest.mark.root("attaches the kernel-function layer"),
              pytest.mark.usefixtures("function_layer")]


def calls(rec):
    """Function names in entry order."""
    return [s["func"] for s in rec.kernel_path if s["kind"] == "enter"]


def step(rec, func, kind):
    return next(s for s in rec.kernel_path if s["func"] == func and s["kind"] == kind)


def hooks(tracer):
    return {h.func: h for h in tracer.hooks}


def check_against_notes(tracer, rec):
    results = pathcheck.compare(rec, hooks(tracer), {"syscalls:sys_enter_" + rec.op, "syscalls:sys_exit_" + rec.op,
                                                     "task:task_newtask"})
    failed = [r for r in results if r.failed]
    assert not failed, failed
    return results


COPY_ORDER = ["copy_mnt_ns", "copy_utsname", "copy_ipcs", "copy_pid_ns", "copy_cgroup_ns", "copy_net_ns",
              "copy_time_ns"]


def test_clone_several_flags(tracer):
    flags = flag("uts") | flag("ipc") | flag("net") | flag("pid") | flag("mnt")
    with nsop({"op": "clone", "flags": flags}) as rep:
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "clone")
        path = calls(rec)
        # kernel/fork.c copy_process -> kernel/nsproxy.c copy_namespaces -> create_new_namespaces
        # -> the copy_* of each type in the order create_new_namespaces calls them
        assert path[:2] == ["copy_namespaces", "create_new_namespaces"], path
        assert [f for f in path if f.startswith("copy_") and f != "copy_namespaces"] == COPY_ORDER
        assert "switch_task_namespaces" not in path, "a clone child gets its nsproxy directly"
        assert step(rec, "copy_namespaces", "enter")["flags"] == rec.flags
        assert step(rec, "copy_namespaces", "exit")["ret"] == 0
        # each new namespace returned by copy_* is the one the child has, per /proc
        for func, entry in (("copy_utsname", "uts"), ("copy_ipcs", "ipc"), ("copy_net_ns", "net"),
                            ("copy_mnt_ns", "mnt"), ("copy_pid_ns", "pid")):
            assert step(rec, func, "exit")["inode"] == rec.ns_after[entry] == rep["child_ns"][entry]
        # namespaces not asked for are shared: copy_* returns the parent's
        assert step(rec, "copy_cgroup_ns", "exit")["inode"] == rec.ns_before["cgroup"]
        assert step(rec, "create_new_namespaces", "exit")["nsproxy"] == rec.nsproxy["after"]
        check_against_notes(tracer, rec)


def test_unshare(tracer):
    with nsop({"op": "unshare", "flags": flag("uts") | flag("ipc")}) as rep:
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "unshare")
        path = calls(rec)
        assert path.index("ksys_unshare") < path.index("unshare_nsproxy_namespaces") \
            < path.index("create_new_namespaces") < path.index("switch_task_namespaces")
        assert step(rec, "ksys_unshare", "enter")["flags"] == rec.flags
        switch = step(rec, "switch_task_namespaces", "enter")
        assert (switch["old_nsproxy"], switch["nsproxy"]) == (rec.nsproxy["before"], rec.nsproxy["after"])
        assert step(rec, "copy_utsname", "exit")["inode"] == rec.ns_after["uts"] == rep["ns"]["uts"]
        check_against_notes(tracer, rec)


def test_setns(tracer, ns_holder):
    path_file = f"/proc/{ns_holder}/ns/uts"
    with nsop({"op": "setns", "ns_path": path_file, "flags": flag("uts")}) as rep:
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "setns")
        path = calls(rec)
        assert path[0] == "__x64_sys_setns"
        assert path.index("create_new_namespaces") < path.index("utsns_install") \
            < path.index("switch_task_namespaces")
        assert step(rec, "utsns_install", "enter")["inode"] == rec.target["inode"] == rec.ns_after["uts"]
        assert step(rec, "utsns_install", "exit")["ret"] == 0
        assert step(rec, "__x64_sys_setns", "exit")["ret"] == rec.ret == 0
        check_against_notes(tracer, rec)


def test_failing_setns_path(tracer, ns_holder):
    with nsop({"op": "setns", "ns_path": f"/proc/{ns_holder}/ns/uts", "flags": flag("net")}) as rep:
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "setns")
        assert rec.errno == "EINVAL"
        assert step(rec, "__x64_sys_setns", "exit")["ret"] == rec.ret
        assert "switch_task_namespaces" not in calls(rec)


def test_the_whole_build_is_loaded(tracer):
    """Where functions can be hooked the object with the function layer is loaded (elsewhere the
    syscall layer's twin: tests/test_objects.py)."""
    assert tracer.probes.object_path in (loader.OBJECT_PATH, loader.NO_ATOMICS_OBJECT_PATH)
