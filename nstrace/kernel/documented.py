"""paths.toml: the documented kernel path of each operation, and the source file of each function on
it. The one copy of those facts; the checker, the function-layer plan and every view read them here.

The file lives in the package (nstrace/kernel/paths.toml) so that an installed nstrace has it, and
is read as the package's resource; kernel-notes/paths.toml, where a reader of the notes finds it, is
a link to it.
"""

import functools


@functools.cache
def notes():
    """paths.toml, parsed (read once, after tracing is live: importlib.resources is heavy to import)."""
    import importlib.resources
    import tomllib
    return tomllib.loads(importlib.resources.files(__package__).joinpath("paths.toml").read_text())


def source_file(func):
    """The kernel source file a function lives in, per kernel-notes."""
    return notes().get("function", {}).get(func, {}).get("file", "?")


def _step(name):
    """A path step's table: [function.NAME], or [tracepoint."NAME"] for a tracepoint (system:event)."""
    return notes().get("tracepoint" if ":" in name else "function", {}).get(name, {})


def does(name):
    """What the step does, per kernel-notes ("" for one the notes do not describe)."""
    return _step(name).get("does", "")


def notes_pointer(name):
    """The kernel-notes paragraph explaining the concept the step teaches, as "FILE#ANCHOR" under
    kernel-notes/, or ""."""
    return _step(name).get("notes", "")


def gist(pointer):
    """That paragraph in a sentence or two, as shipped in paths.toml ("" for no pointer)."""
    return notes().get("concept", {}).get(pointer, {}).get("gist", "")
