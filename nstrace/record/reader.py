"""Ring-buffer records in batches, and their JSON lines (native/batch.c).

libbpf hands each record to a sample callback. A Python callback costs
microseconds per record, so the callback is C: it copies records into a
batch. Per batch, the C side then says which records Python must look at
(a /proc check, or a record it does not format: non-ASCII comm, kernel-path
steps) and writes the JSON lines of all the others itself. What it says of
a record is a set of bits (:func:`states`) that this module reads from the
library, never copies. Python's decoder (:mod:`nstrace.record.decode`) stays the
reference: the C lines are byte-identical to :func:`nstrace.record.jsonline.json_line`
(tests/test_batch.py, tests/test_json_output.py).
"""

import ctypes
import errno
import os
import types

from ..bpf import libbpf
from ..errors import LibbpfError
from ..kernel import flags as fl
from . import decode, layout
from .filters import BatchFilter

# beside the BPF object, and found the same way (bpf/loader.py OBJECT_PATH): strings, not pathlib,
# whose import `watch -- COMMAND` would pay before its COMMAND runs (bench: short command)
LIB_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "_bpf", "libnstrace-batch.so")

CGROUPS, TARGETS = 0, 1  # native/batch.c enum batch_frag_table


class Tables(ctypes.Structure):
    _fields_ = [
        ("ops", ctypes.c_char_p * layout.OP_SLOTS),
        ("flag_names", ctypes.c_char_p * 64),
        ("flag_bits", ctypes.c_uint64 * 64),
        ("nflags", ctypes.c_uint32),
        ("entries", ctypes.c_char_p * layout.NS_SLOTS),
        ("entry_type_bit", ctypes.c_uint64 * layout.NS_SLOTS),
        ("errnos", ctypes.c_char_p * 256),
        ("signals", ctypes.c_char_p * 65),
        ("target_kinds", ctypes.c_char_p * 5),
        ("nstype_names", ctypes.c_char_p * 8),
        ("nstype_bits", ctypes.c_uint64 * 8),
        ("wall_offset_ns", ctypes.c_int64),
        ("raw_addresses", ctypes.c_uint32),
        ("op_nflags", ctypes.c_uint32 * layout.OP_SLOTS),
        ("op_flag_names", (ctypes.c_char_p * 64) * layout.OP_SLOTS),
        ("op_flag_bits", (ctypes.c_uint64 * 64) * layout.OP_SLOTS),
        ("op_nmakers", ctypes.c_uint32 * layout.OP_SLOTS),
        ("op_maker_flag", (ctypes.c_uint64 * 16) * layout.OP_SLOTS),
        ("op_maker_type", (ctypes.c_uint64 * 16) * layout.OP_SLOTS),
        ("contexts", ctypes.c_char_p * 8),
        ("holders", ctypes.c_char_p * 8),
    ]


class Counts(ctypes.Structure):
    _fields_ = [
        ("by_op", ctypes.c_uint64 * layout.OP_SLOTS),
        ("superseded", ctypes.c_uint64),
        ("filtered", ctypes.c_uint64),
        ("lines", ctypes.c_uint64),
    ]


def _js(text):
    """A JSON string literal for ASCII text (every table name is one)."""
    return ('"' + text + '"').encode()


def tables(raw_addresses=False):
    """struct batch_tables from the Python names: kernel/flags.py and record/layout.py stay the only lists."""
    t = Tables()
    for num, name in layout.OPS.items():
        t.ops[num] = _js(name)
    for i, (name, bit) in enumerate(fl.CLONE_FLAGS.items()):
        t.flag_names[i], t.flag_bits[i] = _js(name), bit
    t.nflags = len(fl.CLONE_FLAGS)
    for i, entry in enumerate(fl.NS_ENTRIES):
        t.entries[i] = _js(entry)
        t.entry_type_bit[i] = fl.CLONE_FLAGS[fl.NS_TYPES[fl.ns_type_of_entry(entry)]]
    for num, name in errno.errorcode.items():
        if 0 < num < 256:
            t.errnos[num] = _js(name)
    for num in range(1, 65):
        name = fl.exit_signal_name(num)
        t.signals[num] = _js(name) if name != str(num) else None
    for num, kind in layout.TARGET_KINDS.items():
        t.target_kinds[num] = _js(kind) if kind else None
    for i, (bit, ns) in enumerate(fl.NS_FLAG_VALUES.items()):
        t.nstype_names[i], t.nstype_bits[i] = _js(ns), bit
    t.wall_offset_ns = decode.WALL_OFFSET_NS
    t.raw_addresses = raw_addresses
    for num, name in layout.OPS.items():
        table = fl.flag_table(name)
        if table is not fl.CLONE_FLAGS:
            for i, (flag, bit) in enumerate(table.items()):
                t.op_flag_names[num][i], t.op_flag_bits[num][i] = _js(flag), bit
            t.op_nflags[num] = len(table)
        for i, (bit, ns) in enumerate(fl.ns_flags(name).items()):
            t.op_maker_flag[num][i], t.op_maker_type[num][i] = bit, fl.CLONE_FLAGS[fl.NS_TYPES[ns]]
        t.op_nmakers[num] = len(fl.ns_flags(name))
    for names, table in ((layout.CONTEXTS, t.contexts), (layout.HOLDERS, t.holders)):
        for num, name in names.items():
            table[num] = _js(name) if name else None
    return t


class _StateBit(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("bit", ctypes.c_uint8)]


_LIB = None
_STATES = None


def states():
    """The routing bits of batch_classify(), as native/batch.c defines them (batch_state_bits[]):
    PYTHON, CHECK, LATER, FILTERED; a record with none of them is C's own, proc_check null.

    Read from the library, never copied: the two sides cannot drift apart. Each
    is a bit of its own, and is tested as one (``state & PYTHON``): a record can
    be Python's and superseded at once.
    """
    global _STATES
    if _STATES is None:
        table = ctypes.cast(ctypes.addressof(_StateBit.in_dll(lib(), "batch_state_bits")), ctypes.POINTER(_StateBit))
        bits = {}
        for i in range(64):
            if not table[i].name:
                break
            bits[table[i].name.decode()] = table[i].bit
        _STATES = types.SimpleNamespace(**bits)
    return _STATES


def lib():
    global _LIB
    if _LIB is None:
        if not os.path.exists(LIB_PATH):
            raise LibbpfError(f"{LIB_PATH} is missing: build it with `make -C native`")
        so = ctypes.CDLL(LIB_PATH)
        for name, res, args in (
            ("batch_new", ctypes.c_void_p, [ctypes.c_uint32]),
            ("batch_free", None, [ctypes.c_void_p]),
            ("batch_sample", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]),
            ("batch_reset", None, [ctypes.c_void_p]),
            ("batch_count", ctypes.c_uint32, [ctypes.c_void_p]),
            ("batch_record", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]),
            ("batch_states", ctypes.POINTER(ctypes.c_uint8), [ctypes.c_void_p]),
            ("batch_counts", ctypes.POINTER(Counts), [ctypes.c_void_p]),
            ("batch_oom", ctypes.c_int, [ctypes.c_void_p]),
            ("batch_watch_ring", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_int,
                                                ctypes.c_uint32]),
            ("batch_moved_on", ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint32]),
            ("batch_in_flight", ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_uint32]),
            ("batch_set", None, [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint32]),
            ("batch_set_container", ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64,
                                                   ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint8]),
            ("batch_missing", ctypes.c_uint32, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8),
                                                ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint32]),
            ("batch_classify", ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(Tables),
                                              ctypes.POINTER(BatchFilter), ctypes.c_int]),
            ("batch_format", ctypes.c_long, [ctypes.c_void_p, ctypes.POINTER(Tables), ctypes.c_uint32,
                                             ctypes.POINTER(ctypes.c_void_p)]),
        ):
            fn = getattr(so, name)
            fn.restype, fn.argtypes = res, args
        _LIB = so
    return _LIB


class Batch:
    """One ring buffer's reader; each :meth:`poll` refills the batch.

    ``max_records`` bounds a batch (and the memory it holds: about 400 bytes
    a record, plus ~1.1 KiB of JSON each); the rest waits in the ring buffer
    for the next poll.
    """

    def __init__(self, map_fd, options, inflight_fd=-1, max_records=1024):
        self._lib = lib()
        self._max = max_records
        self._b = self._lib.batch_new(max_records)
        if not self._b:
            raise MemoryError("allocating the record batch")
        self._tables = tables(options.raw_addresses)
        self._filter = options.filter.to_c()
        self._check_proc = options.check_proc
        self._keep = []  # fragments handed to C live until the next poll
        self._keep_cgroups = []  # container texts by cgroup id: C keeps them as long as the reader
        self._missing_tables = (ctypes.c_uint8 * (2 * max_records))()
        self._missing_keys = (ctypes.c_uint64 * (2 * max_records))()
        cb = ctypes.cast(self._lib.batch_sample, libbpf.RING_BUFFER_SAMPLE_FN)
        self._cb = cb
        self._rb = libbpf.lib().ring_buffer__new(map_fd, cb, self._b, None)
        if not self._rb:
            self._lib.batch_free(self._b)
            self._b = None
            libbpf.check_ptr(None, "creating the ring buffer reader")
        self.n = 0
        if inflight_fd >= 0:
            err = self._lib.batch_watch_ring(self._b, map_fd, options.ringbuf_bytes, inflight_fd,
                                          ctypes.sizeof(layout.Event))
            if err:
                self.close()
                raise LibbpfError(f"mapping the ring buffer read-only: {errno.errorcode.get(-err, err)}")

    def moved_on(self, tid):
        """True if task tid moved to other namespaces after its last record read so far.

        For a /proc check that found other namespaces than the record: a
        record not read yet, or an unshare/setns in progress, explains it.
        """
        return bool(self._lib.batch_moved_on(self._b, tid))

    def fileno(self):
        """The reader's epoll fd: readable when the kernel wakes the reader (wakeup_bytes unread)."""
        return libbpf.lib().ring_buffer__epoll_fd(self._rb)

    def in_flight(self, tid):
        """The operation thread tid is inside now ("clone", "unshare" ...), None if none (or not traced)."""
        return layout.OPS.get(self._lib.batch_in_flight(self._b, tid))

    def poll(self, timeout_ms):
        """Wait up to timeout_ms, take up to max_records; return how many."""
        self._lib.batch_reset(self._b)
        self._keep = []
        rb = libbpf.lib()
        ret = rb.ring_buffer__poll(self._rb, timeout_ms)
        if ret >= 0 and self._lib.batch_count(self._b) < 1:
            # The BPF side may suppress wake-ups (wakeup_bytes): drain what is there.
            ret = rb.ring_buffer__consume(self._rb)
        if self._lib.batch_oom(self._b):
            raise MemoryError("copying ring-buffer records")
        if ret < 0 and ret not in (-errno.EINTR, -errno.E2BIG):
            libbpf.check(ret, "polling the ring buffer")
        self.n = self._lib.batch_count(self._b)
        return self.n

    def refill(self, records):
        """Hold these records (bytes each) instead of the ring buffer's: the differential
        tests drive every routing state with them. At most max_records."""
        if len(records) > self._max:
            raise ValueError(f"{len(records)} records: a batch holds {self._max}")
        self._lib.batch_reset(self._b)
        self._keep = []
        for raw in records:
            buf = ctypes.create_string_buffer(raw, len(raw))
            if self._lib.batch_sample(self._b, buf, len(raw)) == -errno.ENOMEM:
                raise MemoryError("copying records")
        self.n = self._lib.batch_count(self._b)
        return self.n

    def raw(self, i):
        """Record i as bytes (for the Python decoder)."""
        size = ctypes.c_uint32()
        ptr = self._lib.batch_record(self._b, i, ctypes.byref(size))
        return ctypes.string_at(ptr, size.value)

    def classify(self):
        """Every record's state (bits of :func:`states`), as bytes."""
        if self._lib.batch_classify(self._b, ctypes.byref(self._tables), ctypes.byref(self._filter),
                                 self._check_proc) < 0:
            raise MemoryError("classifying records")
        return ctypes.string_at(self._lib.batch_states(self._b), self.n)

    def missing(self):
        """[(table, key)] of this batch whose container text C does not have (CGROUPS, TARGETS)."""
        n = self._lib.batch_missing(self._b, self._missing_tables, self._missing_keys, 2 * self._max)
        return [(self._missing_tables[i], self._missing_keys[i]) for i in range(n)]

    def set_container(self, table, key, text, match):
        """C's container text for key (JSON bytes) and whether --container takes it. None: no
        text, the container is each caller's own (attribution.PER_TASK): C leaves the records
        of key to Python."""
        (self._keep_cgroups if table == CGROUPS else self._keep).append(text)
        if self._lib.batch_set_container(self._b, table, key, text, len(text or b""), match):
            raise MemoryError("container table")

    def set(self, i, fragment):
        """Python's part of record i: its line (PYTHON; None: filtered) or its proc_check JSON (CHECK)."""
        if fragment is not None:
            self._keep.append(fragment)
        self._lib.batch_set(self._b, i, fragment, len(fragment) if fragment else 0)

    def format(self, limit=0):
        """The JSON lines of up to `limit` shown records (0: all), as a memoryview valid until the next poll."""
        out = ctypes.c_void_p()
        n = self._lib.batch_format(self._b, ctypes.byref(self._tables), limit, ctypes.byref(out))
        if n < 0:
            raise MemoryError("formatting records")
        return memoryview((ctypes.c_char * n).from_address(out.value)) if n else memoryview(b"")

    @property
    def counts(self):
        return self._lib.batch_counts(self._b).contents

    def close(self):
        if self._rb:
            libbpf.lib().ring_buffer__free(self._rb)
            self._rb = None
        if self._b:
            self._lib.batch_free(self._b)
            self._b = None
