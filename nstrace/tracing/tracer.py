"""The watch core: probes in, checked and filtered operation records out.

:class:`Tracer` owns one :class:`~nstrace.bpf.probeset.ProbeSet` (the BPF object,
its kernel-side options and attached probes, perhaps loaded by nstrace.bpf.preload),
reads records in batches, checks each against /proc as soon as it arrives and
applies the user-space filters. The CLI and the launcher both drive it;
neither touches libbpf.
"""

import collections
import ctypes
import dataclasses
import sys
import time

from ..bpf import features, privileges, probeset, teardown
from ..bpf.probeset import BODY_PROGRAMS, SYSCALL_PROGRAMS, section_of  # noqa: F401 (the CLI's and tests' names)
from ..errors import UsageError
from ..kernel import functions
from ..kernel.functions import PER_TYPE_DEATHS, TREE_DEATH
from ..linux import procns
from ..record import decode, filters, layout, reader
from ..study import callpath
from .attribution import BatchAttribution

# Why an operation makes no record on a kernel where its probes could not be attached (Tracer.unseen_ops)
UNSEEN = {
    "exec": "this kernel has no sched_prepare_exec tracepoint (6.10+), and no exec moves a task's namespaces "
            "before 6.12",
    "open_tree": "this kernel's open_tree() makes no mount namespace (OPEN_TREE_NAMESPACE is 7.x)",
    "fsmount": "this kernel's fsmount() makes no mount namespace (FSMOUNT_NAMESPACE is 7.x)",
    "free": "no function that frees a namespace can be hooked on this kernel (nstrace doctor says why)",
}


# How long a watch -- COMMAND waits, once COMMAND has exited, for the namespaces born in its trace to die
# (Tracer.end_deaths): a user namespace takes two RCU grace periods and a work item, so some grace periods,
# each followed by a moment for the callbacks and work queued at its end. Measured in 6.1 under QEMU (TCG)
# with a CPU kept busy: one or two such rounds (30-65 ms); ten leave room for callbacks queued behind
# others. A namespace that outlives COMMAND on purpose (a bind mount, a daemon) holds the end of the
# watch that long: ~0.25 s where a grace period takes 15 ms (measured on the build machines' 6.18).
AWAIT_GRACE_PERIODS = 10
AWAIT_AFTER_EACH_S = 0.01
AWAIT_DEATHS_S = 1.5


@dataclasses.dataclass
class Options:
    """How to trace. Sizes in bytes, times in milliseconds."""

    trace_all: bool = False          # keep plain forks (clone without CLONE_NEW*)
    pid: int | None = None           # only this process and its descendants
    filter: filters.Filter = filters.Filter()  # --comm, --op, --type, --container, --ns
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


class Tracer:
    """Trace namespace operations system-wide until closed.

    Use as a context manager; :meth:`poll` returns the next batch of
    :class:`~nstrace.record.model.Record`, already checked and filtered.
    """

    def __init__(self, options=None, object_path=None):
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
        self._states = b""                     # the routing state of each record of the batch
        self._st = None                        # reader.states(), once the library is loaded
        self.last_read = 0                     # records the last poll took from the ring buffer
        self._final_lost = {"ringbuf": 0, "inflight": 0}
        self._outlived = None                  # births left when end_deaths() took them
        # (CLOCK_MONOTONIC ns, events lost so far) before each read of the ring buffer: which
        # losses came after a record was made, and so may explain what /proc shows (_proc_check)
        self._lost_seen = collections.deque(maxlen=1024)
        self.pid_of_thread = None              # (tid, tgid) when --pid named a thread of tgid
        # records read after a poll's limit was reached (watch --count): not shown, and so not
        # counted with what was, nor as filtered or superseded
        self._unshown = {"by_op": collections.Counter(), "filtered": 0, "superseded": 0}
        self._attribution = None               # attribution.BatchAttribution, made with the reader

    @property
    def attached(self):
        """The syscall-layer programs attached."""
        return self.probes.attached

    @property
    def hooks(self):
        """kernel.hooks.Hook per kernel function: how it is probed here, or why not."""
        return self.probes.hooks

    @property
    def _obj(self):
        return self.probes.obj

    # --- set-up -----------------------------------------------------------

    def start(self):
        """Check the environment, load and attach; raise NstraceError on any failure."""
        privileges.check_privileges()
        features.check_btf()
        if self.options.pid is not None:
            self._resolve_pid()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _resolve_pid(self):
        """--pid names a process; a thread id means that thread's process.

        The kernel side follows processes (probes/syscalls.bpf.c keys its
        table by tgid), and /proc/<tid> exists for every thread, though no
        listing shows it: a thread id taken as it is would trace nothing.
        """
        tid = self.options.pid
        tgid = procns.tgid_of(tid)
        if tgid is None:
            raise UsageError(f"--pid {tid}: no such process")
        if tgid != tid:
            self.pid_of_thread = (tid, tgid)
            self.options.pid = self.probes.pid = tgid

    def _setup(self):
        if not self._adopt_preloaded():
            self.probes.load()
        if not self.probes.attached:
            if self.options.pid:
                self._seed_tracked(self.options.pid)
            self.probes.attach()
        self._batch = reader.Batch(self._obj.map_fd("events"), self.options, inflight_fd=self._obj.map_fd("inflight"))
        self._attribution = BatchAttribution(self.options)
        self._st = reader.states()

    def _adopt_preloaded(self):
        """Take the probes nstrace.bpf.preload loaded, if they are the ones these options ask for."""
        from ..bpf import preload
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

    def unseen_ops(self):
        """{op: why} for each --op value no record of which can come from the probes attached here."""
        attached = set(self.probes.attached)
        unseen = {"exec": not attached.issuperset(probeset.EXEC_PROGRAMS),
                  "open_tree": not attached.issuperset(probeset.OPEN_TREE_PROGRAMS),
                  "fsmount": not attached.issuperset(probeset.FSMOUNT_PROGRAMS),
                  "free": not any(h.attached and h.func in (TREE_DEATH, *PER_TYPE_DEATHS) for h in self.hooks)}
        return {op: UNSEEN[op] for op in self.options.filter.ops if unseen.get(op)}

    def _seed_tracked(self, pid):
        try:
            pids = procns.descendants(pid)
        except ProcessLookupError:
            raise UsageError(f"--pid {pid}: no such process") from None
        one = ctypes.c_uint8(1)
        for p in pids:
            self._obj.map_update("tracked", ctypes.c_uint32(p), one)

    # --- reading ----------------------------------------------------------

    def poll(self, timeout_ms=None, limit=0):
        """The next batch of records (possibly empty), checked against /proc and filtered; at most
        `limit` (0: all), the rest of the batch counted as unshown."""
        self._read(timeout_ms)
        return self.records(limit)

    def poll_json(self, timeout_ms=None, limit=0):
        """poll() as JSON lines: (bytes-like, number of lines), at most `limit` lines (0: all)."""
        self._read(timeout_ms)
        return self.json_lines(limit)

    def _read(self, timeout_ms):
        self._lost_seen.append((time.monotonic_ns(), self._lost_total()))
        self.last_read = self._batch.poll(self.options.poll_ms if timeout_ms is None else timeout_ms)
        self._attribution.resolve(self._batch)
        self._states = self._batch.classify()

    def replay(self, records):
        """Take these records (bytes each) as the batch, instead of the ring buffer's; then
        records() or json_lines() as after a poll. The differential tests drive every routing
        state through both writers so."""
        self._batch.refill(records)
        self._attribution.resolve(self._batch)
        self._states = self._batch.classify()

    def records(self, limit=0):
        """The batch read last, as Records: decoded, checked and filtered in Python (the reference);
        at most `limit` (0: all)."""
        out = []
        for i, state in enumerate(self._states):
            if limit and len(out) == limit:
                self._unshow(i)
                break
            if not state & self._st.FILTERED:
                rec = self._record(i, state)
                if rec:
                    out.append(rec)
        return out

    def json_lines(self, limit=0):
        """The batch read last as JSON lines: the lines of records() by jsonline.json_line(), but
        written by native/batch.c. Python decodes only the records it must check against /proc
        (each task's last in the batch) and those C leaves to it (PYTHON: it writes their lines).
        At most `limit` lines (0: all): batch_format() writes the same first ones that were counted here."""
        from ..record import (
            jsonline,  # imported once tracing is live: start-up is measured to the first event
        )
        st = self._st
        shown = 0
        for i, state in enumerate(self._states):
            if limit and shown == limit:
                self._unshow(i)
                break
            if state & st.PYTHON:
                rec = self._record(i, state)
                self._batch.set(i, (jsonline.json_line(rec) + "\n").encode() if rec else None)
                shown += rec is not None
            elif not state & st.FILTERED:
                if state & st.CHECK:
                    rec = self._record(i, state)
                    self._batch.set(i, jsonline.json_value(rec.proc_check).encode())
                shown += 1
        before = self._batch.counts.lines
        lines = self._batch.format(limit)
        return lines, self._batch.counts.lines - before

    def _unshow(self, first):
        """Records first.. of the batch are read but not shown: take them out of what C counted
        for them (batch_classify(): every record by op; filtered; superseded, if not Python's)."""
        st, unshown = self._st, self._unshown
        offset, size = layout.EventHead.op.offset, layout.EventHead.op.size
        for i in range(first, len(self._states)):
            state = self._states[i]
            op = int.from_bytes(self._batch.raw(i)[offset:offset + size], sys.byteorder)
            unshown["by_op"][op if op < layout.OP_SLOTS else 0] += 1  # as C counts an op it does not know
            unshown["filtered"] += bool(state & st.FILTERED)
            unshown["superseded"] += bool(state & st.LATER and not state & (st.FILTERED | st.PYTHON))

    def _record(self, i, state):
        """Record i of the batch, decoded, with its /proc check; None if a user-space filter drops it."""
        st = self._st
        rec = callpath.annotate(decode.decode(self._batch.raw(i), self.options.raw_addresses))
        self._attribution.fill(rec)
        if state & st.PYTHON and not self.options.filter.wanted(rec):
            self._python_filtered += 1
            return None
        if state & st.LATER:
            # The task moved to other namespaces later in this batch:
            # /proc shows where it went, so it is not read.
            rec.proc_check = {"status": "superseded", "pid": rec.checked_tid}
            self._python_superseded += bool(state & st.PYTHON)
        elif state & st.CHECK:
            rec.proc_check = self._proc_check(rec)
            if rec.proc_check:
                self._checked[rec.proc_check["status"]] += 1
        return rec

    def _proc_check(self, rec):
        """The record against /proc now (procns.check), and what explains a difference, if anything."""
        pid, tid, start_ns, expected, expected_ids = rec.checked_task
        if not expected:
            return None
        res = procns.check(pid, tid, start_ns, expected, expected_ids, changed=rec.changed)
        if res["status"] != "mismatch":
            return res
        if self._batch.moved_on(tid):
            # it moved after this batch: in a record not read yet, or a syscall still running
            return {"status": "superseded", "pid": tid}
        if self._lost_since(rec):
            # Only a task itself changes its namespaces (switch_task_namespaces() is called on
            # current: kernel/nsproxy.c, kernel/exit.c, 6.18), so its next unshare or setns moved it,
            # and no record of it came: lost events explain the difference, not a fault of this record.
            return {**res, "status": "superseded", "reason": "lost events"}
        return res

    def _lost_since(self, rec):
        """How many events were lost since rec's syscall began, up to now (its /proc read by then).

        The reference is the count read before the last ring-buffer read that
        came before the syscall's entry (both clocks CLOCK_MONOTONIC:
        bpf_ktime_get_ns(); a clone's child may act before its parent's
        clone returns). The record holds its times in wall-clock microseconds:
        a millisecond of margin takes the reference earlier, never later. A
        record older than every reading kept is measured against no loss at
        all. So a loss is at worst counted as too recent, never missed.
        """
        entered = round((rec.ts - rec.duration_us / 1e6) * 1e9) - decode.WALL_OFFSET_NS - 1_000_000
        before = 0
        for at, lost in reversed(self._lost_seen):
            if at <= entered:
                before = lost
                break
        return self._lost_total() - before

    # --- accounting and teardown ------------------------------------------

    def _lost_total(self):
        obj = self._obj
        if not obj or not obj.loaded:
            return 0
        return obj.read_global(".bss", "lost_events") + obj.read_global(".bss", "lost_inflight")

    @property
    def lost(self):
        """Records the kernel could not hand over: {"ringbuf": n, "inflight": n}."""
        if not self._obj or not self._obj.loaded:
            return self._final_lost
        lost = {"ringbuf": self._obj.read_global(".bss", "lost_events"),
                "inflight": self._obj.read_global(".bss", "lost_inflight")}
        if self.options.pid:
            lost["untracked"] = self._obj.read_global(".bss", "lost_tracked")
        return lost

    def _batch_counts(self):
        if self._batch:
            c, cut = self._batch.counts, self._unshown
            return {"by_op": [n - cut["by_op"][op] for op, n in enumerate(c.by_op)],
                    "superseded": c.superseded - cut["superseded"], "filtered": c.filtered - cut["filtered"]}
        return self._counts or {"by_op": [0] * layout.OP_SLOTS, "superseded": 0, "filtered": 0}

    @property
    def by_op(self):
        """Records read and shown or filtered, by operation: all read but the unshown."""
        by_op = self._batch_counts()["by_op"]
        return {layout.OPS.get(num, "unknown"): n for num, n in enumerate(by_op) if n}

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

    @property
    def unshown(self):
        """Records read after a poll's limit was reached (watch --count): neither shown nor filtered."""
        return sum(self._unshown["by_op"].values())

    def summary(self):
        """total: the records shown, and those a filter dropped (filtered says how many); unshown:
        read beyond that, after --count was reached."""
        by_op = self.by_op
        out = {"events": by_op, "total": sum(by_op.values()), "unshown": self.unshown,
               "proc_check": self.by_check, "filtered": self.filtered, "lost": self.lost}
        if self._deaths_seen():
            out["outlived"] = self.outlived()
        return out

    def outlived(self):
        """Namespaces whose birth the trace saw and whose death it has not: the births table of
        probes/kfuncs.bpf.c, whose entries leave at each death record; fixed once end_deaths() took them."""
        if self._outlived is not None or not self._obj or not self._obj.loaded:
            return self._outlived or 0
        return len(self._obj.map_keys("births", ctypes.c_uint64))

    def end_deaths(self, wait=False):
        """No death record after this; the births left are counted as outlived. With `wait`, first up
        to AWAIT_GRACE_PERIODS RCU grace periods (AWAIT_DEATHS_S at most) for them to die, once the
        trace's processes are gone: a pid namespace is freed in an RCU callback after its last pid is
        (kernel/pid_namespace.c destroy_pid_namespace(), kernel/pid.c free_pid()), a user namespace when
        the cred of its last task is, a grace period after that task is reaped and another after
        (kernel/exit.c delayed_put_task_struct(), kernel/cred.c __put_cred(); 5.10.262 and 6.1.192).

        Each birth is taken once, by the death that records it (ns_dies() deletes it) or here: a death
        after this finds none and, with no followed process left to drop it, makes no record. So a
        death is either a record read before the end or counted, never both, never neither. Without
        --pid, any death is a record: only call this once the probes are detached (stop()) or closing.
        """
        if self._outlived is not None or not self._deaths_seen() or not self._obj or not self._obj.loaded:
            return
        if wait:
            self._await_deaths()
        births = self._obj.map_keys("births", ctypes.c_uint64)
        self._outlived = sum(self._obj.map_delete("births", key) for key in births)

    def _await_deaths(self):
        from ..linux import syscalls
        deadline = time.monotonic() + AWAIT_DEATHS_S
        for _ in range(AWAIT_GRACE_PERIODS):
            if not self.outlived() or time.monotonic() > deadline:
                return
            if not syscalls.rcu_grace_period():
                time.sleep(AWAIT_AFTER_EACH_S)  # nohz_full: time alone
            time.sleep(AWAIT_AFTER_EACH_S)

    def _deaths_seen(self):
        return bool(functions.types_seen_dying({h.func for h in self.hooks if h.attached}))

    def fileno(self):
        """For poll(): readable when the ring buffer wakes its reader (records may also wait
        unannounced, below the wake-up threshold: poll() takes those)."""
        return self._batch.fileno()

    def unfollow(self):
        """--pid and watch -- COMMAND: follow no process any more (no record begins after this);
        returns the pids that were still followed: alive, and not traced from here on."""
        return self.probes.unfollow_all() if self._obj and self.options.pid else []

    def stop(self):
        """Detach every probe: the stream ends; what the ring buffer holds can still be read."""
        if self._obj:
            self._obj.detach_all()

    def close(self, background=False):
        """Detach and free everything. background: the stream has ended otherwise (unfollow(), the
        ring buffer read): the kernel's slow part of detaching goes on in a holder process, at once,
        while nstrace exits or waits on (bpf/teardown)."""
        holder = None
        if background and self._obj and self._obj.loaded:
            holder = teardown.hand_over(self._obj.link_fds())
        try:
            if self._batch:
                self._counts = self._batch_counts()
                self._batch.close()
                self._batch = None
            if self._obj:
                self._final_lost = self.lost
                self.end_deaths()
                self.probes.close()
        finally:
            if holder:
                holder.let_go()  # ours are closed: the holder's exit detaches now, not at ours

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
