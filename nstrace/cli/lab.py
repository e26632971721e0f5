"""`nstrace lab`: Debian kernels under QEMU (nstrace/lab/), with a command of nstrace's or the
kernel-function suite in each."""

import os
import sys

import click

from ..errors import (
    BootError,
    GuestLockup,
    GuestTimeout,
    LabError,
    LabFailed,
    PackageNotFound,
    PrivilegeError,
    UsageError,
)
from .console import echo_guest_text, error, status, stop_requested
from .params import Seconds

# A week: selectors and Popen.wait take their timeouts as C ints of milliseconds (about 24 days at most).
LAB_MAX_TIMEOUT_S = 7 * 24 * 3600
# the session --compare has a command record where it gives no --record FILE of its own
COMPARE_RECORD = "nstrace-compare.jsonl"


@click.command(context_settings={"allow_interspersed_args": False})
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
@click.option("--compare", is_flag=True,
              help="A command that records (demo, watch) on two kernels or more: their sessions side by side at "
                   f"the end, as `nstrace compare` shows them (its --record FILE, else {COMPARE_RECORD}).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- NSTRACE-ARGS...]")
def lab(kernels, timeout, verbose, pytest_args, check_only, compare, command):
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
    if command:
        _refuse_before_boot(list(command))
    if compare and (not command or len(set(kernels)) < 2):
        raise UsageError("--compare needs two kernels or more and a command that records, e.g. "
                         "--kernel 5.10 --kernel sid --compare -- demo --flags NEWUTS")
    keep = None
    if compare:
        command, keep = _recording(list(command))
    try:
        pytest_args = tuple(shlex.split(pytest_args)) if pytest_args else ()
    except ValueError as e:
        raise UsageError(f"--pytest-args: {e}") from None
    from ..lab import apt
    for kernel in kernels:  # every name resolved before anything boots: a typo fails fast
        try:
            apt.resolve(kernel, status)
        except PackageNotFound as e:
            raise UsageError(str(e)) from None
    if command:
        _lab_command(list(dict.fromkeys(kernels)), list(command), timeout, keep)
    else:
        _lab_suite(list(dict.fromkeys(kernels)), pytest_args, check_only, timeout, verbose)


def _refuse_before_boot(command):
    """What the guest's nstrace would refuse at once, refused here before a guest boots (about 10 s, and
    for watch the probes' attaching): the guest runs this interpreter and package on the host's root
    (nstrace/lab/runner.py), so a command line this nstrace cannot parse fails the same there, and
    nstrace/lab/preflight.py says which files it could not read or run."""
    from ..lab import preflight
    from .main import cli
    if command[0].startswith("-"):
        return  # nstrace's own options (--version, -h): the guest's answer is the same and as quick
    parent = click.Context(cli, info_name="nstrace", **cli.context_settings)
    sub = cli.get_command(parent, command[0])
    if sub is None:
        raise UsageError(f"nstrace has no command {command[0]!r} (it has {', '.join(cli.list_commands(parent))})")
    try:
        ctx = sub.make_context(command[0], command[1:], parent=parent)  # -h prints the help here, and exits 0
    except click.ClickException as e:
        raise UsageError(f"{command[0]}: {e.format_message()}") from None
    cwd = os.getcwd()
    for param in sub.params:
        value = ctx.params.get(param.name)
        # the file arguments (show FILE, render FILE, compare SESSIONS...) are read; files of options are written
        if isinstance(param, click.Argument) and isinstance(param.type, click.Path) and value:
            for path in (value if isinstance(value, tuple) else (value,)):
                problem = path != "-" and preflight.unreadable_file(path, cwd)
                if problem:
                    raise UsageError(f"{command[0]}: {problem}")
    if command[0] == "check":
        from ..check import checker
        checker.select(ctx.params["names"])  # the catalogue is this package's
    program = ctx.params.get("command") if command[0] == "watch" else None
    if program:
        problem = preflight.missing_program(program[0], cwd)
        if problem:
            from ..errors import CommandNotRun
            raise CommandNotRun(f"cannot run {problem}", 127)  # as watch says it (exit 127), with no boot


def _recording(command):
    """(the command as it records its session for --compare, the session's name in the working
    directory): its own --record FILE, else COMPARE_RECORD."""
    import posixpath

    from .main import cli
    sub = cli.get_command(None, command[0])
    if sub is None or "record_path" not in {p.name for p in sub.params}:
        raise UsageError(f"--compare compares the sessions a command records: {command[0]} records none "
                         "(demo and watch do)")
    try:
        path = sub.make_context(command[0], command[1:], resilient_parsing=True).params.get("record_path")
    except click.ClickException:
        path = None  # what is wrong with the command, the guest's nstrace says
    if path is None:
        return [command[0], "--record", COMPARE_RECORD, *command[1:]], COMPARE_RECORD
    name = posixpath.normpath(path)
    if name.startswith(("/", "../")) or name == "..":
        raise UsageError(f"--compare: --record {path} is outside the current directory, where the guests' "
                         "files come back")
    return command, name


def _lab_command(kernels, command, timeout, keep=None):
    from ..lab import guest, runner
    outcomes = runner.run(kernels, command, timeout=timeout, status=status,
                          should_stop=lambda: bool(stop_requested), keep=keep)
    codes = [runner.exit_code(o) for o in outcomes]
    for o in outcomes:
        if isinstance(o.error, GuestLockup):
            echo_guest_text(guest.lockup_report(o.error.console))  # the stacks say why it ended
    if stop_requested:  # Ctrl-C: the guests were stopped, as watch stops
        raise click.exceptions.Exit(130)
    failed = [o for o in outcomes if o.error is not None]
    if len(kernels) == 1 and failed:
        raise failed[0].error
    for o in failed:
        error(f"{o.kernel}: {o.error}")
    if keep:
        _compare(outcomes, keep)
    first = next((c for c in codes if c != 0), 0)
    if first:
        raise click.exceptions.Exit(first)


def _compare(outcomes, keep):
    """--compare: the sessions the guests wrote, side by side (nstrace compare)."""
    from ..lab.outfiles import renamed
    from ..session import reader
    from .study import show
    sessions = []
    for o in outcomes:
        if o.kept is None:
            if o.error is None:
                error(f"{o.kernel}: --compare: the command wrote no {keep}")
            continue
        try:
            sessions.append(reader.load(renamed(keep, o.kernel), o.kept))
        except UsageError as e:
            error(f"{o.kernel}: --compare: {e}")
    if len(sessions) < 2:
        raise LabFailed(f"--compare: {len(sessions)} of {len(outcomes)} sessions came back: nothing to compare")
    click.echo("")
    show(sessions)


def _lab_suite(kernels, pytest_args, check_only, timeout, verbose):
    import concurrent.futures
    import threading

    from ..lab import guest, suite
    from ..lab.runner import GUEST_PARALLEL, LineWriter
    from ..view import reports
    lock = threading.Lock()

    def one(kernel):
        say = lambda m: status(f"{kernel}: {m}")  # noqa: E731
        output = LineWriter(sys.stdout.buffer, lock, f"[{kernel}] ".encode() if len(kernels) > 1 else None) \
            if verbose else None
        try:
            res = suite.run_guest_suite(kernel, pytest_args=pytest_args, check_only=check_only, timeout=timeout,
                                        status=say, output=output, should_stop=lambda: bool(stop_requested))
        except GuestLockup as e:
            # always: a hang is worth its stacks in any log, and they are why the run ended
            echo_guest_text(guest.lockup_report(e.console))
            raise
        except (GuestTimeout, BootError) as e:
            if verbose:  # the guest's last words, for whoever reads a CI log
                echo_guest_text("\n".join(e.console.splitlines()[-60:]))
                echo_guest_text("\n".join(e.output.splitlines()[-60:]))
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
    if stop_requested:
        raise click.exceptions.Exit(130)
    if results:
        click.echo(reports.lab_table(results))
    if errors and len(kernels) == 1:
        raise errors[0][1]
    for kernel, e in errors:
        error(f"{kernel}: {e}")
    bad = [r["kernel"] for r in results if not r["ok"]] + [k for k, _ in errors]
    if bad:
        raise LabFailed(f"kernel-layer suite failed on: {', '.join(bad)}")
