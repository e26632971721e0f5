"""Kernels in the cache: what a guest boots (the kernel and the dozen modules it loads), nothing else.

A Debian kernel package unpacks to about 400 MB, of which a guest uses the kernel image and the
modules that reach the host's root (virtio, 9p), give the command its own ports (virtio_console),
bring its files back (overlay) and serve the scenarios (veth, bridge).  Only those are kept, with a
manifest of every module the package has: a module asked for later that the package has but the
cache does not makes the kernel be fetched again, one the package lacks is known to be built in or
missing without a download.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterable

from ..errors import BootError, DownloadError, LabError
from ..linux import trusted_paths
from . import bzimage
from .apt import Apt, KernelSpec
from .host import cache_dir, last_line, locked, require, trusted
from .status import Status, quiet

# The guest needs a PCI virtio transport and the 9p filesystem (the host's root), virtio_console
# (the command's stdout, stderr and files have ports of their own) and overlay (the command's
# working directory is writable, see initramfs.py).  Their dependencies (virtio, netfs, fscache ...
# kernel-notes/build-machines.md) come from each module's own modinfo: the set differs per kernel (6.12 and sid build
# virtio_pci, fscache and virtio_console in).
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_console", "overlay")

# Loaded when the kernel has them as modules: the launcher's veth scenario needs veth, netns-bridge a bridge.
OPTIONAL_MODULES = ("veth", "bridge")

# Manifests of this layout; a tree without one is fetched again.
LAYOUT = 2
MANIFEST = "manifest.json"

# Trees an older nstrace unpacked whole (kernels/<key>/, about 400 MB each) are removed once they are
# this old: an older nstrace still running may be booting one.
LEGACY_MAX_AGE_S = 24 * 3600

@dataclasses.dataclass(frozen=True)
class Kernel:
    release: str
    image: Path  # what qemu boots: the ELF kernel (pvh) or the vmlinuz itself
    pvh: bool  # image is an ELF kernel with a PVH entry (bzimage.py): no decompressor to emulate
    tree: Path
    depends: dict  # module kept in the tree -> its modinfo depends
    builtin: frozenset  # modules.builtin
    available: frozenset  # every module the package ships as a file

    @property
    def vmlinuz(self) -> Path:  # (older callers' name for the image)
        return self.image


def _key(spec: KernelSpec) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", f"{'+'.join(sorted(spec.packages))}_{spec.version}")


def _wanted() -> tuple[str, ...]:
    return ROOT_MODULES + OPTIONAL_MODULES


def prepare(spec: KernelSpec, status: Status = quiet) -> Kernel:
    """The kernel of `spec` in the cache, downloaded and trimmed first if need be.

    Everything is built in a private directory only root can write (the .deb files in a
    subdirectory of apt's download user) and renamed into place whole: nobody else can plant a
    path that root would follow.  One lock per kernel: a download of one kernel does not hold up
    a boot of another.
    """
    key = _key(spec)
    images = trusted(trusted(cache_dir()) / "images")
    tree = images / key
    with locked(images / f".{key}.lock"):
        kernel = _load(tree)
        if kernel is None or _missing(kernel):
            kernel = _build(spec, tree, status)
    _prune(spec, key, images)
    return kernel


def _load(tree: Path) -> Kernel | None:
    """The kernel in tree if it is complete and of this layout; None if it must be built."""
    if not os.path.lexists(tree):
        return None
    trusted_paths.trusted_dir(tree)  # what is there is root's, or refused
    text = trusted_paths.read_file(str(tree / MANIFEST))
    if text is None:
        return None
    manifest = json.loads(text)
    if manifest.get("layout") != LAYOUT:
        return None
    image = tree / manifest["image"]
    if trusted_paths.check_file(str(image)) is None:
        return None
    return Kernel(manifest["release"], image, manifest["pvh"], tree, manifest["depends"],
                  frozenset(manifest["builtin"]), frozenset(manifest["available"]))


def _missing(kernel: Kernel) -> list[str]:
    """Modules the guest wants that the package has but the tree does not keep (wanted since)."""
    need, seen = list(_wanted()), set()
    missing = []
    while need:
        name = need.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in kernel.depends:
            need += kernel.depends[name]
        elif name in kernel.available:
            missing.append(name)
    return missing


# --- building a tree ---------------------------------------------------------------------------

_MODULE = re.compile(r"^(?:\./)?(?:usr/)?lib/modules/([^/]+)/.*/([^/]+)\.ko(\.xz|\.zst|\.gz)?$")
_IMAGE = re.compile(r"^(?:\./)?(?:boot/vmlinuz-([^/]+)|(?:usr/)?lib/modules/([^/]+)/vmlinuz)$")
_BUILTIN = re.compile(r"^(?:\./)?(?:usr/)?lib/modules/([^/]+)/modules\.builtin$")

# Modules every Debian kernel of 5.10-7.2 loads for ROOT_MODULES (kernel-notes/build-machines.md): fetched in the
# first pass over a package, so that a second pass is needed only if a new kernel adds a dependency.
_LIKELY_DEPENDENCIES = ("virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "netfs",
                        "fscache", "9pnet", "llc", "stp")


def _module_name(file_name: str) -> str:
    return file_name.replace("-", "_")  # modinfo names use "_" where some file names use "-"


def _module_bytes(name: str, data: bytes) -> bytes:
    # busybox insmod takes plain .ko only; 6.12 and later ship .ko.xz (kernel-notes/build-machines.md).
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zst"):
        return subprocess.run([require("zstd"), "-dcq"], input=data, capture_output=True, check=True).stdout
    if name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _depends(image: bytes) -> list[str]:
    match = re.search(rb"\x00depends=([^\x00]*)\x00", b"\x00" + image)
    return [_module_name(d) for d in (match.group(1).decode().split(",") if match else []) if d]


class _Package:
    """The files of a kernel's .deb packages, read by streaming each package's tar (dpkg-deb
    --fsys-tarfile): the 400 MB tree never lands on disk."""

    def __init__(self, debs: list[Path]):
        self.debs = debs

    def scan(self, modules: set[str]) -> dict:
        """{"release", "image", "builtin", "available", "modules": {name: bytes}} for `modules`."""
        found = {"release": None, "image": None, "builtin": None, "available": set(), "modules": {}}
        for deb in self.debs:
            proc = subprocess.Popen([require("dpkg-deb"), "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            try:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                    for member in tar:
                        if member.isfile():
                            self._take(tar, member, modules, found)
            except tarfile.TarError as e:
                raise DownloadError(f"{deb.name}: not a package dpkg-deb can read ({e})") from None
            finally:
                proc.stdout.close()
                err = proc.stderr.read().decode(errors="replace")
                proc.wait()
            if proc.returncode != 0:
                raise DownloadError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {last_line(err)}")
        return found

    @staticmethod
    def _take(tar, member, modules, found) -> None:
        if (m := _MODULE.match(member.name)):
            name = _module_name(m.group(2))
            found["available"].add(name)
            if name in modules:
                found["modules"][name] = _module_bytes(member.name, tar.extractfile(member).read())
        elif (m := _IMAGE.match(member.name)):
            found["release"] = m.group(1) or m.group(2)
            found["image"] = tar.extractfile(member).read()
        elif _BUILTIN.match(member.name):
            found["builtin"] = tar.extractfile(member).read().decode()


def _closure(found: dict, builtin: set[str]) -> tuple[dict, set[str]]:
    """(name -> depends of every wanted module and its dependencies that are files, names still unread)."""
    depends, todo, unread = {}, list(_wanted()), set()
    while todo:
        name = todo.pop()
        if name in depends or name in unread:
            continue
        if name in found["modules"]:
            depends[name] = _depends(found["modules"][name])
            todo += depends[name]
        elif name in found["available"]:
            unread.add(name)
        elif name in ROOT_MODULES and name not in builtin and builtin:
            raise BootError(f"kernel {found['release']} has module {name} neither as a file nor built in "
                            "(is this a -cloud flavour? it lacks 9p)")
        # else: built in, or an optional module this kernel does not have
    return depends, unread


def _build(spec: KernelSpec, tree: Path, status: Status) -> Kernel:
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:  # 0700, root's
        legacy = _legacy_tree(spec)
        if legacy is not None:
            status(f"taking the kernel from the whole tree an older nstrace unpacked ({legacy.name})")
            package = _Tree(legacy)
        else:
            debs = Apt(spec.suite, status).download(spec, _download_dir(Path(tmp)), status)
            package = _Package(debs)
        started = time.monotonic()
        want = set(_wanted()) | set(_LIKELY_DEPENDENCIES)
        for _ in range(4):  # each pass adds the dependencies the last one found
            found = package.scan(want)
            if found["image"] is None or found["release"] is None:
                raise LabError(f"{spec.describe()}: no vmlinuz in the package(s)")
            builtin = {Path(line.strip()).name.split(".ko")[0].replace("-", "_")
                       for line in (found["builtin"] or "").splitlines() if line.strip()}
            depends, unread = _closure(found, builtin)
            if not unread:
                break
            want |= unread
        else:
            raise LabError(f"{spec.describe()}: module dependencies did not settle")
        staged = Path(tmp) / "tree"
        staged.mkdir(mode=0o755)
        image_name, pvh = _write_image(staged, found["image"])
        (staged / "modules").mkdir(mode=0o755)
        for name in depends:
            trusted_paths.write_whole(str(staged / "modules" / f"{name}.ko"), found["modules"][name])
        manifest = {"layout": LAYOUT, "name": spec.name, "spec": dataclasses.asdict(spec),
                    "release": found["release"], "image": image_name, "pvh": pvh, "depends": depends,
                    "builtin": sorted(builtin), "available": sorted(found["available"])}
        trusted_paths.write_whole(str(staged / MANIFEST), json.dumps(manifest, indent=1) + "\n")
        if os.path.lexists(tree):
            shutil.rmtree(tree)  # an older layout, or a tree that lacks a module now wanted (checked above)
        os.rename(staged, tree)
    size = sum(f.stat().st_blocks * 512 for f in tree.rglob("*") if f.is_file())
    status(f"kept {image_name} and {len(depends)} modules of {found['release']} ({size / 1e6:.0f} MB on disk, "
           f"in {time.monotonic() - started:.0f} s)")
    return _load(tree)


class _Tree(_Package):
    """A tree an older nstrace unpacked whole: read like a package, without a download."""

    def __init__(self, root: Path):
        self.root = root

    def scan(self, modules: set[str]) -> dict:
        found = {"release": None, "image": None, "builtin": None, "available": set(), "modules": {}}
        for path in self.root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                member = tarfile.TarInfo(str(path.relative_to(self.root)))
                self._take(_FileReader(path), member, modules, found)
        return found


class _FileReader:
    def __init__(self, path: Path):
        self.path = path

    def extractfile(self, _member):
        return open(self.path, "rb")


def _write_image(staged: Path, vmlinuz: bytes) -> tuple[str, bool]:
    """The image to boot into staged: the ELF kernel when qemu can boot it by PVH, else the vmlinuz."""
    try:
        elf = bzimage.payload(vmlinuz)
        pvh = bzimage.has_pvh_entry(elf)
    except LabError:
        pvh = False
    name, data = ("vmlinux", elf) if pvh else ("vmlinuz", vmlinuz)
    fd = os.open(staged / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        bzimage.write_sparse(fd, data)
    finally:
        os.close(fd)
    return name, pvh


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


# --- what the cache no longer needs -------------------------------------------------------------

def _legacy_root() -> Path:
    return cache_dir() / "kernels"


def _legacy_tree(spec: KernelSpec) -> Path | None:
    """A whole tree of this kernel that an older nstrace unpacked (kernels/<key>/), if complete."""
    tree = _legacy_root() / _key(spec)
    try:
        if os.path.lexists(tree):
            trusted_paths.trusted_dir(tree)
            if trusted_paths.check_file(str(tree / ".complete")) is not None:
                return tree
    except OSError:
        pass
    return None


def _prune(spec: KernelSpec, key: str, images: Path) -> None:
    """Remove what no guest needs: other versions of the kernel just prepared (same short name),
    and whole trees of an older nstrace once they are a day old.  A tree being built or booted
    holds its lock; such a tree is left for next time."""
    for other in _entries(images):
        if other.name == key or not other.is_dir():
            continue
        text = trusted_paths.read_file(str(other / MANIFEST)) if (other / MANIFEST).exists() else None
        if text is not None and json.loads(text).get("name") == spec.name:
            _remove_unlocked(other, images / f".{other.name}.lock")
    legacy = _legacy_root()
    for other in _entries(legacy):
        complete = other / ".complete"
        try:
            age = time.time() - complete.lstat().st_mtime
        except OSError:
            continue
        if age > LEGACY_MAX_AGE_S:
            with locked(cache_dir() / ".lock"):  # the older nstrace's lock
                shutil.rmtree(other, ignore_errors=True)


def _entries(where: Path) -> Iterable[Path]:
    try:
        trusted_paths.trusted_dir(where)
        return [p for p in where.iterdir() if not p.name.startswith(".")]
    except OSError:
        return []


def _remove_unlocked(tree: Path, lock: Path) -> None:
    trusted_paths.check_file(str(lock))
    try:
        handle = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        handle = None
    try:
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
        shutil.rmtree(tree, ignore_errors=True)  # (the lock file stays: a waiter may hold it open)
    finally:
        if handle is not None:
            os.close(handle)


# --- what a guest loads -------------------------------------------------------------------------

def boot_files(kernel: Kernel) -> tuple[int, list[tuple[str, bytes]]]:
    """(an fd open on the image, the modules in insmod order), read under the tree's lock: a newer
    version of the kernel replacing this one cannot remove them halfway (_prune).  qemu is given the
    fd, so the image it reads is the one checked here."""
    with locked(kernel.tree.parent / f".{kernel.tree.name}.lock"):
        trusted_paths.check_file(str(kernel.image))
        fd = os.open(kernel.image, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return fd, load_order(kernel)
        except BaseException:
            os.close(fd)
            raise


def load_order(kernel: Kernel) -> list[tuple[str, bytes]]:
    """Module images in insmod order: dependencies first, built-in ones skipped."""
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in kernel.depends:
            return  # built in, or an optional module this kernel does not have (see _closure)
        for dep in kernel.depends[name]:
            visit(dep)
        data = trusted_paths.read_file(str(kernel.tree / "modules" / f"{name}.ko"), binary=True)
        if data is None:
            raise BootError(f"the cached kernel {kernel.release} lost module {name}: remove {kernel.tree}")
        ordered.append((name, data))

    for name in _wanted():
        visit(name)
    return ordered
