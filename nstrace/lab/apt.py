"""Debian kernels by name: a short name or package resolved to the packages that hold it, through apt
on a private state for each suite (the machine's own apt state stays untouched); and the source of
each kernel series the lab boots, Debian's linux-source-X.Y of the same suite."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path

from ..errors import DownloadError, LabError, PackageNotFound
from ..linux import trusted_paths
from .host import cache_dir, last_line, locked, trusted
from .status import Status, quiet

# Short names -> Debian suite whose `linux-image-amd64` metapackage picks the kernel.  The generic
# -amd64 flavour on purpose: kernel-notes/build-machines.md notes the -cloud-amd64 image has no 9p.
KERNEL_SUITES = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie", "sid": "sid"}
# The suites' own names say the same.
ALIASES = {"bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12", "unstable": "sid"}
METAPACKAGE = "linux-image-amd64"

# apt lists younger than this are trusted, so a second run needs no network at all.
LISTS_MAX_AGE_S = 24 * 3600

@dataclasses.dataclass(frozen=True)
class KernelSpec:
    name: str  # a short name ("6.1", "sid"; an alias is resolved to its short name) or a package name
    suite: str
    packages: tuple[str, ...]  # what gets downloaded (sid: linux-base-*, linux-binary-*, linux-modules-*)
    version: str  # Debian version of those packages
    sizes: tuple[int, ...] = ()  # bytes of each package's .deb, as the suite's lists give them

    def describe(self) -> str:
        return f"{self.name}: {' + '.join(self.packages)} {self.version} ({self.suite})"


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


class Apt:
    """apt-get/apt-cache on a private state for one suite, so the machine's own apt state stays untouched."""

    def __init__(self, suite: str, status: Status = quiet):
        self.suite = suite
        self.root = cache_dir() / "apt" / suite
        self.status = status
        self._fresh = False

    def options(self) -> list[str]:
        return [
            # The machine's update hooks (PackageKit, appstream) concern its own lists, not these.
            "-c", str(self.root / "no-hooks.conf"),
            "-o", f"Dir::Etc::SourceList={self.root / 'sources.sources'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            # No binary caches (40-50 MB a suite): apt-cache then reads the lists, about 0.6 s a call, and
            # a name is resolved through apt once a day at most (resolve() keeps the answer).
            "-o", "Dir::Cache::pkgcache=",
            "-o", "Dir::Cache::srcpkgcache=",
        ]

    def ensure_lists(self) -> None:
        if self._fresh:
            return
        trusted(self.root)
        # one apt-get update per suite at a time: guests booting side by side share these lists
        with locked(self.root / ".lock"):
            self._ensure_lists()

    def _ensure_lists(self) -> None:
        if self._fresh:
            return
        trusted_paths.write_whole(str(self.root / "no-hooks.conf"),
                            "#clear APT::Update::Post-Invoke-Success;\n#clear APT::Update::Post-Invoke;\n")
        sources = self.root / "sources.sources"
        wanted = _sources_for(self.suite)
        stamp = self.root / "lists" / ".updated"
        if (trusted_paths.read_file(str(sources)) == wanted and trusted_paths.check_file(str(stamp))
                and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S):
            self._fresh = True
            return
        for sub in ("lists", "cache", "cache/archives"):
            trusted(self.root / sub)
        for sub in ("lists/partial", "cache/archives/partial"):
            # apt's own: it makes them _apt's (0700) before it downloads into them
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        trusted_paths.write_whole(str(sources), wanted)
        self.status(f"fetching the package lists of {self.suite}" +
                    (" (older than a day)" if stamp.exists() else ""))
        proc = subprocess.run(["apt-get", "update", *self.options()], capture_output=True, text=True)
        # apt-get update exits 0 even when a source failed; "W:/E:" lines tell.
        failed = proc.returncode != 0 or re.search(r"^(E:|W: Failed)", proc.stderr, re.M)
        if failed:
            if stamp.exists():  # stale lists still name real packages; go on offline
                self._fresh = True
                return
            raise DownloadError(f"apt-get update for {self.suite} failed: {last_line(proc.stderr)}")
        trusted_paths.write_whole(str(stamp), "")
        for kept_before in ("pkgcache.bin", "srcpkgcache.bin"):  # older versions kept these
            try:
                os.unlink(self.root / "cache" / kept_before)
            except FileNotFoundError:
                pass
        self._fresh = True

    def lists_stamp(self) -> int | None:
        """mtime (ns) of the last successful apt-get update of this suite, if younger than a day."""
        st = trusted_paths.check_file(str(self.root / "lists" / ".updated")) if self.root.exists() else None
        if st is None or time.time() - st.st_mtime >= LISTS_MAX_AGE_S:
            return None
        return st.st_mtime_ns

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

    def download(self, spec: KernelSpec, dest: Path, status: Status = quiet) -> list[Path]:
        """spec's packages into dest, saying how big they are and how far it got."""
        self.ensure_lists()
        total = sum(spec.sizes)
        status(f"downloading {' + '.join(spec.packages)} {spec.version} from {spec.suite}"
               + (f" ({total / 1e6:.0f} MB)" if total else ""))
        # apt's progress, machine-readable on a pipe (APT::Status-Fd): "dlstatus:N:PERCENT:TEXT"
        progress_r, progress_w = os.pipe()
        try:
            proc = subprocess.Popen(["apt-get", *self.options(), "-o", f"APT::Status-Fd={progress_w}",
                                     "download", *spec.packages], cwd=dest, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(progress_w,))
        finally:
            os.close(progress_w)
        started = time.monotonic()
        shown = 0
        with os.fdopen(progress_r, "r", errors="replace") as lines:
            for line in lines:
                fields = line.split(":", 3)
                if fields[0] != "dlstatus" or len(fields) < 3:
                    continue
                try:
                    percent = float(fields[2])
                except ValueError:
                    continue
                if percent >= shown + 20 and percent < 100:  # a line at every fifth, not a flood
                    shown = int(percent // 20 * 20)
                    status(f"downloaded {shown}%" + (f" of {total / 1e6:.0f} MB" if total else ""))
        _, err = proc.communicate()
        debs = sorted(dest.glob("*.deb"))
        if proc.returncode != 0 or len(debs) != len(spec.packages):
            raise DownloadError(f"apt-get download {' '.join(spec.packages)} failed: {last_line(err.decode())}")
        took = time.monotonic() - started
        size = sum(d.stat().st_size for d in debs)
        status(f"downloaded {size / 1e6:.0f} MB in {took:.0f} s")
        return debs


def _kernel_packages(apt: Apt, package: str) -> tuple[list[str], str, list[int]]:
    """The packages holding `package`'s kernel files, their version and sizes, found through versioned Depends.

    bookworm/trixie: linux-image-amd64 -> linux-image-<abi>-amd64, which is the kernel itself.  sid:
    linux-image-<ver>-amd64 is only a dependency shell over linux-binary-* and linux-modules-*
    (kernel-notes/build-machines.md); those two also bring that kernel's linux-base-<ver> (config, modules.builtin).
    So: a linux-image-* package with kernel dependencies is a shell, everything else is content.
    The unversioned `linux-base` (maintainer scripts) does not match and stays out.
    """
    wanted: list[str] = []
    sizes: list[int] = []
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
            sizes.append(int(fields.get("Size", "0") or 0))
            version = version or fields["Version"]
    return wanted, version, sizes


def _resolved_path(name: str) -> Path:
    return cache_dir() / "apt" / "resolved" / (re.sub(r"[^A-Za-z0-9.+_-]", "_", name) + ".json")


def _cached(name: str) -> KernelSpec | None:
    """What `name` resolved to while the lists it was resolved from are still the current ones."""
    path = _resolved_path(name)
    if not path.parent.exists():
        return None
    trusted(path.parent)
    text = trusted_paths.read_file(str(path))
    if text is None:
        return None
    try:
        saved = json.loads(text)
        spec = KernelSpec(**{**saved["spec"], "packages": tuple(saved["spec"]["packages"]),
                             "sizes": tuple(saved["spec"]["sizes"])})
    except (ValueError, KeyError, TypeError):
        return None
    stamp = Apt(spec.suite).lists_stamp()
    return spec if stamp is not None and stamp == saved["lists"] else None


def _remember(name: str, spec: KernelSpec) -> KernelSpec:
    stamp = Apt(spec.suite).lists_stamp()
    if stamp is not None:
        path = _resolved_path(name)
        trusted(path.parent)
        trusted_paths.write_whole(str(path), json.dumps({"spec": dataclasses.asdict(spec), "lists": stamp}) + "\n")
    return spec


def canonical(name: str) -> str:
    """The short name an alias stands for ("bullseye" -> "5.10"); any other name as it is."""
    return ALIASES.get(name, name)


def resolve(name: str, status: Status = quiet) -> KernelSpec:
    """Map "5.10" / "6.1" / "6.12" / "sid" (or a suite's name) / a package name (optionally
    "package/suite") to what to download.

    Nothing is hard-coded beyond the suite: the version comes from the metapackage's Depends, read
    from the suite's lists when they were last fetched (at most a day ago).  The answer is kept
    beside the lists, so a second run asks apt nothing.
    """
    name = canonical(name)
    spec = _cached(name)
    if spec is not None:
        return spec
    if name in KERNEL_SUITES:
        suite = KERNEL_SUITES[name]
        packages, version, sizes = _kernel_packages(Apt(suite, status), METAPACKAGE)
        if name != "sid" and not version.startswith(name + "."):
            raise PackageNotFound(f"{METAPACKAGE} in {suite} now points to {version}, not a {name} kernel")
        return _remember(name, KernelSpec(name, suite, tuple(packages), version, tuple(sizes)))
    package, _, suite = name.partition("/")
    if not re.fullmatch(r"linux-[a-z0-9][a-z0-9.+~-]*", package):
        raise PackageNotFound(f"unknown kernel {name!r}: use one of {', '.join([*KERNEL_SUITES, *ALIASES])} "
                              "or a Debian linux-image-* package name")
    if suite and not re.fullmatch(r"[a-z][a-z0-9-]*", suite):  # it names a directory of the cache
        raise PackageNotFound(f"unknown suite {suite!r}")
    for candidate in [suite] if suite else list(KERNEL_SUITES.values()):
        apt = Apt(candidate, status)
        if apt.show(package) is not None:
            packages, version, sizes = _kernel_packages(apt, package)
            return _remember(name, KernelSpec(name, candidate, tuple(packages), version, tuple(sizes)))
    where = suite or ", ".join(KERNEL_SUITES.values())
    raise PackageNotFound(f"no package {package} in {where}")


def source_suite(series: str) -> str:
    """The suite whose kernel is of this series: the lab's named suites, else sid (whose series moves)."""
    return KERNEL_SUITES.get(series, KERNEL_SUITES["sid"])


def source_spec(series: str, status: Status = quiet) -> KernelSpec:
    """linux-source-<series> in its suite, as the suite's lists now have it.

    Built from the same `linux` source package as the suite's kernel images, so its version is the
    booted image's (linux-image-6.1.0-57-amd64 and linux-source-6.1 are both 6.1.192-3 today).
    """
    if not re.fullmatch(r"\d+\.\d+", series):  # it names a directory of the cache
        raise PackageNotFound(f"not a kernel series: {series!r}")
    suite = source_suite(series)
    package = f"linux-source-{series}"
    spec = _cached(f"source {series}")  # asked of apt once a day at most, as a kernel's name is
    if spec is not None:
        return spec
    fields = Apt(suite, status).show(package)
    if fields is None:
        moved = " (sid's kernel is of another series now)" if suite == "sid" else ""
        raise PackageNotFound(f"no {package} in {suite}{moved}")
    size = int(fields.get("Size", "0") or 0)
    return _remember(f"source {series}", KernelSpec(series, suite, (package,), fields["Version"], (size,)))
