"""The builds of nstrace's BPF object and the checks that pick one (probes/Makefile).

nstrace.bpf.o takes in-flight slots with BPF's compare-and-swap; nstrace-noatomics.bpf.o is the same
programs without it, for kernels whose verifier refuses the instruction (5.10, where dead code is checked
too). The lab runs `nstrace check` on 5.10 with the second. Each has a twin with the syscall layer alone
(nstrace-syscalls*.bpf.o), loaded where no kernel function can be hooked, as here. All four must load
and trace here.
"""

import subprocess

import pytest
from nshelpers import flag, nsop, wait_for

from nstrace.bpf import features, loader
from nstrace.tracing.tracer import Options, Tracer

pytestmark = pytest.mark.root("loads BPF programs into the kernel")


def disassembly(path):
    return subprocess.run(["llvm-objdump", "-d", path], capture_output=True, text=True, check=True).stdout


def test_only_the_atomics_builds_have_the_compare_and_swap():
    for path in (loader.OBJECT_PATH, loader.SYSCALLS_OBJECT_PATH):
        assert "cmpxchg" in disassembly(path), path
    for path in (loader.NO_ATOMICS_OBJECT_PATH, loader.SYSCALLS_NO_ATOMICS_OBJECT_PATH):
        assert "cmpxchg" not in disassembly(path), path


def test_the_syscall_builds_have_no_function_layer():
    for path in loader.SYSCALLS_OBJECTS:
        assert not [line for line in disassembly(path).splitlines() if "<fentry_" in line or "<kprobe_" in line]
    assert "<fentry_copy_namespaces>" in disassembly(loader.OBJECT_PATH)


def test_the_kernel_is_asked_not_its_version():
    """This kernel (6.18) has BPF atomics: the check says so, and the build with them is chosen."""
    assert features.kernel_has_cmpxchg() is True
    assert loader.object_for_kernel() == loader.OBJECT_PATH
    assert loader.object_for_kernel(function_layer=False) == loader.SYSCALLS_OBJECT_PATH


def test_where_no_function_can_be_hooked_the_syscall_build_is_loaded():
    """This kernel hooks no function (kernel-notes/build-machines.md): the syscall layer's build is loaded, with the
    kernel-path option on all the same; the lab's kernels load the whole one (tests/test_kernelpath.py)."""
    with Tracer(Options(poll_ms=20)) as tracer:
        if any(h.kind for h in tracer.hooks):
            pytest.skip("this kernel can hook functions: tests/test_kernelpath.py checks the whole build is loaded")
        assert tracer.probes.object_path == loader.SYSCALLS_OBJECT_PATH


@pytest.mark.parametrize("path", [loader.OBJECT_PATH, loader.NO_ATOMICS_OBJECT_PATH, *loader.SYSCALLS_OBJECTS],
                         ids=["atomics", "no-atomics", "syscalls", "syscalls-no-atomics"])
def test_each_build_traces(path):
    with Tracer(Options(poll_ms=20, kernel_path=False), object_path=path) as tracer:
        assert tracer.probes.object_path == path
        with nsop({"op": "unshare", "flags": flag("uts")}) as rep:
            [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "unshare")
        assert rec.changed == ["uts"] and rec.ns_after["uts"] == rep["ns"]["uts"]
