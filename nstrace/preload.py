"""`nstrace watch` loads and attaches its BPF object while Python is still importing the command line.

From exec, importing click and nstrace takes about 60 ms, and loading the
object another 30, most of it in the kernel's verifier. ctypes lets go of
the GIL for the length of bpf_object__load(), so a thread can load while
the main thread imports and parses. The thread guesses the options that
decide the object from argv, loads it and attaches it: tracing is live
before click is imported, and what happens meanwhile waits in the ring
buffer. Tracer.start() takes the object only if the options the command
line really parsed ask for the same one (Tracer._object_settings()), and
otherwise closes it, records and all, and loads again; a command line
that fails to parse closes it too (discard()). With --pid the thread only
loads: the descendant table must be filled before any probe runs.
"""

import threading

_thread = None
_tracer = None
_loading = threading.Event()  # the thread has reached the load (or given up)


def guess(args):
    """The Options fields that decide the object for the command line `args`, or None if it is not
    `watch` (or asks for help). A wrong guess only costs a second load."""
    if not args or args[0] != "watch":
        return None
    fields = {}
    rest = iter(args[1:])
    for arg in rest:
        name, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            return None
        if arg == "--all":
            fields["trace_all"] = True
        elif arg == "--raw-addresses":
            fields["raw_addresses"] = True
        elif name in ("--pid", "--buffer-kib"):
            try:
                number = int(value if eq else next(rest, ""))
            except ValueError:
                return None
            if name == "--pid":
                fields["pid"] = number
            else:
                fields["ringbuf_bytes"] = number * 1024
    return fields


def begin(args):
    """Start loading in a thread if `args` is a watch command line."""
    global _thread
    fields = guess(args)
    if fields is not None:
        _thread = threading.Thread(target=_load, args=(fields,), name="nstrace-preload")
        _thread.start()
        # The thread's Python (imports, plan, open) goes first, alone: taking turns on the GIL
        # with ours would only delay its load, which then runs in C and in the kernel's verifier
        # while this thread imports click and the command line.
        _loading.wait(1)


def _load(fields):
    global _tracer
    try:
        from .tracer import Options, Tracer
        # --pid must fill the descendant table before a probe runs: the main thread attaches that one
        _tracer = Tracer(Options(**fields)).preload(loading=_loading.set, attach="pid" not in fields)
    except Exception:  # noqa: BLE001 - the command meets the same error itself, and reports it
        _tracer = None
    finally:
        _loading.set()


def take():
    """The preloaded Tracer (loaded, and attached unless --pid), once the thread is done; None if there is none."""
    global _thread, _tracer
    if _thread is None:
        return None
    _thread.join()
    _thread = None
    tracer, _tracer = _tracer, None
    return tracer


def discard():
    """Close a preloaded object nobody took (the command failed before it started tracing)."""
    tracer = take()
    if tracer:
        tracer.close()
