"""`nstrace source fetch`: the kernel source the views show, from Debian's linux-source packages of
the kernels the lab boots, into the lab's cache (nstrace/lab/sources.py fetches, nstrace/kernel/
source.py chooses the files: those holding a function paths.toml names)."""

import os

import click

from ..errors import PackageNotFound, PrivilegeError, UsageError
from .console import status


def fetch(series, say=status, force=False):
    """series' source in the cache (fetched unless there), chosen for every function paths.toml names;
    its manifest."""
    from ..kernel import source
    from ..lab import sources
    from ..linux import kernelsource

    functions = source.named()

    def choose(files, upstream):
        tree = source.Tree(files, upstream)
        return {found[0] for found in map(tree.find, functions) if found}

    try:
        return sources.fetch(series, source.extracted(), choose, functions, say, force)
    finally:
        kernelsource.forget()


def series_for_kernel(name):
    """The series whose source a view of `name` shows: a covered series ("6.1"), a lab kernel ("sid",
    "bookworm"), a kernel release (uname -r: "6.18.44", its nearest covered series) or "all"."""
    from ..kernel import sourcelines
    from ..lab import apt
    from ..linux import kernelsource

    covered = sourcelines.covered()
    if name == "all":
        return covered
    if name in covered:
        return [name]
    short = apt.canonical(name)
    if short in apt.KERNEL_SUITES:
        version = short if short != "sid" else sourcelines.series_of(apt.resolve(short, status).version)
        return kernelsource.needed(version)
    if sourcelines.series_of(name):
        return kernelsource.needed(name)
    raise UsageError(f"unknown kernel {name!r}: use a series ({', '.join(covered)}), a lab kernel "
                     f"({', '.join([*apt.KERNEL_SUITES, *apt.ALIASES])}), a release such as "
                     f"{os.uname().release} or all")


@click.group("source")
def source_group():
    """The kernel source the views show under each step (`nstrace show --source`)."""


@source_group.command("fetch")
@click.option("--kernel", "kernels", multiple=True, metavar="K",
              help="Whose source: a series (5.10, 6.1, 6.12, 7.2), a lab kernel (sid, bookworm ...), a "
                   "release (uname -r), or all. Default: the running kernel's (repeatable).")
@click.option("--force", is_flag=True, help="Fetch again even when the suite's current version is here.")
def fetch_command(kernels, force):
    """Fetch Debian's linux-source of these kernels and keep the files the kernel paths cite.

    About 140 MB is downloaded per series and about a megabyte kept, in the lab's cache
    (/var/cache/nstrace/lab, or $NSTRACE_LAB_CACHE); the views then show the code offline.
    """
    if os.geteuid() != 0:
        # like the lab's kernels: root fills the cache, and no other user may change what it shows
        raise PrivilegeError("nstrace source fetch needs root: it keeps the source in the lab's cache, which "
                             f"only root may write; running as uid {os.geteuid()}; try sudo")
    try:
        wanted = [s for name in (kernels or (os.uname().release,)) for s in series_for_kernel(name)]
    except PackageNotFound as e:
        raise UsageError(str(e)) from None
    for series in dict.fromkeys(wanted):
        fetch(series, status, force)
