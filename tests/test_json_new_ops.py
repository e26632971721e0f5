"""Both writers of `watch --json` on the records of the ops this kernel cannot make (or makes with steps,
which Python writes): open_tree and fsmount (7.x), free (function-layer kernels), exec. Each is made from
a real unshare record of this kernel, turned into the op as the BPF side fills it (probes/syscalls.bpf.c
new_mount_ns(), sched_process_exec; probes/kfuncs.bpf.c ns_dies()), then held byte for byte to the Python
reference in every filter the C side applies."""

import subprocess
import sys

import pytest
from test_json_output import differential, live, take_raw  # noqa: F401 (live: the fixture)

from nstrace.kernel import flags as fl
from nstrace.record import layout
from nstrace.record.filters import Filter
from nstrace.tracing.tracer import Options

pytestmark = pytest.mark.root("loads BPF programs into the kernel")

UNSHARE = "import ctypes; ctypes.CDLL(None, use_errno=True).unshare(0x04000000)"  # CLONE_NEWUTS


@pytest.fixture(scope="module")
def unshare_raw(live):  # noqa: F811
    subprocess.run([sys.executable, "-c", UNSHARE], check=True)
    # where deaths are visible, the uts namespace's free can come in the same poll: the unshare's is first
    raws = take_raw(live, 1, at_least=True)
    assert layout.OPS[layout.EventHead.from_buffer_copy(raws[0]).op] == "unshare", raws
    return raws[0]


def as_op(raw, op, **fields):
    ev = layout.EventHead.from_buffer_copy(raw)
    ev.op = {name: num for num, name in layout.OPS.items()}[op]
    for name, value in fields.items():
        setattr(ev, name, value)
    return bytes(ev)


def made(raw):
    """The new-op records of this test, from one real record."""
    mnt = fl.CLONE_FLAGS["CLONE_NEWNS"]
    uts = fl.CLONE_FLAGS["CLONE_NEWUTS"]
    ino = layout.EventHead.from_buffer_copy(raw).after.inum[1]
    nsfs = dict(target_kind=1, target_nstype=mnt, target_inum=ino + 7, target_ns_id=4242)
    no_after = layout.NsSet()
    return [
        as_op(raw, "open_tree", raw_flags=0x2 | 0x80000 | 0x8000, ret=3, after=no_after, **nsfs),
        as_op(raw, "open_tree", raw_flags=0x2 | 0x40000000, ret=-2, after=no_after),   # ENOENT; an unknown bit
        as_op(raw, "fsmount", raw_flags=0x2, ret=4, after=no_after, **nsfs),
        as_op(raw, "fsmount", raw_flags=0x2, ret=4, after=no_after, **{**nsfs, "target_ns_id": 0}),
        as_op(raw, "free", raw_flags=uts, ret=0, before=no_after, after=no_after, target_nstype=uts,
              target_inum=ino, target_ns_id=77, lived_ns=123456789, context=1, holder=3),  # a task's umount
        # an RCU callback (softirq): no task, no holder; then codes neither writer knows
        as_op(raw, "free", raw_flags=uts, ret=0, before=no_after, after=no_after, target_nstype=uts,
              target_inum=ino, target_ns_id=0, lived_ns=0, context=2, holder=0, pid=0, tid=0, comm=b""),
        as_op(raw, "free", raw_flags=uts, ret=0, before=no_after, after=no_after, target_nstype=uts,
              target_inum=ino, target_ns_id=0, lived_ns=0, context=7, holder=9),
        as_op(raw, "exec", raw_flags=0, ret=0),
        # fork and vfork, as task_newtask fills them: the child's side, no duration
        as_op(raw, "fork", raw_flags=0, ret=4242, exit_signal=17, child_pid=4242, child_tid=4242,
              child_start_ns=99, exit_ns=layout.EventHead.from_buffer_copy(raw).enter_ns),
        as_op(raw, "vfork", raw_flags=0x4100, ret=4243, exit_signal=17, child_pid=4243, child_tid=4243,
              child_start_ns=98),
    ]


@pytest.mark.parametrize("options", [
    {}, {"check_proc": False}, {"filter": Filter(ops=("open_tree",))}, {"filter": Filter(ops=("free", "exec"))},
    {"filter": Filter(ops=("vfork",))}, {"filter": Filter(types=("mnt",))},
    {"filter": Filter(types=("uts",))}, {"raw_addresses": True},
], ids=["default", "no-proc-check", "op-open_tree", "op-free-exec", "op-vfork", "type-mnt", "type-uts", "raw-addresses"])
def test_both_writers_agree_on_the_new_ops(live, unshare_raw, options):  # noqa: F811
    raws = made(unshare_raw)
    _, records = differential(live, raws, Options(**options))
    by_op = {}
    for r in records:
        by_op.setdefault(r["op"], []).append(r)
    if not options:
        assert [r["op"] for r in records] == ["open_tree", "open_tree", "fsmount", "fsmount", "free", "free", "free",
                                              "exec", "fork", "vfork"]
        fork, vfork = by_op["fork"][0], by_op["vfork"][0]
        assert fork["flags"] == [] and fork["child_pid"] == fork["ret"] == 4242 and fork["exit_signal"] == "SIGCHLD"
        assert vfork["flags"] == ["CLONE_VM", "CLONE_VFORK"] and vfork["child_pid"] == 4243
        ok, failed = by_op["open_tree"]
        assert ok["flags"] == ["OPEN_TREE_NAMESPACE", "AT_RECURSIVE", "OPEN_TREE_CLOEXEC"] and ok["ret"] == 3
        assert ok["ns"] == {"type": "mnt", "inode": ok["ns"]["inode"], "ns_id": 4242}
        assert failed["ns"] is None and failed["flags"] == ["OPEN_TREE_NAMESPACE", "0x40000000"]
        assert failed["errno"] == "ENOENT"
        assert by_op["fsmount"][1]["ns"]["ns_id"] is None and by_op["fsmount"][0]["flags"] == ["FSMOUNT_NAMESPACE"]
        free, rcu, unknown = by_op["free"]
        assert free["ns"]["lived_ns"] == 123456789 and free["flags"] == ["CLONE_NEWUTS"]
        assert (free["ns"]["context"], free["ns"]["held_by"]) == ("task", "umount")
        assert rcu["ns"] == {"type": "uts", "inode": free["ns"]["inode"], "ns_id": None, "lived_ns": None,
                             "context": "softirq", "held_by": None}
        assert (unknown["ns"]["context"], unknown["ns"]["held_by"]) == (None, None)
        assert free["ns_before"] is None and free["changed"] == [] and free["proc_check"] is None
        assert by_op["exec"][0]["flags"] == [] and by_op["exec"][0]["ns"] is None
    if options.get("filter") == Filter(types=("mnt",)):
        assert [r["op"] for r in records] == ["open_tree", "fsmount", "fsmount"]  # the failed open_tree made none
    if options.get("filter") == Filter(types=("uts",)):
        # exec's, fork's and vfork's before/after are the unshare's here: uts changed
        assert set(by_op) == {"free", "exec", "fork", "vfork"}
    for r in records:
        assert r["cgroup_id"] == records[0]["cgroup_id"] and isinstance(r["cgroup_id"], int)


def test_ns_filter_finds_the_namespace_a_record_made_or_freed(live, unshare_raw):  # noqa: F811
    """--ns TYPE:INODE or an ns_id also means the namespace open_tree or fsmount made and the one a
    free record says died: a learner following one namespace sees its birth and its death."""
    ino = layout.EventHead.from_buffer_copy(unshare_raw).after.inum[1]
    raws = made(unshare_raw)
    _, by_inode = differential(live, raws, Options(filter=Filter.parse(ns=(f"mnt:{ino + 7}",))))
    assert [r["op"] for r in by_inode] == ["open_tree", "fsmount", "fsmount"]
    _, by_id = differential(live, raws, Options(filter=Filter.parse(ns=("77",))))
    assert [r["op"] for r in by_id] == ["free"]
