"""native/batch.c against the Python decoder, on records of real namespace operations.

`watch --json` lines are written by C (nstrace/record/reader.py); decode.decode() +
jsonline.json_line() are the reference. Every record of a full `nstrace check`
run (42 scenarios: every type, every operation, failures, setns by nsfs and
pidfd) plus processes with awkward names must come out byte for byte the
same, and the C filters must drop exactly what Filter.wanted() drops, for the filters a user
can give and no other (their limits are the library's own).
"""

import ctypes
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nshelpers import NSTRACE, ROOT
from test_json_output import replayer, setns_callers, with_containers
from test_layout import native_btf  # noqa: F401 (the fixture)

from nstrace.bpf import btf, libbpf
from nstrace.errors import UsageError
from nstrace.kernel import flags as fl
from nstrace.record import decode, filters, jsonline, layout, reader
from nstrace.record.filters import Filter, Ns
from nstrace.study import callpath
from nstrace.tracing.tracer import Options, Tracer

pytestmark = pytest.mark.root("loads BPF programs into the kernel")

# Names a process may give itself (prctl PR_SET_NAME, 15 bytes): JSON and
# terminal escapes, UTF-8 and bytes that are not UTF-8.
COMMS = [b'q"uote', b"back\\slash", b"tab\there", b"\xc3\xbctf8-\xc3\xb1", b"\xff\xfe-bad", b"esc\x1b[31m",
         b"del\x7f", b"plain-name"]

UNSHARE_AS = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, bytes.fromhex(sys.argv[1]), 0, 0, 0)   # PR_SET_NAME
sys.exit(libc.unshare(0x04000000))                     # CLONE_NEWUTS
"""


# Enough of the catalogue for every operation, setns by nsfs fd and by pidfd, and a failure:
# the whole of it (42 scenarios) runs once, with short ids.
SOME_SCENARIOS = ["clone-uts", "clone3-pid", "unshare-net", "setns-ipc", "setns-pidfd", "fail-wrong-nstype"]


def make_records(scenarios=()):
    """Namespace operations of every kind, made by other processes."""
    for comm in COMMS:
        subprocess.run([sys.executable, "-c", UNSHARE_AS, comm.hex()], check=True)
    subprocess.run([str(NSTRACE), "check", *scenarios], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def collect(tracer, maker):
    """[(records' raw bytes, states, C lines)] per batch, read while `maker` runs, and a little after."""
    worker = threading.Thread(target=maker)
    worker.start()
    batches, done_at = [], None
    while done_at is None or time.monotonic() - done_at < 0.5:
        lines, _ = tracer.poll_json(20)
        b = tracer._batch
        if b.n:
            # the states batch_format used (classify() again would count twice)
            states = ctypes.string_at(b._lib.batch_states(b._b), b.n)
            batches.append(([b.raw(i) for i in range(b.n)], states, bytes(lines).decode().splitlines()))
        if done_at is None and not worker.is_alive():
            done_at = time.monotonic()
    worker.join()
    assert not sum(tracer.lost.values()), tracer.lost
    return batches


@pytest.fixture(scope="module")
def catalogue():
    """The whole catalogue and the awkward names, traced with short ids."""
    with Tracer(Options(poll_ms=20)) as t:
        yield t, collect(t, make_records), False


@pytest.fixture(scope="module")
def raw_addressed():
    """Some of the catalogue, with --raw-addresses (the object is loaded so: its own records)."""
    with Tracer(Options(raw_addresses=True, poll_ms=20)) as t:
        yield t, collect(t, lambda: make_records(SOME_SCENARIOS)), True


@pytest.fixture(params=["catalogue", "raw_addressed"], ids=["short-ids", "raw-addresses"])
def traced(request):
    return request.getfixturevalue(request.param)


S = reader.states()


def test_routing_states_are_the_librarys_bits():
    """Read from native/batch.c's batch_state_bits[]: four bits of their own, each tested alone."""
    bits = vars(reader.states())
    assert set(bits) == {"PYTHON", "CHECK", "LATER", "FILTERED"}
    assert all(v and not v & (v - 1) for v in bits.values()) and len(set(bits.values())) == 4


def test_c_lines_are_the_python_lines(traced):
    tracer, batches, raw_addresses = traced
    seen_ops, via = set(), {"c": 0, "python": 0}
    for raws, states, lines in batches:
        shown = [(raw, st) for raw, st in zip(raws, states) if not st & S.FILTERED]
        assert len(lines) == len(shown)
        entered = setns_callers([callpath.annotate(decode.decode(raw, raw_addresses)) for raw in raws])
        for (raw, state), line in zip(shown, lines):
            rec = with_containers(callpath.annotate(decode.decode(raw, raw_addresses)), entered)
            c = json.loads(line)
            # /proc was read once, by Python; the rest of the line is C's own
            rec.proc_check = c["proc_check"]
            if state & S.LATER:
                assert c["proc_check"] == {"status": "superseded", "pid": rec.checked_tid}
            assert line == jsonline.json_line(rec), f"state {state}"
            via["python" if state & S.PYTHON else "c"] += 1
            seen_ops.add(rec.op)
            if rec.op == "setns" and rec.target["kind"] in ("nsfs", "pidfd"):
                seen_ops.add("setns-" + rec.target["kind"])
            if rec.errno:
                seen_ops.add("error")
    assert seen_ops >= {"clone", "clone3", "unshare", "setns", "setns-nsfs", "setns-pidfd", "error"}
    assert via["c"] > (5 if raw_addresses else 50) and via["python"] >= sum(not _plain(c) for c in COMMS), via


def test_python_gets_what_c_does_not_format(traced):
    """Non-ASCII, control characters and backslashes go to Python; a plain or quoted name does not."""
    _, batches, _ = traced
    state_of = {}
    for raws, states, _ in batches:
        for raw, st in zip(raws, states):
            ev = layout.EventHead.from_buffer_copy(raw)
            if ev.comm in COMMS and ev.op == 3:
                state_of[ev.comm] = st
    assert set(state_of) == set(COMMS)
    for comm, st in state_of.items():
        assert (not st & S.PYTHON) == _plain(comm), comm


def _plain(comm):
    return all(0x20 <= c < 0x7f for c in comm) and b"\\" not in comm


def test_a_cgroup_without_text_is_left_to_python(catalogue):
    """A cgroup id whose container is per task (cgroup v1, attribution.PER_TASK) has no text in C's
    table: C neither writes nor filters its records, and does not ask for it again."""
    tracer, batches, _ = catalogue
    t = replayer(tracer, Options(filter=Filter(containers=("f" * 12,))))
    raws = [raw for raws, states, _ in batches for raw, st in zip(raws, states) if not st & S.PYTHON][:20]
    assert raws
    t._batch.refill(raws)
    t._attribution.resolve(t._batch)
    assert not any(st & S.PYTHON for st in t._batch.classify())  # C's own: written, or filtered by it
    cgroups = {layout.EventHead.from_buffer_copy(raw).cgroup_id for raw in raws}
    for cgroup_id in cgroups:
        t._batch.set_container(reader.CGROUPS, cgroup_id, None, 0)
    assert all(st & S.PYTHON and not st & S.FILTERED for st in t._batch.classify())
    assert not [key for table, key in t._batch.missing() if table == reader.CGROUPS]
    t._batch.close()


FILTERS = [
    {"ops": ("setns",)},
    {"ops": ("clone", "clone3")},
    {"types": ("pid",)},
    {"types": ("time", "user")},
    {"comms": ("plain-name", 'q"uote')},
    {"comms": ("ip",), "ops": ("unshare",), "types": ("net",)},
]


@pytest.mark.parametrize("spec", FILTERS, ids=lambda s: ",".join(f"{k}={'|'.join(v)}" for k, v in s.items()))
def test_c_filter_is_filters_wanted(catalogue, spec):
    _same_filter(catalogue, spec)


@pytest.mark.parametrize("by", ["inode", "ns_id", "two", "target"])
def test_c_ns_filter_is_filters_wanted(catalogue, by):
    """--ns: namespaces the catalogue made (by type:inode, by ns_id, two at once) and one a setns
    entered, each involved in a few records (before, after, target) and not in the rest."""
    _, batches, raw_addresses = catalogue
    recs = [decode.decode(raw, raw_addresses) for raws, _, _ in batches for raw in raws]
    made = [r for r in recs if r.op == "unshare" and r.ok and "uts" in r.changed]
    nets = [r for r in recs if r.op in ("clone", "clone3") and r.ok and "net" in r.changed]
    entered = [r for r in recs if r.op == "setns" and r.ok and (r.target or {}).get("kind") == "nsfs"]
    assert made and nets and entered
    uts = Ns("uts", made[0].ns_after["uts"], None)
    if by == "inode":
        spec = (uts,)
    elif by == "ns_id":
        ns_id = made[0].ns_id_after["uts"]
        if not ns_id:
            pytest.skip("this kernel has no ns_common.ns_id (6.18+): no ids to filter by")
        spec = (Ns(None, None, ns_id),)
    elif by == "two":
        spec = (uts, Ns("net", nets[0].ns_after["net"], None))
    else:
        spec = (Ns(entered[0].target["type"], entered[0].target["inode"], None),)
    _same_filter(catalogue, {"namespaces": spec})


def _same_filter(catalogue, spec):
    tracer, batches, raw_addresses = catalogue
    options = Options(filter=Filter(**spec))
    kept = dropped = 0
    # a reader with these options: the same records, each its own batch, classified again
    t = replayer(tracer, options)
    for raws, _, _ in batches:
        for raw in raws:
            t.replay([raw])
            st = t._states[0]
            rec = callpath.annotate(decode.decode(raw, raw_addresses))
            t._attribution.fill(rec)
            if st & S.PYTHON:
                assert not st & S.FILTERED  # Python filters those itself, with Filter.wanted()
                continue
            assert (not st & S.FILTERED) == options.filter.wanted(rec), (spec, rec.op, rec.comm, rec.changed)
            kept += not st & S.FILTERED
            dropped += bool(st & S.FILTERED)
    assert kept and dropped, (kept, dropped)


# --- the filter's values at their edges: what C and Python can hold --------------------------------

class _BtfArray(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32), ("nelems", ctypes.c_uint32)]


BTF_KIND_ARRAY = 3


def _dims(handle, struct_name, member):
    """The array dimensions of a struct member, outermost first, as the library's BTF has them."""
    t = btf._type(handle, btf._find(handle, struct_name, libbpf.BTF_KIND_STRUCT))
    members = ctypes.cast(ctypes.addressof(t) + ctypes.sizeof(libbpf.BtfType),
                          ctypes.POINTER(libbpf.BtfMember * t.vlen)).contents
    type_id = next(m.type for m in members if btf._name(handle, m.name_off) == member)
    dims = []
    while (t := btf._type(handle, type_id)).kind == BTF_KIND_ARRAY:
        array = _BtfArray.from_address(ctypes.addressof(t) + ctypes.sizeof(libbpf.BtfType))
        dims.append(array.nelems)
        type_id = array.type
    return dims


def test_the_filters_limits_are_the_librarys(native_btf):  # noqa: F811
    """filters.py refuses what struct batch_filter cannot hold: its limits are the compiled library's
    (BATCH_MAX_COMMS names as wide as a record's comm, BATCH_MAX_NS namespaces), not copies that may drift."""
    # pahole writes a two-dimensional array as one: its rows are as wide as the record's comm (batch.c
    # takes sizeof that, and tests/test_layout.py holds layout.Event.comm to the object's BTF)
    assert _dims(native_btf, "batch_filter", "comms") == [filters.MAX_COMMS * filters.COMM_WIDTH]
    for member in ("ns_type_bit", "ns_inum", "ns_id"):
        assert _dims(native_btf, "batch_filter", member) == [filters.MAX_NS], member
    assert _dims(native_btf, "batch_tables", "ops") == [layout.OP_SLOTS] and len(filters.OPS) < 32  # ops_mask
    Filter(comms=("c",) * filters.MAX_COMMS, namespaces=[Ns(None, None, 1)] * filters.MAX_NS)
    with pytest.raises(UsageError, match="at most 16 --comm"):
        Filter(comms=("c",) * (filters.MAX_COMMS + 1))
    with pytest.raises(UsageError, match="at most 16 --ns"):
        Filter(namespaces=[Ns(None, None, 1)] * (filters.MAX_NS + 1))


U32, U64 = 2**32 - 1, 2**64 - 1
# Records whose namespaces sit at the edges of what a record holds, and at what a value one past them
# would become if it were cut to the record's width (2**64 + 3 -> 3, 2**32 + 5 -> 5)
EDGE_IDS = (3, 5, U32, 2**32, U64 - 1, U64)
EDGE_INODES = (1, 3, 5, U32 - 1, U32)
# What a user can type: in range, at the edges, just past them, far past them
TYPED_IDS = (0, 1, 3, 5, U32, 2**32, 2**32 + 5, 2**63, U64 - 1, U64, 2**64, 2**64 + 3, 2**64 + 5, 2**65 + 3, 10**40)
TYPED_INODES = (0, 1, 3, 5, U32 - 1, U32, 2**32, 2**32 + 3, 2**32 + 5, 2**64 + 3, 10**40)


def _edge_records(catalogue):
    """unshare(CLONE_NEWUTS) and setns records of a plain name, their uts namespace moved to the edges."""
    _, batches, _ = catalogue
    uts = fl.NS_ENTRIES.index("uts")
    base = next(raw for raws, _, _ in batches for raw in raws
                if layout.OPS[layout.EventHead.from_buffer_copy(raw).op] == "unshare")
    out = []
    for ns_id, inode in zip(EDGE_IDS, EDGE_INODES * 2):
        ev = layout.EventHead.from_buffer_copy(base)
        ev.comm, ev.nsteps = b"edge-values", 0
        for ns_set in (ev.before, ev.after):  # every other namespace far from the values tried
            for slot in range(layout.NS_SLOTS):
                ns_set.inum[slot] = ns_set.ns_id[slot] = 1000 + slot
        ev.after.ns_id[uts], ev.after.inum[uts] = ns_id, inode
        out.append(bytes(ev))
        ev.op = next(num for num, name in layout.OPS.items() if name == "setns")
        ev.target_kind, ev.target_nstype = 1, fl.CLONE_FLAGS["CLONE_NEWUTS"]  # TARGET_NSFS
        ev.target_inum, ev.target_ns_id = inode, ns_id
        ev.before = ev.after
        out.append(bytes(ev))
    return out


def _kept(catalogue, filt, raws):
    """[(C keeps it, Python keeps it)] for each record of raws, all of which C decides."""
    tracer, _, raw_addresses = catalogue
    t = replayer(tracer, Options(filter=filt))
    try:
        out = []
        for start in range(0, len(raws), 1024):
            chunk = raws[start:start + 1024]
            t.replay(chunk)
            for raw, state in zip(chunk, t._states):
                if state & S.PYTHON:
                    continue
                rec = callpath.annotate(decode.decode(raw, raw_addresses))
                t._attribution.fill(rec)
                out.append((not state & S.FILTERED, filt.wanted(rec)))
        return out
    finally:
        t._batch.close()


@pytest.mark.parametrize("value", [f"{n}" for n in TYPED_IDS] + [f"uts:{n}" for n in TYPED_INODES] +
                         [f"uts:[{n}]" for n in (U32, 2**32)])
def test_edge_values_are_refused_or_filtered_alike(catalogue, value):
    """An --ns value a record cannot hold is refused (2**64 + 3 was cut to 3 in C and matched ns_id 3,
    while Python matched nothing); every other one keeps the same records in C and in Python."""
    number = int(value.strip("uts:[]"))
    limit = U32 if value.startswith("uts") else U64
    try:
        filt = Filter.parse(ns=(value,))
    except UsageError as e:
        assert not 0 < number <= limit, e
        assert f"1 to {limit}" in str(e)
        return
    raws = _edge_records(catalogue)
    kept = _kept(catalogue, filt, raws)
    assert len(kept) == len(raws)
    assert [c for c, _ in kept] == [py for _, py in kept], value
    assert any(c for c, _ in kept) == (number in (EDGE_INODES if value.startswith("uts") else EDGE_IDS))
    assert 0 < number <= limit


def _catalogue_values(catalogue):
    """The comms and namespaces of the catalogue's records: values a filter finds something with."""
    _, batches, raw_addresses = catalogue
    comms, namespaces = set(), set()
    for raws, _, _ in batches:
        for raw in raws:
            rec = decode.decode(raw, raw_addresses)
            comms.add(rec.comm)
            for entry, inode in (rec.ns_after or {}).items():
                if inode:
                    namespaces.add(Ns(fl.ns_type_of_entry(entry), inode, None))
            namespaces |= {Ns(None, None, ns_id) for ns_id in (rec.ns_id_after or {}).values() if ns_id}
    return sorted(comms), sorted(namespaces, key=str)


@pytest.fixture(scope="module")
def catalogue_values(catalogue):
    return _catalogue_values(catalogue)


@st.composite
def _filters(draw, values):
    comms, namespaces = values
    any_ns = st.one_of(st.sampled_from(namespaces),
                       st.builds(Ns, st.none(), st.none(), st.integers(1, U64)),
                       st.builds(Ns, st.sampled_from(list(fl.NS_TYPES)), st.integers(1, U32), st.none()))
    few = dict(max_size=3, unique=True)
    return Filter(ops=draw(st.lists(st.sampled_from(filters.OPS), **few)),
                  types=draw(st.lists(st.sampled_from(list(fl.NS_TYPES)), **few)),
                  comms=draw(st.lists(st.sampled_from(comms + ["nobody-such"]), **few)),
                  namespaces=draw(st.lists(any_ns, max_size=3)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_filter_keeps_the_same_records_in_c_and_python(catalogue, catalogue_values, data):
    """Any filter a user can give (the catalogue's names and namespaces, or any in range) keeps the
    same records of the whole catalogue in C as in Python."""
    filt = data.draw(_filters(catalogue_values))
    _, batches, _ = catalogue
    kept = _kept(catalogue, filt, [raw for raws, _, _ in batches for raw in raws])
    assert kept
    assert [c for c, _ in kept] == [py for _, py in kept], filt


def test_counts_match_poll(traced):
    tracer, batches, _ = traced
    n = sum(len(raws) for raws, _, _ in batches)
    assert sum(tracer.by_op.values()) >= n
    assert set(tracer.by_op) <= set(filters.OPS)


def test_moved_on_sees_records_not_read_yet(tracer):
    """A /proc mismatch is 'superseded' only if the task really moved on: an unread record says so."""
    from nshelpers import flag, nsop
    with nsop({"op": "unshare", "flags": flag("uts")}) as rep:
        assert rep["ret"] == 0, rep
        time.sleep(0.05)
        # its unshare sits in the ring buffer, not read yet
        assert tracer._batch.moved_on(rep["pid"])
        assert not tracer._batch.moved_on(os.getpid())
        while tracer.poll(0):
            pass
        # read: nothing left that moves it, and it is inside no unshare/setns
        assert not tracer._batch.moved_on(rep["pid"])


def test_a_thread_inside_a_syscall_is_in_the_in_flight_table(tracer):
    """clone(CLONE_VFORK) keeps its caller inside the syscall until the child exits: the in-flight
    table (an array probed from tid, probes/inflight.bpf.h) has it while it waits, then gives it back."""
    from nstrace.linux import syscalls
    pid = os.fork()
    if pid == 0:
        try:
            if syscalls.clone(fl.CLONE_FLAGS["CLONE_VFORK"] | fl.CLONE_FLAGS["CLONE_NEWUTS"]) == 0:
                time.sleep(0.5)  # the vfork child: its parent waits inside clone meanwhile
                os._exit(0)
            os.wait()
        finally:
            os._exit(0)
    try:
        deadline, seen = time.monotonic() + 0.4, None
        while seen is None and time.monotonic() < deadline:
            seen = tracer._batch.in_flight(pid)
        assert seen == "clone"
    finally:
        os.waitpid(pid, 0)
    assert tracer._batch.in_flight(pid) is None


def test_a_batch_is_bounded_and_the_rest_waits(tracer):
    """max_records caps a batch; what does not fit stays in the ring buffer for the next poll."""
    small = reader.Batch(tracer._obj.map_fd("events"), tracer.options, max_records=2)
    try:
        while small.poll(0):
            pass
        for _ in range(5):
            subprocess.run(["unshare", "--uts", "true"], check=True)
        time.sleep(0.05)
        sizes = [small.poll(0) for _ in range(4)]
        assert sizes[:2] == [2, 2] and sizes[2] >= 1 and sum(sizes) >= 5, sizes
    finally:
        small.close()
