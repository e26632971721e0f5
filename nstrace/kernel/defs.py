"""The rows of probes/*.def, the tables the BPF side is compiled from, read as text.

Each .def file is an X-macro table: C includes it to make its enums, constants and programs, and
this module reads the same rows, so each fact has one home (probes/functions.def: the hooked kernel
functions; probes/record.def: the record's codes; probes/uapi.def: the flags). The build ships the
files beside the BPF object (nstrace/_bpf/, probes/Makefile): Python reads the tables of the object
it loads.

A row is one line that starts, in its first column, with a macro's name in capitals and its arguments
in parentheses, names and numbers separated by commas and spaces: ``NSTRACE_OP(CLONE, 1)``. Anything
after the closing parenthesis is a comment, and every other line (preprocessor directives, comments)
is not a row.

On the way to watch's first load (nstrace/bpf/hookplan.py in nstrace/bpf/preload.py's thread, which
reads functions.def): no import beyond os, and about 0.1 ms a file.
"""

import os

# Strings, not pathlib, and beside the package, not importlib.resources, as nstrace/bpf/loader.py finds
# the object (without its realpath(): a stat per directory of the path, for nothing here)
_BUILD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "_bpf")

_read = {}


def rows(name, macro):
    """The argument tuples of `macro`'s rows in the table file `name` ("record.def"), in order."""
    return [args for m, args in _table(name) if m == macro]


def _table(name):
    """Every row of the table file `name`, in order, as (macro, (argument, ...)); read once."""
    if name not in _read:
        with open(os.path.join(_BUILD, name), "rb") as f:  # ASCII: no text layer, no locale
            text = f.read().decode()
        found = []
        for line in text.split("\n"):
            if line[:1].isupper():  # a row starts with its macro's name: the cheap test first
                macro, paren, rest = line.partition("(")
                if paren and macro.isidentifier():
                    found.append((macro, tuple(rest.partition(")")[0].replace(" ", "").split(","))))
        _read[name] = found
    return _read[name]
