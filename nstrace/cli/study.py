"""`nstrace compare`: one scenario recorded on several kernels (nstrace lab -- demo --record, one
session per kernel), read as one path (nstrace/study/compare.py). Sessions are files: no root, no
lab, any machine."""

import json

import click

from ..errors import UsageError
from ..session import reader
from ..study import compare as comparing
from ..view import comparison
from .console import status


@click.command("compare")
@click.argument("sessions", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def compare_command(sessions, as_json):
    """Show one scenario, recorded on two or more kernels, as one side-by-side kernel path."""
    if len(sessions) < 2:
        raise UsageError("compare needs two sessions or more (one per kernel)")
    show(load(sessions), as_json)


def load(paths):
    loaded = []
    for path in paths:
        sess = reader.load(path)
        for warning in sess.warnings:
            status(f"{path}: {warning}")
        loaded.append(sess)
    return loaded


def show(sessions, as_json=False):
    """Print the comparison of sessions: the table, or with as_json one JSON document."""
    result = comparing.compare(sessions)
    if as_json:
        click.echo(json.dumps(comparing.to_json(result), indent=1, ensure_ascii=True))
    else:
        click.echo(comparison.text(result))
