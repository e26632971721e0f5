"""Detaching without waiting for it: the last references to the probes go to a holder process, which
drops them as soon as it is told to.

The kernel tears down a perf-event tracepoint attachment under event_mutex
and waits out an SRCU and an RCU grace period for each before it returns
(kernel/trace/trace_event_perf.c perf_trace_destroy() ->
perf_trace_event_unreg() -> tracepoint_synchronize_unregister(), 6.12 and
7.2): the closes run one after another, ~45 ms each on our machines, about
400 ms for a watch's eight syscall tracepoints and sched_process_exit, and
threads do not help (they queue on the mutex). `watch -- true` would spend
most of its time there, and so would every `nstrace.trace()` block.

Where the stream's end is already fixed otherwise (the table of followed
processes is empty, the ring buffer is read to its end), nothing is left to
wait for: hand_over(fds) forks a holder that keeps the probes' links (the
fds given: each BPF link, or perf event where the kernel has no perf link,
holds its program and its attachment) and nothing else, with /dev/null for
stdin, stdout and stderr so that no pipe reader waits on it. The caller's
own closes then only drop references; Holder.let_go() tells the holder
they are done, and the holder's exit pays for the teardown in the
background, at once, while the caller goes on: nstrace exits, waits on for
a COMMAND that outlived its trace (--count, --duration), or, as a library
(nstrace/api.py), runs the next line of its caller's program.

The holder is given those fds alone, not every BPF fd of the process: a
library's caller may hold BPF objects of its own (or a second trace, in
another thread), whose detach must stay theirs.
"""

import os

# The fds a holder keeps too, until it is let go: closing ours only drops a reference, at once
# (loader.BpfObject.detach_all asks, and spares the threads that wait out grace periods side by side)
_held = set()


def held(fds):
    """Whether a holder keeps every one of fds (their teardown is the holder's)."""
    return set(fds) <= _held


class Holder:
    """The holder of one set of probes, waiting to be let go."""

    def __init__(self, pipe, fds):
        self._pipe = pipe  # the write end of the holder's pipe: its close lets the holder go
        self._fds = fds
        _held.update(fds)

    def let_go(self):
        """The caller holds no fd of the probes any more: the holder's exit detaches them now."""
        if self._pipe is not None:
            _held.difference_update(self._fds)
            os.close(self._pipe)
            self._pipe = None


def hand_over(fds):
    """Fork the holder of `fds`; None if it could not be forked: then the caller's own closes do the
    teardown, as always. Call let_go() on what it returns once the caller has closed its own fds of
    the probes.

    The fork runs no Python of the caller's in the child but its at-fork handlers, and only os calls
    after them, so a caller with threads of its own may call it."""
    keep = sorted(set(fds))
    try:
        r, w = os.pipe()  # O_CLOEXEC: no program another thread starts meanwhile keeps the holder waiting
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:
        try:
            # The holder is a grandchild, orphaned at once: init reaps it, not the caller, which may
            # wait on for a COMMAND long after the holder is done, or never wait for it at all.
            if os.fork() == 0:
                _hold(r, keep)
        finally:
            os._exit(0)
    os.close(r)
    os.waitpid(pid, 0)
    return Holder(w, keep)


def _hold(r, keep):
    """The holder: the fds to keep and r alone, until r's EOF."""
    import signal  # here, in the holder: signal imports enum, and the loader imports this module
    os.setsid()  # a hangup of the caller's terminal is not the holder's concern
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # watch -- COMMAND blocks some: not here
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    wanted = {0, 1, 2, r, *keep}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in wanted:
            try:
                os.close(fd)  # files, pipes, sockets, other BPF objects: nobody may wait for the holder through them
            except OSError:
                pass  # the listing's own fd, closed by now
    os.read(r, 1)  # EOF: the caller has closed its own fds (let_go), or exited
