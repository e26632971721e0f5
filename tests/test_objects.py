"""The two builds of nstrace's BPF object and the feature check that picks one (probes/Makefile).

nstrace.bpf.o takes in-flight slots with BPF's compare-and-swap; nstrace-noatomics.bpf.o is the same
programs without it, for kernels whose verifier refuses the instruction (5.10, where dead code is checked
too). The lab runs `nstrace check` on 5.10 with the second; here both must load and trace.
"""

import subprocess

import pytest

from nstrace.bpf import loader
from nstrace.trace.tracer import Options, Tracer

from nshelpers import flag, nsop, wait_for

pytestmark = pytest.mark.root("loads BPF programs into the kernel")


def disassembly(path):
    return subprocess.run(["llvm-objdump", "-d", path], capture_output=True, text=True, check=True).stdout


def test_only_one_build_has_the_compare_and_swap():
    assert "cmpxchg" in disassembly(loader.OBJECT_PATH)
    assert "cmpxchg" not in disassembly(loader.NO_ATOMICS_OBJECT_PATH)


def test_the_kernel_is_asked_not_its_version():
    """This kernel (6.18) has BPF atomics: the check says so, and the build with them is chosen."""
    assert loader.kernel_has_cmpxchg() is True
    assert loader.object_for_kernel() == loader.OBJECT_PATH


@pytest.mark.parametrize("path", [loader.OBJECT_PATH, loader.NO_ATOMICS_OBJECT_PATH], ids=["atomics", "no-atomics"])
def test_each_build_traces(path):
    with Tracer(Options(poll_ms=20, kernel_path=False), object_path=path) as tracer:
        assert tracer.probes.object_path == path
        with nsop({"op": "unshare", "flags": flag("uts")}) as rep:
            [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "unshare")
        assert rec.changed == ["uts"] and rec.ns_after["uts"] == rep["ns"]["uts"]
