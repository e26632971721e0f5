"""Command-line values shared by the commands of nstrace/cli.py and nstrace/viewcli.py: the same
option means the same thing, and is refused the same way, in watch, demo, show and render."""

import math

import click

from .errors import UsageError


def finite(_ctx, _param, value):
    """A callback for seconds: click's FloatRange lets nan and inf through, and neither is a duration."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


def split_values(values, option, what):
    """Repeated and comma-separated values; given only empty ones, a usage error (as --type's)."""
    out = tuple(v.strip() for value in values for v in value.split(",") if v.strip())
    if values and not out:
        raise UsageError(f"{option}: no {what}")
    return out


def file_name(_ctx, param, value):
    """A callback for an output file: an empty name is refused, not read as "no file"."""
    if value is not None and not value.strip():
        raise click.BadParameter("no file name given", param=param)
    return value
