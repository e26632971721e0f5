"""The watch core: probes in, checked and filtered operation records out.

:class:`Tracer` owns one :class:`~nstrace.probeset.ProbeSet` (the BPF object,
its kernel-side options and attached probes, perhaps loaded by nstrace.preload),
reads records in batches, checks each against /proc as soon as it arrives and
applies the user-space filters. The CLI and the launcher both drive it;
neither touches libbpf.
"""

import collections
import ctypes
import dataclasses
import json
import os

from . import batch, events, filters, kernelpath, loader, probeset, procns
from . import flags as fl
from .errors import UsageError
from .probeset import BODY_PROGRAMS, SYSCALL_PROGRAMS, section_of  # noqa: F401 (the CLI's and tests' names)


@dataclasses.dataclass
class Options:
    """How to trace. Sizes in bytes, times in milliseconds."""

    trace_all: bool = False          # keep plain forks (clone without CLONE_NEW*)
    pid: int | None = None           # only this process and its descendants
    comms: tuple = ()                # only these command names
    ops: tuple = ()                  # only these operations
    types: tuple = ()                # only operations touching these namespace types
    raw_addresses: bool = False      # show kernel addresses instead of short ids
    check_proc: bool = True          # correlate with /proc/<pid>/ns
    kernel_path: bool = True         # add the kernel-function layer where the kernel allows it
    ringbuf_bytes: int = probeset.RINGBUF_BYTES  # power of two, >= page size
    wakeup_bytes: int = probeset.WAKEUP_BYTES    # batch reader wake-ups; 0 = one per record
    poll_ms: int = 50                # the reader's latency bound with batched wake-ups

    def validate(self):
        if self.pid is not None and self.pid <= 0:
            raise UsageError(f"--pid must be a positive process id, not {self.pid}")
        probeset.check_ringbuf_bytes(self.ringbuf_bytes)
        if len(self.comms) > batch.MAX_COMMS:
            raise UsageError(f"at most {batch.MAX_COMMS} --comm values, not {len(self.comms)}")
        for op in self.ops:
            if op not in fl.OPS:
                raise UsageError(f"unknown operation {op!r}: valid are {', '.join(fl.OPS)}")
        for t in self.types:
            if t not in fl.NS_TYPES:
                raise UsageError(f"unknown namespace type {t!r}: valid are {', '.join(fl.NS_TYPES)}")


class Tracer:
    """Trace namespace operations system-wide until closed.

    Use as a context manager; :meth:`poll` returns the next batch of
    :class:`~nstrace.events.Record`, already checked and filtered.
    """

    def __init__(self, options=None, object_path=loader.OBJECT_PATH):
        self.options = o = options or Options()
        self.options.validate()
        self.probes = probeset.ProbeSet(trace_all=o.trace_all, pid=o.pid, raw_addresses=o.raw_addresses,
                                        kernel_path=o.kernel_path, ringbuf_bytes=o.ringbuf_bytes,
                                        wakeup_bytes=o.wakeup_bytes, object_path=object_path)
        self._checked = collections.Counter()  # /proc check results, by status
        self._python_filtered = 0              # records C left to Python that a filter dropped
        self._python_superseded = 0
        self._counts = None                    # the batch's counters once it is closed
        self._batch = None
        self.last_read = 0                     # records the last poll took from the ring buffer
        self._final_lost = {"ringbuf": 0, "inflight": 0}

    @property
    def attached(self):
        """The syscall-layer programs attached."""
        return self.probes.attached

    @property
    def hooks(self):
        """kernelpath.Hook per kernel function: how it is probed here, or why not."""
        return self.probes.hooks

    @property
    def _obj(self):
        return self.probes.obj

    # --- set-up -----------------------------------------------------------

    def start(self):
        """Check the environment, load and attach; raise NstraceError on any failure."""
        loader.check_privileges()
        loader.check_btf()
        if self.options.pid is not None and not os.path.exists(f"/proc/{self.options.pid}"):
            raise UsageError(f"--pid {self.options.pid}: no such process")
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self):
        if not self._adopt_preloaded():
            self.probes.load()
        if not self.probes.attached:
            if self.options.pid:
                self._seed_tracked(self.options.pid)
            self.probes.attach()
        self._batch = batch.Batch(self._obj.map_fd("events"), self.options, inflight_fd=self._obj.map_fd("inflight"))

    def _adopt_preloaded(self):
        """Take the probes nstrace.preload loaded, if they are the ones these options ask for."""
        from . import preload
        pre = preload.take()
        if pre is None:
            return False
        if pre.planned != self.probes.settings(self.probes.plan()):  # plan(): from cache by now
            pre.close()  # guessed wrong: load the right one
            return False
        self.probes = pre
        return True

    def availability(self):
        """Every probe point: layer, hook type, attached or why not."""
        return self.probes.availability()

    def _seed_tracked(self, pid):
        import psutil
        try:
            pids = procns.descendants(pid)
        except psutil.NoSuchProcess:
            raise UsageError(f"--pid {pid}: no such process") from None
        one = ctypes.c_uint8(1)
        for p in pids:
            self._obj.map_update("tracked", ctypes.c_uint32(p), one)

    # --- reading ----------------------------------------------------------

    def poll(self, timeout_ms=None):
        """The next batch of records (possibly empty), checked against /proc and filtered."""
        states = self._read(timeout_ms)
        out = []
        for i, state in enumerate(states):
            if state != batch.FILTERED:
                rec = self._record(i, state)
                if rec:
                    out.append(rec)
        return out

    def poll_json(self, timeout_ms=None, limit=0):
        """poll() as JSON lines: (bytes-like, number of lines), at most `limit` lines (0: all).

        The same records and lines as poll() with display.json_line(), written
        by native/batch.c: Python only decodes the records it must check
        against /proc (each task's last in the batch) or that C leaves to it.
        """
        from . import display  # imported once tracing is live: start-up is measured to the first event
        states = self._read(timeout_ms)
        for i, state in enumerate(states):
            if state in (batch.CHECK, batch.PYTHON, batch.PYTHON | batch.LATER):
                rec = self._record(i, state)
                if state == batch.CHECK:
                    self._batch.set(i, json.dumps(rec.proc_check, separators=(",", ":")).encode())
                else:
                    self._batch.set(i, (display.json_line(rec) + "\n").encode() if rec else None)
        before = self._batch.counts.lines
        lines = self._batch.format(limit)
        return lines, self._batch.counts.lines - before

    def _read(self, timeout_ms):
        self.last_read = self._batch.poll(self.options.poll_ms if timeout_ms is None else timeout_ms)
        return self._batch.classify()

    def _record(self, i, state):
        """Record i of the batch, decoded, with its /proc check; None if a user-space filter drops it."""
        rec = events.decode(self._batch.raw(i), self.options.raw_addresses, kernelpath.decode_step)
        if state & ~batch.LATER == batch.PYTHON and not filters.wanted(rec, self.options):
            self._python_filtered += 1
            return None
        superseded = {"status": "superseded", "pid": rec.checked_tid}
        if state in (batch.SUPERSEDED, batch.PYTHON | batch.LATER):
            # The task moved to other namespaces later in this batch:
            # /proc shows where it went, so it is not read.
            rec.proc_check = superseded
            self._python_superseded += state != batch.SUPERSEDED
        elif state in (batch.CHECK, batch.PYTHON) and self.options.check_proc:
            rec.proc_check = self._check(rec)
            if rec.proc_check and rec.proc_check["status"] == "mismatch" and self._batch.moved_on(rec.checked_tid):
                # ... or after it, in a record not read yet or a syscall still running
                rec.proc_check = superseded
            if rec.proc_check:
                self._checked[rec.proc_check["status"]] += 1
        return rec

    @staticmethod
    def _check(rec):
        pid, tid, start_ns, expected, expected_ids = rec.checked_task
        return procns.check(pid, tid, start_ns, expected, expected_ids) if expected else None

    # --- accounting and teardown ------------------------------------------

    @property
    def lost(self):
        """Records the kernel could not hand over: {"ringbuf": n, "inflight": n}."""
        if not self._obj:
            return self._final_lost
        lost = {"ringbuf": self._obj.read_global(".bss", "lost_events"),
                "inflight": self._obj.read_global(".bss", "lost_inflight")}
        if self.options.pid:
            lost["untracked"] = self._obj.read_global(".bss", "lost_tracked")
        return lost

    def _batch_counts(self):
        if self._batch:
            c = self._batch.counts
            return {"by_op": list(c.by_op), "superseded": c.superseded, "filtered": c.filtered}
        return self._counts or {"by_op": [0] * 5, "superseded": 0, "filtered": 0}

    @property
    def by_op(self):
        """Records read, by operation (before filtering)."""
        by_op = self._batch_counts()["by_op"]
        return {events.OPS.get(num, "unknown"): n for num, n in enumerate(by_op) if n}

    @property
    def by_check(self):
        """/proc check results of the records shown, by status."""
        out = dict(self._checked)
        superseded = self._batch_counts()["superseded"] + self._python_superseded
        if superseded:
            out["superseded"] = out.get("superseded", 0) + superseded
        return out

    @property
    def filtered(self):
        """Records a --comm/--op/--type filter dropped."""
        return self._batch_counts()["filtered"] + self._python_filtered

    def summary(self):
        by_op = self.by_op
        return {"events": by_op, "total": sum(by_op.values()),
                "proc_check": self.by_check, "filtered": self.filtered, "lost": self.lost}

    def stop(self):
        """Detach every probe: the stream ends; what the ring buffer holds can still be read."""
        if self._obj:
            self._obj.detach_all()

    def close(self):
        if self._batch:
            self._counts = self._batch_counts()
            self._batch.close()
            self._batch = None
        if self._obj:
            self._final_lost = self.lost
            self.probes.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
