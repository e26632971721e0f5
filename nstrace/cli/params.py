"""Command-line values shared by the commands of nstrace/cli/: the same
option means the same thing, and is refused the same way, in watch, demo, show and render."""

import re

import click

from ..kernel import flags as fl
from ..record import filters


def file_name(_ctx, param, value):
    """A callback for an output file: an empty name is refused, not read as "no file"."""
    if value is not None and not value.strip():
        raise click.BadParameter("no file name given", param=param)
    return value


def _shown(value):
    return repr(value if len(value) <= 24 else value[:21] + "...")


class Whole(click.ParamType):
    """A whole number from `low` to `high`, in ASCII digits. click.INT takes whatever int() does: other
    scripts' digits (an Arabic-Indic 1 is a pid), "+", "_", and more digits than int() will read (4300:
    it then raises an exception of its own)."""

    name = "integer"

    def __init__(self, low, high, what="a whole number"):
        self.low, self.high, self.what = low, high, what

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        digits = value.strip().lstrip("0") or ("0" if value.strip() else "")
        if not re.fullmatch(f"[0-9]{{1,{len(str(self.high))}}}", digits) or \
                not self.low <= int(digits) <= self.high:
            self.fail(f"{_shown(value)} is not {self.what} ({self.low} to {self.high}, in ASCII digits)", param, ctx)
        return int(digits)


class Pid(Whole):
    """A process id: 1 to the largest pid_t (a C int: include/uapi/asm-generic/posix_types.h)."""

    name = "pid"

    def __init__(self):
        super().__init__(1, 2**31 - 1, "a process id")


class Seconds(click.ParamType):
    """A duration in seconds: ASCII digits with an optional fraction, more than 0 (or at least `low`)
    and at most `high`. click.FLOAT takes nan, inf, "1_0" and other scripts' digits, none of which is
    a duration."""

    name = "seconds"

    def __init__(self, low=None, high=7 * 24 * 3600):
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):  # a default
            return float(value)
        text = value.strip()
        low = f"at least {self.low:g}" if self.low is not None else "more than 0"
        if not re.fullmatch(r"[0-9]{1,12}(\.[0-9]{0,9})?|\.[0-9]{1,9}", text) or not 0 < float(text) <= self.high \
                or (self.low is not None and float(text) < self.low):
            self.fail(f"{_shown(value)} is not a number of seconds ({low}, at most {self.high:g}, in ASCII "
                      "digits)", param, ctx)
        return float(text)


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
