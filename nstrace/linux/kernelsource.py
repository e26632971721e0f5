"""The kernel source this machine fetched from Debian, read back: the API the views use to show the
code of each step of a record's kernel path.

One call per step (and one more for its call site), for any user, offline::

    from nstrace.linux import kernelsource
    kernelsource.excerpt("copy_utsname", release)                  # its definition, its test marked
    kernelsource.excerpt("copy_utsname", release, around="call", caller="create_new_namespaces")

release is the recorded kernel's uname -r (a session header's kernel.release); pass its uname -v as
kernel_version= (the header's kernel.version) and a Debian kernel is matched to the package
revision too. The answer is an Excerpt (nstrace/kernel/source.py: file, line, version, exact, lines
of (number, text, mark), via, missing), or None where no covered version defines the function (or
the call is not found in the caller). The version is chosen by the one rule of source-lines.toml
(nstrace/kernel/sourcelines.py series_for): the kernel's own series, else the nearest covered one,
and then `exact` is False and `text` says "(as in 7.2.13)". Where that version's source is not
here yet, the Excerpt has no lines, the file:line of source-lines.toml, and `missing`: one line
saying how to get it (a view shows it once, not per step: `missing_line(release)`).

The text is the kernel's, from outside: a view escapes it for HTML, and for a terminal expands its
tabs and passes it through nstrace/view/terminal.py.

Where it is kept: <the lab's cache>/source/<series>/ (nstrace/linux/labcache.py), the files the paths
cite and a manifest, written whole by root (nstrace/lab/sources.py) and read here only through
trusted_paths: a file another user could have changed is refused, never shown.
"""

import dataclasses
import json
import os
import re
import shlex

from ..errors import UnsafePath
from ..kernel import source, sourcelines
from . import labcache, trusted_paths

MANIFEST = "manifest.json"
LAYOUT = 1  # of the manifest and the tree beside it; another layout is fetched again

_trees = {}  # series -> (source.Tree, its manifest), once read in this process


def source_root():
    return labcache.cache_dir() / "source"


def series_dir(series):
    return source_root() / series


def fetch_command(series):
    return f"nstrace source fetch --kernel {series}"


def manifest(series):
    """The manifest of series' source as fetched (a dict), or None when there is none of this layout.
    Raises UnsafePath when another user could have changed it."""
    path = series_dir(series)
    try:
        trusted_paths.trusted_dir(path)
    except FileNotFoundError:
        return None
    text = trusted_paths.read_file(str(path / MANIFEST))
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("layout") == LAYOUT else None


def complete(data):
    """True if a manifest's files were chosen for every function paths.toml now names."""
    return data is not None and set(source.named()) <= set(data.get("functions", ()))


def tree(series):
    """series' fetched source as a source.Tree, or None when it is not here (or was fetched for fewer
    functions than paths.toml now names). Raises UnsafePath."""
    return _read(series)[0]


def _read(series):
    if series in _trees:
        return _trees[series]
    data = manifest(series)
    if not complete(data):
        return None, None
    root = series_dir(series)
    files, checked = {}, set()
    for name in data["files"]:
        parent = os.path.dirname(os.path.join(root, name))
        if parent not in checked:
            trusted_paths.trusted_dir(parent)
            checked.add(parent)
        text = trusted_paths.read_file(os.path.join(root, name), binary=True)
        if text is None:
            return None, None  # removed behind the manifest's back: fetch again
        files[name] = text.decode(errors="replace")
    _trees[series] = source.Tree(files, data["upstream"], f"{data['package']} {data['version']}"), data
    return _trees[series]


def forget():
    """Read the cache again at the next call (after a fetch in this process)."""
    _trees.clear()


def needed(release):
    """The series whose source the views of a kernel of this release show, oldest first: its own, or
    for an uncovered kernel the nearest covered ones (6.18: 7.2, and 6.12 for free_nsproxy)."""
    chosen = {sourcelines.series_for(f, release) for f in source.named()}
    return [s for s in sourcelines.covered() if s in chosen]


def missing(release):
    """The series of needed(release) whose source is not here (or cannot be read safely)."""
    out = []
    for series in needed(release):
        try:
            if tree(series) is None:
                out.append(series)
        except (UnsafePath, OSError):
            out.append(series)
    return out


def missing_line(release):
    """One line saying how to get the source a view of this kernel shows, or "" if it is all here."""
    series = missing(release)
    if not series:
        return ""
    return (f"the kernel source of {' and '.join(series)} is not here: as root, "
            f"`nstrace source fetch --kernel {shlex.quote(release)}` fetches it from Debian once (then it "
            "works offline); showing file:line only")


def excerpt(func, release, around="definition", caller=None, kernel_version=None):
    """func's code on a kernel of this release: its definition (around="definition") or the line of
    caller's body that led to it (around="call"). See the module's docstring."""
    if around not in ("definition", "call"):
        raise ValueError(f"around must be 'definition' or 'call', not {around!r}")
    series = sourcelines.series_for(func, release)
    if series is None or (around == "call" and not caller):
        return None
    try:
        fetched, data = _read(series)
        why = ""
    except (UnsafePath, OSError) as e:
        fetched, why = None, f"the kernel source in the cache cannot be read safely: {e}"
    if fetched is None:
        return _without_source(func, release, series, around, caller, why or _fetch_hint(series))
    found = fetched.definition(func) if around == "definition" else fetched.call(func, caller)
    return _labelled(found, *_exact(series, release, kernel_version, data)) if found else None


def _fetch_hint(series):
    return f"not fetched: as root, `{fetch_command(series)}`"


def _without_source(func, release, series, around, caller, why):
    """The file:line source-lines.toml has, and why there is no code."""
    name = func if around == "definition" else caller
    spot = sourcelines.where(name, release)
    if spot is None or sourcelines.series_for(name, release) != series:
        return None
    line = spot.line if around == "definition" else None
    return source.Excerpt(name, spot.file, line, spot.version, spot.exact, missing=why)


def _exact(series, release, kernel_version, data):
    """(exact, the version to name when not): exact when the fetched source is the kernel's own: its
    series, and where the kernel says it, its Debian revision (uname -v "... Debian 6.1.192-3 ...")
    or upstream version (a release "6.1.100"). A kernel of the same upstream version but another
    Debian revision is told the revision ("6.1.192-3"), not the version it has too."""
    if sourcelines.series_of(release) != series:
        return False, data["upstream"]
    debian = re.search(r"\bDebian (\S+)", kernel_version or "")
    if debian:
        exact = debian.group(1) == data["version"]
        same_upstream = debian.group(1).split("-")[0] == data["upstream"]
        return exact, data["version"] if same_upstream and not exact else data["upstream"]
    upstream = re.match(r"(\d+\.\d+\.(\d+))", release)
    if upstream and int(upstream.group(2)) > 0:
        return upstream.group(1) == data["upstream"], data["upstream"]
    return True, data["upstream"]


def _labelled(e, exact, version):
    via = _labelled(e.via, exact, version) if e.via else None
    return dataclasses.replace(e, exact=exact, via=via, version=version)
