"""The nstrace command line: the group of commands, each defined in a module of its own and imported
when it is asked for (watch's start-up pays for watch alone), and the one place where an error
becomes one line on stderr and a documented exit code (nstrace/errors.py ExitCode)."""

import os
import signal
import sys

import click

from .. import __version__
from ..errors import NstraceError, UsageError, WriteFailed
from .console import error, on_signal

# command -> (the module of nstrace.cli that defines it, its click command there)
COMMANDS = {"watch": ("watch", "watch"), "doctor": ("watch", "doctor"), "demo": ("check", "demo"),
            "check": ("check", "check"), "lab": ("lab", "lab"), "ls": ("view", "ls_command"),
            "show": ("view", "show_command"), "render": ("view", "render_command"), "compare": ("study", "compare_command"),
            "source": ("source", "source_group")}


class _Commands(click.Group):
    """The nstrace group: a command's module is imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name in COMMANDS and name not in self.commands:
            import importlib
            module, command = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(f"{__package__}.{module}"), command), name)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="nstrace")
def cli():
    """Trace every namespace creation and join on this kernel (clone, clone3, unshare, setns)."""


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
    from ..tracing.watch import silence
    silence(1)


def main(argv=None):
    """Entry point: run the CLI, turning every known error into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    code = _main(args)
    if args[:1] == ["watch"] and argv is None:
        _leave(code)
    return code


def _leave(code):
    """Exit now, as the process it is: watch's files are closed, its probes handed over or detached,
    its held COMMAND released or cancelled (preload.discard()). What the interpreter would still do,
    freeing every module and object one by one, costs tens of milliseconds after the last line was
    written: every `watch -- COMMAND` in a script would pay them (bench: short command)."""
    from ..bpf import preload
    preload.discard()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the descriptor closed (main refused that already)
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # said already (main's WriteFailed), or a reader gone: nothing more to say
    os._exit(code)


def _main(args):
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signo in stops:
        signal.signal(signo, on_signal)
    from ..bpf import preload
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
        error(e.format_message())
        return UsageError.exit_code
    except NstraceError as e:
        if isinstance(e, WriteFailed) and real_stdout is not None and not stdout_closed:
            _silence_stdout()  # (not a closed stdout's fd 1: the preload thread may have opened it)
        error(str(e))
        return e.exit_code
    except BrokenPipeError:
        # a reader like `head` went away: stop quietly, as cat does
        _silence_stdout()
        return 0
    finally:
        if sys.stdout is not real_stdout and real_stdout is not None:
            sys.stdout = real_stdout
    return 0
