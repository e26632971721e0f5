"""Kernel source in the cache: Debian's linux-source-X.Y of a series the lab boots, of which only the
files the documented paths cite are kept (about a megabyte of a 140 MB package), so that the views
show a step's code offline and the cache stays small.

The package is streamed, never unpacked whole: dpkg-deb --fsys-tarfile | tar (the inner
usr/src/linux-source-X.Y.tar.xz) | xz -dc | tar, which extracts only the files the caller names
(tar wildcards) into a private directory; the caller then chooses which of them to keep
(nstrace/cli/source.py: the files holding a definition of a function paths.toml names). What is
kept is written whole into a directory only root can write and renamed into place, with a manifest
(nstrace/linux/kernelsource.py reads both back).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DownloadError
from ..linux import kernelsource, trusted_paths
from . import apt
from .host import cache_dir, last_line, locked, require, trusted
from .kernels import _download_dir
from .status import Status, quiet

# Chooses the files to keep: ({path in the tree: text}, upstream version) -> paths
Chooser = Callable[[dict, str], Iterable[str]]


def fetch(series: str, patterns: list[str], choose: Chooser, functions: list[str], status: Status = quiet,
          force: bool = False) -> dict:
    """The manifest of series' source in the cache, fetched first unless the suite's current version is
    there already, chosen for these functions: a cache chosen for others (an older nstrace's paths) is
    fetched again, so that it keeps only the files the paths cite."""
    spec = apt.source_spec(series, status)
    root = trusted(trusted(cache_dir()) / "source")
    with locked(root / f".{series}.lock"):
        have = kernelsource.manifest(series)
        if (not force and have is not None and have.get("version") == spec.version
                and set(functions) == set(have.get("functions", ()))):
            status(f"{series}: {have['package']} {have['version']} is here ({len(have['files'])} files)")
            return have
        return _build(spec, patterns, choose, functions, status)


def _build(spec: apt.KernelSpec, patterns: list[str], choose: Chooser, functions: list[str],
           status: Status) -> dict:
    series, package = spec.name, spec.packages[0]
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".source-") as tmp:  # 0700, root's
        private = Path(tmp)
        (deb,) = apt.Apt(spec.suite, status).download(spec, _download_dir(private), status)
        started = time.monotonic()
        unpacked = private / "unpacked"
        unpacked.mkdir(mode=0o700)
        top = f"linux-source-{series}"
        _extract(deb, f"./usr/src/{top}.tar.xz", [f"{top}/Makefile", *(f"{top}/{p}" for p in patterns)], unpacked)
        os.unlink(deb)  # 140 MB less before the tree is written
        files = _regular_files(unpacked / top)
        makefile = files.pop("Makefile", None)
        if makefile is None:
            raise DownloadError(f"{package} {spec.version}: no {top}/Makefile in the package")
        upstream = _makefile_version(makefile)
        texts = {path: data.decode(errors="replace") for path, data in files.items()}
        keep = sorted(set(choose(texts, upstream)))
        staged = private / "tree"
        staged.mkdir(mode=0o755)
        for path in keep:
            (staged / path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            trusted_paths.write_whole(str(staged / path), files[path])
        size = sum(len(files[p]) for p in keep)
        manifest = {"layout": kernelsource.LAYOUT, "series": series, "package": package, "version": spec.version,
                    "upstream": upstream, "suite": spec.suite, "functions": sorted(functions), "files": keep,
                    "bytes": size}
        trusted_paths.write_whole(str(staged / kernelsource.MANIFEST), json.dumps(manifest, indent=1) + "\n")
        target = kernelsource.series_dir(series)
        if os.path.lexists(target):
            shutil.rmtree(target)  # another version, or one chosen for fewer functions
        os.rename(staged, target)
    status(f"{series}: kept {len(keep)} files of {package} {spec.version} ({size / 1e6:.1f} MB) "
           f"in {time.monotonic() - started:.0f} s")
    return manifest


def _extract(deb: Path, inner: str, members: list[str], dest: Path) -> None:
    """The members (tar wildcards, "*" within one directory) of the inner tar.xz of deb, into dest."""
    stages = [
        [require("dpkg-deb"), "--fsys-tarfile", str(deb)],
        [require("tar"), "-xOf", "-", inner],
        [require("xz"), "-dc"],
        # tar as root would keep the archive's owners and modes: these files are root's, 0644 at most
        [require("tar"), "-xf", "-", "-C", str(dest), "--no-same-owner", "--no-same-permissions",
         "--wildcards", "--no-wildcards-match-slash", *members],
    ]
    procs, upstream = [], None
    try:
        for i, argv in enumerate(stages):
            last = i == len(stages) - 1
            procs.append(subprocess.Popen(argv, stdin=upstream, stdout=None if last else subprocess.PIPE,
                                          stderr=subprocess.PIPE, umask=0o022))
            if upstream is not None:
                upstream.close()  # the next stage holds it now: a stage that dies ends the pipe
            upstream = procs[-1].stdout
        errors = [p.stderr.read().decode(errors="replace") for p in reversed(procs)][::-1]
    finally:
        for p in procs:
            p.wait()
            p.stderr.close()
    for argv, p, err in zip(stages, procs, errors, strict=True):
        if p.returncode != 0 and not (argv is stages[-1] and _only_absent(err)):
            why = last_line(err) or f"exit {p.returncode}"
            raise DownloadError(f"{Path(argv[0]).name} failed on {deb.name}: {why}")


def _only_absent(err: str) -> bool:
    """tar's complaints are all about members this version does not have (a file a later one added)."""
    lines = [line for line in err.splitlines() if line.strip()]
    return bool(lines) and all(line.endswith(": Not found in archive") or "Exiting with failure status" in line
                               for line in lines)


def _regular_files(top: Path) -> dict[str, bytes]:
    """{path below top: content} of every regular file tar wrote (a link in the archive is not followed)."""
    out = {}
    for directory, _, names in os.walk(top):
        for name in names:
            path = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, top)] = f.read()
    return out


def _makefile_version(makefile: bytes) -> str:
    fields = dict(re.findall(rb"^(VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)", makefile, re.M))
    try:
        return b".".join(fields[k] for k in (b"VERSION", b"PATCHLEVEL", b"SUBLEVEL")).decode()
    except KeyError:
        raise DownloadError("the package's Makefile names no VERSION, PATCHLEVEL and SUBLEVEL") from None
