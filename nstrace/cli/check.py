"""`nstrace demo` and `nstrace check`: the launcher's scenarios, traced and held to the kernel notes
(nstrace/check/)."""

import os

import click

from ..errors import CheckFailed
from ..kernel import flags as fl
from .console import status, stop_requested
from .params import file_name


@click.command()
@click.option("--flags", "flag_text", default="NEWPID|NEWNS|NEWUTS", show_default=True,
              help="The op's flag names, with or without CLONE_ (or unshare's UNSHARE_), '|' or ',' separated, "
                   "any case: EMPTY_MNTNS is UNSHARE_EMPTY_MNTNS with --op unshare, CLONE_EMPTY_MNTNS with clone3.")
@click.option("--op", type=click.Choice(["clone", "clone3", "unshare", "setns"]), default="clone", show_default=True)
@click.option("--record", "record_path", type=click.Path(dir_okay=False), callback=file_name,
              help="Also write the run as a session file (for nstrace show / render).")
@click.option("--picture", type=click.Choice(["svg", "html", "perfetto"]),
              help="Also draw the run: an SVG graph, an HTML page, or a Perfetto trace.")
@click.option("--output", "-o", "picture_path", type=click.Path(dir_okay=False), callback=file_name,
              help="Where --picture goes (default: nstrace-demo.<svg|html|json>).")
@click.option("--explain", is_flag=True,
              help="Under each step of the kernel path, what the function does and the kernel-notes paragraph "
                   "that explains its concept.")
def demo(flag_text, op, record_path, picture, picture_path, explain):
    """Run one namespace operation, trace it, and show what the kernel did beside what its source says."""
    import tempfile

    from ..check.demo import run_demo
    from ..view import reports
    value = fl.parse_flags(flag_text, op)
    out = picture_path or f"nstrace-demo.{'json' if picture == 'perfetto' else picture}"
    picture_fd = _picture_output(out) if picture else None
    with tempfile.TemporaryDirectory(prefix="nstrace-demo-") as tmp:
        path = record_path or (os.path.join(tmp, "session.jsonl") if picture else None)
        try:
            result, report, availability = run_demo(op, value, path)
        except BaseException:
            if picture_fd is not None:
                os.close(picture_fd)
            raise
        click.echo(reports.demo_report(result, report, availability, explain))
        if picture:
            from ..session import reader
            from ..view import render
            render.write(reader.load(path), picture, out, fd=picture_fd)
            status(f"{picture} picture of this run written to {out}")
    if not result.ok:
        raise CheckFailed("the trace did not match what the kernel notes document (see above)")


def _picture_output(path):
    """demo's picture file, opened before the demo runs: a path nstrace may not write is said at once,
    not after the work it would have drawn (and as root: demo needs CAP_SYS_ADMIN first)."""
    from ..check.checker import require_privileges
    from ..linux import trusted_paths
    require_privileges()
    return trusted_paths.create_output(path)


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help="Results (or with --list, the list) as one JSON document on stdout.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios (all, or those named) and exit.")
@click.argument("names", nargs=-1)
def check(as_json, list_only, names):
    """Run the scenario catalogue (or the named scenarios) and check each trace; exit 0 only if all match."""
    from ..check import checker
    from ..view import reports
    chosen = checker.select(names)
    if list_only:
        _list_scenarios(chosen, as_json)
        return
    results = []
    with checker.tracer_for_check() as tracer:
        status(f"running {len(chosen)} scenarios (kernel-function layer: "
               f"{sum(h.attached for h in tracer.hooks)} of {len(tracer.hooks)} functions)")
        for sc in chosen:
            results.append(checker.run_scenario(sc, tracer))
            if stop_requested:
                break
    if as_json:
        import json
        click.echo(json.dumps(reports.check_json(results), indent=1))
    else:
        click.echo(reports.check_table(results))
    failed = [r.name for r in results if not r.ok and not r.skipped]
    if failed or len(results) < len(chosen):
        raise CheckFailed(f"{len(failed)} of {len(chosen)} scenarios failed: {', '.join(failed) or 'interrupted'}")
    skipped = sum(bool(r.skipped) for r in results)
    status(f"all {len(results) - skipped} scenarios this kernel can run match" + (f" ({skipped} skipped)" if skipped else ""))


def _list_scenarios(chosen, as_json):
    if as_json:
        import json
        click.echo(json.dumps([{"scenario": sc.name, "summary": sc.summary} for sc in chosen], indent=1))
    else:
        for sc in chosen:
            click.echo(f"{sc.name:28} {sc.summary}")
    status(f"{len(chosen)} scenario{'s' if len(chosen) != 1 else ''}")
