"""The nstrace command line. Errors are one line on stderr and a documented exit code."""

import os
import signal
import sys

import click

from . import __version__
from .cliparams import Seconds, Whole, file_name, filter_options
from .errors import (
    BootError,
    CheckFailed,
    GuestLockup,
    GuestTimeout,
    LabError,
    LabFailed,
    NstraceError,
    PackageNotFound,
    PrivilegeError,
    UsageError,
    WriteFailed,
)
from .kernel import flags as fl
from .record.filters import Filter
from .trace.tracer import Options, Tracer

_stop_requested = []


def _on_signal(signo, _frame):
    # SIGINT, SIGTERM, SIGHUP: finish the current batch, drain, summarise, exit 0.
    # A flag, not an exception: the poll wakes with EINTR and the loop ends cleanly.
    # (watch -- COMMAND blocks them and reads them from a signalfd instead, with who sent each:
    # nstrace/trace/watch.py Relay.)
    _stop_requested.append(signo)


def status(message):
    """A status line: always stderr, so --json keeps stdout clean; through the terminal filter, for
    what it names (a file, a guest's file, a kernel) is anybody's choice."""
    if not message.isprintable():  # watch's start-up lines are plain: they import nothing for it
        from .view.terminal import printable
        message = printable(message)
    click.echo(f"nstrace: {message}", err=True)


# A week: selectors and Popen.wait take their timeouts as C ints of milliseconds (about 24 days at most).
LAB_MAX_TIMEOUT_S = 7 * 24 * 3600


class _Commands(click.Group):
    """The nstrace group; ls, show and render (nstrace/viewcli.py) are imported on first use,
    so that `watch` does not pay for graph and map code at start-up."""

    LAZY = ("ls", "show", "render")

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.LAZY))

    def get_command(self, ctx, name):
        if name in self.LAZY and name not in self.commands:
            from . import viewcli
            viewcli.register(self)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="nstrace")
def cli():
    """Trace every namespace creation and join on this kernel (clone, clone3, unshare, setns)."""


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
        from .bpf import preload
        _, command, ended = preload.split(list(args))
        rest = super().parse_args(ctx, args)
        if ended and not command:
            raise UsageError("nothing after --: give the COMMAND to run, or leave -- out to watch the whole system")
        return rest


@cli.command(cls=_WatchCommand, context_settings={"allow_interspersed_args": False})
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
    from .bpf import preload
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
            from .linux.heldcommand import unblock_watched
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
    from .record import (
        jsonline,  # after the probes are attached: tracing is live a little sooner
    )
    from .view import reports, table
    if tracer.pid_of_thread:
        status("--pid {}: a thread of process {}: following process {} and its descendants".format(
            *tracer.pid_of_thread, tracer.pid_of_thread[1]))
    for op, why in tracer.unseen_ops().items():
        status(f"warning: --op {op} matches nothing here: {why}")
    recorder = None
    try:  # after the privilege check (tracer.start), as every file nstrace writes
        out = _trace_output(output_path, record_path, bool(command))
        if record_path:
            from .session import writer
            recorder = writer.Recorder(record_path, tracer)
    except BaseException:
        tracer.close()
        if held:
            held.cancel()
        raise
    from .trace.watch import Watch
    stream = table.Table(containers=bool(tracer.options.filter.containers))
    w = Watch(tracer, out, row=jsonline.json_line if as_json else stream.row,
              header=None if as_json else stream.header(), as_json=as_json, recorder=recorder,
              record_path=record_path, count=count, duration=duration, status=status,
              stop_requested=lambda: bool(_stop_requested),  # without a COMMAND; with one, the relay says
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
    from .trace.watch import Output
    if path is None or path == "-":
        if with_command and path is None:
            return Output(sys.stderr, "to stderr")
        return Output(sys.stdout, "to stdout")
    import stat

    from .linux import trusted_paths
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
    from .linux.heldcommand import HeldCommand, Inbox, User, block_watched
    from .trace.watch import Relay
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


@cli.command()
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

    from .view import reports
    if as_json:
        click.echo(json.dumps({"kernel": os.uname().release, "probes": rows}, indent=1))
        return
    click.echo(reports.availability_table(rows))
    click.echo("")
    click.echo(reports.availability_verdict(rows))


@cli.command()
@click.option("--flags", "flag_text", default="NEWPID|NEWNS|NEWUTS", show_default=True,
              help="CLONE_* names, with or without CLONE_, '|' or ',' separated, any case.")
@click.option("--op", type=click.Choice(["clone", "clone3", "unshare", "setns"]), default="clone", show_default=True)
@click.option("--record", "record_path", type=click.Path(dir_okay=False), callback=file_name,
              help="Also write the run as a session file (for nstrace show / render).")
@click.option("--picture", type=click.Choice(["svg", "html", "perfetto"]),
              help="Also draw the run: an SVG graph, an HTML page, or a Perfetto trace.")
@click.option("--output", "-o", "picture_path", type=click.Path(dir_okay=False), callback=file_name,
              help="Where --picture goes (default: nstrace-demo.<svg|html|json>).")
def demo(flag_text, op, record_path, picture, picture_path):
    """Run one namespace operation, trace it, and show what the kernel did beside what its source says."""
    import tempfile

    from .check.demo import run_demo
    from .view import reports
    value = fl.parse_flags(flag_text)
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
        click.echo(reports.demo_report(result, report, availability))
        if picture:
            from .session import reader
            from .view import render
            render.write(reader.load(path), picture, out, fd=picture_fd)
            status(f"{picture} picture of this run written to {out}")
    if not result.ok:
        raise CheckFailed("the trace did not match what the kernel notes document (see above)")


def _picture_output(path):
    """demo's picture file, opened before the demo runs: a path nstrace may not write is said at once,
    not after the work it would have drawn (and as root: demo needs CAP_SYS_ADMIN first)."""
    from .check.checker import require_privileges
    from .linux import trusted_paths
    require_privileges()
    return trusted_paths.create_output(path)


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Results (or with --list, the list) as one JSON document on stdout.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios (all, or those named) and exit.")
@click.argument("names", nargs=-1)
def check(as_json, list_only, names):
    """Run the scenario catalogue (or the named scenarios) and check each trace; exit 0 only if all match."""
    from .check import checker
    from .view import reports
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
            if _stop_requested:
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


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--kernel", "kernels", multiple=True, required=True,
              help="A Debian kernel: 5.10 (or bullseye), 6.1 (bookworm), 6.12 (trixie), sid, or a package "
                   "name such as linux-image-amd64/bullseye (repeatable).")
@click.option("--timeout", type=Seconds(10, LAB_MAX_TIMEOUT_S), default=900, show_default=True,
              help="Seconds a guest may run (boot and command) before it is killed.")
@click.option("--verbose", is_flag=True, help="The suite: show the guests' whole output.")
@click.option("--pytest-args", metavar="ARGS",
              help="The suite: pytest's arguments in the guest, as one shell-quoted string "
                   "(default: tests/test_kernelpath.py).")
@click.option("--check-only", is_flag=True, help="The suite: run only `nstrace check`, not the kernel-function tests.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- NSTRACE-ARGS...]")
def lab(kernels, timeout, verbose, pytest_args, check_only, command):
    """Boot Debian kernels under QEMU and run `nstrace NSTRACE-ARGS...` inside each.

    Without a command: the kernel-function tests and `nstrace check` in each kernel.  Files the
    command writes in the current directory come back here (named per kernel with several).
    """
    import shlex

    if os.geteuid() != 0:
        # apt and dpkg-deb fill /var/cache/nstrace as root, and the guest runs the suite as root
        raise PrivilegeError("nstrace lab needs root: it unpacks kernels into its cache as root and runs "
                             f"the suite as root in the guest; running as uid {os.geteuid()}; try sudo")
    if command and (pytest_args is not None or check_only or verbose):
        raise UsageError("--pytest-args, --check-only and --verbose are for the suite, not for a command")
    if command and command[0] == "lab":
        raise UsageError("nstrace lab runs no lab inside a guest")
    try:
        pytest_args = tuple(shlex.split(pytest_args)) if pytest_args else ()
    except ValueError as e:
        raise UsageError(f"--pytest-args: {e}") from None
    from .lab import apt
    for kernel in kernels:  # every name resolved before anything boots: a typo fails fast
        try:
            apt.resolve(kernel, status)
        except PackageNotFound as e:
            raise UsageError(str(e)) from None
    if command:
        _lab_command(list(dict.fromkeys(kernels)), list(command), timeout)
    else:
        _lab_suite(list(dict.fromkeys(kernels)), pytest_args, check_only, timeout, verbose)


def _lab_command(kernels, command, timeout):
    from .lab import guest, runner
    outcomes = runner.run(kernels, command, timeout=timeout, status=status,
                               should_stop=lambda: bool(_stop_requested))
    codes = [runner.exit_code(o) for o in outcomes]
    for o in outcomes:
        if isinstance(o.error, GuestLockup):
            _echo_guest_text(guest.lockup_report(o.error.console))  # the stacks say why it ended
    if _stop_requested:  # Ctrl-C: the guests were stopped, as watch stops
        raise click.exceptions.Exit(130)
    failed = [o for o in outcomes if o.error is not None]
    if len(kernels) == 1 and failed:
        raise failed[0].error
    for o in failed:
        click.echo(f"nstrace: error: {o.kernel}: {_one_line(str(o.error))}", err=True)
    first = next((c for c in codes if c != 0), 0)
    if first:
        raise click.exceptions.Exit(first)


def _lab_suite(kernels, pytest_args, check_only, timeout, verbose):
    import concurrent.futures
    import threading

    from .lab import guest, suite
    from .lab.runner import GUEST_PARALLEL, LineWriter
    from .view import reports
    lock = threading.Lock()

    def one(kernel):
        say = lambda m: status(f"{kernel}: {m}")  # noqa: E731
        output = LineWriter(sys.stdout.buffer, lock, f"[{kernel}] ".encode() if len(kernels) > 1 else None) \
            if verbose else None
        try:
            res = suite.run_guest_suite(kernel, pytest_args=pytest_args, check_only=check_only, timeout=timeout,
                                        status=say, output=output, should_stop=lambda: bool(_stop_requested))
        except GuestLockup as e:
            # always: a hang is worth its stacks in any log, and they are why the run ended
            _echo_guest_text(guest.lockup_report(e.console))
            raise
        except (GuestTimeout, BootError) as e:
            if verbose:  # the guest's last words, for whoever reads a CI log
                _echo_guest_text("\n".join(e.console.splitlines()[-60:]))
                _echo_guest_text("\n".join(e.output.splitlines()[-60:]))
            raise
        finally:
            if output is not None:
                output.close()
        say(f"{res['release']}: {res['summary']} ({res['duration_s']:.0f} s, boot {res['boot_s']:.1f} s)")
        return res

    with concurrent.futures.ThreadPoolExecutor(min(GUEST_PARALLEL, len(kernels))) as pool:
        futures = [pool.submit(one, k) for k in kernels]
        results, errors = [], []
        for kernel, future in zip(kernels, futures):
            try:
                results.append(future.result())
            except LabError as e:
                errors.append((kernel, e))
    if _stop_requested:
        raise click.exceptions.Exit(130)
    if results:
        click.echo(reports.lab_table(results))
    if errors and len(kernels) == 1:
        raise errors[0][1]
    for kernel, e in errors:
        click.echo(f"nstrace: error: {kernel}: {_one_line(str(e))}", err=True)
    bad = [r["kernel"] for r in results if not r["ok"]] + [k for k, _ in errors]
    if bad:
        raise LabFailed(f"kernel-layer suite failed on: {', '.join(bad)}")


def _echo_guest_text(text):
    """A guest's console or output on stderr: a guest kernel or command prints what it likes, and no
    byte of it may move this terminal."""
    from .view.terminal import lines
    click.echo(lines(text), err=True)


def _one_line(text):
    """An error message as one line: what the user typed (a CR, an escape) is shown, not obeyed."""
    from .view.terminal import printable
    return printable(text)


class _Stdout:
    """sys.stdout (and its .buffer) whose failed writes say so as WriteFailed: one error line, exit 7.

    A reader that went away stays BrokenPipeError (a quiet end, exit 0). Everything
    else is the stream's own.
    """

    def __init__(self, stream):
        self._stream = stream

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise WriteFailed(f"cannot write to stdout: {e.strerror}") from None

    def write(self, data):
        return self._call(self._stream.write, data)

    def flush(self):
        return self._call(self._stream.flush)

    @property
    def buffer(self):
        return _Stdout(self._stream.buffer)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _open_std_fds():
    """Occupy closed fds 0-2 with /dev/null, so that no file nstrace opens becomes its stdout;
    True if stdout was closed."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    return 1 in closed


def _silence_stdout():
    from .trace.watch import silence
    silence(1)


def main(argv=None):
    """Entry point: run the CLI, turning every known error into one line and an exit code."""
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signo in stops:
        signal.signal(signo, _on_signal)
    from .bpf import preload
    if not preload.blocked:
        # A blocked mask survives exec (as in the process that started nstrace): these stop nstrace.
        # (watch -- COMMAND's preload blocked them on purpose, to read them from a signalfd.)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    stdout_closed = _open_std_fds()
    real_stdout = sys.stdout
    if real_stdout is not None:
        sys.stdout = _Stdout(real_stdout)
    try:
        if stdout_closed or real_stdout is None:
            raise WriteFailed("stdout is closed: nstrace would write into whatever file it opens next; "
                              "redirect it to /dev/null to discard the output")
        # Not cli.main(): click turns EPIPE into exit 1 there, before the record file is closed.
        args = list(sys.argv[1:] if argv is None else argv)
        if not args:
            # The help `nstrace -h` prints, on stderr, exit 2: no command is bad input. Click 8.2's groups
            # do the same; said here so that click 8.1's (help on stdout, exit 0) do not decide it.
            click.echo(cli.get_help(click.Context(cli, info_name="nstrace", **cli.context_settings)), err=True)
            return UsageError.exit_code
        with cli.make_context("nstrace", args) as ctx:
            cli.invoke(ctx)
        sys.stdout.flush()
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        return 130
    except click.ClickException as e:
        click.echo(f"nstrace: error: {_one_line(e.format_message())}", err=True)
        return UsageError.exit_code
    except NstraceError as e:
        if isinstance(e, WriteFailed) and real_stdout is not None and not stdout_closed:
            _silence_stdout()  # (not a closed stdout's fd 1: the preload thread may have opened it)
        click.echo(f"nstrace: error: {_one_line(str(e))}", err=True)
        return e.exit_code
    except BrokenPipeError:
        # a reader like `head` went away: stop quietly, as cat does
        _silence_stdout()
        return 0
    finally:
        if sys.stdout is not real_stdout and real_stdout is not None:
            sys.stdout = real_stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
