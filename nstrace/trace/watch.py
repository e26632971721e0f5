"""The watch loop: a tracer's records to stdout (and a session file) until a stop, then the rest of
what the kernel already handed over, then the summary.

The CLI (nstrace/cli.py `watch`) parses the options, starts the Tracer and says how a record looks;
this module does the work between. Formatting stays with the caller (a table row is the view's),
so the loop imports nothing above the record layer.
"""

import os
import select
import stat
import sys
import time

from ..errors import WriteFailed

# at most one "lost events" line per this many seconds: an overloaded reader must not also flood stderr
LOSS_REPORT_INTERVAL_S = 1.0


class Stdout:
    """fd 1 as a watch writes to it. A reader that went away (EPIPE: `| head`) closes it quietly; a
    write that failed (disk full, WriteFailed) closes it and keeps the error for the end."""

    def __init__(self, on_failure):
        self.open = True
        self.on_failure = on_failure
        try:
            self.pipe = stat.S_ISFIFO(os.fstat(1).st_mode)
        except OSError:
            self.pipe = False

    def write(self, action):
        """Run action() (a write to sys.stdout) unless stdout is closed; a failure closes it."""
        if not self.open:
            return
        try:
            action()
        except BrokenPipeError:
            self.close()
        except WriteFailed as e:
            self.on_failure(e)
            self.close()

    def line(self, text):
        # a line, flushed: a pipe's reader (grep, a log shipper) sees each record as it comes
        self.write(lambda: (sys.stdout.write(text + "\n"), sys.stdout.flush()))

    def reader_gone(self):
        """True once the reading end of the stdout pipe is closed: the kernel says POLLERR on the
        writing end (fs/pipe.c pipe_poll, 6.18), so a quiet watch ends with `| head` at once
        instead of at its next write."""
        if not (self.open and self.pipe):
            return False
        poller = select.poll()
        poller.register(1, 0)  # POLLERR and POLLHUP are reported whatever is asked for
        if any(event & select.POLLERR for _, event in poller.poll(0)):
            self.close()
            return True
        return False

    def close(self):
        self.open = False
        silence_stdout()


def silence_stdout():
    """Point fd 1 at /dev/null: what stdout still buffers, and Python's flush at exit, go nowhere
    instead of failing again (EPIPE, ENOSPC) after nstrace has said what it had to."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass


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

    row(rec): the record as a line (for --json: record.jsonline.json_line); header: a first line or
    None. With as_json and no recorder, native/batch.c writes the lines (Tracer.poll_json).
    status(text) says a status line on stderr; stop_requested() is true once a signal asked to stop.
    count: records to show at most; duration: seconds (None: until a stop).

    command (watch -- COMMAND): a linux.command.HeldCommand the tracer follows; released (run) as
    soon as tracing is live, by release(). The watch then ends when COMMAND exits: the followed
    processes are forgotten (no record begins after that), the ring buffer is read to its end,
    and the kernel's teardown of the probes goes on after nstrace (bpf/teardown).
    """

    def __init__(self, tracer, *, row, header=None, as_json=False, recorder=None, record_path=None,
                 count=None, duration=None, status=print, stop_requested=lambda: False, command=None,
                 release=None):
        self.tracer, self.row, self.header, self.as_json = tracer, row, header, as_json
        self.recorder, self.record_path = recorder, record_path
        self.count, self.duration = count, duration
        self.status, self.stop_requested = status, stop_requested
        self.command, self.release = command, release
        self.untraced = []  # watch -- COMMAND: descendants still running when the trace ended
        self.failure = None  # the first write that failed (stdout or the record file): raised at the end
        self.stdout = Stdout(self._failed)
        self.shown = 0
        self.record_ok = True
        self._reported_lost, self._reported_at = 0, 0.0

    def _failed(self, error):
        self.failure = self.failure or error

    def run(self):
        """Trace until --count, --duration, a signal or a reader that went away; return the summary.

        A reader that goes away ends the watch quietly, a stdout or record file that cannot be
        written with self.failure; either way the probes are detached, what they already handed
        over is still recorded, and the record file gets its end line.
        """
        tracer, command = self.tracer, self.command
        background = False
        try:
            self.status(f"tracing live ({live_counts(tracer)}); " +
                        ("running the command" if command else "Ctrl-C to stop"))
            deadline = time.monotonic() + self.duration if self.duration else None
            try:
                if self.header is not None:
                    self.stdout.line(self.header)
                if self.release:
                    self.release()
                while self.stdout.open and self.record_ok and not self.stop_requested() and \
                        (deadline is None or time.monotonic() < deadline):
                    if command:
                        if command.exited():
                            break
                        self._wait_for(command, deadline)
                        self._emit(0)
                    else:
                        self._emit()
                    if self.count and self.shown >= self.count:
                        break
                    self._report_loss()
                    self.stdout.write(sys.stdout.flush)
                    self.stdout.reader_gone()  # `| head` is done: no need to wait for the next record
            except (KeyboardInterrupt, _Stop):
                pass
            # What the kernel already handed over is shown, not dropped, on the way out: the stream
            # is given an end, then the ring buffer is read to it (into the record file alone once
            # stdout is gone). The end: with a command, no followed process any more (COMMAND and
            # what it left behind are what was traced); else the probes go.
            if command:
                self.untraced = tracer.unfollow()
                # the namespaces COMMAND made die after it, if at all; the drain below reads their records
                tracer.end_deaths(wait=command.exited() and not self.untraced)
                background = True
            else:
                tracer.stop()
            try:
                while self.record_ok and (self.stdout.open or self.recorder) and self._emit(0):
                    pass
            except _Stop:
                pass
        finally:
            tracer.close(background=background)
        summary = tracer.summary()
        if command:
            summary["command"] = {"pid": command.pid, "exit_status": command.status,
                                  "untraced": len(self.untraced)}
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
        """Until COMMAND exits, the ring buffer wakes its reader, or the poll interval passes."""
        timeout = self.tracer.options.poll_ms
        if deadline is not None:
            timeout = max(0, min(timeout, (deadline - time.monotonic()) * 1000))
        poller = select.poll()
        poller.register(command.fileno(), select.POLLIN)
        poller.register(self.tracer.fileno(), select.POLLIN)
        try:
            poller.poll(timeout)
        except InterruptedError:
            pass  # a signal: the loop looks at what it asked

    def _emit(self, timeout_ms=None):
        """Show the next batch; the number of records read from the ring buffer."""
        tracer, count = self.tracer, self.count
        if count and self.shown >= count:
            raise _Stop(0)
        if self.as_json and not self.recorder:
            # native/batch.c writes the lines: the rate a firehose needs
            lines, n = tracer.poll_json(timeout_ms, limit=count - self.shown if count else 0)
            self.shown += n
            self.stdout.write(lambda: sys.stdout.buffer.write(lines))
            return tracer.last_read
        for rec in tracer.poll(timeout_ms):
            if count and self.shown >= count:
                raise _Stop(0)
            if self.recorder and self.record_ok:
                self._record(rec)
            self.shown += 1
            self.stdout.line(self.row(rec))
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
