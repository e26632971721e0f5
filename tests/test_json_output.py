"""`watch --json` you can feed to a log pipeline, under processes that name themselves as attackers do.

Every stdout line is one valid JSON object (RFC 8259: UTF-8, here plain ASCII) with no control
byte, whatever a process calls itself; the filters drop exactly what they say; and the two writers
of those lines, native/batch.c and Python's decode.decode() + jsonline.json_line(), write the same
bytes in every routing state native/batch.c can give a record. Everything runs on the real kernel:
real processes rename themselves (prctl PR_SET_NAME) and make real unshare/setns/clone calls, and
/proc is the real one.
"""

import json
import os
import signal
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nshelpers import NSTRACE
from victims import HOSTILE_NAMES, RECORDS, Victim

from nstrace.kernel import flags as fl
from nstrace.kernel import functions
from nstrace.linux import containers, procns
from nstrace.linux.comm import safe_comm
from nstrace.record import decode, jsonline, layout, reader
from nstrace.record.filters import Filter
from nstrace.study import callpath
from nstrace.tracing.attribution import BatchAttribution
from nstrace.tracing.tracer import Options, Tracer

pytestmark = pytest.mark.root("loads BPF programs into the kernel")

S = reader.states()
# README, "The JSON record": every key, in this order
KEYS = ["ts", "duration_us", "op", "pid", "tid", "ppid", "uid", "comm", "raw_flags", "flags", "ret", "errno",
        "exit_signal", "child_pid", "child_tid", "target", "ns_before", "ns_after", "ns_id_before", "ns_id_after",
        "changed", "nsproxy", "start_time_ns", "child_start_ns", "cgroup_id", "container", "ns", "kernel_path", "kernel_path_dropped", "proc_check"]
STATUSES = {"match", "mismatch", "gone", "superseded", "unseen"}


def _no_constant(name):
    raise AssertionError(f"{name} is not JSON (RFC 8259)")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), keys
    return dict(pairs)


def strict_lines(out):
    """Every line of `out` (bytes) as a JSON object, asserting it is one, strictly."""
    assert out.endswith(b"\n") or not out, out[-200:]
    records = []
    for line in out.split(b"\n")[:-1]:
        # ASCII without a control byte: no C0, no DEL, no C1, no ESC; and nothing that ends a <script>
        bad = [b for b in line if not 0x20 <= b < 0x7f or b in b"<>&"]
        assert not bad, (bytes(bad), line)
        rec = json.loads(line.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
        assert isinstance(rec, dict) and list(rec) == KEYS, line
        assert rec["proc_check"] is None or rec["proc_check"]["status"] in STATUSES, rec["proc_check"]
        records.append(rec)
    return records


# --- the way it broke: the real command line ---------------------------------------------------------

ESCAPED = safe_comm(b"esc\x1b[31mred")


@pytest.mark.parametrize("args", [(), ("--op", "clone"), ("--comm", ESCAPED), ("--op", "setns", "--comm", "plain-name")],
                         ids=["all", "op-clone", "comm-escaped", "op-and-comm"])
def test_watch_json_under_hostile_names(args):
    """For each hostile name: unshare(NEWUTS), setns back, clone(NEWUTS), under `watch --pid P --json`."""
    with Victim(HOSTILE_NAMES, ["unshare", "setns-back", "clone"], gated=True) as victim:
        only = Filter(ops=args[args.index("--op") + 1:][:1] if "--op" in args else (),
                      comms=args[args.index("--comm") + 1:][:1] if "--comm" in args else ())
        want = [(safe_comm(comm), op, ok) for comm, op, ok in victim.expected()
                if (not only.ops or op in only.ops)
                and (not only.comms or safe_comm(comm) in only.comms)]
        assert want
        watch = subprocess.Popen([str(NSTRACE), "watch", "--pid", str(victim.pid), "--json", "--count", str(len(want)),
                                  *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert b"tracing live" in watch.stderr.readline()
            victim.start()
            out, err = watch.communicate(timeout=15)
        finally:
            if watch.poll() is None:  # fewer records than asked for: show what came
                watch.send_signal(signal.SIGINT)
                out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0, err
    records = strict_lines(out)
    assert [(r["comm"], r["op"], r["ret"] >= 0) for r in records] == want
    assert all(r["pid"] == victim.pid for r in records)
    for r in records:
        assert r["proc_check"]["status"] != "mismatch", r  # each difference has its explanation
        if r["op"] == "clone":  # the child exits at once: caught before, or after
            assert r["proc_check"]["status"] in ("match", "gone"), r


# --- the differential test: every routing state through both writers ----------------------------------

def replayer(live, options):
    """A Tracer with `options` that reads no ring buffer: it takes records by replay(). Its
    counters of lost events are the live tracer's object's."""
    t = Tracer(options)
    t.probes = live.probes
    t._batch = reader.Batch(live._obj.map_fd("events"), options, inflight_fd=live._obj.map_fd("inflight"))
    t._attribution = BatchAttribution(options)
    t._st = S
    return t


def _moves(rec):
    """It moved its caller: native/batch.c moves_caller(), written again from its comment."""
    return rec.op in ("unshare", "setns") and rec.ok and (rec.changed or not (rec.ns_before and rec.ns_after))


ATTRIBUTION = containers.Attribution()


def setns_callers(recs):
    """{(type, inode): the pids of the records among recs that setns into that namespace}."""
    callers = {}
    for r in recs:
        if r.op == "setns" and r.target["kind"] == "nsfs":
            callers.setdefault((r.target["type"], r.target["inode"]), set()).add(r.pid)
    return {k: frozenset(v) for k, v in callers.items()}


def with_containers(rec, entered=None):
    """The record with its caller's container (by cgroup id; else, while a process is in a container
    only cgroup v1 names, its cgroup v1 hierarchies', if the caller lives still) and its setns
    target's (the namespace's owner but for the processes that entered it in this batch, `entered`:
    setns_callers(); or the pidfd's process's), looked up here on their own."""
    rec.container = ATTRIBUTION.of_cgroup(rec.cgroup_id)
    if rec.container is None and containers.v1_only_containers():
        rec.container = _v1_container(rec.pid, rec.tid, rec.start_time_ns)
    t = rec.target
    if t and t["kind"] == "nsfs" and t["type"] in fl.NS_TYPES:
        t["container"] = ATTRIBUTION.of_namespace(t["type"], t["inode"],
                                                  entered_by=(entered or {}).get((t["type"], t["inode"]), frozenset()))
    elif t and t["kind"] == "pidfd":
        t["container"] = containers.process_container(t["pid"])
    return rec


def _v1_container(pid, tid, start_time_ns):
    born = procns.ns_to_ticks(start_time_ns)
    found = containers.process_container(pid, tid, v1_only=True) if procns.start_ticks(pid, tid) == born else None
    return found if procns.start_ticks(pid, tid) == born else None


def oracle_lines(raws, options, checker):
    """What `watch --json` must print for this batch, in Python alone: decode every record, add its
    containers, keep what Filter.wanted() keeps, and say superseded where the checked task moves
    after the record in this batch (a clone's child: any move of its own), or else what the check
    against /proc says."""
    recs = [callpath.annotate(decode.decode(raw, options.raw_addresses)) for raw in raws]
    entered = setns_callers(recs)
    recs = [with_containers(rec, entered) for rec in recs]
    lines = []
    for i, rec in enumerate(recs):
        if not options.filter.wanted(rec):
            continue
        _, tid, start_ns, expected, _ = rec.checked_task
        if options.check_proc and expected:
            later = any(_moves(r) and r.tid == tid and (j > i or (tid != rec.tid and r.start_time_ns == start_ns))
                        for j, r in enumerate(recs))
            rec.proc_check = {"status": "superseded", "pid": tid} if later else checker._proc_check(rec)
        lines.append(jsonline.json_line(rec) + "\n")
    return lines


def differential(live, raws, options, limit=0):
    """The batch `raws` through native/batch.c (json_lines) and through Python (records() +
    json_line), against the oracle: the same bytes. Returns (states, JSON records)."""
    c, py = replayer(live, options), replayer(live, options)
    try:
        c.replay(raws)
        lines, n = c.json_lines(limit)
        fast = bytes(lines).decode("ascii")
        py.replay(raws)
        reference = [jsonline.json_line(r) + "\n" for r in py.records()]
        oracle = oracle_lines(raws, options, py)
        if limit:
            reference, oracle = reference[:limit], oracle[:limit]
        assert "".join(reference) == "".join(oracle)
        assert fast.splitlines(keepends=True) == oracle
        assert n == len(oracle)
        assert c._states == py._states
        return c._states, strict_lines(fast.encode())
    finally:
        c._batch.close()
        py._batch.close()


def take_raw(tracer, count, timeout=5.0, at_least=False):
    """The next `count` records from the ring buffer (or more, with at_least, as far as the last poll
    brought), as bytes, nothing decoded or checked."""
    raws, deadline = [], time.monotonic() + timeout
    while len(raws) < count and time.monotonic() < deadline:
        n = tracer._batch.poll(20)
        raws += [tracer._batch.raw(i) for i in range(n)]
    assert len(raws) >= count if at_least else len(raws) == count, (len(raws), count)
    return raws


@pytest.fixture(scope="module")
def live():
    """A tracer of our own descendants, so that each record read is one of the victims' here."""
    with Tracer(Options(pid=os.getpid(), poll_ms=20)) as t:
        yield t


# Who does what: each victim's records land in every routing state there is. C writes a plain
# name's; Python the others' (and every record with kernel-path steps).
CAST = [
    ([b"plain-a"], ["unshare"]),                                   # the task's last: CHECK
    ([b"plain-b"], ["unshare", "unshare-ipc"]),                    # LATER (superseded), then CHECK
    ([b'q"<script>\x1b['], ["unshare", "setns-back", "clone"]),     # PYTHON|LATER, PYTHON|CHECK (match, gone)
    ([b"\xff\xfe\tbad"], ["clone3", "setns-badfd"]),                # PYTHON|CHECK: gone, a failed call
    ([b"plain-e"], ["vfork-move"]),                                # the child moves first: LATER all the same
    (["ütf8-é\u202e".encode()], ["vfork-move", "clone"]),          # ... and so for Python
    ([b"plain&<g>"], ["clone", "setns-badfd", "unshare"]),          # C escapes & < > as Python does
]


@pytest.fixture(scope="module")
def cast(live):
    victims = []
    try:
        for comms, ops in CAST:
            victims.append(Victim(comms, ops))
        yield victims, take_raw(live, sum(len(v.expected()) for v in victims))
    finally:
        for v in victims:
            v.release()


VARIANTS = {
    "default": {},
    "no-proc-check": {"check_proc": False},
    "raw-addresses": {"raw_addresses": True},
    "op-clone": {"filter": Filter(ops=("clone", "clone3"))},
    "op-unshare-setns": {"filter": Filter(ops=("unshare", "setns"))},
    "comm": {"filter": Filter(comms=("plain-b", safe_comm(b'q"<script>\x1b['), "plain&<g>"))},
    "type-ipc": {"filter": Filter(types=("ipc",))},
    "type-net-uts": {"filter": Filter(types=("net", "uts"))},
}


def with_steps(raw, dropped=0):
    """A real record as the function layer sends it: the head, then kernel-path steps.

    This kernel has no function layer (no kprobes, fentry refused), so its records carry no steps:
    the steps are filled in here, into the real record's bytes, as probes/kfuncs.bpf.c fills them
    (struct nstrace_step after the head, nsteps counting them): the op's entry function with its
    flags, the nsproxy switch from the record's own before/after ids, the exit with its return.
    """
    head = bytearray(raw[:layout.HEAD_SIZE])
    ev = layout.EventHead.from_buffer(head)
    fn = {name: i for i, name in enumerate(functions.FUNCTIONS) if name}
    entry = {"unshare": "ksys_unshare", "setns": "__x64_sys_setns"}.get(layout.OPS.get(ev.op), "copy_namespaces")
    span = max(ev.exit_ns - ev.enter_ns, 4)
    path = [
        layout.Step(ts_ns=ev.enter_ns + 1, func=fn[entry], kind=1, what=1, arg=ev.raw_flags & ~0xff),
        layout.Step(ts_ns=ev.enter_ns + span // 3, func=fn["create_new_namespaces"], kind=2, what=2,
                    nsproxy_id=ev.after.nsproxy_id, refs=1),
        layout.Step(ts_ns=ev.enter_ns + span // 2, func=fn["switch_task_namespaces"], kind=1, what=3,
                    arg=ev.before.nsproxy_id, nsproxy_id=ev.after.nsproxy_id, refs=2),
        layout.Step(ts_ns=ev.exit_ns - 1, func=fn[entry], kind=2, what=4, ret=min(ev.ret, 0)),
    ]
    ev.nsteps, ev.steps_dropped = len(path), dropped
    return bytes(head) + b"".join(bytes(s) for s in path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_both_writers_agree(live, cast, variant):
    victims, raws = cast
    states, records = differential(live, raws, Options(**VARIANTS[variant]))
    if variant == "default":
        # every routing state there is with a /proc check, and each status a record can get
        assert set(states) >= {S.CHECK, S.LATER, S.PYTHON | S.CHECK, S.PYTHON | S.LATER}, sorted(set(states))
        assert {r["proc_check"]["status"] for r in records} >= {"match", "superseded", "gone"}
        assert not [r for r in records if r["proc_check"]["status"] == "mismatch"], records
        # the records are the victims' (a vfork child's carries its parent's name), in order
        assert [(r["comm"], r["op"], r["ret"] >= 0) for r in records] == [
            (safe_comm(comm), op, ok) for v in victims for comm, op, ok in v.expected()]
    elif variant == "no-proc-check":
        assert set(states) == {0, S.PYTHON}  # C's own, proc_check null; and Python's
        assert all(r["proc_check"] is None for r in records)
    elif variant != "raw-addresses":
        assert any(s & S.FILTERED for s in states) and records


def test_both_writers_agree_on_kernel_path_steps(live, cast):
    _, raws = cast
    stepped = [with_steps(raw, dropped=i % 3) for i, raw in enumerate(raws)]
    for variant in ("default", "op-clone", "comm", "raw-addresses"):
        states, records = differential(live, stepped, Options(**VARIANTS[variant]))
        assert all(s & S.PYTHON for s in states)  # C writes no record with steps
        assert records and all(len(r["kernel_path"]) == 4 for r in records)
        assert {r["kernel_path_dropped"] for r in records} <= {0, 1, 2}


def test_both_writers_agree_with_a_line_limit(live, cast):
    """--count: the lines stop at the limit, whichever writer wrote them."""
    _, raws = cast
    for limit in (1, 2, 5, 9):
        _, records = differential(live, raws, Options(), limit=limit)
        assert len(records) == limit


# --- any name, any sequence ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(comm=st.binary(min_size=1, max_size=15).filter(lambda b: b"\0" not in b),
       ops=st.lists(st.sampled_from(sorted(RECORDS)), min_size=1, max_size=5),
       only=st.sets(st.sampled_from(["clone", "clone3", "unshare", "setns"])), by_name=st.booleans())
def test_any_name_any_sequence(live, comm, ops, only, by_name):
    """A real process names itself `comm` and makes `ops`; both writers agree on its records, with
    and without filters, and what they print is exactly what it did."""
    with Victim([comm], ops) as victim:
        raws = take_raw(live, len(victim.expected()))
        shown = safe_comm(comm)
        _, records = differential(live, raws, Options())
        assert [(r["comm"], r["op"], r["ret"] >= 0) for r in records] == [
            (shown, op, ok) for _, op, ok in victim.expected()]
        assert not [r for r in records if r["proc_check"]["status"] == "mismatch"], records
        filtered = Options(filter=Filter(ops=tuple(sorted(only)), comms=(shown,) if by_name else ("someone-else",)))
        _, records = differential(live, raws, filtered)
        assert [r["op"] for r in records] == [
            op for _, op, _ in victim.expected() if by_name and (not only or op in only)]


# --- under loss ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("comm", [b"lossy", b"lo\x1bssy"], ids=["c", "python"])
def test_a_difference_lost_events_explain_is_no_mismatch(live, comm):
    """A ring buffer of 4 KiB holds about ten records; a process unshares 64 times, then holds. Its
    last record that came through differs from /proc: the records of its later moves were lost,
    and the check says so. Both writers agree on the batch, loss and all."""
    try:
        with Tracer(Options(pid=os.getpid(), ringbuf_bytes=4096, poll_ms=20)) as small:
            small.poll(0)
            with Victim([comm], ["unshare"] * 64):
                lines, raws = b"", []
                while True:
                    out, _ = small.poll_json(20)
                    if not small.last_read:
                        break
                    lines += bytes(out)
                    raws += [small._batch.raw(i) for i in range(small.last_read)]
                assert small.lost["ringbuf"] > 0 and 0 < len(raws) < 64, (small.lost, len(raws))
                records = strict_lines(lines)
                assert {r["proc_check"]["status"] for r in records} == {"superseded"}, records
                last = records[-1]["proc_check"]
                assert last["reason"] == "lost events" and last["diff"]["uts"]["proc"] != last["diff"]["uts"]["kernel"]
                _, replayed = differential(small, raws, Options())
                assert replayed[-1]["proc_check"] == last
    finally:
        while live._batch.poll(0):  # the victim's records the module's tracer took too
            pass
