"""The watch loop: a tracer's records to its output (stdout, stderr or -o FILE; and a session file)
until a stop, then the rest of what the kernel already handed over, then the summary.

The CLI (nstrace/cli/watch.py) parses the options, starts the Tracer and says how a record looks;
this module does the work between. Formatting stays with the caller (a table row is the view's),
so the loop imports nothing above the record layer.
"""

import os
import select
import stat
import time

from ..errors import WriteFailed

# at most one "lost events" line per this many seconds: an overloaded reader must not also flood stderr
LOSS_REPORT_INTERVAL_S = 1.0


class Output:
    """The trace's stream as a watch writes to it: sys.stdout, sys.stderr (watch -- COMMAND's
    default: COMMAND keeps stdout) or a file (-o), a text stream with a .buffer. A reader that went
    away (EPIPE: `| head`) closes it quietly; a write that failed (disk full) closes it and keeps
    the error, a WriteFailed, for the end."""

    def __init__(self, stream, what, on_failure=None):
        self.stream, self.what, self.on_failure = stream, what, on_failure
        self.open = True
        try:
            self.fd = stream.fileno()
            self.pipe = stat.S_ISFIFO(os.fstat(self.fd).st_mode)
        except OSError:
            self.fd, self.pipe = None, False

    def write(self, action):
        """Run action() (a write to the stream) unless it is closed; a failure closes it."""
        if not self.open:
            return
        try:
            action()
        except BrokenPipeError:
            self.close()
        except WriteFailed as e:
            self.on_failure(e)
            self.close()
        except OSError as e:
            self.on_failure(WriteFailed(f"cannot write {self.what}: {e.strerror}"))
            self.close()

    def line(self, text):
        # a line, flushed: a pipe's reader (grep, a log shipper) sees each record as it comes
        self.write(lambda: (self.stream.write(text + "\n"), self.stream.flush()))

    def lines(self, data):
        """JSON lines as native/batch.c wrote them (bytes), after what the text layer holds."""
        stream = self.stream
        self.write(lambda: (stream.flush(), stream.buffer.write(data), stream.buffer.flush()))

    def flush(self):
        self.write(self.stream.flush)

    def reader_gone(self):
        """True once the reading end of the output pipe is closed: the kernel says POLLERR on the
        writing end (fs/pipe.c pipe_poll, 6.18), so a quiet watch ends with `| head` at once
        instead of at its next write."""
        if not (self.open and self.pipe):
            return False
        poller = select.poll()
        poller.register(self.fd, 0)  # POLLERR and POLLHUP are reported whatever is asked for
        if any(event & select.POLLERR for _, event in poller.poll(0)):
            self.close()
            return True
        return False

    def close(self):
        self.open = False
        if self.fd in (1, 2):
            silence(self.fd)
        else:
            try:
                self.stream.close()
            except OSError:
                pass  # the error that closed it, again: said already

    def finish(self):
        """The end of a watch: a file of its own (-o) is closed, its last write checked."""
        if self.open and self.fd not in (1, 2):
            self.write(self.stream.close)
            self.open = False


def silence(fd=1):
    """Point fd (stdout, or stderr) at /dev/null: what it still buffers, and Python's flush at exit, go
    nowhere instead of failing again (EPIPE, ENOSPC) after nstrace has said what it had to."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


class Relay:
    """watch -- COMMAND's signals (SIGINT, SIGTERM, SIGHUP), read from a linux.heldcommand.Inbox.

    A terminal's signal goes to its whole foreground process group: when COMMAND is in nstrace's,
    it has the signal too, and acting on it is COMMAND's (a REPL's Ctrl-C, as often as it comes);
    the watch goes on. A signal sent to nstrace alone (kill) is passed on to COMMAND, whose exit
    then ends the watch as always; a second such signal ends the watch at once, COMMAND or not.
    """

    def __init__(self, inbox, command, status):
        self.inbox, self.command, self.status = inbox, command, status
        self.passed_on = []  # linux.heldcommand.Signal, in order

    def fileno(self):
        return self.inbox.fileno()

    def take(self):
        """Read and act on what came; True once nstrace was asked to end."""
        for sig in self.inbox.read():
            if sig.from_terminal and self.command.in_group_of(os.getpgrp()):
                continue
            self.command.signal(sig.signo)
            self.passed_on.append(sig)
            if len(self.passed_on) == 1:
                sender = f" from pid {sig.sender}" if sig.sender else ""
                self.status(f"{sig.name}{sender} passed on to {self.command.name} (pid {self.command.pid}); "
                            "the watch ends when it exits, or at a second signal to nstrace")
        return self.ending is not None

    @property
    def ending(self):
        """The signal that ended the watch (the second passed on), or None."""
        return self.passed_on[1] if len(self.passed_on) > 1 else None


def live_counts(tracer):
    """What is attached, for the "tracing live" line: the syscall probes, and the kernel-function
    hooks beside the number planned (0 where the kernel allows neither fentry nor kprobes)."""
    hooks = tracer.hooks
    return (f"{len(tracer.attached)} syscall probes and {sum(h.attached for h in hooks)} of {len(hooks)} "
            "function hooks attached")


class _Stop(Exception):
    """--count reached."""


class Watch:
    """One `nstrace watch` over a started Tracer.

    out: an Output (the trace's stream). row(rec): the record as a line (for --json:
    record.jsonline.json_line); header: a first line or None. With as_json and no recorder,
    native/batch.c writes the lines (Tracer.poll_json). status(text) says a status line on stderr;
    stop_requested() is true once a signal asked to stop. count: records to show at most;
    duration: seconds (None: until a stop).

    command (watch -- COMMAND): a linux.heldcommand.HeldCommand the tracer follows; released (run) as
    soon as tracing is live, by release(); signals: its Relay. The watch then ends when COMMAND
    exits: the followed processes are forgotten (no record begins after that), the ring buffer is
    read to its end, and the kernel's teardown of the probes goes on in the background
    (bpf/teardown). --count, --duration, a second signal to nstrace or an output gone end it
    sooner, the same way, COMMAND running on.
    """

    def __init__(self, tracer, out, *, row, header=None, as_json=False, recorder=None, record_path=None,
                 count=None, duration=None, status=print, stop_requested=lambda: False, command=None,
                 release=None, signals=None):
        self.tracer, self.out, self.row, self.header, self.as_json = tracer, out, row, header, as_json
        self.recorder, self.record_path = recorder, record_path
        self.count, self.duration = count, duration
        self.status, self.stop_requested = status, stop_requested
        self.command, self.release, self.signals = command, release, signals
        self.untraced = []  # watch -- COMMAND: processes still running when the trace ended
        self.failure = None  # the first write that failed (the output or the record file): raised at the end
        out.on_failure = self._failed
        self.shown = 0
        self.record_ok = True
        self.ended = None  # why the trace ended: "command", "count", "duration", "signal", "output"
        self._reported_lost, self._reported_at = 0, 0.0

    def _failed(self, error):
        self.failure = self.failure or error

    def run(self):
        """Trace until --count, --duration, a signal or a reader that went away; return the summary.

        A reader that goes away ends the watch quietly, an output or record file that cannot be
        written with self.failure; either way the probes are detached, what they already handed
        over is still recorded, and the record file gets its end line.
        """
        tracer, command = self.tracer, self.command
        try:
            self.status(f"tracing live ({live_counts(tracer)}); " +
                        ("running the command" if command else "Ctrl-C to stop"))
            try:
                if self.header is not None:
                    self.out.line(self.header)
                if self.release:
                    self.release()
                self.ended = self._trace()
            except _Stop:
                self.ended = "count"
            # What the kernel already handed over is shown, not dropped, on the way out: the stream
            # is given an end, then the ring buffer is read to it (into the record file alone once
            # the output is gone). The end: with a command, no followed process any more (COMMAND
            # and what it left behind are what was traced); else the probes go.
            if command:
                self.untraced = tracer.unfollow()
                # the namespaces COMMAND made die after it, if at all; the drain below reads their records
                tracer.end_deaths(wait=command.exited() and not self.untraced)
            else:
                tracer.stop()
            try:
                while self.record_ok and (self.out.open or self.recorder) and self._emit(0):
                    pass
            except _Stop:
                pass
        finally:
            tracer.close(background=bool(command))
        self.out.flush()
        return self._summary()

    def _trace(self):
        """The loop, until its end; returns why it ended."""
        deadline = time.monotonic() + self.duration if self.duration else None
        command = self.command
        while True:
            if not (self.out.open and self.record_ok):
                return "output"
            if self.stop_requested():
                return "signal"
            if deadline is not None and time.monotonic() >= deadline:
                return "duration"
            if command:
                if command.exited():
                    return "command"
                self._wait_for(command, deadline)
                if self.signals.take():
                    return "signal"
                self._emit(0)
            else:
                self._emit()
            if self.count and self.shown >= self.count:
                return "count"
            self._report_loss()
            self.out.flush()
            self.out.reader_gone()  # `| head` is done: no need to wait for the next record

    def _summary(self):
        summary = self.tracer.summary()
        command = self.command
        if command:
            running = not command.exited()
            summary["command"] = {"pid": command.pid, "exit_status": command.status, "signal": command.signal_name,
                                  "running": running,
                                  # the processes left running, COMMAND's descendants (COMMAND aside)
                                  "untraced": len([p for p in self.untraced if p != command.pid])}
            if running:
                summary["command"]["ended_by"] = self.ended
        if self.recorder:
            try:
                self.recorder.close(summary)
            except OSError as e:
                self.record_ok = False
                self._failed(WriteFailed(f"cannot write session file {self.record_path}: {e.strerror}"))
            if self.record_ok:
                self.status(f"session written to {self.record_path}")
        return summary

    def _wait_for(self, command, deadline):
        """Until COMMAND exits, the ring buffer wakes its reader, a signal comes, or the poll
        interval passes."""
        timeout = self.tracer.options.poll_ms
        if deadline is not None:
            timeout = max(0, min(timeout, (deadline - time.monotonic()) * 1000))
        poller = select.poll()
        for source in (command, self.tracer, self.signals):
            poller.register(source.fileno(), select.POLLIN)
        poller.poll(timeout)

    def _emit(self, timeout_ms=None):
        """Show the next batch; the number of records read from the ring buffer."""
        tracer, count = self.tracer, self.count
        if count and self.shown >= count:
            raise _Stop(0)
        limit = count - self.shown if count else 0
        if self.as_json and not self.recorder:
            # native/batch.c writes the lines: the rate a firehose needs
            lines, n = tracer.poll_json(timeout_ms, limit=limit)
            self.shown += n
            if n:
                self.out.lines(lines)
            return tracer.last_read
        for rec in tracer.poll(timeout_ms, limit=limit):
            if self.recorder and self.record_ok:
                self._record(rec)
            self.shown += 1
            self.out.line(self.row(rec))
        return tracer.last_read

    def _record(self, rec):
        try:
            self.recorder.write(rec)
        except OSError as e:
            self.record_ok = False
            self._failed(WriteFailed(f"cannot write session file {self.record_path}: {e.strerror} "
                                     f"(it holds the first {self.recorder.count} records)"))

    def _report_loss(self):
        if time.monotonic() - self._reported_at < LOSS_REPORT_INTERVAL_S:
            return
        lost = sum(self.tracer.lost.values())
        if lost > self._reported_lost:
            self.status(f"lost {lost - self._reported_lost} events (total {lost}): ring buffer or in-flight table full")
            self._reported_lost, self._reported_at = lost, time.monotonic()
