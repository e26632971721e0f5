"""Kernels unpacked once into the cache, and the modules a guest must load to reach the host's root."""

from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import BootError, DownloadError, LabError
from ..linux import trusted_paths
from .apt import Apt, KernelSpec
from .host import cache_dir, last_line, locked, require, trusted

# The guest needs a PCI virtio transport and the 9p filesystem; their dependencies (virtio, netfs,
# fscache ... the chain listed in kernel-env.md) are read from each module's own modinfo, because the
# set differs per kernel (6.12 and sid build virtio_pci and fscache in).
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")

# Loaded when the kernel has them as modules: the launcher's veth scenario needs veth, netns-bridge a bridge.
OPTIONAL_MODULES = ("veth", "bridge")


@dataclasses.dataclass(frozen=True)
class Kernel:
    release: str
    vmlinuz: Path
    modules: Path  # lib/modules/<release> of the unpacked tree


# apt-get download drops to this user (APT::Sandbox::User) to fetch; it needs a directory of its own
APT_USER = "_apt"


def _download_dir(private: Path) -> Path:
    """A directory inside `private` that only apt's download user (else root) can write."""
    debs = private / "debs"
    debs.mkdir(mode=0o700)
    try:
        import pwd
        os.chown(debs, pwd.getpwnam(APT_USER).pw_uid, 0)
        os.chmod(private, 0o711)  # the download user may pass through, not list or write
    except KeyError:
        pass  # no such user: apt downloads as root, and warns
    return debs


def prepare(spec: KernelSpec) -> Kernel:
    """Download and unpack `spec` unless the cache already has it.

    Everything happens in a private directory that only root can write (the
    .deb files in a subdirectory of apt's download user), and the unpacked
    tree is renamed into place whole: nobody else can plant a path that
    dpkg-deb, running as root, would follow.
    """
    key = re.sub(r"[^A-Za-z0-9.+_-]", "_", f"{'+'.join(sorted(spec.packages))}_{spec.version}")
    kernels = cache_dir() / "kernels"
    tree = kernels / key
    with locked(trusted(cache_dir()) / ".lock"):  # two processes must not unpack the same kernel at once
        if os.path.lexists(tree):
            trusted_paths.trusted_dir(tree)  # what is there is root's, or refused
        if trusted_paths.check_file(str(tree / ".complete")) is None:
            require("dpkg-deb")
            with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:  # 0700, root's
                debs = Apt(spec.suite).download(spec.packages, _download_dir(Path(tmp)))
                unpacked = Path(tmp) / "tree"
                unpacked.mkdir(mode=0o755)
                for deb in debs:
                    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise DownloadError(f"dpkg-deb -x {deb.name} failed: {last_line(proc.stderr)}")
                os.chmod(unpacked, 0o755)  # the package's "./" entry may have set another mode
                trusted_paths.write_whole(str(unpacked / ".complete"), json.dumps(dataclasses.asdict(spec)) + "\n")
                trusted(kernels)
                if os.path.lexists(tree):
                    shutil.rmtree(tree)  # a half-unpacked leftover of a killed run (checked above)
                os.rename(unpacked, tree)
    return _find_kernel(tree)


def _find_kernel(tree: Path) -> Kernel:
    # bookworm/trixie ship boot/vmlinuz-<release>; sid's linux-binary-* has usr/lib/modules/<release>/vmlinuz.
    for modules_root in (tree / "lib/modules", tree / "usr/lib/modules"):
        for modules in sorted(modules_root.glob("*")):
            for vmlinuz in (tree / "boot" / f"vmlinuz-{modules.name}", modules / "vmlinuz"):
                if vmlinuz.exists():
                    return Kernel(modules.name, vmlinuz, modules)
    raise LabError(f"no vmlinuz with matching modules in {tree}")


def _module_files(modules: Path) -> dict[str, Path]:
    # modinfo names use "_" where some file names use "-".
    return {re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", p.name).replace("-", "_"): p
            for p in modules.rglob("*.ko*")}


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    # busybox insmod takes plain .ko only; 6.12 and later ship .ko.xz (kernel-env.md).
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        require("zstd")
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _builtin_modules(modules: Path) -> set[str]:
    builtin = modules / "modules.builtin"
    if not builtin.exists():
        return set()
    return {Path(line.strip()).name.split(".ko")[0].replace("-", "_") for line in builtin.read_text().splitlines()}


def load_order(kernel: Kernel) -> list[tuple[str, bytes]]:
    """Module images in insmod order: dependencies first, built-in ones skipped.

    Dependencies come from each module's `depends=` modinfo string, so no modules.dep (which Debian
    only generates at install time) is needed.
    """
    files = _module_files(kernel.modules)
    builtin = _builtin_modules(kernel.modules)
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            # Built-in modules have no file (kernel-env.md: 6.12 and sid build in virtio_pci and fscache).
            # Without a modules.builtin list absence is taken as built in; the 9p mount tells the truth.
            if name in builtin or not builtin:
                return
            raise BootError(f"kernel {kernel.release} has module {name} neither as a file nor built in "
                            "(is this a -cloud flavour? it lacks 9p)")
        image = _module_bytes(files[name])
        match = re.search(rb"\x00depends=([^\x00]*)\x00", b"\x00" + image)
        for dep in filter(None, (match.group(1).decode().split(",") if match else [])):
            visit(dep.replace("-", "_"))
        ordered.append((name, image))

    for name in ROOT_MODULES:
        visit(name)
    for name in OPTIONAL_MODULES:
        if name in files:
            visit(name)
    return ordered
