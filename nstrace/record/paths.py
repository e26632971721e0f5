"""paths.toml: the documented kernel path of each operation, and the source file of each function on
it. The one copy of those facts; the checker, the function-layer plan and every view read them here.

The file lives in the package (nstrace/record/paths.toml) so that an installed nstrace has it;
kernel-notes/paths.toml, where a reader of the notes finds it, is a link to it.
"""

import functools
import os

PATHS_TOML = os.path.join(os.path.dirname(os.path.realpath(__file__)), "paths.toml")


@functools.cache
def notes():
    """paths.toml, parsed."""
    import tomllib
    with open(PATHS_TOML, "rb") as f:
        return tomllib.load(f)


def source_file(func):
    """The kernel source file a function lives in, per kernel-notes."""
    return notes().get("function", {}).get(func, {}).get("file", "?")
