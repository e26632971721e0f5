"""What the command line says and hears: status and error lines on stderr, through the terminal
filter, and the stop signals (SIGINT, SIGTERM, SIGHUP) of a command without a COMMAND of its own."""

import click

# the signals asked to stop so far, by number (main installs on_signal)
stop_requested = []


def on_signal(signo, _frame):
    # SIGINT, SIGTERM, SIGHUP: finish the current batch, drain, summarise, exit 0.
    # A flag, not an exception: the poll wakes with EINTR and the loop ends cleanly.
    # (watch -- COMMAND blocks them and reads them from a signalfd instead, with who sent each:
    # nstrace/tracing/watch.py Relay.)
    stop_requested.append(signo)


def status(message):
    """A status line: always stderr, so --json keeps stdout clean; through the terminal filter, for
    what it names (a file, a guest's file, a kernel) is anybody's choice."""
    if not message.isprintable():  # watch's start-up lines are plain: they import nothing for it
        from ..view.terminal import printable
        message = printable(message)
    click.echo(f"nstrace: {message}", err=True)


def error(message):
    """The one error line of a command that failed (or of one of its guests)."""
    click.echo(f"nstrace: error: {one_line(message)}", err=True)


def echo_guest_text(text):
    """A guest's console or output on stderr: a guest kernel or command prints what it likes, and no
    byte of it may move this terminal."""
    from ..view.terminal import lines
    click.echo(lines(text), err=True)


def one_line(text):
    """An error message as one line: what the user typed (a CR, an escape) is shown, not obeyed."""
    from ..view.terminal import printable
    return printable(text)
