"""The wheel's build step: nstrace's CO-RE object and its native ring-buffer reader, compiled into it,
with the tables they are compiled from.

clang, bpftool and libbpf-dev are needed here, at build time, and nowhere else: an installed wheel
carries nstrace/_bpf/ and loads it through the system's libbpf1. Everything else about the package
is in pyproject.toml.
"""

import os
import shutil
import subprocess
import sysconfig

from setuptools import setup
from setuptools.command.build_py import build_py
from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithBpf(build_py):
    """build_py, then probes/ and native/ built and their products put in nstrace/_bpf: the objects
    (*.bpf.o), the reader library (*.so) and the tables both were made from (*.def), which the package
    reads at run time (nstrace/kernel/defs.py)."""

    def run(self):
        super().run()
        staging = os.path.join(HERE, "build", "bpf")  # make's intermediate objects stay out of the wheel
        for directory in ("probes", "native"):
            subprocess.run(["make", "-s", "-C", os.path.join(HERE, directory), f"OUT={staging}"], check=True)
        dest = os.path.join(self.build_lib, "nstrace", "_bpf")
        os.makedirs(dest, exist_ok=True)
        for name in sorted(os.listdir(staging)):
            if name.endswith((".bpf.o", ".so", ".def")):
                shutil.copy2(os.path.join(staging, name), dest)


class PlatformWheel(bdist_wheel):
    """A wheel for this platform (it holds a native library and an x86-64 BPF object), but for any
    Python 3: ctypes loads the library, no CPython ABI is involved, and everything installs into the
    one site-packages directory (purelib) like any Python code."""

    def get_tag(self):
        return ("py3", "none", sysconfig.get_platform().replace("-", "_").replace(".", "_"))


# The command is a plain script, not a [project.scripts] entry point: see scripts/nstrace
setup(cmdclass={"build_py": BuildWithBpf, "bdist_wheel": PlatformWheel}, scripts=["scripts/nstrace"])
