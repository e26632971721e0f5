"""kernel-notes/paths.toml: the documented kernel path of each operation, and the source file of each
function on it. The one copy of those facts; the checker, the function-layer plan and every view read
them here.
"""

import functools
import os

NOTES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))), "kernel-notes")
PATHS_TOML = os.path.join(NOTES, "paths.toml")


@functools.cache
def notes():
    """kernel-notes/paths.toml, parsed."""
    import tomllib
    with open(PATHS_TOML, "rb") as f:
        return tomllib.load(f)


def source_file(func):
    """The kernel source file a function lives in, per kernel-notes."""
    return notes().get("function", {}).get(func, {}).get("file", "?")
