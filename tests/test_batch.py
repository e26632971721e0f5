"""native/batch.c against the Python decoder, on records of real namespace operations.

`watch --json` lines are written by C (nstrace/bpf/batch.py); events.decode() +
jsonline.json_line() are the reference. Every record of a full `nstrace check`
run (42 scenarios: every type, every operation, failures, setns by nsfs and
pidfd) plus processes with awkward names must come out byte for byte the
same, and the C filters must drop exactly what filters.wanted() drops.
"""

import ctypes
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from nstrace.bpf import batch
from nstrace.record import events, filters, steps
from nstrace.record import jsonline
from nstrace.linux import flags as fl
from nstrace.trace.tracer import Options, Tracer

from nshelpers import NSTRACE, ROOT
from test_json_output import replayer, with_containers

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
            # the states jl_format used (classify() again would count twice)
            states = ctypes.string_at(b._lib.jl_states(b._b), b.n)
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


S = batch.states()


def test_routing_states_are_the_librarys_bits():
    """Read from native/batch.c's jl_state_bits[]: four bits of their own, each tested alone."""
    bits = vars(batch.states())
    assert set(bits) == {"PYTHON", "CHECK", "LATER", "FILTERED"}
    assert all(v and not v & (v - 1) for v in bits.values()) and len(set(bits.values())) == 4


def test_c_lines_are_the_python_lines(traced):
    tracer, batches, raw_addresses = traced
    seen_ops, via = set(), {"c": 0, "python": 0}
    for raws, states, lines in batches:
        shown = [(raw, st) for raw, st in zip(raws, states) if not st & S.FILTERED]
        assert len(lines) == len(shown)
        for (raw, state), line in zip(shown, lines):
            rec = with_containers(steps.decode_record(raw, raw_addresses))
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
            ev = events.EventHead.from_buffer_copy(raw)
            if ev.comm in COMMS and ev.op == 3:
                state_of[ev.comm] = st
    assert set(state_of) == set(COMMS)
    for comm, st in state_of.items():
        assert (not st & S.PYTHON) == _plain(comm), comm


def _plain(comm):
    return all(0x20 <= c < 0x7f for c in comm) and b"\\" not in comm


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
    recs = [events.decode(raw, raw_addresses) for raws, _, _ in batches for raw in raws]
    made = [r for r in recs if r.op == "unshare" and r.ok and "uts" in r.changed]
    nets = [r for r in recs if r.op in ("clone", "clone3") and r.ok and "net" in r.changed]
    entered = [r for r in recs if r.op == "setns" and r.ok and (r.target or {}).get("kind") == "nsfs"]
    assert made and nets and entered
    uts = ("uts", made[0].ns_after["uts"], None)
    if by == "inode":
        spec = (uts,)
    elif by == "ns_id":
        ns_id = made[0].ns_id_after["uts"]
        if not ns_id:
            pytest.skip("this kernel has no ns_common.ns_id (6.18+): no ids to filter by")
        spec = ((None, None, ns_id),)
    elif by == "two":
        spec = (uts, ("net", nets[0].ns_after["net"], None))
    else:
        spec = ((entered[0].target["type"], entered[0].target["inode"], None),)
    _same_filter(catalogue, {"namespaces": spec})


def _same_filter(catalogue, spec):
    tracer, batches, raw_addresses = catalogue
    options = Options(**spec)
    kept = dropped = 0
    # a reader with these options: the same records, each its own batch, classified again
    t = replayer(tracer, options)
    for raws, _, _ in batches:
        for raw in raws:
            t.replay([raw])
            st = t._states[0]
            rec = steps.decode_record(raw, raw_addresses)
            t._attribution.fill(rec)
            if st & S.PYTHON:
                assert not st & S.FILTERED  # Python filters those itself, with filters.wanted()
                continue
            assert (not st & S.FILTERED) == filters.wanted(rec, options), (spec, rec.op, rec.comm, rec.changed)
            kept += not st & S.FILTERED
            dropped += bool(st & S.FILTERED)
    assert kept and dropped, (kept, dropped)


def test_counts_match_poll(traced):
    tracer, batches, _ = traced
    n = sum(len(raws) for raws, _, _ in batches)
    assert sum(tracer.by_op.values()) >= n
    assert set(tracer.by_op) <= set(fl.OPS)


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
    table (an array probed from tid, probes/common.bpf.h) has it while it waits, then gives it back."""
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
    small = batch.Batch(tracer._obj.map_fd("events"), tracer.options, max_records=2)
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
