"""`nstrace watch` loads and attaches its probes while Python is still importing the command line.

From exec, importing click and the rest of nstrace takes longer than loading
the BPF object, most of which is the kernel's verifier (bench: start-up). ctypes
lets go of the GIL for the length of bpf_object__load(), so a thread can
load while the main thread imports. The thread imports no more than
nstrace.bpf.probeset (the loader, not the tracer), guesses the options that
decide the object from argv, loads it and attaches it: tracing is live
before click is imported, and what happens meanwhile waits in the ring
buffer. Tracer.start() takes the probes only if the options the command
line really parsed ask for the same object (ProbeSet.settings()), and
otherwise closes them, records and all, and loads again; a command line
that fails to parse closes them too (discard()). With --pid the thread only
loads: the descendant table must be filled before any probe runs. With
`watch -- COMMAND` the child that becomes COMMAND is forked first
(nstrace.linux.heldcommand), so its pid is known: the thread loads, puts it in
the table and attaches, and the command line only has to release it. The
signals that watch reads from a signalfd then (linux.heldcommand.Inbox) are
blocked before that fork and that thread: a signal must find no thread that
takes it as an interruption.

The thread is the interpreter's own (_thread), not a threading.Thread:
threading and the functools and collections it imports cost 4 ms before the
load could begin (bench: start-up breakdown).
"""

import _thread as threads
import os
import sys


class _Flag:
    """Set once, waited for: threading.Event's part this module needs, on a bare lock."""

    def __init__(self, is_set=False):
        self._lock = threads.allocate_lock()
        self._set = is_set
        if not is_set:
            self._lock.acquire()

    def set(self):
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout=-1):
        """True once set; False if timeout (seconds) passed first."""
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
            return True
        return False


class _Thread:
    """A thread running target(*args), and the wait for its end."""

    def __init__(self, target, args):
        self.done = _Flag()
        threads.start_new_thread(self._run, (target, args))

    def _run(self, target, args):
        try:
            target(*args)
        finally:
            self.done.set()

    def join(self):
        self.done.wait()


_thread = None
_probes = None
_command = None  # the HeldCommand of `watch -- COMMAND`, forked before the thread
blocked = False  # begin() blocked the signals watch -- COMMAND reads from a signalfd
_interval = 0.005
_loading = _Flag(is_set=True)  # the thread has reached the load (or given up)
_yield = None      # the main thread's _MainYield to the thread, if it yields
YIELD_NICE = 10    # how much lower, meanwhile (bench: start-up; 5 helped less)


# watch's options that take a value (tests/test_startup.py holds this to the command line)
VALUED = ("--pid", "--comm", "--op", "--type", "--duration", "--count", "--buffer-kib", "--record", "--user", "-u",
          "--container", "--ns", "--output", "-o")


def split(words):
    """watch's words (after `watch`) as (options, COMMAND, ended): COMMAND begins after `--` (ended:
    True) or at the first word that is no option (an option's value aside)."""
    i = 0
    while i < len(words):
        arg = words[i]
        if arg == "--":
            return words[:i], words[i + 1:], True
        if not arg.startswith("-"):
            return words[:i], words[i:], False
        i += 2 if arg in VALUED else 1
    return words, [], False


def guess(args):
    """The Options fields that decide the object for the command line `args`, or None if it is not
    `watch` (or asks for help). A wrong guess only costs a second load. "command": True when a
    COMMAND follows the options (after `--`, or at the first word that is no option)."""
    if not args or args[0] != "watch":
        return None
    options, command, _ = split(args[1:])
    fields = {"command": True} if command else {}
    rest = iter(options)
    for arg in rest:
        name, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            return None
        if arg == "--all":
            fields["trace_all"] = True
        elif arg == "--raw-addresses":
            fields["raw_addresses"] = True
        elif name in VALUED:
            value = value if eq else next(rest, "")
            if name in ("--pid", "--buffer-kib"):
                try:
                    number = int(value)
                except ValueError:
                    return None
                if name == "--pid":
                    fields["pid"] = number
                else:
                    fields["ringbuf_bytes"] = number * 1024
    return fields


def begin(args):
    """Start loading in a thread if `args` is a watch command line."""
    global _command, blocked
    fields = guess(args)
    if fields is not None:
        seed = None
        if fields.pop("command", False) and "pid" not in fields:
            # Forked now, while this process has one thread and no BPF fd: COMMAND's pid is what
            # the object follows (filter_tgid) and the table's first entry, before anything is attached.
            from ..linux.heldcommand import HeldCommand, block_watched
            block_watched()
            blocked = True
            _command = HeldCommand()
            fields["pid"] = seed = _command.pid
        start(fields, seed, yield_cpu=seed is None and "pid" not in fields)


def start(fields, seed=None, yield_cpu=False):
    """Load (and attach, unless fields has a pid that is not seed's) ProbeSet(**fields) in a thread
    while this one goes on: for watch's command line (begin()) and nstrace.trace() (nstrace/api.py),
    each importing the tracer meanwhile. take() has the probes. Nothing if a load is under way.
    yield_cpu: this thread lowers its priority until the thread has attached (_MainYield)."""
    global _thread, _interval, _loading, _yield
    if _thread is not None:
        return
    # Every ctypes call gives up the GIL; taking it back waits out the main thread's
    # switch interval (5 ms by default) while it imports. The thread makes a few dozen such calls
    # between its load and its last attach: hand the GIL over sooner until it is done.
    _interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    _loading = _Flag()
    _yield = _MainYield() if yield_cpu else None
    _thread = _Thread(_load, (fields, seed))
    # The thread's Python (imports, plan, open) goes first, alone: taking turns on the GIL
    # with ours would only delay its load, which then runs in C and in the kernel's verifier
    # while this thread imports the rest.
    _loading.wait(1)
    if _yield:
        _yield.lower()


def _load(fields, seed=None):
    global _probes
    try:
        from . import features, privileges
        from .probeset import ProbeSet
        privileges.check_privileges()
        features.check_btf()
        probes = ProbeSet(**fields)
        try:
            probes.load(loading=_loading.set)
            if seed:  # COMMAND, held at its gate: it has no descendants yet
                probes.follow(seed)
            if "pid" not in fields or seed:  # --pid fills the descendant table first: start() attaches
                probes.attach()
        except BaseException:
            probes.close()
            raise
        _probes = probes
    except Exception:  # noqa: BLE001 - the command meets the same error itself, and reports it
        _probes = None
    finally:
        _loading.set()
        sys.setswitchinterval(_interval)
        if _yield:
            _yield.restore()


class _MainYield:
    """The main thread's lower priority while the thread loads and attaches (plain `watch`).

    With fewer CPUs than runnable threads (2 CPUs, a busy machine), the main
    thread importing the command line takes CPU time from the verifier's run,
    and tracing goes live later (bench: start-up, exec -> first event
    captured); what the main thread makes ready meanwhile (the table's header)
    can wait, the events wait in the ring buffer. Not with a COMMAND or --pid:
    their tracing waits for the main thread too. Lowered once the thread runs
    (a new thread inherits its creator's nice value), taken back by the thread
    when it is done, and only where it can be taken back (CAP_SYS_NICE,
    kernel/sys.c set_one_prio()).
    """

    def __init__(self):
        self._lock = threads.allocate_lock()
        self._tid = None    # the thread that yielded (lower())
        self._nice = None   # its nice value before
        self._over = False  # the thread is done: nothing to yield to

    def lower(self):
        """From the main thread, once the thread runs."""
        from . import privileges
        with self._lock:
            if self._over:
                return
            try:
                if privileges.effective_caps() >> privileges.CAP_SYS_NICE & 1:
                    nice = os.getpriority(os.PRIO_PROCESS, 0)  # 0: the calling thread (nice is per thread)
                    os.setpriority(os.PRIO_PROCESS, 0, min(nice + YIELD_NICE, 19))
                    self._tid, self._nice = threads.get_native_id(), nice
            except OSError:
                pass

    def restore(self):
        """From the thread, when it is done."""
        with self._lock:
            self._over = True
            if self._nice is not None:
                try:
                    os.setpriority(os.PRIO_PROCESS, self._tid, self._nice)
                except OSError:
                    pass
                self._nice = None


def take():
    """The preloaded ProbeSet (loaded, and attached unless --pid), once the thread is done; None if there is none."""
    global _thread, _probes
    if _thread is None:
        return None
    _thread.join()
    _thread = None
    probes, _probes = _probes, None
    return probes


def take_command():
    """The HeldCommand forked for `watch -- COMMAND`, if begin() forked one; None otherwise."""
    global _command
    held, _command = _command, None
    return held


def discard():
    """Close preloaded probes nobody took (the command failed before it started tracing), and let a
    held COMMAND nobody released exit unrun."""
    probes = take()
    if probes:
        probes.close()
    held = take_command()
    if held:
        held.cancel()
