"""A record's kernel path with each step's code under it, for a terminal (`nstrace show --source`): the
line of its caller that called it, then its definition, each with the test that decided marked,
from the kernel source this machine fetched (nstrace/linux/kernelsource.py). The source is outside
text: its tabs are expanded and every line goes through the terminal filter.
"""

from ..linux import kernelsource
from ..study import callpath
from . import terminal

MARKS = {"call": ">", "decides": "*"}
LEGEND = "code under each step: '>' the line that calls it, '*' the test that decided what it did"


def excerpt_lines(e, indent):
    """An Excerpt as terminal lines: a mark, the line number, the text; "..." where lines are left out;
    a call made through a helper, that helper's lines below, further in."""
    out, last = [], None
    for number, text, mark in e.lines:
        if last is not None and number != last + 1:
            out.append(f"{indent}        ...")
        out.append(terminal.printable(f"{indent}{MARKS.get(mark, ' ')} {number:>5}  {text.expandtabs(8)}"))
        last = number
    if e.via is not None:
        out.append(terminal.printable(f"{indent}  {e.via.func}, {e.via.text}:"))
        out += excerpt_lines(e.via, indent + "  ")
    return out


def path_lines(rec, release, kernel_version=None):
    """rec's kernel path, a step a line, each with its call site and definition beneath it."""
    out = []

    def walk(call, caller, depth):
        indent = "    " + "  " * depth
        defined = kernelsource.excerpt(call.func, release, kernel_version=kernel_version)
        called = kernelsource.excerpt(call.func, release, "call", caller, kernel_version) if caller else None
        out.append(terminal.printable(f"{indent}{call.func}" + ("" if defined else ": no covered version defines it")))
        if called is not None:
            out.append(terminal.printable(f"{indent}  called in {called.func}, {called.text}"))
            out.extend(excerpt_lines(called, indent + "  "))
        if defined is not None:
            out.append(terminal.printable(f"{indent}  defined at {defined.text}"))
            out.extend(excerpt_lines(defined, indent + "  "))
        for inner in call.calls:
            walk(inner, call.func, depth + 1)

    for top in callpath.tree(rec.kernel_path):
        walk(top, None, 0)
    return out
