"""Writing a session file (its format: session/format.py): the header, a line per record as it
arrives, and the end."""

import json
import os
import time
from importlib import metadata

from ..errors import WriteFailed
from ..linux import nsmap, trusted_paths
from ..linux.comm import safe_comm
from ..record import decode
from .format import VERSION


def nstrace_version():
    try:
        return metadata.version("nstrace")
    except metadata.PackageNotFoundError:
        return "unknown"


def _options_json(options):
    f = options.filter
    return {"trace_all": options.trace_all, "pid": options.pid, "comms": list(f.comms), "ops": list(f.ops),
            "types": list(f.types), "raw_addresses": options.raw_addresses, "check_proc": options.check_proc,
            "kernel_path": options.kernel_path}


class Recorder:
    """Writes one session file. Create it after ``tracer.start()``; ``write`` each record; ``close(summary)``.

    ``tracer`` gives the options and the probe availability; without one (a
    record-less session, tests) both are left empty. ``snapshots=False``
    skips the namespace maps (they read all of /proc; root sees everything).
    """

    def __init__(self, path, tracer=None, snapshots=True):
        self.path = str(path)
        self.count = 0
        self._cut = False  # a write failed: the last line may be a part of one
        self._snapshots = snapshots
        fd = trusted_paths.create_output(self.path, "session file ")  # never through another user's symlink
        # line-buffered: every record reaches the file as soon as it is written
        self._file = open(fd, "w", encoding="utf-8", buffering=1)
        # sethostname() takes any bytes (a container's root picks the UTS name): escaped as comms are
        uname = os.uname()
        text = lambda s: safe_comm(s.encode("utf-8", "surrogateescape"))  # noqa: E731
        header = {
            "nstrace_session": VERSION, "kind": "header", "nstrace": nstrace_version(),
            "started": time.time(), "host": text(uname.nodename),
            "kernel": {"sysname": text(uname.sysname), "release": text(uname.release),
                       "version": text(uname.version), "machine": text(uname.machine)},
            "options": _options_json(tracer.options) if tracer else {},
            "availability": tracer.availability() if tracer else [],
            # what decode.decode added to bpf_ktime_get_ns() in this process
            "clock": {"monotonic_to_wall_ns": decode.WALL_OFFSET_NS},
            "snapshot": nsmap.snapshot().to_json() if snapshots else None,
        }
        try:
            self._line(header)
        except OSError as e:  # a full disk, an I/O error: said as for any record that cannot be written
            try:
                self._file.close()
            except OSError:
                pass  # the same error again, flushing what did not fit
            raise WriteFailed(f"cannot write session file {self.path}: {e.strerror}") from None

    def _line(self, obj):
        try:
            self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        except OSError:
            # part of the line may be in the file: nothing may follow it, or its end would make a
            # file the reader refuses (a line in the middle that is not JSON)
            self._cut = True
            raise

    def write(self, record):
        """Append one :class:`~nstrace.record.model.Record`."""
        self._line(record.as_dict())
        self.count += 1

    def write_all(self, records):
        for rec in records:
            self.write(rec)
        return records

    def close(self, summary=None, seen_inside=None):
        """Write the end line (summary: Tracer.summary(); seen_inside: what a demo's processes saw
        from inside, check/demo.py) and close. Safe to call twice. A file a write failed in is closed
        as it is, without one: it reads as an interrupted recording."""
        if self._file is None:
            return
        if self._cut:
            try:
                self._file.close()
            except OSError:
                pass  # the same failure, flushing what did not fit
            self._file = None
            return
        try:
            end = {"nstrace_session": VERSION, "kind": "end", "ended": time.time(), "records": self.count,
                   "summary": summary, "snapshot": nsmap.snapshot().to_json() if self._snapshots else None}
            if seen_inside:
                end["seen_inside"] = seen_inside
            self._line(end)
        finally:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RecordingTracer:
    """A tracer whose every poll() is also written to a recorder.

    For code that polls a tracer it does not own (checker.run_scenario, demo):
    pass this in place of the tracer; everything else is the tracer's own.
    """

    def __init__(self, tracer, recorder):
        self._tracer, self._recorder = tracer, recorder

    def poll(self, *args, **kwargs):
        return self._recorder.write_all(self._tracer.poll(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._tracer, name)
