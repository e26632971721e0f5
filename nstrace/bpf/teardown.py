"""Detaching without waiting for it: the last references to the probes go to a child that outlives nstrace.

The kernel tears down a perf-event tracepoint attachment under event_mutex
and waits out an SRCU and an RCU grace period for each before it returns
(kernel/trace/trace_event_perf.c perf_trace_destroy() ->
perf_trace_event_unreg() -> tracepoint_synchronize_unregister(), 6.12 and
7.2): the closes run one after another, ~45 ms each on our machines, about
400 ms for a watch's eight syscall tracepoints and sched_process_exit, and
threads do not help (they queue on the mutex). `watch -- true` would spend
most of its time there.

Where the stream's end is already fixed otherwise (watch -- COMMAND: the
table of followed processes is empty, the ring buffer is read to its end),
nothing is left to wait for: hand_over() forks a holder that keeps only the
BPF and perf fds (anonymous inodes), with /dev/null for stdin, stdout and
stderr so that no pipe reader waits on it. nstrace's own closes then only
drop references; let_go() tells the holder they are done, and the holder's
exit pays for the teardown in the background, whether nstrace exits now or
waits on for a COMMAND that outlived its trace (--count, --duration).
"""

import os
import signal

_holder = None  # the write end of the holder's pipe: its close lets the holder go


def hand_over():
    """Fork the holder. Call with no other thread of this process running; False if it could not be
    forked: then the caller's own closes do the teardown, as always. Call let_go() once this
    process has closed its own fds of the probes."""
    global _holder
    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:
        try:
            # The holder is a grandchild, orphaned at once: init reaps it, not nstrace, which may
            # wait on for a COMMAND long after the holder is done.
            if os.fork() == 0:
                _hold(r)
        finally:
            os._exit(0)
    os.close(r)
    os.waitpid(pid, 0)
    _holder = w
    return True


def _hold(r):
    """The holder: the probes' fds and r alone, until r's EOF."""
    os.setsid()  # a hangup of nstrace's terminal is not the holder's concern
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # watch -- COMMAND blocks some: not here
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != r:
            try:
                keep = os.readlink(f"/proc/self/fd/{fd}").startswith("anon_inode:")
            except OSError:
                continue  # the listing's own fd, closed by now
            if not keep:
                os.close(fd)  # files, pipes, sockets: nobody may wait for the holder through them
    os.read(r, 1)  # EOF: nstrace has closed its own fds (let_go), or exited


def let_go():
    """This process holds no fd of the probes any more: the holder's exit detaches them now."""
    global _holder
    if _holder is not None:
        os.close(_holder)
        _holder = None
