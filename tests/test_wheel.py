"""nstrace as Python tools are installed: a wheel that carries its BPF object and native reader.

scripts/setup.sh builds the wheel (setup.py compiles probes/ and native/ into it) and installs it into
.venv; these tests check that what the suite runs is that installed package, and that the wheel
installs and works where nothing but python3 and libbpf1 is at hand: no clang, no bpftool, no checkout.
"""

import os
import shutil
import subprocess
import sysconfig
import zipfile
from pathlib import Path

import pytest
from nshelpers import ROOT

import nstrace
from nstrace.bpf import loader

DIST = ROOT / "dist"


def the_wheel():
    wheels = sorted(DIST.glob("nstrace-*.whl"))
    assert len(wheels) == 1, f"scripts/setup.sh leaves one wheel in {DIST}: {wheels}"
    return wheels[0]


def test_the_suite_runs_the_installed_package_not_the_checkout():
    where = Path(nstrace.__file__).resolve()
    assert where.is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve()), where
    assert not where.is_relative_to(ROOT / "nstrace"), where


def test_the_wheel_holds_what_nstrace_reads_at_run_time():
    names = set(zipfile.ZipFile(the_wheel()).namelist())
    objects = (loader.OBJECT_PATH, loader.NO_ATOMICS_OBJECT_PATH, *loader.SYSCALLS_OBJECTS)
    for needed in (*(f"nstrace/_bpf/{os.path.basename(p)}" for p in objects), "nstrace/_bpf/libnstrace-batch.so",
                   "nstrace/kernel/paths.toml", "nstrace/kernel/source-lines.toml", "nstrace/session/schema.json",
                   "nstrace/session/_schema.py", "nstrace/py.typed"):
        assert needed in names, needed
    assert not [n for n in names if n.endswith(".tmp.o")], "make's intermediate objects are not shipped"
    assert the_wheel().name.endswith("-py3-none-linux_x86_64.whl"), the_wheel().name
    metadata = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[pytest11]\nnstrace = nstrace.pytest_plugin" in zipfile.ZipFile(the_wheel()).read(metadata).decode()


# Hidden in the machine the wheel is tried on: what only building nstrace needs, and the checkout.
BUILD_ONLY = ["/usr/lib/llvm-14", "/usr/include/bpf"]


@pytest.mark.root("hides the compiler and the checkout in a mount namespace, and traces")
def test_the_wheel_installs_and_traces_without_a_compiler_or_a_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    shutil.copytree(DIST, wheels)  # the checkout, dist/ included, is hidden below
    venv = tmp_path / "venv"
    hide = " && ".join(
        [f"mount -t tmpfs -o size=1m none {d}" for d in [*BUILD_ONLY, str(ROOT)] if os.path.isdir(d)]
        + [f"mount --bind /dev/null {f}" for f in ("/usr/sbin/bpftool",) if os.path.exists(f)])
    script = f"""
        set -e
        {hide}
        if command -v clang || command -v bpftool || [ -e {ROOT}/nstrace ]; then echo "not hidden" >&2; exit 9; fi
        /usr/bin/python3 -m venv {venv}
        {venv}/bin/pip install -q --no-index --find-links {wheels} --find-links {wheels}/deps nstrace
        cd /
        {venv}/bin/nstrace demo --flags NEWUTS --op unshare
        {venv}/bin/python -c "{LIBRARY}"
    """
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "unshare" in res.stdout and "nsproxy" in res.stdout, res.stdout[-2000:]
    assert res.stdout.strip().endswith("library: ['uts']"), res.stdout[-2000:]


# The library, as installed with the wheel: nothing more to install (README "Python library")
LIBRARY = ("import ctypes, nstrace; "
           "t = nstrace.trace(); r = t.__enter__(); ctypes.CDLL(None).unshare(0x04000000); t.__exit__(None, None, None); "
           "print('library:', r.records[0].changed)")
