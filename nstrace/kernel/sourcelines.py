"""Where each function of the namespace path is defined, in the source of a given kernel version.

The lines are data (nstrace/kernel/source-lines.toml), taken by scripts/source-lines.py from each
covered version's own source tree (Debian's linux-source packages of the kernels `nstrace lab`
boots), never typed by hand. A kernel of a series the data does not cover gets the lines of the
nearest covered series that defines the function, and says so (`exact` is then False): this
machine's 6.18 has no Debian source package, so its lines come from 7.2 or, for a function 7.2 no
longer has (free_nsproxy became nsproxy_free), from 6.12.
"""

import dataclasses
import functools
import os
import re


@dataclasses.dataclass(frozen=True)
class Where:
    file: str
    line: int
    version: str        # the upstream version of the source the line was read from, e.g. "6.1.192"
    exact: bool         # the kernel's own series (else the nearest covered one)

    @property
    def text(self):
        """file:line, labelled when it is another version's line."""
        return f"{self.file}:{self.line}" + ("" if self.exact else f" (as in {self.version})")


@functools.cache
def _data():
    """source-lines.toml, the package's resource (read once, by the views, after tracing is live)."""
    import importlib.resources
    import tomllib
    return tomllib.loads(importlib.resources.files(__package__).joinpath("source-lines.toml").read_text())["version"]


def series_of(release):
    """"6.1" of "6.1.0-57-amd64", "7.2" of "7.2.13+deb14-amd64"; None if it names no version."""
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _rank(series):
    # Linux numbers releases X.0 .. X.19 or so before X+1.0: twenty a major orders them closely enough
    major, minor = map(int, series.split("."))
    return major * 20 + minor


def covered():
    """The series the data has lines for, oldest first."""
    return sorted(_data(), key=_rank)


def series_for(func, release):
    """The covered series whose source stands for func on a kernel of this release (uname -r): its
    own, else the nearest covered series that defines it (the newer of two as near); None where no
    covered series defines it, or where the kernel's own (covered) series does not: another
    version's line would mislead there. The one rule for lines and for the code the views show
    (nstrace/linux/kernelsource.py)."""
    series = series_of(release)
    versions = _data()
    if series is None:
        return None
    order = sorted(versions, key=lambda s: (abs(_rank(s) - _rank(series)), -_rank(s)))
    for s in order:
        if func in versions[s]["line"]:
            return s
        if s == series:
            return None
    return None


def where(func, release):
    """Where func is defined for a kernel of this release (uname -r), or None where no covered
    version defines it."""
    s = series_for(func, release)
    if s is None:
        return None
    version = _data()[s]
    file, line = version["line"][func].rsplit(":", 1)
    return Where(file, int(line), version["upstream"], s == series_of(release))


@functools.cache
def running_release():
    return os.uname().release
