"""Run a command under a stock Debian kernel booted in QEMU, with this machine's root shared read-only.

Why this exists (shared/kernel-env.md): the build machines' kernel has no kprobes and refuses fentry, so
the kernel-function layer of nstrace can only be exercised on another kernel.  Debian's own kernels have
both; QEMU's TCG boots them here in seconds, and because the guest chroots into the host's root (9p,
read-only) the host's Python, virtualenvs, libbpf and compiled BPF objects run in it unchanged.

Flow: resolve a kernel name to Debian package(s) -> download and unpack once into a cache -> build a tiny
busybox initramfs that loads the kernel's own 9p modules -> boot, run the command, read its output and
exit status from the serial console between unique marker lines.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import json
import lzma
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, TextIO

from . import fstrust
from .errors import NstraceError

# Short names -> Debian suite whose `linux-image-amd64` metapackage picks the kernel.  The generic
# -amd64 flavour on purpose: kernel-env.md notes the -cloud-amd64 image has no 9p.
KERNEL_SUITES = {"6.1": "bookworm", "6.12": "trixie", "sid": "sid"}
METAPACKAGE = "linux-image-amd64"

# The guest needs a PCI virtio transport and the 9p filesystem; their dependencies (virtio, netfs,
# fscache ... the chain listed in kernel-env.md) are read from each module's own modinfo, because the
# set differs per kernel (6.12 and sid build virtio_pci and fscache in).
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
# Loaded when the kernel has them as modules: the launcher's veth scenario needs veth.
OPTIONAL_MODULES = ("veth",)

DEFAULT_CACHE = "/var/cache/nstrace/lab"
# apt lists younger than this are trusted, so a second run needs no network at all.
LISTS_MAX_AGE_S = 24 * 3600
BOOT_TIMEOUT_S = 150
# The guest kernel's command line.  Its console (ttyS0) carries kernel messages only; the command's
# output has a port of its own (ttyS1, see _init_script), so no kernel message can split it.  A hang
# must end the run at once with every CPU's stack, not at the timeout (kernel/watchdog.c, 6.1-7.2):
# softlockup_panic panics on a soft lockup, softlockup_all_cpu_backtrace first has every other CPU
# print its stack (NMI), panic=-1 with qemu's -no-reboot ends qemu on the panic, and hung_task_panic
# does the same for a task stuck in D state for 120 s (kernel/hung_task.c).  loglevel=5 lets the
# stack dumps through (printed at KERN_DEFAULT, 4; `quiet` allows only levels below 4) and keeps the
# boot's info chatter off the slow emulated UART; init raises it to 7 once booted (GUEST_PRINTK).
KERNEL_ARGS = ("console=ttyS0", "loglevel=5", "panic=-1", "softlockup_panic=1",
               "softlockup_all_cpu_backtrace=1", "hung_task_panic=1")
GUEST_PRINTK = "7 4 1 7"  # /proc/sys/kernel/printk while the command runs: NMI backtrace headers are pr_info
# What on the kernel's console means the guest is wedged: each ends the run as GuestLockup.  (Not an
# RCU stall warning: under TCG on a busy host a slow grace period is no hang, and a real one ends in
# a soft lockup anyway.)
LOCKUP_PATTERNS = (r"watchdog: BUG: soft lockup", r"INFO: task \S+ blocked for more than",
                   r"Kernel panic - not syncing")
# TCG with one host thread for every vCPU, not a thread per vCPU (qemu's default, MTTCG): under
# MTTCG a vCPU can translate a block of kernel code while another vCPU is patching it (text_poke_bp,
# arch/x86/kernel/alternative.c), and keep the stale translation; a CPU that then runs the patched
# site traps on an int3 that memory no longer holds, forever (kernel-notes/text-patching-under-tcg.md).
# One thread cannot translate and store at once, so that window does not exist.
TCG_THREAD = "single"
GUEST_MEMORY = "1536M"
GUEST_CPUS = "2"
BUSYBOX = "/bin/busybox"  # from busybox-static: the initramfs has no libc
# Writable scratch the guest gets on top of the read-only host root; pip, pytest and Python's tempfile
# need these.  Writes vanish with the guest.  Not /root: on this machine it holds the Python (pyenv)
# that has pytest, which a tmpfs would hide; HOME points into /tmp instead.
GUEST_TMPFS = ("/tmp", "/run", "/var/tmp", "/dev/shm")
GUEST_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    # stdout is the serial console, a tty: keep colour codes (pytest, ls) out of the captured output.
    "TERM": "dumb",
    # The host root is read-only in the guest: stop Python from trying to write __pycache__.
    "PYTHONDONTWRITEBYTECODE": "1",
}


class LabError(NstraceError):
    """Base of every error of the lab; like every NstraceError the message is one line, fit for the CLI."""


class ToolMissing(LabError):
    pass


class PackageNotFound(LabError):
    pass


class DownloadError(LabError):
    pass


class _GuestFailure(LabError):
    """A guest that ended without reporting its command's exit status.

    console: the kernel's console; output: the command's channel so far; began: the command had started.
    """

    def __init__(self, message: str, console: str = "", output: str = "", began: bool = False):
        super().__init__(message)
        self.console, self.output, self.began = console, output, began


class BootError(_GuestFailure):
    """The guest never reached the command, or died before reporting its exit status."""


class GuestTimeout(_GuestFailure):
    """The guest outlived its timeout."""


class GuestLockup(BootError):
    """The guest kernel reported a soft lockup, hung task or panic; `console` holds its stacks."""


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    name: str  # what the caller asked for: "6.1", "sid" or a package name
    suite: str
    packages: tuple[str, ...]  # what gets downloaded (sid: linux-base-*, linux-binary-*, linux-modules-*)
    version: str  # Debian version of those packages

    def describe(self) -> str:
        return f"{self.name}: {' + '.join(self.packages)} {self.version} ({self.suite})"


@dataclasses.dataclass(frozen=True)
class GuestResult:
    kernel: str
    kernel_release: str  # `uname -r` inside the guest
    returncode: int
    output: str  # the command's stdout+stderr, from its own serial port (no kernel messages in it)
    duration_s: float  # qemu start to qemu exit
    boot_s: float  # qemu start until the command started
    console: str = dataclasses.field(default="", repr=False)  # the kernel's console (ttyS0)


def cache_dir() -> Path:
    return Path(os.path.abspath(os.environ.get("NSTRACE_LAB_CACHE", DEFAULT_CACHE)))


def _trusted(path: Path) -> Path:
    """path, made if missing, checked to be root's alone (fstrust.UnsafePath if not): root unpacks
    and boots what is in the cache, so no other user may be able to change any of it."""
    fstrust.trusted_dir(path, create=True)
    return path


# --------------------------------------------------------------------------------------------------
# Debian packages


def _host_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise LabError("cannot tell this machine's Debian release (no VERSION_CODENAME in /etc/os-release)")


def _host_apt_sources() -> list[dict[str, str]]:
    """The machine's own deb sources as deb822 stanzas (.sources files and one-line sources.list)."""
    stanzas: list[dict[str, str]] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for block in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in block.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip()] = value.strip()
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                stanzas.append(fields)
    one_line = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            options = ""
            if words[1].startswith("["):
                end = next(i for i, w in enumerate(words) if w.endswith("]"))
                options, words = " ".join(words[1 : end + 1])[1:-1], [words[0], *words[end + 1 :]]
            fields = {"Types": "deb", "URIs": words[1], "Suites": words[2], "Components": " ".join(words[3:])}
            signed = re.search(r"signed-by=(\S+)", options)
            if signed:
                fields["Signed-By"] = signed.group(1)
            stanzas.append(fields)
    return stanzas


def _sources_for(suite: str) -> str:
    """This machine's sources with its own release swapped for `suite`: same mirror, keys and components.

    bookworm -> trixie also maps bookworm-updates/-security to trixie-*; sid has no such companions.
    """
    host = _host_codename()
    out = []
    for fields in _host_apt_sources():
        suites = []
        for s in fields.get("Suites", "").split():
            if s == host:
                suites.append(suite)
            elif s.startswith(host + "-") and suite not in ("sid", "unstable"):
                suites.append(suite + s[len(host) :])
        if not suites:
            continue
        stanza = dict(fields, Suites=" ".join(suites))
        out.append("\n".join(f"{k}: {v}" for k, v in stanza.items() if k in
                             ("Types", "URIs", "Suites", "Components", "Signed-By", "Trusted")))
    if not out:
        raise LabError(f"no deb source for {host} in this machine's apt configuration to derive {suite} from")
    return "\n\n".join(out) + "\n"


class _Apt:
    """apt-get/apt-cache on a private state for one suite, so the machine's own apt state stays untouched."""

    def __init__(self, suite: str):
        self.suite = suite
        self.root = cache_dir() / "apt" / suite
        self._fresh = False

    def options(self) -> list[str]:
        return [
            # The machine's update hooks (PackageKit, appstream) concern its own lists, not these.
            "-c", str(self.root / "no-hooks.conf"),
            "-o", f"Dir::Etc::SourceList={self.root / 'sources.sources'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            # Docker-style images switch the binary cache off; without it every apt-cache call re-parses
            # all lists (~1 s instead of ~0.25 s).
            "-o", "Dir::Cache::pkgcache=pkgcache.bin",
            "-o", "Dir::Cache::srcpkgcache=srcpkgcache.bin",
        ]

    def ensure_lists(self) -> None:
        if self._fresh:
            return
        _trusted(self.root)
        fstrust.write_whole(str(self.root / "no-hooks.conf"),
                            "#clear APT::Update::Post-Invoke-Success;\n#clear APT::Update::Post-Invoke;\n")
        sources = self.root / "sources.sources"
        wanted = _sources_for(self.suite)
        stamp = self.root / "lists" / ".updated"
        if (fstrust.read_file(str(sources)) == wanted and fstrust.check_file(str(stamp))
                and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S):
            self._fresh = True
            return
        for sub in ("lists", "cache", "cache/archives"):
            _trusted(self.root / sub)
        for sub in ("lists/partial", "cache/archives/partial"):
            # apt's own: it makes them _apt's (0700) before it downloads into them
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        fstrust.write_whole(str(sources), wanted)
        proc = subprocess.run(["apt-get", "update", *self.options()], capture_output=True, text=True)
        # apt-get update exits 0 even when a source failed; "W:/E:" lines tell.
        failed = proc.returncode != 0 or re.search(r"^(E:|W: Failed)", proc.stderr, re.M)
        if failed:
            if stamp.exists():  # stale lists still name real packages; go on offline
                self._fresh = True
                return
            raise DownloadError(f"apt-get update for {self.suite} failed: {_last_line(proc.stderr)}")
        fstrust.write_whole(str(stamp), "")
        self._fresh = True

    def show(self, package: str) -> dict[str, str] | None:
        """Fields of the candidate version of `package`, or None if the suite has no such package."""
        self.ensure_lists()
        proc = subprocess.run(["apt-cache", *self.options(), "show", "--no-all-versions", package],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        fields: dict[str, str] = {}
        for line in proc.stdout.split("\n\n")[0].splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        return fields

    def download(self, packages: tuple[str, ...], dest: Path) -> list[Path]:
        self.ensure_lists()
        proc = subprocess.run(["apt-get", *self.options(), "download", *packages],
                              cwd=dest, capture_output=True, text=True)
        debs = sorted(dest.glob("*.deb"))
        if proc.returncode != 0 or len(debs) != len(packages):
            raise DownloadError(f"apt-get download {' '.join(packages)} failed: {_last_line(proc.stderr)}")
        return debs


def _kernel_packages(apt: _Apt, package: str) -> tuple[list[str], str]:
    """The packages holding `package`'s kernel files, and their version, found through versioned Depends.

    bookworm/trixie: linux-image-amd64 -> linux-image-<abi>-amd64, which is the kernel itself.  sid:
    linux-image-<ver>-amd64 is only a dependency shell over linux-binary-* and linux-modules-*
    (kernel-env.md); those two also bring that kernel's linux-base-<ver> (config, modules.builtin).
    So: a linux-image-* package with kernel dependencies is a shell, everything else is content.
    The unversioned `linux-base` (maintainer scripts) does not match and stays out.
    """
    wanted: list[str] = []
    version = ""
    todo, seen = [package], set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        fields = apt.show(name)
        if fields is None:
            raise PackageNotFound(f"no package {name} in {apt.suite}")
        deps = [alternative.split("|")[0].split()[0] for alternative in fields.get("Depends", "").split(",")
                if alternative.strip()]
        deps = [d for d in deps if re.match(r"linux-(image|binary|modules|base)-[0-9]", d)]
        todo += deps
        if not (deps and (name == METAPACKAGE or name.startswith("linux-image-"))):
            wanted.append(name)
            version = version or fields["Version"]
    return wanted, version


def resolve(name: str) -> KernelSpec:
    """Map "6.1" / "6.12" / "sid" / a package name (optionally "package/suite") to what to download.

    Nothing is hard-coded beyond the suite: the version comes from the metapackage's Depends now.
    """
    if name in KERNEL_SUITES:
        suite = KERNEL_SUITES[name]
        packages, version = _kernel_packages(_Apt(suite), METAPACKAGE)
        if name != "sid" and not version.startswith(name + "."):
            raise PackageNotFound(f"{METAPACKAGE} in {suite} now points to {version}, not a {name} kernel")
        return KernelSpec(name, suite, tuple(packages), version)
    package, _, suite = name.partition("/")
    if not re.fullmatch(r"linux-[a-z0-9][a-z0-9.+~-]*", package):
        raise PackageNotFound(f"unknown kernel {name!r}: use one of {', '.join(KERNEL_SUITES)} "
                              "or a Debian linux-image-* package name")
    for candidate in [suite] if suite else list(KERNEL_SUITES.values()):
        apt = _Apt(candidate)
        if apt.show(package) is not None:
            packages, version = _kernel_packages(apt, package)
            return KernelSpec(name, candidate, tuple(packages), version)
    where = suite or ", ".join(KERNEL_SUITES.values())
    raise PackageNotFound(f"no package {package} in {where}")


def available_kernels() -> dict[str, KernelSpec | LabError]:
    """What each short name resolves to right now (an error in place of a spec if a suite is unreachable)."""
    result: dict[str, KernelSpec | LabError] = {}
    for name in KERNEL_SUITES:
        try:
            result[name] = resolve(name)
        except LabError as exc:
            result[name] = exc
    return result


# --------------------------------------------------------------------------------------------------
# Unpacked kernels


@dataclasses.dataclass(frozen=True)
class _Kernel:
    release: str
    vmlinuz: Path
    modules: Path  # lib/modules/<release> of the unpacked tree


def _locked(path: Path):
    _trusted(path.parent)
    fstrust.check_file(str(path))
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "a")
    fcntl.flock(handle, fcntl.LOCK_EX)  # two test processes must not unpack the same kernel at once
    return handle


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


def prepare(spec: KernelSpec) -> _Kernel:
    """Download and unpack `spec` unless the cache already has it.

    Everything happens in a private directory that only root can write (the
    .deb files in a subdirectory of apt's download user), and the unpacked
    tree is renamed into place whole: nobody else can plant a path that
    dpkg-deb, running as root, would follow.
    """
    key = re.sub(r"[^A-Za-z0-9.+_-]", "_", f"{'+'.join(sorted(spec.packages))}_{spec.version}")
    kernels = cache_dir() / "kernels"
    tree = kernels / key
    with _locked(_trusted(cache_dir()) / ".lock"):
        if os.path.lexists(tree):
            fstrust.trusted_dir(tree)  # what is there is root's, or refused
        if fstrust.check_file(str(tree / ".complete")) is None:
            _require("dpkg-deb")
            with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:  # 0700, root's
                debs = _Apt(spec.suite).download(spec.packages, _download_dir(Path(tmp)))
                unpacked = Path(tmp) / "tree"
                unpacked.mkdir(mode=0o755)
                for deb in debs:
                    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise DownloadError(f"dpkg-deb -x {deb.name} failed: {_last_line(proc.stderr)}")
                os.chmod(unpacked, 0o755)  # the package's "./" entry may have set another mode
                fstrust.write_whole(str(unpacked / ".complete"), json.dumps(dataclasses.asdict(spec)) + "\n")
                _trusted(kernels)
                if os.path.lexists(tree):
                    shutil.rmtree(tree)  # a half-unpacked leftover of a killed run (checked above)
                os.rename(unpacked, tree)
    return _find_kernel(tree)


def _find_kernel(tree: Path) -> _Kernel:
    # bookworm/trixie ship boot/vmlinuz-<release>; sid's linux-binary-* has usr/lib/modules/<release>/vmlinuz.
    for modules_root in (tree / "lib/modules", tree / "usr/lib/modules"):
        for modules in sorted(modules_root.glob("*")):
            for vmlinuz in (tree / "boot" / f"vmlinuz-{modules.name}", modules / "vmlinuz"):
                if vmlinuz.exists():
                    return _Kernel(modules.name, vmlinuz, modules)
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
        _require("zstd")
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _builtin_modules(modules: Path) -> set[str]:
    builtin = modules / "modules.builtin"
    if not builtin.exists():
        return set()
    return {Path(line.strip()).name.split(".ko")[0].replace("-", "_") for line in builtin.read_text().splitlines()}


def _load_order(kernel: _Kernel) -> list[tuple[str, bytes]]:
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


# --------------------------------------------------------------------------------------------------
# initramfs


class _Cpio:
    """Writer for the "newc" cpio format the kernel unpacks as initramfs (no staging directory needed)."""

    def __init__(self, out):
        self.out = out
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))
        self.ino += 1

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def _scratch_mounts(cwd: str) -> tuple[str, ...]:
    """The writable tmpfs mounts for a guest whose command runs in cwd: never one that hides cwd."""
    return tuple(p for p in GUEST_TMPFS if not (cwd == p or cwd.startswith(p.rstrip("/") + "/")))


def _init_script(modules: list[str], argv: list[str], cwd: str, env: dict[str, str], marker: str,
                 scratch: tuple[str, ...] = GUEST_TMPFS) -> str:
    host_mounts = [
        "mount -t proc proc /host/proc",
        "mount -t sysfs sysfs /host/sys",
        "mount -t devtmpfs devtmpfs /host/dev",
        "mkdir -p /host/dev/pts /host/dev/shm",
        "mount -t devpts devpts /host/dev/pts",
        # Not mounted by default, and the kernel-function layer needs both (kernel-env.md: tracefs).
        "mount -t tracefs tracefs /host/sys/kernel/tracing",
        "mount -t bpf bpf /host/sys/fs/bpf",
        "mount -t debugfs debugfs /host/sys/kernel/debug",
        # As systemd would: until cgroup2 is mounted the kernel lists no v2 line in /proc/<pid>/cgroup
        # (kernel/cgroup/cgroup.c proc_cgroup_show skips the default root while cgrp_dfl_visible is false).
        "mount -t cgroup2 cgroup2 /host/sys/fs/cgroup",
        *(f"mount -t tmpfs -o mode=1777 tmpfs /host{path}" for path in scratch),
        "mkdir -p -m 1777 /host/run/tmp",
    ]
    run = ("cd \"$1\" || exit 125; shift; exec \"$@\"")
    # Not a plain `chroot /host`: the kernel refuses CLONE_NEWUSER to a chrooted task
    # (kernel/user_namespace.c create_user_ns: current_chrooted() -> EPERM), and the tests create
    # user namespaces. As switch_root does, the host root is moved onto / first; chroot(".") then
    # lands on the top mount of the namespace root, which current_chrooted() accepts. This shell
    # keeps the initramfs as its own root and still finds busybox to report and power off.
    command = "cd /host && mount --move /host / && " + " ".join(shlex.quote(w) for w in [
        "chroot", ".", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
        "/bin/sh", "-c", run, "nstrace-lab", cwd, *argv,
    ])
    # fd 3 is the host's channel (ttyS1): the markers and the command's output.  Raw, so the tty's
    # line discipline neither turns \n into \r\n nor echoes anything back.
    fail = f'fail() {{ echo "{marker} FAIL $*" >&3; echo "{marker} FAIL $*"; poweroff -f; }}'
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox --install -s",
        "export PATH=/bin:/sbin:/usr/bin:/usr/sbin",
        "mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev",
        "stty -F /dev/ttyS1 raw -echo; exec 3>/dev/ttyS1",
        fail,
        *(f"insmod /modules/{m}.ko || fail insmod {m}" for m in modules),
        # ro: the guest must never write the host's files; remap: the host root spans several devices.
        "mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host "
        "|| fail mount 9p host root",
        *(f"{m} || fail {shlex.quote(m)}" for m in host_mounts),
        f'echo "{marker} RELEASE $(uname -r)" >&3',
        f"echo {GUEST_PRINTK} > /proc/sys/kernel/printk",
        f'echo "{marker} BEGIN" >&3',
        f"{command} </dev/null >&3 2>&3 3>&-",
        "rc=$?",
        # Leading newline: the command's last line may lack one; the parser drops it again.
        f'printf "\\n{marker} EXIT %d\\n" "$rc" >&3',
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


def _write_initramfs(path: Path, init: str, modules: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as out:
        cpio = _Cpio(out)
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "host", "modules"):
            cpio.dir(d)
        cpio.chardev("dev/console", 5, 1)  # init's stdout before devtmpfs is mounted
        cpio.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
        for name, image in modules:
            cpio.file(f"modules/{name}.ko", image)
        cpio.file("init", init.encode(), 0o755)
        cpio.close()


# --------------------------------------------------------------------------------------------------
# Running a guest


def run_in_guest(kernel: str, argv: list[str], *, cwd: str, env: dict[str, str] | None = None,
                 timeout: float = 600, log: TextIO | None = None,
                 kernel_args: tuple[str, ...] = (), tcg_thread: str = TCG_THREAD) -> GuestResult:
    """Boot `kernel`, run `argv` in `cwd` on the read-only host root, return its exit status and output.

    `env` is added to a small base environment (PATH, HOME=/tmp, LANG, PYTHONDONTWRITEBYTECODE); the
    host's own environment is not passed on.  `log` receives the command's output as it arrives.
    `kernel_args` are added to KERNEL_ARGS.  A lockup, stall or panic raises GuestLockup at once.
    `tcg_thread`: "single" (one host thread runs every vCPU) or "multi" (a thread per vCPU), see
    TCG_THREAD; "multi" is there to reproduce the hang it causes (scripts/lab-lockup-loop.py).  `timeout`
    covers the guest (boot + command), not a first download of the kernel.
    Writable in the guest: tmpfs on /tmp, /run, /var/tmp, /dev/shm; everything else is read-only (so
    run pytest with `-p no:cacheprovider`, and create virtualenvs under /tmp).
    """
    if not argv:
        raise LabError("empty command")
    if not os.path.isabs(cwd) or not os.path.isdir(cwd):
        raise LabError(f"working directory {cwd!r} is not an absolute directory on this machine")
    full_env = dict(GUEST_BASE_ENV, **(env or {}))
    for key in full_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LabError(f"bad environment variable name {key!r}")
    qemu = _require("qemu-system-x86_64")
    if not Path(BUSYBOX).exists():
        raise ToolMissing(f"{BUSYBOX} missing: install busybox-static")

    spec = resolve(kernel)
    unpacked = prepare(spec)
    modules = _load_order(unpacked)
    marker = f"NSTRACE-LAB-{uuid.uuid4().hex}"
    scratch = _scratch_mounts(cwd)
    if "/tmp" not in scratch:
        # The working directory lives under /tmp (a CI checkout, say): a tmpfs there would hide it.
        # Python, pytest and HOME then write to /run/tmp instead.
        full_env.setdefault("TMPDIR", "/run/tmp")
        if full_env.get("HOME") == "/tmp":
            full_env["HOME"] = "/run/tmp"
    init = _init_script([m for m, _ in modules], argv, cwd, full_env, marker, scratch)

    with tempfile.TemporaryDirectory(prefix="nstrace-lab-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        _write_initramfs(initrd, init, modules)
        command = [
            qemu,
            # kernel-env.md: -enable-kvm hangs on these machines (no nested virtualisation); TCG only.
            "-accel", f"tcg,thread={tcg_thread}", "-cpu", "max", "-smp", GUEST_CPUS, "-m", GUEST_MEMORY,
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
            "-kernel", str(unpacked.vmlinuz), "-initrd", str(initrd),
            "-append", " ".join((*KERNEL_ARGS, *kernel_args)),
            "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            # ttyS0: the kernel's console on qemu's stdout; ttyS1: the command's channel (a pipe)
            "-serial", "stdio", "-serial", "chardev:out",
        ]
        try:
            return _supervise(command, kernel, marker, timeout, log)
        except (BootError, GuestTimeout) as first:
            # TCG guests very rarely panic or stall before the command starts (seen a few times in
            # dozens of boots here); one more boot tells a fluke from a real failure. A failure
            # after the command began is the command's, a lockup is never a fluke, and a caller's
            # own short timeout is theirs.
            if first.began or isinstance(first, GuestLockup) or \
                    (isinstance(first, GuestTimeout) and timeout <= BOOT_TIMEOUT_S):
                raise
            return _supervise(command, kernel, marker, timeout, log)


def _die_with_parent() -> None:
    # qemu lives in its own session (so Ctrl-C reaches us, not the guest); if nstrace is killed
    # outright (SIGKILL, a test's timeout) the guest must not run on: PR_SET_PDEATHSIG.
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


# After the console first shows a lockup, the guest's own panic should end qemu within seconds;
# this is how long the host waits for it (the stacks still print) before killing qemu itself.
LOCKUP_GRACE_S = 60


def _supervise(command: list[str], kernel: str, marker: str, timeout: float, log: TextIO | None) -> GuestResult:
    start = time.monotonic()
    out_r, out_w = os.pipe()
    command = [*command, "-chardev", f"file,id=out,path=/proc/self/fd/{out_w}"]
    # Own process group: a Ctrl-C meant for us must not reach qemu before we kill it ourselves.
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent,
                                pass_fds=(out_w,))
    finally:
        os.close(out_w)
    channel = os.fdopen(out_r, "rb", buffering=0)
    console, output, errors = bytearray(), bytearray(), bytearray()
    begin_at = lockup_at = None
    lockup = re.compile("|".join(LOCKUP_PATTERNS).encode())

    def deadline() -> float:
        # A healthy guest reaches the command in 5-25 s: a stalled boot is cut short and retried.
        limit = start + (timeout if begin_at else min(timeout, BOOT_TIMEOUT_S))
        return min(limit, lockup_at + LOCKUP_GRACE_S) if lockup_at else limit

    try:
        for stream, chunk in _read_until_exit(proc, (proc.stdout, proc.stderr, channel), deadline):
            if stream is proc.stdout:
                console += chunk
                if lockup_at is None and lockup.search(console[-len(chunk) - 200:]):
                    lockup_at = time.monotonic()
            elif stream is channel:
                output += chunk
                if log is not None:
                    log.write(chunk.decode(errors="replace"))
                    log.flush()
                if begin_at is None and f"{marker} BEGIN".encode() in output:
                    begin_at = time.monotonic()
            else:
                errors += chunk
        try:  # every pipe closed: qemu is exiting, but may not have yet
            proc.wait(max(0.0, deadline() - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr, channel):
            pipe.close()
    duration = time.monotonic() - start
    text = console.decode(errors="replace").replace("\r\n", "\n")
    out = output.decode(errors="replace")
    began = begin_at is not None

    if lockup_at is not None or lockup.search(console):
        raise GuestLockup(f"guest {kernel} locked up {'while the command ran' if began else 'during boot'}: "
                          f"{lockup_report(text).splitlines()[0]}", text, out, began)
    if timed_out:
        phase = "the command" if began else "boot"
        limit = timeout if began else min(timeout, BOOT_TIMEOUT_S)
        raise GuestTimeout(f"guest {kernel} timed out after {limit:g} s during {phase}; "
                           f"last output line: {_last_line(out or text)!r}", text, out, began)
    return _parse_console(text, out, kernel, marker, duration, (begin_at or start) - start, proc.returncode,
                          errors.decode(errors="replace"))


def lockup_report(console: str) -> str:
    """The part of a guest console that tells why it hung: from the first lockup, stall or panic
    line to the end (every CPU's stack under KERNEL_ARGS), or the console's last lines if none."""
    match = re.search("|".join(LOCKUP_PATTERNS), console)
    lines = console[match.start():].splitlines() if match else console.splitlines()[-60:]
    return "\n".join(lines) if lines else "(empty console)"


def _read_until_exit(proc: subprocess.Popen, streams, deadline) -> Iterator[tuple[object, bytes]]:
    with selectors.DefaultSelector() as selector:
        for pipe in streams:
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline() - time.monotonic()
            if remaining <= 0:
                return
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                else:
                    yield key.fileobj, chunk


def _parse_console(text: str, out: str, kernel: str, marker: str, duration: float, boot: float, qemu_rc: int,
                   qemu_stderr: str) -> GuestResult:
    failed = re.search(rf"{marker} FAIL (.*)$", out, re.M)
    if failed:
        raise BootError(f"guest {kernel} could not set up: {failed.group(1).strip()}", text, out)
    release = re.search(rf"{marker} RELEASE (\S+)", out)
    begin = out.find(f"{marker} BEGIN\n")
    end = re.search(rf"\n{marker} EXIT (-?\d+)\n", out)
    if release is None or begin < 0 or end is None:
        panic = re.search(r"Kernel panic[^\n]*", text)
        if panic:
            reason = panic.group(0)
        elif begin >= 0:
            reason = "guest died while the command ran"
        elif qemu_rc != 0:
            reason = f"qemu exited with {qemu_rc}: {_last_line(qemu_stderr)}"
        else:
            reason = f"no start marker; last console line: {_last_line(text)!r}"
        raise BootError(f"guest {kernel}: {reason}", text, out, begin >= 0)
    output = out[begin + len(marker) + len(" BEGIN\n") : end.start()]
    return GuestResult(kernel=kernel, kernel_release=release.group(1), returncode=int(end.group(1)),
                       output=output, duration_s=duration, boot_s=boot, console=text)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package = {"qemu-system-x86_64": "qemu-system-x86", "dpkg-deb": "dpkg"}.get(tool, tool)
        raise ToolMissing(f"{tool} not found: install the {package} package")
    return path


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- the suite nstrace runs in each guest ---------------------------------------------------------

PROJECT = Path(__file__).resolve().parent.parent


def run_guest_suite(kernel: str, *, pytest_args: tuple[str, ...] = (), timeout: float = 900) -> dict:
    """Run the kernel-layer tests (and `nstrace check` where it exists) inside `kernel`.

    The guest sees this checkout and its .venv through the shared root, so what runs is exactly what
    was built here. Returns {kernel, release, ok, summary, output, duration_s}.
    """
    python = PROJECT / ".venv" / "bin" / "python"
    if not python.exists():
        raise LabError(f"{python} missing: run scripts/setup.sh first")
    nstrace = PROJECT / ".venv" / "bin" / "nstrace"
    pytest = (f"{shlex.quote(str(python))} -m pytest -q -p no:cacheprovider -m kernelpath "
              + " ".join(shlex.quote(a) for a in (pytest_args or ("tests/test_kernelpath.py",))))
    # Both always run; the guest's exit status says whether both passed.
    script = f"{pytest}; a=$?; {shlex.quote(str(nstrace))} check; b=$?; [ $a -eq 0 ] && [ $b -eq 0 ]"
    res = run_in_guest(kernel, ["/bin/sh", "-c", script], cwd=str(PROJECT), timeout=timeout)
    lines = [line.strip("= ") for line in res.output.splitlines() if line.strip()]
    tests = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed|error|skipped).* in ", line)),
                 "no pytest summary")
    checks = next((line for line in reversed(lines) if re.fullmatch(r"\d+ passed, \d+ failed", line)),
                  "no check summary")
    summary = f"tests: {tests}; check: {checks}"
    return {"kernel": kernel, "release": res.kernel_release, "ok": res.returncode == 0, "summary": summary,
            "output": res.output, "duration_s": res.duration_s}
