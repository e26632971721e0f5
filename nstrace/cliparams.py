"""Command-line values shared by the commands of nstrace/cli.py and nstrace/viewcli.py: the same
option means the same thing, and is refused the same way, in watch, demo, show and render."""

import math
import re

import click

from .linux import flags as fl
from .record import filters


def finite(_ctx, _param, value):
    """A callback for seconds: click's FloatRange lets nan and inf through, and neither is a duration."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


def file_name(_ctx, param, value):
    """A callback for an output file: an empty name is refused, not read as "no file"."""
    if value is not None and not value.strip():
        raise click.BadParameter("no file name given", param=param)
    return value


class Pid(click.ParamType):
    """A process id: ASCII digits, 1 to the largest pid_t (a C int: include/uapi/asm-generic/posix_types.h).
    click.INT takes whatever int() does: other scripts' digits, "+", "_" and sizes no pid has."""

    name = "pid"
    MAX = 2**31 - 1

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        digits = value.strip().lstrip("0")
        # int() is asked only what can be a pid: it refuses more than 4300 digits with an exception of its own
        if not re.fullmatch(f"[0-9]{{1,{len(str(self.MAX))}}}", digits) or not int(digits) <= self.MAX:
            shown = value if len(value) <= 24 else value[:21] + "..."
            self.fail(f"{shown!r} is not a process id (1 to {self.MAX}, in ASCII digits)", param, ctx)
        return int(digits)


def filter_options(fn):
    """--pid and the options of a filters.Filter (Filter.parse() takes them by these names), declared
    once for watch, show and render."""
    for option in reversed((
        click.option("--pid", type=Pid(), help="Only this process and its descendants."),
        click.option("--comm", multiple=True, metavar="NAME",
                     help="Only these command names, as nstrace shows them (repeat or comma-separate)."),
        click.option("--op", "ops", multiple=True, metavar="OP",
                     help=f"Only these operations: {', '.join(filters.OPS)} (repeat or comma-separate)."),
        click.option("--type", "types", multiple=True, metavar="TYPE",
                     help=f"Only operations touching these namespace types: {', '.join(fl.NS_TYPES)} "
                          "(repeat or comma-separate)."),
        click.option("--container", multiple=True, metavar="ID|NAME",
                     help="Only calls made in this container, or setns into it: an id prefix or a name (repeatable)."),
        click.option("--ns", multiple=True, metavar="TYPE:INODE|NS_ID",
                     help="Only operations involving this namespace: before, after, as the target, or made or "
                          "freed (repeatable)."),
    )):
        fn = option(fn)
    return fn
