"""`nstrace watch` and `nstrace doctor`: the tracing commands. The work is the tracer's
(nstrace/tracing/): here the command line is parsed, the pieces are put together, and what went wrong is
said."""

import os
import sys

import click

from ..errors import UsageError
from ..record.filters import Filter
from ..tracing.tracer import Options, Tracer
from .console import status, stop_requested
from .params import Seconds, Whole, file_name, filter_options


def watch_options(*, pid=None, comm=(), ops=(), types=(), container=(), ns=(), trace_all=False, raw_addresses=False,
                  no_proc_check=False, buffer_kib=4096, **_output):
    """The tracer's Options for watch's parsed command line (the options about output aside).

    nstrace.bpf.preload guesses from the raw argv the fields of these that decide the BPF object;
    tests/test_startup.py holds its guess equal to this for every option watch has.
    """
    return Options(trace_all=trace_all, pid=pid,
                   filter=Filter.parse(comm=comm, ops=ops, types=types, container=container, ns=ns),
                   raw_addresses=raw_addresses, check_proc=not no_proc_check, ringbuf_bytes=buffer_kib * 1024)


class _WatchCommand(click.Command):
    """watch's command line: a `--` ends the options, and a COMMAND must follow it."""

    def parse_args(self, ctx, args):
        from ..bpf import preload
        _, command, ended = preload.split(list(args))
        rest = super().parse_args(ctx, args)
        if ended and not command:
            raise UsageError("nothing after --: give the COMMAND to run, or leave -- out to watch the whole system")
        return rest


@click.command(cls=_WatchCommand, context_settings={"allow_interspersed_args": False})
@filter_options
@click.option("--all", "trace_all", is_flag=True, help="Include plain forks that create or join no namespace.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line; status on stderr.")
@click.option("--duration", type=Seconds(), help="Stop after this many seconds.")
@click.option("--count", type=Whole(1, 2**63 - 1, "a number of records"), help="Stop after this many records.")
@click.option("--raw-addresses", is_flag=True, help="Show kernel nsproxy addresses instead of short ids.")
@click.option("--no-proc-check", is_flag=True, help="Do not correlate records with /proc/<pid>/ns.")
@click.option("--buffer-kib", type=Whole(4, 1 << 20, "a ring buffer size in KiB"), default=4096, show_default=True,
              help="Ring buffer size in KiB (a power of two).")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, writable=True), callback=file_name,
              help="Also write the session (records, namespace snapshots, kernel, probes) to this file.")
@click.option("--output", "-o", "output_path", type=click.Path(dir_okay=False, allow_dash=True), callback=file_name,
              help="Write the trace (table or JSON lines) to this file, '-' for stdout; status lines stay on "
                   "stderr. By default it goes to stdout, or with a COMMAND to stderr: COMMAND keeps stdout.")
@click.option("--user", "-u", "user", metavar="USER",
              help="Run COMMAND as this user (name or uid), with its groups, as strace -u does.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def watch(pid, comm, ops, types, container, ns, trace_all, as_json, duration, count, raw_addresses, no_proc_check, buffer_kib,
          record_path, output_path, user, command):
    """Stream namespace operations system-wide until Ctrl-C; or run COMMAND and trace it and its
    descendants from its first instruction until it exits (nstrace watch [OPTIONS] -- COMMAND [ARGS...]).
    With a COMMAND the trace goes to stderr (or -o FILE), and COMMAND's own output stays apart from it."""
    from ..bpf import preload
    held = preload.take_command()
    relay = run_as = None
    try:
        if user is not None and not command:
            raise UsageError("--user is for the COMMAND watch runs: give one after the options")
        if command and pid is not None:
            raise UsageError("--pid follows a process that runs already; a COMMAND is followed from its start: "
                             "give one or the other")
        if command:
            held, relay, run_as = _held_command(held, user)
            pid = held.pid
        elif held is not None:  # preload guessed a COMMAND the command line does not have
            from ..linux.heldcommand import unblock_watched
            unblock_watched()
        tracer = Tracer(watch_options(pid=pid, comm=comm, ops=ops, types=types, container=container, ns=ns,
                                      trace_all=trace_all,
                                      raw_addresses=raw_addresses, no_proc_check=no_proc_check,
                                      buffer_kib=buffer_kib))
        tracer.start()
    except BaseException:
        if held:
            held.cancel()
        raise
    from ..record import (
        jsonline,  # after the probes are attached: tracing is live a little sooner
    )
    from ..view import reports, table
    if tracer.pid_of_thread:
        status("--pid {}: a thread of process {}: following process {} and its descendants".format(
            *tracer.pid_of_thread, tracer.pid_of_thread[1]))
    for op, why in tracer.unseen_ops().items():
        status(f"warning: --op {op} matches nothing here: {why}")
    recorder = None
    try:  # after the privilege check (tracer.start), as every file nstrace writes
        out = _trace_output(output_path, record_path, bool(command))
        if record_path:
            from ..session import writer
            recorder = writer.Recorder(record_path, tracer)
    except BaseException:
        tracer.close()
        if held:
            held.cancel()
        raise
    from ..tracing.watch import Watch
    stream = table.Table(containers=bool(tracer.options.filter.containers))
    w = Watch(tracer, out, row=jsonline.json_line if as_json else stream.row,
              header=None if as_json else stream.header(), as_json=as_json, recorder=recorder,
              record_path=record_path, count=count, duration=duration, status=status,
              stop_requested=lambda: bool(stop_requested),  # without a COMMAND; with one, the relay says
              command=held, release=held and (lambda: held.release(command, run_as)), signals=relay)
    try:
        summary = w.run()
    except BaseException:
        if held and held.status is None and not held.argv:
            held.cancel()
        raise
    if w.failure:
        raise w.failure
    if as_json:
        status("summary " + jsonline.json_summary(summary))
    else:
        out.line("\n" + reports.summary_table(summary))
    out.finish()
    if w.failure:
        raise w.failure
    if held:
        raise click.exceptions.Exit(_command_status(held, relay, summary["command"]["running"]))


def _trace_output(path, record_path, with_command):
    """Where watch's trace goes (a trace.watch.Output): -o's file, stdout ('-'), or by default
    stdout, and stderr beside a COMMAND, whose output is its own (as strace's trace)."""
    from ..tracing.watch import Output
    if path is None or path == "-":
        if with_command and path is None:
            return Output(sys.stderr, "to stderr")
        return Output(sys.stdout, "to stdout")
    import stat

    from ..linux import trusted_paths
    fd = trusted_paths.create_output(path, "trace file ")
    stream = open(fd, "w", encoding="utf-8", errors="backslashreplace")
    try:  # two writers of one regular file would each overwrite the other's lines (not so /dev/null)
        same = record_path is not None and stat.S_ISREG(os.fstat(fd).st_mode) and os.path.samefile(path, record_path)
    except OSError:
        same = False  # no --record file yet, and none by that name
    if same:
        stream.close()
        raise UsageError(f"-o {path} and --record {record_path} are the same file: give two")
    return Output(stream, f"trace file {path}")


def _held_command(held, user):
    """watch -- COMMAND's process at its gate (preload's, or forked now), the Relay of its signals,
    and the User it runs as (None: as nstrace). SIGINT, SIGTERM and SIGHUP are blocked before a
    fork (preload blocked them already, before its fork and its thread) and read from a signalfd."""
    from ..linux.heldcommand import HeldCommand, Inbox, User, block_watched
    from ..tracing.watch import Relay
    run_as = User(user) if user is not None else None
    block_watched()
    if held is None:
        held = HeldCommand()
    return held, Relay(Inbox(), held, status), run_as


def _command_status(held, relay, running):
    """COMMAND's exit status, waiting for it if the trace ended first (running: the summary said
    so; --count, --duration, the output gone), and saying it then. A second signal sent to nstrace
    (the first was passed on to COMMAND) ends the wait, or ended the trace: nstrace then exits
    128 + its number, COMMAND running on."""
    if running and relay.ending is None:
        if not held.exited():
            status(f"{held.name} (pid {held.pid}) runs on, no longer traced: waiting for it to exit")
            import select
            poller = select.poll()
            poller.register(held.fileno(), select.POLLIN)
            poller.register(relay.fileno(), select.POLLIN)
            while not held.exited() and not relay.take():
                poller.poll()
        if held.exited():
            status(f"{held.name} (pid {held.pid}) exited: {held.outcome()}")
    if relay.ending is not None and not held.exited():
        status(f"{held.name} (pid {held.pid}) runs on, not waited for: {relay.ending.name} sent to nstrace "
               "a second time")
        return 128 + relay.ending.signo
    return held.status


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The table as one JSON document.")
def doctor(as_json):
    """Attach every probe point and report, per point, the hook used or why it is unavailable."""
    tracer = Tracer(Options())
    tracer.start()
    try:
        rows = tracer.availability()
    finally:
        tracer.close()
    import json

    from ..view import reports
    if as_json:
        click.echo(json.dumps({"kernel": os.uname().release, "probes": rows}, indent=1))
        return
    click.echo(reports.availability_table(rows))
    click.echo("")
    click.echo(reports.availability_verdict(rows))
